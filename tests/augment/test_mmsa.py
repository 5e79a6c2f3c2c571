"""MMSA pickle import: round trip of a small pickle in MMSA's structure, and its refusals."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from msatune.augment.dataset import SPLITS, load_dataset
from msatune.augment.mmsa import import_mmsa
from msatune.errors import UserError


def _dump(path: Path, obj) -> Path:
    with path.open("wb") as f:
        pickle.dump(obj, f)
    return path


def test_round_trip(tmp_path: Path, mmsa_dict) -> None:
    raw = mmsa_dict()
    pkl = _dump(tmp_path / "aligned_50.pkl", raw)
    ds = import_mmsa(pkl, tmp_path / "out", allow_pickle=True)
    again = load_dataset(tmp_path / "out")
    assert again.fingerprint == ds.fingerprint
    assert ds.seq_len == 6 and ds.dims == {"text": 768, "audio": 5, "video": 20}
    for split in SPLITS:
        s, r = again.splits[split], raw[split]
        np.testing.assert_array_equal(s.text, r["text"])
        np.testing.assert_array_equal(s.video, r["vision"])
        np.testing.assert_array_equal(s.labels, r["regression_labels"])
        assert s.ids.tolist() == list(r["id"])
        assert s.oracle is None
        assert s.audio[0, 0, 0] == 0.0 and s.nan_count == 0  # the files hold no -inf
        assert ds.splits[split].nan_count == 1  # the import replaced it by 0 and counted it
        import h5py

        with h5py.File(tmp_path / "out" / f"audio_{split}.h5") as f:
            assert np.isfinite(f["d1"][()]).all()  # msa-tf2's loader only zeroes NaN
    assert (tmp_path / "out" / "id_train.h5").exists()
    assert (tmp_path / "out" / "video_valid.h5").exists()


def test_refuses_without_allow_pickle(tmp_path: Path, mmsa_dict) -> None:
    pkl = _dump(tmp_path / "aligned_50.pkl", mmsa_dict())
    with pytest.raises(UserError, match=r"aligned_50\.pkl.*--allow-pickle.*runs") as info:
        import_mmsa(pkl, tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_unaligned_is_refused(tmp_path: Path, mmsa_dict) -> None:
    pkl = _dump(tmp_path / "unaligned_50.pkl", mmsa_dict(t_audio=9))
    with pytest.raises(UserError, match=r"unaligned.*audio T=9.*aligned_50\.pkl"):
        import_mmsa(pkl, tmp_path / "out", allow_pickle=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unaligned_50.pkl"]


@pytest.mark.parametrize(
    ("obj", "needle"),
    [
        ([1, 2, 3], "holds a list"),
        ({"train": {}, "valid": {}}, "no split(s) test"),
        ({s: {"text": np.zeros((2, 3, 4))} for s in SPLITS}, "lacks audio, vision"),
    ],
)
def test_wrong_structure(tmp_path: Path, obj, needle: str) -> None:
    pkl = _dump(tmp_path / "x.pkl", obj)
    with pytest.raises(UserError) as info:
        import_mmsa(pkl, tmp_path / "out", allow_pickle=True)
    assert needle in str(info.value) and "x.pkl" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_bad_arrays_name_the_pickle_key(tmp_path: Path, mmsa_dict) -> None:
    raw = mmsa_dict()
    raw["valid"]["regression_labels"] = raw["valid"]["regression_labels"][:-1]
    pkl = _dump(tmp_path / "aligned_50.pkl", raw)
    with pytest.raises(UserError, match=r"aligned_50\.pkl \['valid'\]\['regression_labels'\] N=2"):
        import_mmsa(pkl, tmp_path / "out", allow_pickle=True)
    assert not (tmp_path / "out").exists()


def test_not_a_pickle_and_missing(tmp_path: Path) -> None:
    bad = tmp_path / "junk.pkl"
    bad.write_bytes(b"\x00not a pickle")
    with pytest.raises(UserError, match=r"junk\.pkl: not a readable MMSA pickle"):
        import_mmsa(bad, tmp_path / "out", allow_pickle=True)
    with pytest.raises(UserError, match=r"nope\.pkl: no such file"):
        import_mmsa(tmp_path / "nope.pkl", tmp_path / "out", allow_pickle=True)
    assert not (tmp_path / "out").exists()
