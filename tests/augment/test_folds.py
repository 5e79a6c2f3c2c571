"""Stratified folds of train+valid for refits: every fold holds every label bin, the same inputs
give the same folds, and a fold count the labels cannot support is one clear error."""

from __future__ import annotations

import numpy as np
import pytest

from msatune.augment.folds import (
    assignment_digest,
    bin_counts,
    fold_split,
    label_bins,
    pool_labels,
    pool_splits,
    pooled,
    stratified_folds,
)
from msatune.augment.synth import PRESETS, generate
from msatune.errors import UserError


def mosi_pool_labels() -> np.ndarray:
    s = generate(PRESETS["mosi"], 1)
    return np.concatenate([s["train"]["labels"], s["valid"]["labels"]])


def test_bins_are_the_acc7_classes_rounded_half_to_even() -> None:
    y = np.array([-3.2, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.4, 0.49, -0.51])
    assert label_bins(y).tolist() == [-3, -2, -2, 0, 0, 2, 2, 3, 0, -1]
    assert bin_counts(np.array([0.0, 0.1, 2.9, -3.0])) == {-3: 1, 0: 2, 3: 1}


@pytest.mark.parametrize("folds, repeats", [(5, 1), (3, 2)])
def test_every_fold_holds_every_bin_in_proportion(folds: int, repeats: int) -> None:
    y = mosi_pool_labels()
    a = stratified_folds(y, folds, repeats=repeats, seed=0)
    assert a.shape == (repeats, y.size) and set(np.unique(a)) == set(range(folds))
    bins = label_bins(y)
    for row in a:
        sizes = np.bincount(row, minlength=folds)
        assert sizes.max() - sizes.min() <= 1  # the folds are balanced to one sample
        for b, n in bin_counts(y).items():
            per_fold = np.bincount(row[bins == b], minlength=folds)
            assert per_fold.max() - per_fold.min() <= 1, (b, per_fold)  # stratified
            assert per_fold.sum() == n
    if repeats > 1:
        assert not np.array_equal(a[0], a[1])  # repeats split differently


def test_the_same_labels_and_seed_give_the_same_folds_and_digest() -> None:
    y = mosi_pool_labels()
    a, b = stratified_folds(y, 5, seed=3), stratified_folds(y.copy(), 5, seed=3)
    assert np.array_equal(a, b) and assignment_digest(a) == assignment_digest(b)
    c = stratified_folds(y, 5, seed=4)
    assert not np.array_equal(a, c) and assignment_digest(a) != assignment_digest(c)


def test_a_fold_split_trains_on_the_rest_and_holds_out_its_fold() -> None:
    y = mosi_pool_labels()
    a = stratified_folds(y, 4, seed=0)
    held = [fold_split(a, 0, f).held_out for f in range(4)]
    assert np.array_equal(np.sort(np.concatenate(held)), np.arange(y.size))  # a partition
    split = fold_split(a, 0, 2)
    assert not set(split.train) & set(split.held_out)
    assert split.train.size + split.held_out.size == y.size


@pytest.mark.parametrize("folds, repeats, message", [
    (1, 1, "--folds must be at least 2"),
    (0, 1, "--folds must be at least 2"),
    (3, 0, "--repeats must be at least 1"),
    (6, 1, r"--folds 6 is more than the 5 sample\(s\) of the smallest label bin \(sentiment -3\).*--folds 5"),
])
def test_impossible_fold_counts_are_one_line_errors(folds: int, repeats: int, message: str) -> None:
    s = generate(PRESETS["tiny"], 0)
    y = np.concatenate([s["train"]["labels"], s["valid"]["labels"]])
    assert min(bin_counts(y).values()) == 5
    with pytest.raises(UserError, match=message):
        stratified_folds(y, folds, repeats=repeats)
    stratified_folds(y, 5)  # the smallest bin's size is allowed


def test_the_pool_is_train_then_valid_and_never_test(tiny_data) -> None:
    from msatune.augment.dataset import load_dataset

    data = load_dataset(tiny_data)
    pool = pool_splits(data.splits)
    assert pool.n == data.train.n + data.valid.n
    assert np.array_equal(pool.labels[: data.train.n], data.train.labels)
    assert np.array_equal(pool.text[data.train.n:], data.valid.text)
    assert np.array_equal(pool.oracle[data.train.n:], data.valid.oracle)


def test_a_bagged_ensemble_scores_against_the_pools_labels_without_its_features(tiny_data) -> None:
    from msatune.augment.dataset import load_dataset

    data = load_dataset(tiny_data)
    pool, labels = pool_splits(data.splits), pool_labels(data.splits)
    assert labels.n == pool.n
    for attr in ("labels", "ids", "oracle"):
        assert np.array_equal(getattr(labels, attr), getattr(pool, attr)), attr
    assert labels.reference_maes() == pool.reference_maes()
    assert not hasattr(labels, "text")


def test_a_refits_driver_keeps_train_and_valid_as_rows_of_the_pool(tiny_data) -> None:
    # The driver needs train's and valid's sizes, labels and ids after pooling, not a second copy
    # of their features (nor the test split): those are rows of the pool it sends to the folds.
    from msatune.augment.dataset import load_dataset

    data = load_dataset(tiny_data)
    pool, view = pooled(data)
    assert set(view.splits) == {"train", "valid"} and view.fingerprint == data.fingerprint
    for name in ("train", "valid"):
        assert view.splits[name].n == data.splits[name].n
        assert np.array_equal(view.splits[name].labels, data.splits[name].labels)
        assert view.splits[name].source is pool  # the pool's arrays, no copy
    assert np.array_equal(pool.text[view.valid.rows], data.valid.text)
    assert view.dims == data.dims and view.seq_len == data.seq_len


def test_the_video_preset_is_another_structure_and_leaves_the_others_alone() -> None:
    v, m = PRESETS["video"], PRESETS["mosi"]
    assert (v.seq_len, v.dims, v.sizes) != (m.seq_len, m.dims, m.sizes)
    assert v.weights[2] > v.weights[0] and v.sarcasm_rate == 0.0
    s = generate(v, 0)
    assert s["train"]["video"].shape == (900, 32, 96) and s["test"]["labels"].shape == (600,)
