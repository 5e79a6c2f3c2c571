"""Combiners: from a matrix of validation predictions to member weights (numpy only).

Every combiner is fitted on **validation predictions only**: it sees ``P`` (n_samples,
n_candidates) and the validation labels ``y``, never a test split. Columns are candidates in pool
order; ``keys`` (the trial numbers) break ties deterministically (the lower trial wins).

- ``greedy``: Caruana et al. (2004) forward selection with replacement, as in auto-sklearn's
  ensemble selection and AutoGluon's weighted ensemble: each round adds the candidate that
  minimises the validation MAE of the running average; after ``rounds`` rounds the selection is
  truncated to its best round (the earliest on ties); weights = selection counts / rounds used.
  Round 1 picks the best single candidate, so greedy is never worse on validation than it.
- ``mean``: the uniform average of the ``top_k`` best candidates by validation MAE.
- ``weighted``: the ``top_k`` best with weights proportional to 1 / validation MAE.
- ``median``: the per-sample median of the ``top_k`` best (robust to one bad member).

:func:`cross_validate` measures the optimism of a selection made on few samples: it refits the
combiner on k-1 folds of the validation samples and scores it on the held-out fold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from msatune.errors import UserError

METHODS: tuple[str, ...] = ("greedy", "mean", "weighted", "median")
LINEAR_METHODS: tuple[str, ...] = ("greedy", "mean", "weighted")
DEFAULT_METHOD = "greedy"
DEFAULT_TOP_K = 5
DEFAULT_ROUNDS = 25
DEFAULT_CV_FOLDS = 5
_TIE = 1e-12


@dataclass
class Combination:
    """A fitted combiner: one weight per candidate column (0 for non-members)."""

    method: str
    weights: np.ndarray  # (n_candidates,), sums to 1
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def members(self) -> np.ndarray:
        """Column indices of the members, in column (pool) order."""
        return np.flatnonzero(self.weights > 0)

    @property
    def is_linear(self) -> bool:
        return self.method != "median"

    def predict(self, P: np.ndarray) -> np.ndarray:
        """Combine a prediction matrix with the same columns as the one it was fitted on."""
        P = np.asarray(P, dtype=np.float64)
        if self.method == "median":
            return np.median(P[:, self.members], axis=1)
        return P @ self.weights


def _check(P: np.ndarray, y: np.ndarray, keys: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    P = np.asarray(P, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if P.ndim != 2 or P.shape[0] != y.shape[0] or P.shape[0] == 0 or P.shape[1] == 0:
        raise ValueError(f"predictions {P.shape} and labels {y.shape} do not line up")
    k = np.arange(P.shape[1]) if keys is None else np.asarray(keys)
    if k.shape != (P.shape[1],):
        raise ValueError("one tie-breaking key per candidate column is needed")
    return P, y, k


def _maes(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.mean(np.abs(P - y[:, None]), axis=0)


def rank(P: np.ndarray, y: np.ndarray, keys: Sequence[int] | None = None) -> np.ndarray:
    """Column indices from best to worst validation MAE (ties: lower key first)."""
    P, y, k = _check(P, y, keys)
    maes = _maes(P, y)
    return np.array(sorted(range(P.shape[1]), key=lambda j: (maes[j], k[j])), dtype=np.int64)


def fit_greedy(
    P: np.ndarray, y: np.ndarray, *, rounds: int = DEFAULT_ROUNDS, keys: Sequence[int] | None = None
) -> Combination:
    """Forward selection with replacement, truncated to its best round."""
    P, y, k = _check(P, y, keys)
    if rounds < 1:
        raise UserError(f"--rounds must be at least 1, got {rounds}")
    n, m = P.shape
    counts = np.zeros(m, dtype=np.int64)
    total = np.zeros(n, dtype=np.float64)
    trajectory: list[float] = []
    best_mae, best_round, best_counts = np.inf, 0, counts
    for r in range(1, rounds + 1):
        maes = _maes((total[:, None] + P) / r, y)
        low = maes.min()
        tied = np.flatnonzero(maes <= low + _TIE)
        j = int(tied[np.argmin(k[tied])])
        counts[j] += 1
        total += P[:, j]
        trajectory.append(float(maes[j]))
        if maes[j] < best_mae - _TIE:
            best_mae, best_round, best_counts = float(maes[j]), r, counts.copy()
    weights = best_counts.astype(np.float64) / best_round
    return Combination(
        "greedy",
        weights,
        {"rounds": rounds, "rounds_used": best_round, "counts": best_counts.tolist(), "trajectory": trajectory},
    )


def _top(P: np.ndarray, y: np.ndarray, k: np.ndarray, top_k: int) -> np.ndarray:
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    return rank(P, y, k)[: min(int(top_k), P.shape[1])]


def fit_mean(P: np.ndarray, y: np.ndarray, *, top_k: int = DEFAULT_TOP_K, keys: Sequence[int] | None = None) -> Combination:
    P, y, k = _check(P, y, keys)
    top = _top(P, y, k, top_k)
    w = np.zeros(P.shape[1])
    w[top] = 1.0 / len(top)
    return Combination("mean", w, {"top_k": len(top)})


def fit_weighted(P: np.ndarray, y: np.ndarray, *, top_k: int = DEFAULT_TOP_K, keys: Sequence[int] | None = None) -> Combination:
    P, y, k = _check(P, y, keys)
    top = _top(P, y, k, top_k)
    inv = 1.0 / np.maximum(_maes(P[:, top], y), 1e-12)
    w = np.zeros(P.shape[1])
    w[top] = inv / inv.sum()
    return Combination("weighted", w, {"top_k": len(top)})


def fit_median(P: np.ndarray, y: np.ndarray, *, top_k: int = DEFAULT_TOP_K, keys: Sequence[int] | None = None) -> Combination:
    P, y, k = _check(P, y, keys)
    top = _top(P, y, k, top_k)
    w = np.zeros(P.shape[1])
    w[top] = 1.0 / len(top)  # reported shares; the combination is the per-sample median
    return Combination("median", w, {"top_k": len(top)})


def fit(
    method: str,
    P: np.ndarray,
    y: np.ndarray,
    *,
    top_k: int = DEFAULT_TOP_K,
    rounds: int = DEFAULT_ROUNDS,
    keys: Sequence[int] | None = None,
) -> Combination:
    """Fit ``method`` on validation predictions ``P`` and labels ``y``."""
    if method == "greedy":
        return fit_greedy(P, y, rounds=rounds, keys=keys)
    if method == "mean":
        return fit_mean(P, y, top_k=top_k, keys=keys)
    if method == "weighted":
        return fit_weighted(P, y, top_k=top_k, keys=keys)
    if method == "median":
        return fit_median(P, y, top_k=top_k, keys=keys)
    raise UserError(f"unknown ensemble method {method!r}; choose one of {', '.join(METHODS)}")


def fold_indices(n: int, folds: int, seed: int = 0) -> list[np.ndarray]:
    """``folds`` disjoint, shuffled (seeded) index arrays covering ``range(n)``."""
    folds = max(2, min(int(folds), n))
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(perm, folds)]


def cross_validate(
    method: str,
    P: np.ndarray,
    y: np.ndarray,
    *,
    folds: int = DEFAULT_CV_FOLDS,
    seed: int = 0,
    top_k: int = DEFAULT_TOP_K,
    rounds: int = DEFAULT_ROUNDS,
    keys: Sequence[int] | None = None,
) -> dict[str, Any] | None:
    """Validation MAE of ``method`` refitted on k-1 folds and scored on the held-out fold.

    Returns ``{"folds", "mae", "fold_mae"}`` (``mae`` over all held-out predictions), or None
    when there are fewer than 4 validation samples.
    """
    P, y, k = _check(P, y, keys)
    n = y.shape[0]
    if n < 4:
        return None
    parts = fold_indices(n, folds, seed)
    out = np.empty(n, dtype=np.float64)
    fold_mae = []
    for part in parts:
        train = np.setdiff1d(np.arange(n), part, assume_unique=True)
        comb = fit(method, P[train], y[train], top_k=top_k, rounds=rounds, keys=k)
        out[part] = comb.predict(P[part])
        fold_mae.append(float(np.mean(np.abs(out[part] - y[part]))))
    return {"folds": len(parts), "mae": float(np.mean(np.abs(out - y))), "fold_mae": fold_mae, "seed": seed}
