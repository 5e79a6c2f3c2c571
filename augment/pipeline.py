"""The ``tf.data`` input pipelines of a trial: train (shuffled, augmented) and evaluation splits.

:func:`make_datasets` turns in-memory arrays (as they arrive from the Ray object store) into
batched, prefetched datasets whose elements are ``({"text": (B,T,Dt), "audio": ..., "video":
...}, labels (B, 1) float32)``. Every split is read a batch at a time: the pipeline shuffles and
batches sample indices and gathers each batch's rows when it is needed (from the arrays, or from
the HDF5 files for a split larger than half the machine's memory), so a trial holds no copy of
its data (``Dataset.from_tensor_slices`` would copy every split into TensorFlow, and the train
split's shuffle buffer would hold it once more: 2.8 GB more per trial on MOSEI).

Determinism: the train split is shuffled with a fixed op seed and ``reshuffle_each_iteration``,
and every train batch is zipped with a per-batch seed from ``Dataset.random(seed,
rerandomize_each_iteration=True)``; augmentation uses only stateless random ops keyed on that
seed. Both streams advance with every new iterator (every epoch), so two pipelines built with the
same ``seed`` yield identical batches epoch after epoch, while epoch 2 differs from epoch 1.
"""

from __future__ import annotations

import logging
import numbers
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from msatune.augment.dataset import H5_KEY, LABEL_RANGE, MSADataset, SplitData, file_name
from msatune.augment.footprint import split_bytes, streamed_splits
from msatune.augment.transforms import augment_batch, validate_aug_config
from msatune.errors import UserError
from msatune.modalities import MODALITIES

__all__ = ["TRAIN_SPLIT", "H5Split", "make_datasets", "trial_splits"]

log = logging.getLogger(__name__)

TRAIN_SPLIT = "train"

# Distinct op seeds for the shuffle and the augmentation-seed streams of one pipeline seed.
_SHUFFLE_SALT = 0x5EED_0001
_AUG_SALT = 0x5EED_0002


def _split_arrays(
    name: str, arrays: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]:
    if not isinstance(arrays, Mapping):
        raise UserError(f"split {name!r} must be a mapping of arrays, got {type(arrays).__name__}")
    if "labels" not in arrays:
        raise UserError(f"split {name!r} has no 'labels' array")
    features = {m: np.asarray(arrays[m], dtype=np.float32) for m in MODALITIES if m in arrays}
    if not features:
        raise UserError(f"split {name!r} has none of the modalities {', '.join(MODALITIES)}")
    labels = np.asarray(arrays["labels"], dtype=np.float32)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise UserError(
            f"split {name!r}: labels must have shape (N,) or (N, 1), got {labels.shape}"
        )
    n = labels.shape[0]
    for m, x in features.items():
        if x.ndim != 3:
            raise UserError(f"split {name!r}: {m} must have shape (N, T, D), got {x.shape}")
        if x.shape[0] != n:
            raise UserError(f"split {name!r}: {m} has {x.shape[0]} samples but labels have {n}")
    rows = arrays.get("rows")
    if rows is not None:
        rows = np.asarray(rows)
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
            raise UserError(f"split {name!r}: rows must be a 1-D integer array, got {rows.dtype} {rows.shape}")
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise UserError(f"split {name!r}: rows must lie in [0, {n}), got {rows.min()} .. {rows.max()}")
        rows = rows.astype(np.int64, copy=False)
    return features, labels.reshape(n, 1), rows


@dataclass(eq=False)
class H5Split:
    """One split of a dataset directory, read from its HDF5 files a batch at a time (a split
    too large to hold twice). Rows come back as :func:`load_dataset` gives them: float32
    features with non-finite values 0, labels clipped to [-3, 3] (a dataset that loaded)."""

    root: Path
    split: str
    _files: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _dataset(self, kind: str) -> object:
        import h5py

        if kind not in self._files:  # opened once per process, on first use
            self._files[kind] = h5py.File(Path(self.root) / file_name(kind, self.split), "r")[H5_KEY]
        return self._files[kind]

    @property
    def n(self) -> int:
        with self._lock:
            return int(self._dataset("labels").shape[0])

    def shapes(self) -> dict[str, tuple[int, ...]]:
        with self._lock:
            return {m: tuple(self._dataset(m).shape[1:]) for m in MODALITIES}

    def read(self, index: np.ndarray) -> tuple[np.ndarray, ...]:
        """The rows ``index`` (any order, no repeats): text, audio, video, labels (B, 1)."""
        index = np.asarray(index, dtype=np.int64)
        order = np.argsort(index)
        rows = index[order]  # HDF5 reads increasing indices
        out = []
        with self._lock:  # h5py is not to be read from several threads at once
            for kind in (*MODALITIES, "labels"):
                got = np.asarray(self._dataset(kind)[rows], dtype=np.float32)
                x = np.empty_like(got)
                x[order] = got
                out.append(x)
        *feats, labels = out
        feats = [np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0) for x in feats]
        return (*feats, np.clip(labels.reshape(-1, 1), *LABEL_RANGE))

    def __getstate__(self) -> dict:  # open files and locks stay in their process
        return {"root": self.root, "split": self.split}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


def trial_splits(data: MSADataset, threshold: int | None = None) -> dict[str, object]:
    """A trial's splits for :func:`make_datasets`: the in-memory arrays, or an :class:`H5Split`
    for a split too large to hold twice (see :func:`msatune.augment.footprint.streamed_splits`;
    ``threshold`` in bytes overrides it)."""
    # a split of rows (a refit fold) reads its source in memory: it has no files of its own
    files = {name: s for name, s in data.splits.items() if isinstance(s, SplitData)}
    streamed = streamed_splits(split_bytes(files), threshold)
    if streamed:
        log.info("streaming split(s) %s from %s", ", ".join(sorted(streamed)), data.path)
    return {
        name: H5Split(Path(data.path), name) if name in streamed else split.arrays()
        for name, split in data.splits.items()
    }


