"""The synthetic MOSI-like generator: sizes, determinism, label distribution, signal structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from msatune.augment.dataset import SPLITS, load_dataset
from msatune.augment.synth import PRESETS, generate, synthesize
from msatune.augment.yardsticks import constant_mae, floor_mae
from msatune.errors import UserError


def test_tiny_preset(tiny_data: Path) -> None:
    ds = load_dataset(tiny_data)
    p = PRESETS["tiny"]
    assert {s: ds.splits[s].n for s in SPLITS} == p.sizes
    assert ds.seq_len == p.seq_len and ds.dims == p.dims
    assert ds.has_oracle


def test_same_seed_same_fingerprint_other_seed_differs(tmp_path: Path, tiny_data: Path) -> None:
    same = synthesize(tmp_path / "same", preset="tiny", seed=0)
    other = synthesize(tmp_path / "other", preset="tiny", seed=1)
    assert same.fingerprint == load_dataset(tiny_data).fingerprint
    assert other.fingerprint != same.fingerprint


def test_generate_is_deterministic() -> None:
    a, b = generate(PRESETS["tiny"], 7), generate(PRESETS["tiny"], 7)
    for split in SPLITS:
        for kind in a[split]:
            np.testing.assert_array_equal(a[split][kind], b[split][kind])


def test_unknown_preset_and_occupied_output(tmp_path: Path, tiny_data: Path) -> None:
    with pytest.raises(UserError, match="unknown synthetic preset 'big'.*mosi, tiny"):
        synthesize(tmp_path / "x", preset="big")
    assert not (tmp_path / "x").exists()
    with pytest.raises(UserError, match="not empty"):
        synthesize(tiny_data, preset="tiny")


def test_mosi_shapes_and_targets(mosi_data: Path) -> None:
    ds = load_dataset(mosi_data)
    assert [ds.splits[s].n for s in SPLITS] == [1284, 229, 686]
    assert ds.seq_len == 20
    assert ds.dims == {"text": 300, "audio": 74, "video": 47}
    for split in ("valid", "test"):
        s = ds.splits[split]
        const, floor = constant_mae(s.labels), floor_mae(s.labels, s.oracle)
        assert 1.1 <= const <= 1.6, (split, const)
        assert 0.3 <= floor <= 0.7, (split, floor)
        assert floor < const - 0.5


def test_mosi_label_distribution(mosi_data: Path) -> None:
    ds = load_dataset(mosi_data)
    y = np.concatenate([ds.splits[s].labels for s in SPLITS])
    o = np.concatenate([ds.splits[s].oracle for s in SPLITS])
    assert y.min() >= -3 and y.max() <= 3 and o.min() >= -3 and o.max() <= 3
    np.testing.assert_allclose(y * 3, np.round(y * 3), atol=1e-4)  # averaged ratings: 1/3 grid
    assert 1.3 <= y.std() <= 1.8
    assert abs(y.mean()) < 0.3
    assert np.mean(np.abs(y) >= 2.5) > 0.07  # mass at the extremes
    # heavy-tailed noise: large errors far more often than a gaussian of the same MAE gives
    err = y - o
    mad = np.mean(np.abs(err))
    gauss_sd = mad * np.sqrt(np.pi / 2)
    assert np.mean(np.abs(err) > 3 * gauss_sd) > 0.01  # a gaussian gives 0.27 %


def _ridge_mae(train, valid, modalities) -> float:
    def pooled(s):
        return np.concatenate([getattr(s, m).mean(1) for m in modalities]
                              + [getattr(s, m).max(1) for m in modalities], axis=1)

    xtr, xva = pooled(train), pooled(valid)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    a, b = (xtr - mu) / sd, (xva - mu) / sd
    w = np.linalg.solve(a.T @ a + 1000.0 * np.eye(a.shape[1]), a.T @ (train.labels - train.labels.mean()))
    return float(np.mean(np.abs(b @ w + train.labels.mean() - valid.labels)))


def test_mosi_signal_is_learnable_and_text_strongest(mosi_data: Path) -> None:
    ds = load_dataset(mosi_data)
    train, test = ds.train, ds.test
    const = constant_mae(test.labels)
    maes = {m: _ridge_mae(train, test, [m]) for m in ("text", "audio", "video")}
    all3 = _ridge_mae(train, test, ["text", "audio", "video"])
    # a linear model on pooled features learns something from every modality ...
    assert maes["text"] < maes["audio"] < maes["video"] < const
    # ... and more from all three, yet stays well above the floor (room for better models)
    assert all3 < maes["text"] - 0.05
    assert all3 > floor_mae(test.labels, test.oracle) + 0.3


def test_sarcasm_is_a_cross_modal_interaction() -> None:
    """The audio's sarcasm flag flips the text's sentiment: a linear model on pooled features
    cannot use it, so the same data without sarcasm is clearly easier for it."""
    from dataclasses import replace
    from types import SimpleNamespace

    def ridge(preset) -> float:
        d = generate(preset, 3)
        tr, te = (SimpleNamespace(**{k: np.nan_to_num(v) for k, v in d[s].items()})
                  for s in ("train", "test"))
        return _ridge_mae(tr, te, ["text", "audio", "video"])

    base = PRESETS["mosi"]
    assert ridge(replace(base, sarcasm_rate=0.0)) < ridge(base) - 0.08
