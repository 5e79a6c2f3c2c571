"""Stratified k-fold splits of train+valid for refits: label bins, fold assignment, its checks.

A refit pools the train and valid splits (train first, then valid, in file order) and splits the
pool into ``folds`` parts, ``repeats`` times. Every part holds about the same share of each
**label bin**: the seven sentiment classes of MMSA's Acc-7 (labels clipped to [-3, 3] and
rounded half to even: -3 .. 3). Within each bin the samples are shuffled with the seed and dealt
round-robin to the folds, starting where the previous bin stopped, so fold sizes differ by at most
one sample. The same labels, folds, repeats and seed give the same assignment on any machine, so
every configuration of a refit is trained and scored on the same folds.

The test split is not part of the pool: nothing here sees it.

This module must not import TensorFlow.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from msatune.augment.dataset import LABEL_RANGE, MSADataset, Split, SplitData
from msatune.augment.yardsticks import reference_maes
from msatune.errors import UserError

#: How a refit bins labels for stratification (recorded on the refit).
BINNING = "acc7"
BIN_VALUES: tuple[int, ...] = (-3, -2, -1, 0, 1, 2, 3)
#: The splits a refit pools, in this order.
POOL_SPLITS: tuple[str, ...] = ("train", "valid")


def label_bins(labels: np.ndarray) -> np.ndarray:
    """The Acc-7 class (-3 .. 3) of every label: clipped to [-3, 3], rounded half to even."""
    y = np.clip(np.asarray(labels, dtype=np.float64).reshape(-1), *LABEL_RANGE)
    return np.rint(y).astype(np.int64)


def bin_counts(labels: np.ndarray) -> dict[int, int]:
    """Samples per non-empty label bin, by bin value."""
    bins = label_bins(labels)
    values, counts = np.unique(bins, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def check_folds(labels: np.ndarray, folds: int, repeats: int = 1) -> None:
    """UserError unless ``folds`` (>= 2, at most the smallest label bin) and ``repeats`` (>= 1)
    can split ``labels`` with every fold holding every bin."""
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise UserError(f"--folds must be at least 2 (got {folds})")
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise UserError(f"--repeats must be at least 1 (got {repeats})")
    counts = bin_counts(labels)
    if not counts:
        raise UserError("train+valid hold no labels; nothing to split into folds")
    smallest = min(counts.values())
    if folds > smallest:
        small = min(counts, key=lambda b: (counts[b], b))
        raise UserError(
            f"--folds {folds} is more than the {smallest} sample(s) of the smallest label bin "
            f"(sentiment {small:+d}) of train+valid; every fold needs a sample of every bin: "
            f"use --folds {smallest} or fewer"
        )


def stratified_folds(labels: np.ndarray, folds: int, *, repeats: int = 1, seed: int = 0) -> np.ndarray:
    """``(repeats, n)`` int array: the fold (0 .. folds-1) of every sample in every repeat.

    Raises UserError for a fold count the labels cannot support (see :func:`check_folds`).
    """
    check_folds(labels, folds, repeats)
    bins = label_bins(labels)
    n = bins.shape[0]
    out = np.empty((int(repeats), n), dtype=np.int64)
    for r in range(int(repeats)):
        rng = np.random.default_rng([int(seed), r])
        start = 0
        for b in np.unique(bins):
            members = rng.permutation(np.flatnonzero(bins == b))
            out[r, members] = (start + np.arange(members.size)) % folds
            start = (start + members.size) % folds
    return out


#: How a refit splits train+valid (``refit --scheme``): ``folds``, k stratified folds of the pool;
#: ``seeds``, the study's own split trained again at other seeds (valid is every repeat's one
#: held-out part, train rows are never held out: :func:`seed_assignment`).
SCHEMES: tuple[str, ...] = ("folds", "seeds")
#: The "fold" of a pool row the seeds scheme never holds out (its train rows).
NEVER_HELD_OUT = -1


def seed_assignment(n_train: int, n_valid: int, repeats: int) -> np.ndarray:
    """``(repeats, n_train + n_valid)`` int array of the seeds scheme: every repeat holds out the
    valid rows (fold 0) and trains on the train rows (:data:`NEVER_HELD_OUT`), as the study's
    trials did; repeats differ only in their training seed."""
    if isinstance(repeats, bool) or int(repeats) < 1:
        raise UserError(f"--repeats must be at least 1 (got {repeats})")
    if n_valid < 1:
        raise UserError("the study's valid split is empty: the seeds scheme scores its repeats on it")
    row = np.concatenate([np.full(int(n_train), NEVER_HELD_OUT), np.zeros(int(n_valid))]).astype(np.int64)
    return np.tile(row, (int(repeats), 1))


def assignment_digest(assignment: np.ndarray) -> str:
    """A short, stable digest of a fold assignment (recorded, compared on resume)."""
    a = np.ascontiguousarray(assignment, dtype="<i8")
    h = hashlib.sha256(f"{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class SplitRows:
    """Some rows of a split, read in place (a refit fold's train or held-out part): its labels,
    ids and oracle are its own, its features stay ``source``'s arrays. The input pipeline
    gathers each batch's rows from them (:func:`msatune.augment.pipeline.make_datasets`, key
    ``rows``), so a fold holds no copy of its features (on MOSEI 1.6 GB per fold worker). Built by
    :meth:`of`."""

    source: SplitData
    rows: np.ndarray  # int64 indices into source, in the order the samples are read
    labels: np.ndarray
    ids: np.ndarray | None = None
    oracle: np.ndarray | None = None
    nan_count: int = 0  # counted where the source was read, not per row

    @classmethod
    def of(cls, source: SplitData, rows: np.ndarray) -> SplitRows:
        """The samples ``rows`` of ``source``, in that order."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= source.n):
            raise ValueError(f"rows must lie in [0, {source.n}), got {rows.min()} .. {rows.max()}")

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[rows]

        return cls(source=source, rows=rows, labels=source.labels[rows],
                   ids=take(source.ids), oracle=take(source.oracle))

    @property
    def n(self) -> int:
        return int(self.rows.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """What the input pipeline reads: the source's inputs and labels, and ``"rows"``."""
        return {**self.source.arrays(), "rows": self.rows}

    def reference_maes(self) -> dict[str, float | None]:
        """The yardsticks of any model on these rows (see :func:`reference_maes`)."""
        return reference_maes(self.labels, self.oracle)

    def shapes(self) -> dict[str, tuple[int, int]]:
        """``(T, D)`` of every modality."""
        return self.source.shapes()


@dataclass(frozen=True)
class FoldSplit:
    """One fold of one repeat: pool indices to train on and the held-out ones."""

    repeat: int
    fold: int
    train: np.ndarray
    held_out: np.ndarray


def fold_split(assignment: np.ndarray, repeat: int, fold: int) -> FoldSplit:
    """The train / held-out pool indices of ``fold`` in ``repeat`` (sorted)."""
    row = np.asarray(assignment)[int(repeat)]
    return FoldSplit(int(repeat), int(fold), np.flatnonzero(row != fold), np.flatnonzero(row == fold))


def _pooled_array(splits: Mapping[str, Split], attr: str) -> np.ndarray | None:
    """``attr`` of train and valid concatenated (train first); None when a split has none."""
    arrays = [getattr(splits[name], attr) for name in POOL_SPLITS]
    if any(a is None for a in arrays):
        return None
    return np.concatenate(arrays, axis=0)


def pool_splits(splits: Mapping[str, SplitData]) -> SplitData:
    """train and valid concatenated (train first) as one split; ids and oracle kept when present."""
    return SplitData(
        **{attr: _pooled_array(splits, attr) for attr in ("text", "audio", "video", "labels", "ids", "oracle")},
        nan_count=sum(splits[name].nan_count for name in POOL_SPLITS),
    )


@dataclass(frozen=True, eq=False)
class PoolLabels:
    """The pool's labels, ids and oracle in :func:`pool_splits`' order, without its features:
    what out-of-fold predictions are scored against (on MOSEI the features are 1.6 GB)."""

    labels: np.ndarray
    ids: np.ndarray | None = None
    oracle: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    def reference_maes(self) -> dict[str, float | None]:
        return reference_maes(self.labels, self.oracle)


def pool_labels(splits: Mapping[str, Split]) -> PoolLabels:
    """:func:`pool_splits`' labels, ids and oracle, copying no features."""
    return PoolLabels(labels=np.concatenate([splits[name].labels for name in POOL_SPLITS], axis=0),
                      ids=_pooled_array(splits, "ids"), oracle=_pooled_array(splits, "oracle"))


def pooled(data: MSADataset) -> tuple[SplitData, MSADataset]:
    """The pool of ``data`` (:func:`pool_splits`) and ``data``'s train and valid as rows of it,
    without its test split: what a refit's driver keeps, so that the arrays it loaded (on MOSEI
    2 GB, test included) can be freed once they are pooled."""
    pool = pool_splits(data.splits)
    n_train = data.splits["train"].n
    view = MSADataset(path=data.path, fingerprint=data.fingerprint, splits={
        "train": SplitRows.of(pool, np.arange(n_train)),
        "valid": SplitRows.of(pool, np.arange(n_train, pool.n)),
    })
    return pool, view
