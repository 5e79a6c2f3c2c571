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
    files_fingerprint,
)
from msatune.errors import UserError, first_line
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
                _write_h5(tmp / file_name(m, split), getattr(checked[split], m), target=target)
            _write_h5(tmp / file_name("labels", split), checked[split].labels.reshape(-1, 1), target=target)
            if checked[split].oracle is not None:
                _write_h5(tmp / file_name("oracle", split), checked[split].oracle, target=target)
            if checked[split].ids is not None:
                _write_h5(tmp / file_name("ids", split), checked[split].ids, strings=True, target=target)
        # Read back one split at a time: a MOSEI-sized dataset is not held twice.
        written = files_fingerprint(tmp)
        _move_into_place(tmp, target, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote dataset %s (fingerprint %s)", target, written[:12])
    # The splits as written; their ``nan_count`` is how many non-finite feature values the
    # writer replaced by 0 (a reader of the files finds none).
    return MSADataset(path=target.resolve(), splits=checked, fingerprint=written)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_dir(target: Path, overwrite: bool = False) -> None:
    """Refuse an output path that is a file, or a non-empty directory unless ``overwrite`` (which
    replaces the dataset's files there and keeps every other file)."""
    if target.exists() and not target.is_dir():
        raise UserError(f"{target}: exists and is not a directory; choose another output directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise UserError(
            f"{target}: directory exists and is not empty; choose a new directory or pass "
            "--overwrite to replace the dataset files in it (other files are kept)"
        )


def _write_h5(path: Path, arr: np.ndarray, *, strings: bool = False, target: Path | None = None) -> None:
    """Write one array file; ``target`` is the dataset directory a failure names (``path`` may lie
    in a temporary directory beside it)."""
    import h5py

    try:
        with h5py.File(path, "w") as f:
            if strings:
                f.create_dataset(H5_KEY, data=[str(v) for v in arr], dtype=h5py.string_dtype("utf-8"))
            else:
                f.create_dataset(H5_KEY, data=arr)
    except (OSError, RuntimeError) as exc:  # h5py: OSError on write, then RuntimeError on close
        raise UserError(f"cannot write {path.name} of dataset {target or path.parent}: {_why(exc)}; free space "
                        "(or raise the file size limit) and run it again (nothing was kept)") from None


def _why(exc: BaseException) -> str:
    """The operating system's reason behind an HDF5 write failure (h5py chains them)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno)
        seen = seen.__context__
    return first_line(exc)


def dataset_file_names() -> set[str]:
    """Every file name of the msa-tf2 layout (all kinds, all splits): what ``--overwrite`` replaces."""
    return {file_name(kind, split) for kind in FILE_PATTERNS for split in SPLITS}


def _move_into_place(tmp: Path, target: Path, overwrite: bool) -> None:
    """Move the written dataset from ``tmp`` to ``target``. Into an existing directory only the
    layout's files are moved (an old one the new dataset lacks, e.g. an oracle, is removed);
    every other file there is the user's and stays. A failure midway puts the old files back."""
    check_output_dir(target, overwrite)  # again: something may have appeared meanwhile
    if not target.exists():
        os.replace(tmp, target)
        return
    ours = sorted(dataset_file_names())
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    moved_old: list[str] = []
    moved_new: list[str] = []
    try:
        for name in ours:
            if (target / name).is_file():
                os.replace(target / name, trash / name)
                moved_old.append(name)
        for name in ours:
            if (tmp / name).exists():
                os.replace(tmp / name, target / name)
                moved_new.append(name)
    except OSError:
        for name in moved_new:
            (target / name).unlink(missing_ok=True)
        for name in moved_old:
            os.replace(trash / name, target / name)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
