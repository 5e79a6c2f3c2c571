"""The dataset on disk: the msa-tf2 HDF5 layout, its validation, its fingerprint and its summary.

One directory per dataset; every file is HDF5 with a single dataset named ``d1``::

    text_{split}_emb.h5   (N, T, D_text)   e.g. 300-d GloVe
    audio_{split}.h5      (N, T, D_audio)  e.g. 74-d COVAREP
    video_{split}.h5      (N, T, D_video)  e.g. 47-d Facet
    y_{split}.h5          (N, 1) or (N,)   sentiment in [-3, 3]
    oracle_{split}.h5     (N,)             optional: noise-free target (synthetic data)
    id_{split}.h5         (N,)             optional: sample ids, UTF-8 strings (MMSA import)

for split in ``train``, ``valid``, ``test``. Non-finite feature values (real COVAREP/Facet files
hold NaN and -inf, and float64 values beyond float32's range overflow to inf) are replaced by 0
and counted. Every user mistake is a one-line
:class:`msatune.errors.UserError` naming the file, the dataset and the shapes.

This module must not import TensorFlow: ``msatune data ...`` stays fast.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from msatune.augment.yardsticks import reference_maes
from msatune.errors import UserError
from msatune.label_range import LABEL_RANGE  # re-exported: the readers clip labels to it
from msatune.modalities import MODALITIES

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "valid", "test")
H5_KEY = "d1"

# File name per array kind; ``{split}`` is one of SPLITS.
FILE_PATTERNS: dict[str, str] = {
    "text": "text_{split}_emb.h5",
    "audio": "audio_{split}.h5",
    "video": "video_{split}.h5",
    "labels": "y_{split}.h5",
    "oracle": "oracle_{split}.h5",
    "ids": "id_{split}.h5",
}
REQUIRED_KINDS: tuple[str, ...] = (*MODALITIES, "labels")
OPTIONAL_KINDS: tuple[str, ...] = ("oracle", "ids")

_LABEL_TOL = 1e-5  # float noise around +-3 (e.g. 3.0000001) is not an out-of-range label
_LAYOUT_HINT = (
    "a dataset directory in the msa-tf2 layout holds text_{split}_emb.h5, audio_{split}.h5, "
    "video_{split}.h5 and y_{split}.h5 for train, valid and test (make one with "
    "'msatune data synth DIR' or 'msatune data import-mmsa PKL DIR --allow-pickle')"
)


def file_name(kind: str, split: str) -> str:
    """The file name of one array kind (``text``, ``audio``, ``video``, ``labels``, ``oracle``,
    ``ids``) for one split, e.g. ``file_name("text", "train") == "text_train_emb.h5"``."""
    return FILE_PATTERNS[kind].format(split=split)


# --------------------------------------------------------------------------------------------
# The in-memory dataset


class Split(Protocol):
    """What a split offers: :class:`SplitData`, or rows of one (``augment.folds.SplitRows``)."""

    labels: np.ndarray
    ids: np.ndarray | None
    oracle: np.ndarray | None
    nan_count: int
    @property
    def n(self) -> int: ...
    def arrays(self) -> dict[str, np.ndarray]: ...
    def reference_maes(self) -> dict[str, float | None]: ...
    def shapes(self) -> dict[str, tuple[int, int]]: ...


@dataclass(frozen=True, eq=False)
class SplitData:
    """One split, validated: float32 features (N, T, D) with non-finite values already 0."""

    text: np.ndarray
    audio: np.ndarray
    video: np.ndarray
    labels: np.ndarray
    ids: np.ndarray | None = None
    oracle: np.ndarray | None = None
    nan_count: int = 0

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    def inputs(self) -> dict[str, np.ndarray]:
        """The model inputs: ``{"text", "audio", "video"}``."""
        return {"text": self.text, "audio": self.audio, "video": self.video}

    def arrays(self) -> dict[str, np.ndarray]:
        """The inputs plus ``"labels"``."""
        return {**self.inputs(), "labels": self.labels}

    def reference_maes(self) -> dict[str, float | None]:
        """The yardsticks of any model on this split (see :func:`reference_maes`)."""
        return reference_maes(self.labels, self.oracle)

    def shapes(self) -> dict[str, tuple[int, int]]:  # (T, D) of every modality
        return {m: (int(x.shape[1]), int(x.shape[2])) for m, x in self.inputs().items()}


@dataclass(frozen=True, eq=False)
class MSADataset:
    """A validated dataset: the three splits (a refit fold's: rows of train+valid), where it came
    from and its content fingerprint (in numbers: :func:`msatune.augment.summary.summary`)."""

    path: Path
    splits: dict[str, Split]
    fingerprint: str

    @property
    def seq_len(self) -> int:
        return self.splits["train"].shapes()["text"][0]

    @property
    def dims(self) -> dict[str, int]:
        shapes = self.splits["train"].shapes()
        return {m: shapes[m][1] for m in MODALITIES}

    @property
    def train(self) -> Split:
        return self.splits["train"]

    @property
    def valid(self) -> Split:
        return self.splits["valid"]

    @property
    def test(self) -> Split:
        return self.splits["test"]

    @property
    def has_oracle(self) -> bool:
        return all(s.oracle is not None for s in self.splits.values())


def fingerprint(splits: Mapping[str, SplitData]) -> str:
    """A stable sha256 over the shapes and content of features and labels (after NaN -> 0).

    Independent of file names, mtimes and HDF5 metadata; ids and oracle are not part of it."""
    h = hashlib.sha256(b"msatune-dataset-v1")
    for name in SPLITS:
        _hash_split(h, name, splits[name])
    return h.hexdigest()


def _hash_split(h: Any, name: str, s: SplitData) -> None:
    for kind, arr in (*((m, getattr(s, m)) for m in MODALITIES), ("labels", s.labels)):
        a = np.ascontiguousarray(arr, dtype="<f4")
        h.update(f"|{name}/{kind}:{'x'.join(map(str, a.shape))}|".encode())
        h.update(memoryview(a).cast("B"))  # no bytes copy of a split's array


def files_fingerprint(path: str | os.PathLike[str], *, clip_labels: bool = False) -> str:
    """:func:`fingerprint` of the dataset files in ``path``, read and validated one split at a
    time (a writer's read-back holds one split beside the arrays it wrote, not all three)."""
    root = Path(path).expanduser()
    h = hashlib.sha256(b"msatune-dataset-v1")
    for split in SPLITS:
        _hash_split(h, split, _read_split(root, split, clip_labels)[0])
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Validation (shared by the reader and the writer)


def _check_numeric(arr: np.ndarray, where: str) -> None:
    if arr.dtype.kind not in "biuf":
        what = "strings" if arr.dtype.kind in "OSU" else f"dtype {arr.dtype}"
        raise UserError(f"{where}: holds {what}, not numbers; expected float (or integer) values")
    if arr.size == 0:
        raise UserError(f"{where}: empty array of shape {tuple(arr.shape)}; expected N > 0 samples")


def _features(arr: np.ndarray, where: str) -> tuple[np.ndarray, int]:
    """Validate one feature array; return it as float32 with non-finite values replaced by 0."""
    _check_numeric(arr, where)
    if arr.ndim != 3:
        raise UserError(
            f"{where}: shape {tuple(arr.shape)} has {arr.ndim} dimension(s); "
            "expected 3-D features (N samples, T time steps, D features)"
        )
    with np.errstate(over="ignore", invalid="ignore"):  # counted below, not warned about
        out = np.asarray(arr, dtype=np.float32)  # float64 beyond float32 range becomes inf here
    bad = ~np.isfinite(out)
    count = int(bad.sum())
    if count:
        out = out.copy() if np.shares_memory(out, arr) else out
        out[bad] = 0.0
    return out, count


def _vector(arr: np.ndarray, where: str, what: str) -> np.ndarray:
    """Validate a per-sample vector given as (N,) or (N, 1); return float32 (N,)."""
    _check_numeric(arr, where)
    if not (arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1)):
        raise UserError(f"{where}: {what} have shape {tuple(arr.shape)}; expected (N,) or (N, 1)")
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below, in one line
        out = np.asarray(arr, dtype=np.float32).reshape(-1)
    bad = ~np.isfinite(out)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(
            f"{where}: {int(bad.sum())} non-finite {what} (first at index {i}: {out[i]}); "
            f"{what} must be finite numbers"
        )
    return out


def _labels(arr: np.ndarray, where: str, clip_labels: bool) -> np.ndarray:
    y = _vector(arr, where, "labels")
    lo, hi = LABEL_RANGE
    outside = (y < lo - _LABEL_TOL) | (y > hi + _LABEL_TOL)
    n_out = int(outside.sum())
    if n_out and not clip_labels:
        raise UserError(
            f"{where}: {n_out} label(s) outside [{lo:g}, {hi:g}] (min {y.min():g}, max {y.max():g}); "
            "sentiment labels must lie in [-3, 3]: fix the data or pass --clip-labels to clip them"
        )
    if n_out:
        log.warning("%s: clipped %d label(s) outside [%g, %g]", where, n_out, lo, hi)
    return np.clip(y, lo, hi).astype(np.float32)


def _ids(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.reshape(-1)
    if arr.ndim != 1 or arr.size == 0:
        raise UserError(f"{where}: ids have shape {tuple(arr.shape)}; expected (N,) strings")
    return np.array([_to_str(v) for v in arr.tolist()], dtype=object)


def _to_str(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return str(v)


def build_split(
    split: str,
    raw: Mapping[str, np.ndarray | None],
    where: Mapping[str, str],
    clip_labels: bool,
) -> SplitData:
    """Validate the raw arrays of one split (``where[kind]`` names their source in messages)."""
    feats: dict[str, np.ndarray] = {}
    nan_count = 0
    for m in MODALITIES:
        feats[m], count = _features(np.asarray(raw[m]), where[m])
        nan_count += count
    labels = _labels(np.asarray(raw["labels"]), where["labels"], clip_labels)
    oracle = None if raw.get("oracle") is None else _vector(
        np.asarray(raw["oracle"]), where["oracle"], "oracle values"
    )
    ids = None if raw.get("ids") is None else _ids(np.asarray(raw["ids"]), where["ids"])

    # N agrees across everything in the split; T across the three modalities (aligned data).
    sizes = {m: feats[m].shape[0] for m in MODALITIES}
    sizes["labels"] = labels.shape[0]
    if oracle is not None:
        sizes["oracle"] = oracle.shape[0]
    if ids is not None:
        sizes["ids"] = ids.shape[0]
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{where[k]} N={n}" for k, n in sizes.items())
        raise UserError(
            f"split '{split}' has different sample counts: {listing}; "
            "every file of a split must hold the same N samples in the same order"
        )
    steps = {m: feats[m].shape[1] for m in MODALITIES}
    if len(set(steps.values())) > 1:
        listing = ", ".join(f"{where[m]} {tuple(feats[m].shape)}" for m in MODALITIES)
        raise UserError(
            f"split '{split}' has different sequence lengths T across modalities: {listing}; "
            "expected aligned sequences of one length T (N, T, D)"
        )
    if oracle is not None:
        oracle = np.clip(oracle, *LABEL_RANGE).astype(np.float32)
    return SplitData(
        text=feats["text"], audio=feats["audio"], video=feats["video"],
        labels=labels, ids=ids, oracle=oracle, nan_count=nan_count,
    )


def _check_across_splits(splits: Mapping[str, SplitData], where: Mapping[str, Mapping[str, str]]) -> None:
    ref = splits["train"]
    for name in SPLITS[1:]:
        s = splits[name]
        for m in MODALITIES:
            a, b = getattr(ref, m), getattr(s, m)
            if a.shape[1:] != b.shape[1:]:
                raise UserError(
                    f"{where[name][m]} has shape {tuple(b.shape)} but {where['train'][m]} has "
                    f"{tuple(a.shape)}: T and the feature dimension D must be the same in "
                    "train, valid and test"
                )
    with_ids = [n for n in SPLITS if splits[n].ids is not None]
    if with_ids and len(with_ids) != len(SPLITS):
        missing = [where[n]["ids"] for n in SPLITS if splits[n].ids is None]
        raise UserError(
            f"ids exist for {', '.join(with_ids)} but {', '.join(missing)} missing; "
            "give ids for every split or for none"
        )


def assemble(
    path: Path, splits: Mapping[str, SplitData], where: Mapping[str, Mapping[str, str]]
) -> MSADataset:
    _check_across_splits(splits, where)
    ordered = {name: splits[name] for name in SPLITS}
    return MSADataset(path=path, splits=ordered, fingerprint=fingerprint(ordered))


# --------------------------------------------------------------------------------------------
# Reading


def _read_h5(path: Path, *, required: bool) -> np.ndarray | None:
    import h5py

    if not path.exists():
        if required:
            raise UserError(f"{path}: missing file; {_LAYOUT_HINT}")
        return None
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise UserError(f"{path}: not a readable HDF5 file ({exc}); {_LAYOUT_HINT}") from exc
    with f:
        if H5_KEY not in f:
            keys = ", ".join(sorted(f.keys())) or "none"
            raise UserError(
                f"{path}: no dataset '{H5_KEY}' (found: {keys}); each file of the msa-tf2 "
                f"layout holds its array in a dataset named '{H5_KEY}'"
            )
        node = f[H5_KEY]
        if not isinstance(node, h5py.Dataset):
            raise UserError(f"{path}: '{H5_KEY}' is a group, not a dataset; expected an array")
        if h5py.check_string_dtype(node.dtype) is not None:
            return node.asstr()[()] if node.shape else np.array([node.asstr()[()]])
        try:
            return node[()]
        except (OSError, TypeError, ValueError) as exc:
            raise UserError(f"{path}: cannot read dataset '{H5_KEY}': {exc}") from exc


def _where(path: Path, split: str, kind: str) -> str:
    return f"{path / file_name(kind, split)}:/{H5_KEY}"


def load_dataset(path: str | os.PathLike[str], *, clip_labels: bool = False) -> MSADataset:
    """Read and validate a dataset directory in the msa-tf2 layout.

    Non-finite feature values become 0 (counted in ``SplitData.nan_count``); labels outside
    [-3, 3] are an error unless ``clip_labels`` (then clipped, and the count is logged)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise UserError(f"{root}: no such directory; {_LAYOUT_HINT}")
    if not root.is_dir():
        raise UserError(f"{root}: not a directory; {_LAYOUT_HINT}")
    missing = [
        file_name(kind, split)
        for split in SPLITS
        for kind in REQUIRED_KINDS
        if not (root / file_name(kind, split)).exists()
    ]
    if missing:
        more = f" (and {len(missing) - 1} more: {', '.join(missing[1:4])}{', ...' if len(missing) > 4 else ''})" if len(missing) > 1 else ""
        raise UserError(f"{root / missing[0]}: missing file{more}; {_LAYOUT_HINT}")

    splits: dict[str, SplitData] = {}
    where: dict[str, dict[str, str]] = {}
    for split in SPLITS:
        splits[split], where[split] = _read_split(root, split, clip_labels)
        if splits[split].nan_count:
            log.info("%s: replaced %d non-finite feature values by 0", split, splits[split].nan_count)
    return assemble(root.resolve(), splits, where)


def _read_split(root: Path, split: str, clip_labels: bool) -> tuple[SplitData, dict[str, str]]:
    where = {k: _where(root, split, k) for k in FILE_PATTERNS}
    raw = {k: _read_h5(root / file_name(k, split), required=k in REQUIRED_KINDS) for k in FILE_PATTERNS}
    return build_split(split, raw, where, clip_labels), where
