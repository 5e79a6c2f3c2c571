"""The MOSEI-shaped preset and ``scale``: MOSEI's dims and split proportions at any size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from msatune.augment.dataset import SPLITS, files_fingerprint, load_dataset
from msatune.augment.synth import MIN_SCALED_SAMPLES, PRESETS, generate, scaled, synthesize
from msatune.errors import UserError


def test_mosei_preset_has_cmu_moseis_shapes() -> None:
    p = PRESETS["mosei"]
    assert p.sizes == {"train": 16326, "valid": 1871, "test": 4659}  # MMSA's split
    assert p.seq_len == 20 and p.dims == {"text": 300, "audio": 74, "video": 713}
    # the same generator as mosi otherwise: only the sizes and the video dimension differ
    mosi = PRESETS["mosi"]
    assert scaled(p, 1.0) is p
    assert {k: v for k, v in vars(p).items() if k not in ("sizes", "dims")} == {
        k: v for k, v in vars(mosi).items() if k not in ("sizes", "dims")
    }


def test_scaled_mosei_is_small_with_moseis_shapes(tmp_path: Path) -> None:
    ds = synthesize(tmp_path / "m", preset="mosei", seed=2, scale=0.002)
    assert {s: ds.splits[s].n for s in SPLITS} == {"train": 33, "valid": 8, "test": 9}
    assert ds.dims == {"text": 300, "audio": 74, "video": 713} and ds.seq_len == 20
    back = load_dataset(tmp_path / "m")
    assert back.fingerprint == ds.fingerprint == files_fingerprint(tmp_path / "m")
    assert back.has_oracle
    for split in SPLITS:  # the arrays returned are the arrays written
        np.testing.assert_array_equal(back.splits[split].video, ds.splits[split].video)
    # every split keeps at least a few samples, whatever the fraction
    assert set(scaled(PRESETS["tiny"], 1e-9).sizes.values()) == {MIN_SCALED_SAMPLES}


def test_scaled_data_is_deterministic() -> None:
    p = scaled(PRESETS["mosei"], 0.001)
    a, b = generate(p, 5), generate(p, 5)
    for split in SPLITS:
        for kind in a[split]:
            np.testing.assert_array_equal(a[split][kind], b[split][kind])
    assert a["train"]["video"].dtype == np.float32


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan"), float("inf")])
def test_bad_scale_is_refused_before_anything_is_written(tmp_path: Path, bad: float) -> None:
    with pytest.raises(UserError, match=r"--scale .* out of range: .*0 < F <= 1"):
        synthesize(tmp_path / "x", preset="mosei", scale=bad)
    assert not (tmp_path / "x").exists()
