"""The yardsticks every MAE is read against: the constant predictor and the noise floor.

The best constant predictor (the median of the labels) is what a model that learned nothing
scores; the noise floor (the noise-free target of synthetic data against its noisy labels) is
what no model can beat. Every report puts both beside a model's MAE: a model is only worth
something between the two.
"""

from __future__ import annotations

import numpy as np

__all__ = ["constant_mae", "floor_mae", "reference_maes"]


def constant_mae(labels: np.ndarray) -> float:
    """MAE of the best constant predictor, the median of ``labels``."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if y.size == 0:
        raise ValueError("constant_mae of an empty label array")
    return float(np.mean(np.abs(y - np.median(y))))


def floor_mae(labels: np.ndarray, oracle: np.ndarray) -> float:
    """MAE of the noise-free target against the (noisy) labels: the error floor of a split."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    o = np.asarray(oracle, dtype=np.float64).reshape(-1)
    if y.shape != o.shape:
        raise ValueError(f"labels {y.shape} and oracle {o.shape} differ in length")
    return float(np.mean(np.abs(y - o)))


def reference_maes(labels: np.ndarray, oracle: np.ndarray | None = None) -> dict[str, float | None]:
    """``{"constant_mae", "floor_mae"}``: what predicting the median scores, and what the
    noise-free target scores (``None`` without an oracle). Every report shows them beside a
    model's MAE: a model is only worth something between the two."""
    return {"constant_mae": constant_mae(labels),
            "floor_mae": None if oracle is None else floor_mae(labels, oracle)}
