"""Combiners on synthetic prediction matrices (numpy only, fast)."""

from __future__ import annotations

import numpy as np
import pytest

from msatune.ensemble.candidates import pool_from_predictions
from msatune.ensemble.combiners import (
    METHODS,
    cross_validate,
    fit,
    fit_greedy,
    fit_mean,
    fit_median,
    fit_weighted,
    fold_indices,
    rank,
)
from msatune.ensemble.fitting import EnsembleOptions, fit_pool
from msatune.errors import UserError


def _matrix(seed: int = 0, n: int = 200, m: int = 8, bad: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.uniform(-3, 3, n)
    P = y[:, None] + rng.normal(0, 1, (n, m)) * rng.uniform(0.5, 1.5, m) + rng.normal(0, 0.3, m)
    if bad:
        P[:, -bad:] = rng.uniform(-3, 3, (n, bad))
    return P, y


def _mae(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - y)))


@pytest.mark.parametrize("seed", range(6))
def test_greedy_is_never_worse_on_validation_than_its_best_member(seed: int) -> None:
    P, y = _matrix(seed, bad=2)
    comb = fit_greedy(P, y, rounds=25)
    best = min(_mae(P[:, j], y) for j in range(P.shape[1]))
    assert _mae(comb.predict(P), y) <= best + 1e-12
    assert np.isclose(comb.weights.sum(), 1.0)
    assert np.all(comb.weights >= 0)
    # counts / rounds used, truncated to the best round of the trajectory
    info = comb.info
    assert info["rounds_used"] == int(np.argmin(np.round(info["trajectory"], 12)) + 1)
    assert np.allclose(comb.weights * info["rounds_used"], info["counts"])


def test_greedy_first_round_is_the_best_single_and_ensembling_helps_independent_errors() -> None:
    P, y = _matrix(1, n=400, m=6)
    comb = fit_greedy(P, y, rounds=1)
    assert list(comb.members) == [int(rank(P, y)[0])]
    full = fit_greedy(P, y, rounds=25)
    assert len(full.members) > 1
    assert _mae(full.predict(P), y) < _mae(comb.predict(P), y)


def test_greedy_ties_break_by_trial_number_deterministically() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=50)
    col = y + rng.normal(0, 0.5, 50)
    P = np.stack([col, col, col], axis=1)
    assert list(fit_greedy(P, y, keys=[7, 3, 5]).members) == [1]  # trial 3 wins the tie
    assert list(fit_greedy(P, y, keys=[2, 3, 5]).members) == [0]
    a = fit_greedy(*_matrix(4), rounds=30)
    b = fit_greedy(*_matrix(4), rounds=30)
    assert np.array_equal(a.weights, b.weights)


def test_greedy_truncates_to_the_best_round() -> None:
    # one perfect candidate: every later round can only repeat it; it stays a single member
    rng = np.random.default_rng(0)
    y = rng.normal(size=30)
    P = np.stack([y + rng.normal(0, 1, 30), y, y + 0.5], axis=1)
    comb = fit_greedy(P, y, rounds=10)
    assert comb.info["rounds_used"] == 1
    assert list(comb.members) == [1] and comb.weights[1] == 1.0


def test_top_k_combiners() -> None:
    P, y = _matrix(2, m=6, bad=1)
    order = rank(P, y)
    mean = fit_mean(P, y, top_k=3)
    assert set(mean.members) == set(order[:3].tolist())
    assert np.allclose(mean.weights[order[:3]], 1 / 3)
    assert np.allclose(mean.predict(P), P[:, order[:3]].mean(axis=1))

    weighted = fit_weighted(P, y, top_k=3)
    inv = 1 / np.array([_mae(P[:, j], y) for j in order[:3]])
    assert np.allclose(weighted.weights[order[:3]], inv / inv.sum())
    assert np.isclose(weighted.weights.sum(), 1.0)

    med = fit_median(P, y, top_k=3)
    assert np.allclose(med.predict(P), np.median(P[:, order[:3]], axis=1))
    # robust to one wild member where the mean is not
    P2 = P.copy()
    P2[:, order[2]] = 50.0
    assert _mae(med.predict(P2), y) < _mae(mean.predict(P2), y)

    assert fit_mean(P, y, top_k=99).info["top_k"] == P.shape[1]  # all used


def test_bad_options_are_user_errors() -> None:
    P, y = _matrix(0, n=20, m=3)
    for method in ("mean", "weighted", "median"):
        with pytest.raises(UserError, match="--top-k must be at least 1"):
            fit(method, P, y, top_k=0)
    with pytest.raises(UserError, match="--rounds"):
        fit("greedy", P, y, rounds=0)
    with pytest.raises(UserError, match="unknown ensemble method"):
        fit("stack", P, y)
    with pytest.raises(UserError, match="--top-k must be at least 1, got -1"):
        EnsembleOptions(top_k=-1).validate()


def test_cross_validation_refits_on_held_out_folds() -> None:
    P, y = _matrix(3, n=229, m=10, bad=2)
    folds = fold_indices(229, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(229))
    for method in METHODS:
        cv = cross_validate(method, P, y, folds=5, top_k=3)
        in_sample = _mae(fit(method, P, y, top_k=3).predict(P), y)
        assert cv["folds"] == 5 and len(cv["fold_mae"]) == 5
        # held-out scoring is (almost always) no better than in-sample on noise-fitted selections
        assert cv["mae"] > in_sample - 0.05
    assert cross_validate("greedy", P[:3], y[:3]) is None


def test_fit_pool_uses_validation_only_and_reports_best_single() -> None:
    rng = np.random.default_rng(5)
    yv, yt = rng.uniform(-3, 3, 60), rng.uniform(-3, 3, 60)
    preds = {
        t: {"valid_pred": yv + rng.normal(0, s, 60), "valid_label": yv,
            "test_pred": yt + rng.normal(0, s, 60), "test_label": yt}
        for t, s in ((4, 0.6), (9, 0.7), (2, 0.8), (11, 1.0))
    }
    pool = pool_from_predictions(preds)
    res = fit_pool(pool, EnsembleOptions(method="mean", top_k=10))
    assert res.notes and "using all 4" in res.notes[0]
    summary = res.summary()
    assert summary["best_single"]["trial"] == pool.candidates[0].trial
    assert summary["valid"]["mae"] <= summary["best_single"]["valid"]["mae"] + 0.2
    assert abs(sum(m["weight"] for m in summary["members"]) - 1) < 1e-6

    # scrambling the test split changes the test scores, never members or weights
    for t in preds:
        preds[t]["test_pred"] = rng.permutation(preds[t]["test_pred"]) * 3
        preds[t]["test_label"] = rng.permutation(yt)
    for method in METHODS:
        a = fit_pool(pool, EnsembleOptions(method=method, top_k=3))
        b = fit_pool(pool_from_predictions(preds), EnsembleOptions(method=method, top_k=3))
        assert a.members == b.members
        assert a.cv == b.cv
