"""A dataset in numbers: the ``msatune data info --json`` payload.

Per split: its size, sequence length and dims, how many non-finite feature values were read as 0,
label statistics and the yardsticks of any model on it (:mod:`msatune.augment.yardsticks`); and
the dataset's path and fingerprint. Plain JSON types, rounded to 6 decimals.

This module must not import TensorFlow.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from msatune.augment.dataset import SPLITS, MSADataset


def summary(data: MSADataset) -> dict[str, Any]:
    """The ``msatune data info --json`` payload of ``data``."""
    splits: dict[str, Any] = {}
    for name in SPLITS:
        s = data.splits[name]
        y = s.labels.astype(np.float64)
        splits[name] = {
            "n": s.n, "seq_len": data.seq_len, "dims": data.dims, "nan_count": int(s.nan_count),
            "label_mean": _r(y.mean()), "label_std": _r(y.std()),
            "label_min": _r(y.min()), "label_max": _r(y.max()),
            **{k: None if v is None else _r(v) for k, v in s.reference_maes().items()},
        }
    return {"path": str(data.path), "splits": splits, "fingerprint": data.fingerprint}


def _r(x: float) -> float:
    return round(float(x), 6)
