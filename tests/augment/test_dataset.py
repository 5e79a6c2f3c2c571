"""The dataset layer: reading, validating and writing the msa-tf2 HDF5 layout."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from msatune.augment.dataset import MODALITIES, SPLITS, MSADataset, SplitData, load_dataset
from msatune.augment.dataset_writer import write_dataset
from msatune.augment.summary import summary
from msatune.augment.yardsticks import constant_mae, floor_mae
from msatune.errors import UserError

INFO_SPLIT_KEYS = {
    "n", "seq_len", "dims", "nan_count", "label_mean", "label_std", "label_min", "label_max",
    "constant_mae", "floor_mae",
}


def test_load_tiny(tiny_data: Path) -> None:
    ds = load_dataset(tiny_data)
    assert isinstance(ds, MSADataset)
    assert ds.seq_len == 8
    assert ds.dims == {"text": 16, "audio": 8, "video": 6}
    assert [ds.splits[s].n for s in SPLITS] == [48, 24, 24]
    for s in ds.splits.values():
        assert isinstance(s, SplitData)
        for m in MODALITIES:
            x = getattr(s, m)
            assert x.dtype == np.float32 and x.ndim == 3 and np.isfinite(x).all()
        assert s.labels.dtype == np.float32 and s.labels.shape == (s.n,)
        assert s.oracle is not None and s.oracle.shape == (s.n,)
        assert s.ids is None
        assert set(s.inputs()) == set(MODALITIES)
        assert set(s.arrays()) == {*MODALITIES, "labels"}
    assert len(ds.fingerprint) == 64


def test_info_payload(tiny_data: Path) -> None:
    info = summary(load_dataset(tiny_data))
    assert set(info) == {"path", "splits", "fingerprint"}
    assert list(info["splits"]) == list(SPLITS)
    for s in info["splits"].values():
        assert set(s) == INFO_SPLIT_KEYS
        assert s["dims"] == {"text": 16, "audio": 8, "video": 6}
        assert s["floor_mae"] is not None and s["floor_mae"] >= 0
        assert -3 <= s["label_min"] <= s["label_mean"] <= s["label_max"] <= 3


def test_constant_and_floor_mae() -> None:
    y = np.array([-1.0, 0.0, 0.0, 2.0, 3.0])
    assert constant_mae(y) == pytest.approx((1 + 0 + 0 + 2 + 3) / 5)  # median 0
    assert constant_mae(y.reshape(-1, 1)) == constant_mae(y)
    assert floor_mae(y, y) == 0.0
    assert floor_mae(y, y + 0.5) == pytest.approx(0.5)


def test_labels_n_or_n1_and_no_oracle(tmp_path: Path, tiny_arrays, write_layout) -> None:
    flat = {s: {**k, "labels": k["labels"].reshape(-1)} for s, k in tiny_arrays.items()}
    a = load_dataset(write_layout(tmp_path / "a", tiny_arrays))
    b = load_dataset(write_layout(tmp_path / "b", flat))
    assert a.fingerprint == b.fingerprint
    assert all(s.oracle is None for s in a.splits.values())
    assert all(v["floor_mae"] is None for v in summary(a)["splits"].values())


def test_nan_and_inf_become_zero_and_are_counted(tmp_path: Path, tiny_arrays, write_layout) -> None:
    clean = load_dataset(write_layout(tmp_path / "clean", tiny_arrays))
    tiny_arrays["train"]["audio"][0, 0, :2] = 0.0
    tiny_arrays["valid"]["text"][1, 2, 0] = 0.0
    zeroed = load_dataset(write_layout(tmp_path / "zeroed", tiny_arrays))
    tiny_arrays["train"]["audio"][0, 0, :2] = [np.nan, -np.inf]
    tiny_arrays["valid"]["text"][1, 2, 0] = np.inf
    dirty = load_dataset(write_layout(tmp_path / "dirty", tiny_arrays))
    assert dirty.splits["train"].nan_count == 2
    assert dirty.splits["valid"].nan_count == 1
    assert dirty.splits["test"].nan_count == 0
    assert dirty.splits["train"].audio[0, 0, :2].tolist() == [0.0, 0.0]
    # the fingerprint is over the content after NaN -> 0
    assert dirty.fingerprint == zeroed.fingerprint != clean.fingerprint
    assert summary(dirty)["splits"]["train"]["nan_count"] == 2


def test_fingerprint_ignores_hdf5_metadata(tmp_path: Path, tiny_arrays, write_layout) -> None:
    a = load_dataset(write_layout(tmp_path / "a", tiny_arrays))
    b_dir = write_layout(tmp_path / "b", tiny_arrays)
    path = b_dir / "text_train_emb.h5"
    path.unlink()
    with h5py.File(path, "w") as f:  # same content, other storage and attributes
        f.create_dataset("d1", data=tiny_arrays["train"]["text"].astype(np.float64),
                         chunks=True, compression="gzip")
        f.attrs["note"] = "rewritten"
    assert load_dataset(b_dir).fingerprint == a.fingerprint
    tiny_arrays["test"]["labels"][0] += 0.5 if tiny_arrays["test"]["labels"][0] < 2 else -0.5
    c = load_dataset(write_layout(tmp_path / "c", tiny_arrays))
    assert c.fingerprint != a.fingerprint


# ---------------------------------------------------------------------------------------------
# Validation: each mistake is one UserError naming the file and the problem.


def _bad(tmp_path: Path, tiny_arrays, write_layout, mutate) -> Path:
    mutate(tiny_arrays)
    return write_layout(tmp_path / "bad", tiny_arrays)


def _set(split: str, kind: str, value):
    def mutate(a):
        a[split][kind] = value(a[split][kind]) if callable(value) else value
    return mutate


BAD_CASES = {
    "missing file": (_set("valid", "audio", None), ["audio_valid.h5", "missing"]),
    "N across modalities": (_set("train", "video", lambda x: x[:-1]),
                            ["video_train.h5", "N=5", "same N"]),
    "N vs labels": (_set("test", "labels", lambda y: y[:-1]), ["y_test.h5", "N=3"]),
    "T across splits": (lambda a: [a["valid"].__setitem__(m, a["valid"][m][:, :-1])
                                   for m in MODALITIES], ["text_valid_emb.h5", "(4, 4, 4)", "T"]),
    "T across modalities": (_set("train", "audio", lambda x: x[:, :-1]),
                            ["audio_train.h5", "sequence lengths"]),
    "D across splits": (_set("test", "video", lambda x: x[..., :1]),
                        ["video_test.h5", "(4, 5, 1)", "(6, 5, 2)"]),
    "string dtype": (_set("train", "text", lambda x: x.astype("S8")),
                     ["text_train_emb.h5", "not numbers"]),
    "empty": (lambda a: [a[s].__setitem__(k, a[s][k][:0]) for s in ["valid"]
                         for k in (*MODALITIES, "labels")], ["valid", "empty"]),
    "2-D features": (_set("train", "text", lambda x: x[:, 0, :]),
                     ["text_train_emb.h5", "3-D"]),
    "non-finite labels": (_set("train", "labels", lambda y: np.where(np.arange(len(y))[:, None] == 2,
                                                                     np.nan, y)),
                          ["y_train.h5", "non-finite labels", "index 2"]),
    "labels out of range": (_set("valid", "labels", lambda y: y * 0 + 4.5),
                            ["y_valid.h5", "outside [-3, 3]", "--clip-labels"]),
    "labels wrong shape": (_set("valid", "labels", lambda y: np.repeat(y, 2, axis=1)),
                           ["y_valid.h5", "(4, 2)"]),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_inputs_raise_one_line(case: str, tmp_path: Path, tiny_arrays, write_layout) -> None:
    mutate, needles = BAD_CASES[case]
    root = _bad(tmp_path, tiny_arrays, write_layout, mutate)
    with pytest.raises(UserError) as info:
        load_dataset(root)
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_missing_d1(tmp_path: Path, tiny_arrays, write_layout) -> None:
    root = write_layout(tmp_path / "d", tiny_arrays)
    with h5py.File(root / "y_train.h5", "w") as f:
        f.create_dataset("labels", data=tiny_arrays["train"]["labels"])
    with pytest.raises(UserError, match=r"y_train\.h5.*no dataset 'd1' \(found: labels\)"):
        load_dataset(root)


def test_not_hdf5(tmp_path: Path, tiny_arrays, write_layout) -> None:
    root = write_layout(tmp_path / "d", tiny_arrays)
    (root / "video_test.h5").write_text("not hdf5")
    with pytest.raises(UserError, match=r"video_test\.h5.*not a readable HDF5 file"):
        load_dataset(root)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such directory"):
        load_dataset(tmp_path / "nope")
    f = tmp_path / "file.h5"
    f.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        load_dataset(f)
    with pytest.raises(UserError, match=r"text_train_emb\.h5: missing file"):
        load_dataset(tmp_path)  # a directory, but not in the layout


def test_clip_labels(tmp_path: Path, tiny_arrays, write_layout, caplog) -> None:
    tiny_arrays["train"]["labels"][:3, 0] = [3.5, -4.0, 3.0000001]
    root = write_layout(tmp_path / "d", tiny_arrays)
    with pytest.raises(UserError, match=r"2 label\(s\) outside"):
        load_dataset(root)
    with caplog.at_level(logging.WARNING, logger="msatune.augment.dataset"):
        ds = load_dataset(root, clip_labels=True)
    assert ds.train.labels[:3].tolist() == [3.0, -3.0, 3.0]
    assert "clipped 2 label(s)" in caplog.text


# ---------------------------------------------------------------------------------------------
# Writing


def test_write_round_trip_with_ids_and_oracle(tmp_path: Path, tiny_arrays) -> None:
    for i, kinds in enumerate(tiny_arrays.values()):
        n = len(kinds["labels"])
        kinds["ids"] = np.array([f"vid{i}$_${j}" for j in range(n)])
        kinds["oracle"] = np.clip(kinds["labels"].reshape(-1) + 0.1, -3, 3)
    out = tmp_path / "out"
    ds = write_dataset(out, tiny_arrays)
    assert ds.path == out.resolve()
    again = load_dataset(out)
    assert again.fingerprint == ds.fingerprint
    assert again.valid.ids.tolist() == [f"vid1$_${j}" for j in range(4)]
    np.testing.assert_array_equal(again.train.labels, tiny_arrays["train"]["labels"].reshape(-1))
    np.testing.assert_array_equal(again.test.text, tiny_arrays["test"]["text"])
    with h5py.File(out / "y_train.h5") as f:
        assert f["d1"].shape == (6, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp dirs left behind


def test_write_refuses_non_empty_dir_unless_overwrite(tmp_path: Path, tiny_arrays) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty.*--overwrite"):
        write_dataset(out, tiny_arrays)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    write_dataset(out, tiny_arrays, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"  # --overwrite replaces dataset files only
    assert (out / "text_train_emb.h5").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_replaces_the_dataset_files_and_keeps_everything_else(tmp_path: Path, tiny_arrays) -> None:
    """Pointed at a workspace by mistake, --overwrite must not delete a store, checkpoints or notes;
    an old dataset file the new dataset lacks (here an oracle) must not survive to be read with it."""
    out = tmp_path / "ws"
    (out / "studies" / "s1").mkdir(parents=True)
    (out / "studies" / "s1" / "ckpt.keras").write_bytes(b"weights")
    (out / "studies.db").write_bytes(b"SQLite format 3\x00store")
    (out / "notes.txt").write_text("mine")
    (out / "oracle_train.h5").write_bytes(b"stale")
    (out / "y_train.h5").write_bytes(b"stale")
    ds = write_dataset(out, tiny_arrays, overwrite=True)
    assert (out / "studies.db").read_bytes() == b"SQLite format 3\x00store"
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "studies" / "s1" / "ckpt.keras").read_bytes() == b"weights"
    assert not (out / "oracle_train.h5").exists()
    assert load_dataset(out).fingerprint == ds.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ws"]  # no temp or trash dirs left


def test_write_into_empty_dir(tmp_path: Path, tiny_arrays) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    write_dataset(out, tiny_arrays)
    assert len(list(out.iterdir())) == 12


def test_write_invalid_writes_nothing(tmp_path: Path, tiny_arrays) -> None:
    tiny_arrays["valid"]["audio"] = tiny_arrays["valid"]["audio"][:-1]
    out = tmp_path / "sub" / "out"
    with pytest.raises(UserError, match=r"audio_valid\.h5 N=3"):
        write_dataset(out, tiny_arrays)
    assert list(tmp_path.iterdir()) == []
