"""MMSA regression metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from msatune.models.metrics import (
    METRIC_KEYS,
    constant_predictor_metrics,
    msa_metrics,
    pearson_corr,
    weighted_f1,
)


def test_keys_exactly() -> None:
    m = msa_metrics([0.1, -0.2, 1.0], [0.0, -1.0, 2.0])
    assert list(m) == list(METRIC_KEYS)
    assert set(m) == {
        "mae",
        "corr",
        "acc7",
        "acc5",
        "has0_acc2",
        "has0_f1",
        "non0_acc2",
        "non0_f1",
    }
    assert all(isinstance(v, float) for v in m.values())


def test_rounding_is_half_to_even() -> None:
    # 0.5 -> 0, 1.5 -> 2, -2.5 -> -2, 2.5 -> 2 (half-away-from-zero would give 1, 2, -3, 3).
    pred = [0.5, 1.5, -2.5, 2.5]
    truth = [0.0, 2.0, -2.0, 2.0]
    m = msa_metrics(pred, truth)
    assert m["acc7"] == 1.0
    assert m["acc5"] == 1.0
    # Shifted truth: half-to-even gives no match where half-away would match all.
    m = msa_metrics(pred, [1.0, 2.0, -3.0, 3.0])
    assert m["acc7"] == pytest.approx(1 / 4)  # only 1.5 -> 2 matches


def test_clipping_before_rounding_but_not_for_mae() -> None:
    pred = [5.0, -4.0, 2.6]
    truth = [3.0, -3.0, 3.4]
    m = msa_metrics(pred, truth)
    assert m["acc7"] == 1.0  # 5 -> 3, -4 -> -3, 2.6 -> 3 vs 3.4 -> 3
    assert m["acc5"] == 1.0  # everything clipped to +-2
    assert m["mae"] == pytest.approx((2.0 + 1.0 + 0.8) / 3)
    # Acc-5 clips at 2, so 3.0 vs 2.0 matches there but not in Acc-7; 1.4 -> 1 vs 2 never does.
    m = msa_metrics([3.0, 1.4], [2.0, 2.0])
    assert m["acc5"] == 0.5
    assert m["acc7"] == 0.0


def test_ties_at_zero_has0_and_non0() -> None:
    truth = [0.0, 0.0, 1.0, -1.0, 2.0, -2.0, 0.5]
    pred = [0.0, -0.5, 0.0, -1.0, 1.0, 0.5, -0.1]
    m = msa_metrics(pred, truth)
    # Has0 (>= 0): truth T T T F T F T, pred T F T F T T F -> 4/7 right.
    assert m["has0_acc2"] == pytest.approx(4 / 7)
    # Class True: tp 3, predicted 4, support 5 -> F1 2/3; class False: tp 1, predicted 3,
    # support 2 -> F1 0.4. Weighted: (5 * 2/3 + 2 * 0.4) / 7 = 62/105.
    assert m["has0_f1"] == pytest.approx(62 / 105)
    # Non0: drop the two truth == 0 samples; pred exactly 0 (truth 1) is now "not positive".
    # truth T F T F T, pred F F T T F -> 2/5; both classes have F1 0.4.
    assert m["non0_acc2"] == pytest.approx(2 / 5)
    assert m["non0_f1"] == pytest.approx(0.4)
    assert m["mae"] == pytest.approx(5.6 / 7)
    # Rounded: pred 0 -0 0 -1 1 0 -0, truth 0 0 1 -1 2 -2 0 -> 4/7.
    assert m["acc7"] == pytest.approx(4 / 7)
    assert m["acc5"] == pytest.approx(4 / 7)
    assert m["corr"] == pytest.approx(np.corrcoef(pred, truth)[0, 1])


def test_weighted_f1_by_hand() -> None:
    # Class 1: tp 2, predicted 2, support 3 -> F1 0.8; class 0: tp 1, predicted 2, support 1
    # -> F1 2/3. Weighted by support: (3 * 0.8 + 1 * 2/3) / 4 = 0.766666...
    assert weighted_f1([1, 1, 1, 0], [1, 1, 0, 0]) == pytest.approx((2.4 + 2 / 3) / 4)
    # A class only predicted has weight 0 (sklearn: labels = union, weights = true support).
    assert weighted_f1([1, 1], [1, 0]) == pytest.approx(2 / 3)
    assert weighted_f1([True, False], [True, False]) == 1.0


def test_corr_is_nan_safe() -> None:
    assert pearson_corr(np.ones(5), np.arange(5.0)) == 0.0
    assert pearson_corr(np.arange(5.0), np.ones(5)) == 0.0
    assert pearson_corr([1.0], [2.0]) == 0.0
    assert pearson_corr([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(1.0)
    assert pearson_corr([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)


def test_constant_predictor() -> None:
    truth = [-2.0, -1.0, 0.0, 1.0, 3.0]
    m = constant_predictor_metrics(0.0, truth)
    assert m["mae"] == pytest.approx(7 / 5)
    assert m["corr"] == 0.0
    assert m["acc7"] == pytest.approx(1 / 5)
    # Has0: every pred >= 0; truth T for 0, 1, 3 -> 3/5. Class True F1 = 2*3/(3+5) = 0.75,
    # class False F1 = 0 -> weighted 3 * 0.75 / 5 = 0.45.
    assert m["has0_acc2"] == pytest.approx(3 / 5)
    assert m["has0_f1"] == pytest.approx(0.45)
    # Non0: pred 0 is never > 0; truth > 0 for 1, 3 of 4 -> 2/4 right.
    assert m["non0_acc2"] == pytest.approx(0.5)
    assert m["non0_f1"] == pytest.approx(2 * (2 / 3) / 4)  # class False F1 2*2/(2+4)


def test_all_zero_truth_gives_nan_non0() -> None:
    m = msa_metrics([0.1, -0.1], [0.0, 0.0])
    assert math.isnan(m["non0_acc2"]) and math.isnan(m["non0_f1"])
    assert m["has0_acc2"] == 0.5


def test_shapes_are_flattened_and_checked() -> None:
    m = msa_metrics(np.array([[1.0], [2.0]]), np.array([1.0, 2.0]))
    assert m["mae"] == 0.0 and m["acc7"] == 1.0
    with pytest.raises(ValueError):
        msa_metrics([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        msa_metrics([], [])


def test_module_does_not_import_tensorflow() -> None:
    import msatune.models.metrics as mod

    assert "tensorflow" not in open(mod.__file__).read()
