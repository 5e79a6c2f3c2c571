"""MSA regression metrics with the MMSA definitions (numpy only).

These follow thuiar/MMSA ``MetricsTop.__eval_mosi_regression`` so that the numbers compare with the
literature (DESIGN §5):

- ``mae``: mean absolute error on the unclipped values.
- ``corr``: Pearson correlation on the unclipped values; 0.0 when either side is constant (or
  fewer than two samples), where ``np.corrcoef`` would give nan.
- ``acc7``: clip prediction and truth to [-3, 3], round half-to-even (``np.round``), compare.
- ``acc5``: the same with [-2, 2].
- ``has0_acc2`` / ``has0_f1``: every sample, classes ``truth >= 0`` vs ``pred >= 0``.
- ``non0_acc2`` / ``non0_f1``: drop the samples whose truth is exactly 0, then ``> 0`` vs ``> 0``.
  Both are nan when every truth is 0 (there is nothing to score).
- F1 is the support-weighted F1 over the classes present in truth or prediction, like
  ``sklearn.metrics.f1_score(truth, pred, average="weighted")`` (a class with no predicted and
  no true sample has F1 0; its weight is its true support).
"""

from __future__ import annotations

import numpy as np

METRIC_KEYS: tuple[str, ...] = (
    "mae",
    "corr",
    "acc7",
    "acc5",
    "has0_acc2",
    "has0_f1",
    "non0_acc2",
    "non0_f1",
)


def _as_1d(values: object, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr


def pearson_corr(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    """Pearson correlation, 0.0 when a side is constant or there are fewer than two samples."""
    p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    t = np.asarray(y_true, dtype=np.float64).reshape(-1)
    if p.size < 2:
        return 0.0
    pc = p - p.mean()
    tc = t - t.mean()
    denom = float(np.sqrt(np.sum(pc * pc) * np.sum(tc * tc)))
    if denom == 0.0 or not np.isfinite(denom):
        return 0.0
    return float(np.clip(np.sum(pc * tc) / denom, -1.0, 1.0))


def multiclass_acc(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    """Share of samples whose rounded (half-to-even) prediction equals the rounded truth."""
    return float(np.mean(np.round(y_pred) == np.round(y_true)))


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Support-weighted F1 over the labels present in either array (sklearn's ``weighted``)."""
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    if t.size == 0:
        return float("nan")
    labels = np.union1d(t, p)
    total = 0.0
    for label in labels:
        tp = float(np.sum((p == label) & (t == label)))
        support = float(np.sum(t == label))
        predicted = float(np.sum(p == label))
        denom = support + predicted
        f1 = 2.0 * tp / denom if denom > 0 else 0.0
        total += f1 * support
    return total / float(t.size)


def _binary_scores(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    if truth.size == 0:
        return float("nan"), float("nan")
    return float(np.mean(truth == pred)), weighted_f1(truth, pred)


def msa_metrics(y_pred: object, y_true: object) -> dict[str, float]:
    """All MMSA regression metrics of ``y_pred`` against ``y_true`` (any shape, same size)."""
    pred = _as_1d(y_pred, "y_pred")
    truth = _as_1d(y_true, "y_true")
    if pred.shape != truth.shape:
        raise ValueError(f"y_pred has {pred.size} values but y_true has {truth.size}")

    mae = float(np.mean(np.abs(pred - truth)))
    corr = pearson_corr(pred, truth)
    acc7 = multiclass_acc(np.clip(pred, -3.0, 3.0), np.clip(truth, -3.0, 3.0))
    acc5 = multiclass_acc(np.clip(pred, -2.0, 2.0), np.clip(truth, -2.0, 2.0))

    has0_acc2, has0_f1 = _binary_scores(truth >= 0, pred >= 0)
    non_zero = truth != 0
    non0_acc2, non0_f1 = _binary_scores(truth[non_zero] > 0, pred[non_zero] > 0)

    return {
        "mae": mae,
        "corr": corr,
        "acc7": acc7,
        "acc5": acc5,
        "has0_acc2": has0_acc2,
        "has0_f1": has0_f1,
        "non0_acc2": non0_acc2,
        "non0_f1": non0_f1,
    }


def constant_predictor_metrics(value: float, y_true: object) -> dict[str, float]:
    """Metrics of predicting ``value`` for every sample (e.g. the train or valid median)."""
    truth = _as_1d(y_true, "y_true")
    return msa_metrics(np.full_like(truth, float(value)), truth)
