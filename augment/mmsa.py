"""Import MMSA's ``aligned_50.pkl`` / ``unaligned_50.pkl`` into the msa-tf2 HDF5 layout.

MMSA (thuiar/MMSA) ships each dataset as one pickle: a dict ``{"train", "valid", "test"}`` whose
values are dicts holding (among other keys) ``text`` (N, T, 768), ``audio`` (N, T, D_a),
``vision`` (N, T, D_v), ``regression_labels`` (N,) and ``id`` (N,). The import writes
``text_{split}_emb.h5``, ``audio_{split}.h5``, ``video_{split}.h5`` (from ``vision``),
``y_{split}.h5`` (N, 1) and ``id_{split}.h5`` (the sample ids as UTF-8 strings).

Unpickling runs code stored in the file, so it only happens on explicit opt-in
(``allow_pickle=True``, ``--allow-pickle`` on the command line).
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from msatune.augment.dataset import SPLITS, MSADataset
from msatune.augment.dataset_writer import check_output_dir, write_dataset
from msatune.errors import UserError

log = logging.getLogger(__name__)

# msa-tf2 name -> MMSA key
MMSA_KEYS: dict[str, str] = {
    "text": "text",
    "audio": "audio",
    "video": "vision",
    "labels": "regression_labels",
    "ids": "id",
}


def import_mmsa(
    pkl: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    allow_pickle: bool = False,
    overwrite: bool = False,
    clip_labels: bool = False,
) -> MSADataset:
    """Convert an MMSA pickle into a dataset directory ``out`` in the msa-tf2 layout."""
    src = Path(pkl).expanduser()
    if not src.exists():
        raise UserError(f"{src}: no such file; expected MMSA's aligned_50.pkl (or unaligned_50.pkl)")
    if not src.is_file():
        raise UserError(f"{src}: not a file; expected MMSA's aligned_50.pkl (or unaligned_50.pkl)")
    if not allow_pickle:
        raise UserError(
            f"{src}: refusing to unpickle without --allow-pickle: loading a pickle runs any code "
            "stored in it; pass --allow-pickle only for a file from a source you trust "
            "(e.g. MMSA's own download)"
        )
    target = Path(out).expanduser()
    check_output_dir(target, overwrite)  # fail before a slow unpickle
    data = _unpickle(src)
    splits = {split: _convert_split(src, data, split) for split in SPLITS}
    ds = write_dataset(
        target,
        splits,
        overwrite=overwrite,
        clip_labels=clip_labels,
        describe=lambda split, kind: f"{src} ['{split}']['{MMSA_KEYS.get(kind, kind)}']",
    )
    log.info("imported %s into %s", src, ds.path)
    return ds


def _unpickle(src: Path) -> Mapping[str, Any]:
    try:
        with src.open("rb") as f:
            data = pickle.load(f)  # noqa: S301 -- explicit opt-in above
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as exc:
        raise UserError(f"{src}: not a readable MMSA pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, Mapping):
        raise UserError(
            f"{src}: holds a {type(data).__name__}; expected MMSA's dict with keys train, valid, test"
        )
    missing = [s for s in SPLITS if s not in data]
    if missing:
        found = ", ".join(map(str, data.keys())) or "none"
        raise UserError(
            f"{src}: no split(s) {', '.join(missing)} (found: {found}); expected MMSA's dict "
            "with keys train, valid, test"
        )
    return data


def _convert_split(src: Path, data: Mapping[str, Any], split: str) -> dict[str, np.ndarray]:
    part = data[split]
    if not isinstance(part, Mapping):
        raise UserError(f"{src}: '{split}' is a {type(part).__name__}; expected a dict of arrays")
    missing = [key for key in MMSA_KEYS.values() if key not in part]
    if missing:
        found = ", ".join(map(str, part.keys()))
        raise UserError(
            f"{src}: '{split}' lacks {', '.join(missing)} (found: {found}); expected MMSA's "
            "keys text, audio, vision, regression_labels and id"
        )
    out: dict[str, np.ndarray] = {}
    for ours, theirs in MMSA_KEYS.items():
        value = part[theirs]
        try:
            arr = np.asarray(value) if ours == "ids" else _numeric(value)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{src}: '{split}/{theirs}' is not a numeric array ({exc})") from exc
        out[ours] = arr
    for ours in ("text", "audio", "video"):
        if out[ours].ndim != 3:
            raise UserError(
                f"{src}: '{split}/{MMSA_KEYS[ours]}' has shape {out[ours].shape}; "
                "expected 3-D features (N, T, D)"
            )
    steps = {MMSA_KEYS[m]: out[m].shape[1] for m in ("text", "audio", "video")}
    if len(set(steps.values())) > 1:
        listing = ", ".join(f"{k} T={t}" for k, t in steps.items())
        raise UserError(
            f"{src}: '{split}' has unaligned sequences ({listing}); msa-tf2 needs aligned "
            "sequences of one length T per sample: use MMSA's aligned_50.pkl instead of "
            "unaligned_50.pkl"
        )
    return out


def _numeric(value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == object:  # e.g. a list of per-sample arrays
        arr = np.asarray(arr.tolist(), dtype=np.float32)
    return arr
