"""Writing a dataset in the msa-tf2 layout: validated in memory, written atomically, read back.

Used by the synthetic generator and the MMSA import; :mod:`msatune.augment.dataset` reads.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from msatune.augment.dataset import (
    FILE_PATTERNS,
    H5_KEY,
    REQUIRED_KINDS,
    SPLITS,
    MSADataset,
    SplitData,
    assemble,
    build_split,
    file_name,
    load_dataset,
)
from msatune.errors import UserError
from msatune.modalities import MODALITIES

log = logging.getLogger(__name__)




def write_dataset(
    out: str | os.PathLike[str],
    splits: Mapping[str, Mapping[str, np.ndarray]],
    *,
    overwrite: bool = False,
    clip_labels: bool = False,
    describe: Callable[[str, str], str] | None = None,
) -> MSADataset:
    """Write ``splits`` (split -> {"text", "audio", "video", "labels"[, "oracle"][, "ids"]}) as a
    dataset directory in the msa-tf2 layout and return it loaded.

    The arrays are validated in memory first (nothing is written when they are wrong), then written
    into a temporary directory next to ``out``, read back and renamed into place. A non-empty
    existing ``out`` is refused unless ``overwrite``. Features are written as float32 with every
    non-finite value (NaN, +-inf: MMSA's audio holds -inf) replaced by 0, as msa-tf2's own loader
    only zeroes NaN; the returned splits' ``nan_count`` says how many were replaced. Labels as (N, 1) float32, oracle as (N,) float32, ids as UTF-8 strings. ``describe(split,
    kind)`` names an array's source in error messages (default: the file it would be written to)."""
    target = Path(out).expanduser()
    check_output_dir(target, overwrite)

    # 1. Validate in memory, with the file names the arrays will get.
    missing_splits = [s for s in SPLITS if s not in splits]
    if missing_splits:
        raise ValueError(f"write_dataset needs splits {SPLITS}; missing {missing_splits}")
    describe = describe or (lambda split, kind: str(target / file_name(kind, split)))
    where = {s: {k: describe(s, k) for k in FILE_PATTERNS} for s in SPLITS}
    checked: dict[str, SplitData] = {}
    for split in SPLITS:
        raw = dict(splits[split])
        for kind in REQUIRED_KINDS:
            if kind not in raw:
                raise ValueError(f"write_dataset: split '{split}' lacks '{kind}'")
        unknown = set(raw) - set(FILE_PATTERNS)
        if unknown:
            raise ValueError(f"write_dataset: split '{split}' has unknown keys {sorted(unknown)}")
        checked[split] = build_split(split, raw, where[split], clip_labels)
    assemble(target, checked, where)

    # 2. Write into a temp dir beside the target, read back, rename into place.
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would become the dataset's mode
    except OSError as exc:
        raise UserError(f"cannot write dataset {target}: {exc.strerror or exc}") from exc
    try:
        for split in SPLITS:
            for m in MODALITIES:  # finite values only: non-finite ones were replaced by 0 (counted)
                _write_h5(tmp / file_name(m, split), getattr(checked[split], m))
            _write_h5(tmp / file_name("labels", split), checked[split].labels.reshape(-1, 1))
            if checked[split].oracle is not None:
                _write_h5(tmp / file_name("oracle", split), checked[split].oracle)
            if checked[split].ids is not None:
                _write_h5(tmp / file_name("ids", split), checked[split].ids, strings=True)
        loaded = load_dataset(tmp)
        _move_into_place(tmp, target, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote dataset %s (fingerprint %s)", target, loaded.fingerprint[:12])
    # The splits as written; their ``nan_count`` is how many non-finite feature values the
    # writer replaced by 0 (a reader of the files finds none).
    return MSADataset(path=target.resolve(), splits=checked, fingerprint=loaded.fingerprint)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_dir(target: Path, overwrite: bool = False) -> None:
    """Refuse an output path that is a file, or a non-empty directory unless ``overwrite``."""
    if target.exists() and not target.is_dir():
        raise UserError(f"{target}: exists and is not a directory; choose another output directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise UserError(
            f"{target}: directory exists and is not empty; choose a new directory or pass "
            "--overwrite to replace it"
        )


def _write_h5(path: Path, arr: np.ndarray, *, strings: bool = False) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        if strings:
            f.create_dataset(H5_KEY, data=[str(v) for v in arr], dtype=h5py.string_dtype("utf-8"))
        else:
            f.create_dataset(H5_KEY, data=arr)


def _move_into_place(tmp: Path, target: Path, overwrite: bool) -> None:
    check_output_dir(target, overwrite)  # again: something may have appeared meanwhile
    if not target.exists():
        os.replace(tmp, target)
        return
    if not any(target.iterdir()):
        target.rmdir()
        os.replace(tmp, target)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, trash / "old")
    try:
        os.replace(tmp, target)
    except OSError:
        os.replace(trash / "old", target)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)
