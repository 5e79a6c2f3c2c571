"""The sentiment scale every msatune label and served prediction lies on: [-3, 3].

Labels outside it are refused or clipped when a dataset is read (``--clip-labels``). A model's
raw output is not bounded; what msatune derives from a model's predictions (ensembles, the
best-single comparisons, the report's and ``show``'s test MAE, the metrics of ``train`` and of
a trial, ``msatune predict``, exported ensembles) uses them clipped to the scale. For a label
inside [-3, 3] clipping can only shorten the distance to it, so it never raises an absolute
error and lowers MAE by exactly what lay outside. The training loop's own per-epoch metrics
(``val_mae`` in a trial's log, its early stopping and the search's objective) stay Keras'
numbers on the raw outputs, as in the users' logs.
"""

from __future__ import annotations

import numpy as np

LABEL_RANGE: tuple[float, float] = (-3.0, 3.0)


def clip_predictions(pred: np.ndarray) -> np.ndarray:
    """``pred`` clipped to :data:`LABEL_RANGE`, same dtype."""
    arr = np.asarray(pred)
    return np.clip(arr, *LABEL_RANGE).astype(arr.dtype, copy=False)


def outside_range(pred: np.ndarray) -> int:
    """How many of ``pred`` lie outside :data:`LABEL_RANGE`."""
    lo, hi = LABEL_RANGE
    arr = np.asarray(pred)
    return int(np.count_nonzero((arr < lo) | (arr > hi)))
