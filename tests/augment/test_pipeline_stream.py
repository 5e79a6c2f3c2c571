"""Streaming a split from HDF5: the same batches as the in-memory pipeline, and when it happens."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from msatune.augment.dataset import load_dataset
from msatune.augment.footprint import STREAM_ENV
from msatune.augment.pipeline import H5Split, make_datasets, trial_splits
from msatune.modalities import MODALITIES

AUG = {"aug_noise": 0.1, "aug_time_mask": 0.2, "aug_feature_drop": 0.1, "aug_modality_drop": 0.2,
       "aug_time_shift": 0.1, "aug_mixup": 0.4}


def _epochs(splits: dict, aug: dict | None, epochs: int = 2) -> dict[str, list]:
    keras.utils.set_random_seed(3)  # as a trial does before building its pipelines
    ds = make_datasets(splits, batch_size=10, aug=aug, seed=3, eval_batch_size=7, drop_last_partial=True)
    out: dict[str, list] = {}
    for name, d in ds.items():
        for _ in range(epochs if name == "train" else 1):
            out.setdefault(name, []).extend(
                ({m: x[m].numpy() for m in MODALITIES}, y.numpy()) for x, y in d
            )
    return out


@pytest.mark.parametrize("aug", [None, AUG], ids=["plain", "augmented"])
def test_streamed_batches_equal_in_memory_batches(tiny_data: Path, aug: dict | None) -> None:
    data = load_dataset(tiny_data)
    memory = _epochs({n: s.arrays() for n, s in data.splits.items()}, aug)
    streamed = _epochs({n: H5Split(tiny_data, n) for n in data.splits}, aug)
    for name in ("train", "valid", "test"):
        assert len(streamed[name]) == len(memory[name]) > 1
        for (xs, ys), (xm, ym) in zip(streamed[name], memory[name], strict=True):
            np.testing.assert_array_equal(ys, ym)  # same order, same (mixed) labels
            for m in MODALITIES:
                np.testing.assert_array_equal(xs[m], xm[m])
    # two epochs differ (reshuffled), as in memory
    first, second = memory["train"][0][1], memory["train"][len(memory["train"]) // 2][1]
    assert not np.array_equal(first, second)


def test_streamed_rows_are_what_load_dataset_gives(tmp_path: Path, tiny_arrays, write_layout) -> None:
    arrays = tiny_arrays
    arrays["train"]["audio"][1, 2, 0] = np.nan  # readers turn non-finite values into 0
    arrays["train"]["video"][3, 1, 1] = -np.inf
    write_layout(tmp_path / "d", arrays)
    data = load_dataset(tmp_path / "d")
    index = np.array([5, 1, 3, 0])
    *feats, labels = H5Split(tmp_path / "d", "train").read(index)
    for m, x in zip(MODALITIES, feats, strict=True):
        np.testing.assert_array_equal(x, getattr(data.train, m)[index])
    np.testing.assert_array_equal(labels[:, 0], data.train.labels[index])


def test_a_split_too_large_to_hold_twice_is_streamed(tiny_data: Path, monkeypatch) -> None:
    data = load_dataset(tiny_data)
    train_bytes = sum(a.nbytes for a in data.train.arrays().values())
    assert not any(isinstance(s, H5Split) for s in trial_splits(data).values())  # tiny fits
    monkeypatch.setenv(STREAM_ENV, str(train_bytes - 1))
    splits = trial_splits(data)
    assert isinstance(splits["train"], H5Split) and splits["train"].n == data.train.n
    assert isinstance(splits["valid"], dict)  # the smaller splits stay in memory


def test_a_trial_trains_the_same_on_a_streamed_split(tiny_data: Path, monkeypatch) -> None:
    from msatune.search.trial import run_trial
    from msatune.search.trial_config import preset_config

    data = load_dataset(tiny_data)
    config = {**preset_config("baseline"), "epochs": 2, "batch_size": 16}
    memory = run_trial(config, data)
    monkeypatch.setenv(STREAM_ENV, "0")  # every split streamed
    streamed = run_trial(config, data)
    for key in ("valid_pred", "test_pred"):
        np.testing.assert_allclose(streamed.predictions[key], memory.predictions[key], rtol=1e-5, atol=1e-6)