@dataclass(eq=False)
class ArraySplit:
    """One split held in memory (as it arrives from the Ray object store), read a batch at a
    time: a batch is gathered from the arrays when the pipeline needs it, so TensorFlow holds no
    copy of the split and the shuffle buffer holds indices, not samples. With ``rows`` the split
    is those rows of the arrays, in that order (a refit fold), read in place too."""

    features: dict[str, np.ndarray]
    labels: np.ndarray  # (N, 1)
    rows: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int((self.labels if self.rows is None else self.rows).shape[0])

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {m: tuple(x.shape[1:]) for m, x in self.features.items()}

    def read(self, index: np.ndarray) -> tuple[np.ndarray, ...]:
        """The samples ``index``: the features in :data:`MODALITIES` order, then labels (B, 1)."""
        if self.rows is not None:
            index = self.rows[index]
        return (*(x[index] for x in self.features.values()), self.labels[index])


def _batches(src: H5Split | ArraySplit, batch_size: int, drop: bool,
             shuffle_seed: int | None) -> tf.data.Dataset:
    """Batches of ``src``, each read when needed: the same batches as shuffling (or not) and
    batching the split's elements with the same seed, since a shuffle's order does not depend on
    the elements."""
    n = src.n
    idx = tf.data.Dataset.range(n)
    if shuffle_seed is not None:
        idx = idx.shuffle(max(n, 1), seed=shuffle_seed, reshuffle_each_iteration=True)
    idx = idx.batch(batch_size, drop_remainder=drop)
    shapes = src.shapes()

    def read(i: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        *feats, labels = tf.numpy_function(src.read, [i], [tf.float32] * (len(shapes) + 1))
        x = {}
        for (m, shape), f in zip(shapes.items(), feats, strict=True):
            f.set_shape(i.shape.concatenate(shape))  # static batch size when batches are full
            x[m] = f
        labels.set_shape(i.shape.concatenate(1))
        return x, labels

    return idx.map(read)  # one batch at a time, in order (HDF5 reads are serial anyway)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def make_datasets(
    splits: Mapping[str, Mapping[str, np.ndarray]],
    batch_size: int,
    aug: Mapping | None = None,
    seed: int = 0,
    *,
    shuffle: bool = True,
    eval_batch_size: int | None = None,
    drop_last_partial: bool = False,
) -> dict[str, tf.data.Dataset]:
    """Build one batched, prefetched ``tf.data.Dataset`` per split.

    Args:
        splits: split name -> ``{"text", "audio", "video"`` (any present), ``"labels"}`` arrays;
            features ``(N, T, D)``, labels ``(N,)`` or ``(N, 1)``; optional ``"rows"``, int
            ``(M,)``: the split is those rows of the arrays, in that order. Other keys are
            ignored. The arrays are not copied: each batch is gathered from them when needed. An
            :class:`H5Split` is read from its files a batch at a time, in the same order.
        batch_size: samples per train batch; the last batch may be smaller.
        aug: flat config whose ``aug_*`` keys set the augmentation strengths (others ignored);
            ``None`` means no augmentation.
        seed: the pipeline seed (shuffle order and augmentation randomness).
        shuffle: shuffle the train split (reshuffled each epoch). Other splits never are.
        eval_batch_size: batch size of the other splits (default ``batch_size``); larger
            batches make evaluation and prediction faster and do not change the results.
        drop_last_partial: drop the last partial *train* batch when the split holds at least one
            full batch. A smaller last batch makes TensorFlow trace the training step again
            (seconds per trial on CPU); with reshuffling each epoch every sample is still seen.

    Returns:
        split name -> dataset. Only ``"train"`` is shuffled and augmented.

    Raises:
        UserError: on a bad batch size, seed, augmentation value or array shape.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    if eval_batch_size is not None:
        eval_batch_size = _check_int("eval_batch_size", eval_batch_size, 1)
    seed = _check_int("seed", seed, 0)
    cfg = validate_aug_config(aug)
    augmenting = any(v > 0 for v in cfg.values())
    autotune = tf.data.AUTOTUNE

    out: dict[str, tf.data.Dataset] = {}
    for name, arrays in splits.items():
        # an H5Split is read from its files, arrays are gathered from memory: a batch at a time
        src = arrays if isinstance(arrays, H5Split) else ArraySplit(*_split_arrays(name, arrays))
        n = src.n
        train = name == TRAIN_SPLIT
        ds = _batches(
            src,
            batch_size if train else (eval_batch_size or batch_size),
            train and drop_last_partial and n >= batch_size,
            seed + _SHUFFLE_SALT if train and shuffle else None,
        )
        if train and augmenting:
            seeds = tf.data.Dataset.random(
                seed=seed + _AUG_SALT, rerandomize_each_iteration=True
            ).batch(2)
            ds = tf.data.Dataset.zip(ds, seeds).map(
                lambda batch, s: augment_batch(batch[0], batch[1], cfg, s),
                num_parallel_calls=autotune,
                deterministic=True,
            )
        out[name] = ds.prefetch(autotune)
        log.debug(
            "split %s: %d samples, batch %d, augment=%s",
            name,
            n,
            batch_size,
            augmenting and name == TRAIN_SPLIT,
        )
    return out
