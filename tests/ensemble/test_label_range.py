"""Served predictions lie on the sentiment scale [-3, 3]: recorded predictions are read clipped
(the file keeps the raw outputs), trial metrics score the clipped ones and count the rest, and an
exported ensemble clips every member inside its graph, so what it serves is what was scored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from msatune.label_range import LABEL_RANGE, clip_predictions, outside_range
from msatune.models.checkpoint import (
    PREDICTIONS_FILE,
    prediction_mae,
    read_predictions,
    write_predictions,
)

DIMS = {"text": 3, "audio": 2, "video": 2}
T = 4


def _arrays(pred: np.ndarray, label: np.ndarray) -> dict[str, np.ndarray]:
    n = pred.shape[0]
    return {f"{s}_{k}": v for s in ("valid", "test")
            for k, v in (("pred", pred), ("label", label), ("index", np.arange(n)))}


def test_clipping_never_raises_an_error_and_removes_exactly_what_lay_outside() -> None:
    rng = np.random.default_rng(0)
    y = rng.uniform(-3, 3, 500)
    p = y + rng.normal(0, 1.5, 500)
    c = clip_predictions(p)
    assert c.min() >= -3 and c.max() <= 3 and outside_range(c) == 0 and outside_range(p) > 0
    assert np.all(np.abs(c - y) <= np.abs(p - y))  # per sample, not only on average
    lo, hi = LABEL_RANGE
    beyond = np.maximum(p - hi, 0) + np.maximum(lo - p, 0)
    np.testing.assert_allclose(np.abs(p - y).sum() - np.abs(c - y).sum(), beyond.sum())


def test_recorded_predictions_are_read_clipped_and_the_file_keeps_the_raw_outputs(tmp_path: Path) -> None:
    pred = np.array([-4.5, -1.0, 0.5, 3.8], np.float32)
    label = np.array([-3.0, -1.0, 1.0, 2.0], np.float32)
    write_predictions(tmp_path, _arrays(pred, label))
    before = (tmp_path / PREDICTIONS_FILE).read_bytes()
    got = read_predictions(tmp_path)
    np.testing.assert_array_equal(got["valid_pred"], [-3.0, -1.0, 0.5, 3.0])
    np.testing.assert_array_equal(read_predictions(tmp_path, clip=False)["test_pred"], pred)
    assert prediction_mae(tmp_path, "test") == pytest.approx((0 + 0 + 0.5 + 1.0) / 4)
    assert (tmp_path / PREDICTIONS_FILE).read_bytes() == before


def test_trial_metrics_score_the_clipped_predictions_and_count_the_others() -> None:
    from msatune.search.trial import split_metrics

    pred = np.array([-4.5, -1.0, 0.5, 3.8], np.float32)
    label = np.array([-3.0, -1.0, 1.0, 2.0], np.float32)
    m = split_metrics(_arrays(pred, label))
    assert m["test"]["mae"] == pytest.approx(1.5 / 4)
    assert m["valid"]["outside"] == 2


def _member(scale: float):
    import keras

    inputs = {m: keras.Input((T, d), name=m) for m, d in DIMS.items()}
    pooled = keras.layers.GlobalAveragePooling1D()(inputs["text"])
    out = keras.layers.Dense(1, use_bias=False, kernel_initializer=keras.initializers.Constant(scale))(pooled)
    return keras.Model(inputs, out)


@pytest.mark.parametrize("method", ["weighted", "median"])
def test_an_exported_ensemble_clips_each_member_and_loads_in_safe_mode(tmp_path: Path, method: str) -> None:
    import keras

    from msatune.ensemble.export import build_fused_model, combine_numpy

    rng = np.random.default_rng(1)
    x = {m: rng.normal(0, 3, (64, T, d)).astype(np.float32) for m, d in DIMS.items()}
    members = [_member(4.0), _member(-2.0), _member(0.5)]
    each = np.stack([m.predict(x, verbose=0).reshape(-1) for m in members], axis=1)
    assert outside_range(each) > 0  # the members do stray beyond the scale
    weights = [0.5, 0.3, 0.2]
    fused = build_fused_model(members, weights, method=method, dims=DIMS, seq_len=T)
    path = tmp_path / "e.keras"
    fused.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    got = loaded.predict(x, verbose=0).reshape(-1)
    np.testing.assert_allclose(got, combine_numpy(method, clip_predictions(each), weights), atol=1e-5)
    assert outside_range(got) == 0
