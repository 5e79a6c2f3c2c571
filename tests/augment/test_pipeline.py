"""The tf.data pipelines: structure, no augmentation off train, determinism per seed."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from msatune.augment.pipeline import make_datasets
from msatune.augment.transforms import AUG_DEFAULTS
from msatune.errors import UserError

T = 6
DIMS = {"text": 8, "audio": 3, "video": 2}
ALL_ON = {
    "aug_noise": 0.5,
    "aug_time_mask": 0.5,
    "aug_feature_drop": 0.5,
    "aug_modality_drop": 0.9,
    "aug_time_shift": 0.5,
    "aug_mixup": 1.0,
}


def make_split(n: int, seed: int, label_shape: str = "N1") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    split = {m: rng.normal(size=(n, T, d)).astype(np.float32) for m, d in DIMS.items()}
    labels = np.linspace(-3, 3, n, dtype=np.float32)  # unique, so samples can be matched
    rng.shuffle(labels)
    split["labels"] = labels[:, None] if label_shape == "N1" else labels
    return split


@pytest.fixture(scope="module")
def splits():
    return {"train": make_split(37, 0), "valid": make_split(11, 1, "N"), "test": make_split(9, 2)}


def collect(ds: tf.data.Dataset) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    return [({m: v.numpy() for m, v in x.items()}, y.numpy()) for x, y in ds]


def concat(batches):
    xs = {m: np.concatenate([b[0][m] for b in batches]) for m in DIMS}
    return xs, np.concatenate([b[1] for b in batches])


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(ya, yb)
        for m in DIMS:
            np.testing.assert_array_equal(xa[m], xb[m])


def batches_equal(a, b) -> bool:
    try:
        assert_batches_equal(a, b)
    except AssertionError:
        return False
    return True


def test_structure_shapes_and_dtypes(splits):
    out = make_datasets(splits, 8, ALL_ON, seed=1)
    assert set(out) == {"train", "valid", "test"}
    for name, ds in out.items():
        x_spec, y_spec = ds.element_spec
        assert set(x_spec) == set(DIMS)
        assert y_spec.shape.as_list() == [None, 1] and y_spec.dtype == tf.float32
        for m, d in DIMS.items():
            assert x_spec[m].shape.as_list() == [None, T, d] and x_spec[m].dtype == tf.float32
        batches = collect(ds)
        n = splits[name]["labels"].shape[0]
        assert [b[1].shape[0] for b in batches] == [8] * (n // 8) + ([n % 8] if n % 8 else [])


def test_defaults_leave_train_equal_to_raw_data_apart_from_order(splits):
    raw = splits["train"]
    for aug in (None, {}, dict(AUG_DEFAULTS), {"lr": 0.1}):
        xs, ys = concat(collect(make_datasets(splits, 5, aug, seed=3)["train"]))
        order = np.argsort(ys[:, 0])
        raw_order = np.argsort(raw["labels"][:, 0])
        np.testing.assert_array_equal(ys[order], raw["labels"][raw_order])
        for m in DIMS:
            np.testing.assert_array_equal(xs[m][order], raw[m][raw_order])
        assert not np.array_equal(ys, raw["labels"]), "train is shuffled"


def test_shuffle_false_keeps_train_order(splits):
    xs, ys = concat(collect(make_datasets(splits, 5, None, seed=3, shuffle=False)["train"]))
    np.testing.assert_array_equal(ys, splits["train"]["labels"])
    for m in DIMS:
        np.testing.assert_array_equal(xs[m], splits["train"][m])


def test_valid_and_test_are_never_shuffled_or_augmented(splits):
    strong = dict(ALL_ON, aug_modality_drop=1.0, aug_feature_drop=1.0, aug_time_mask=1.0)
    out = make_datasets(splits, 4, strong, seed=5)
    for name in ("valid", "test"):
        for _ in range(2):  # every epoch
            xs, ys = concat(collect(out[name]))
            np.testing.assert_array_equal(ys[:, 0], np.ravel(splits[name]["labels"]))
            for m in DIMS:
                np.testing.assert_array_equal(xs[m], splits[name][m])
    # while train is augmented (feature drop at 1 zeroes everything)
    xs, _ = concat(collect(out["train"]))
    assert all(np.all(xs[m] == 0) for m in DIMS)


def test_same_seed_same_batches_across_pipelines_and_epochs(splits):
    def two_epochs(seed):
        ds = make_datasets(splits, 4, ALL_ON, seed=seed)["train"]
        return collect(ds), collect(ds)

    a1, a2 = two_epochs(11)
    b1, b2 = two_epochs(11)
    assert_batches_equal(a1, b1)
    assert_batches_equal(a2, b2)
    assert not batches_equal(a1, a2), "epoch 2 is not a copy of epoch 1"
    c1, _ = two_epochs(12)
    assert not batches_equal(a1, c1), "a different seed differs"


def test_augmentation_changes_across_epochs_even_without_shuffle(splits):
    ds = make_datasets(splits, 4, {"aug_noise": 0.1}, seed=0, shuffle=False)["train"]
    e1, e2 = collect(ds), collect(ds)
    np.testing.assert_array_equal(concat(e1)[1], concat(e2)[1])  # same order
    assert not np.array_equal(concat(e1)[0]["text"], concat(e2)[0]["text"])  # new noise


@pytest.mark.parametrize("batch_size", [1, 2, 36])
def test_partial_and_single_sample_batches_with_everything_on(splits, batch_size):
    batches = collect(make_datasets({"train": splits["train"]}, batch_size, ALL_ON)["train"])
    sizes = [b[1].shape[0] for b in batches]
    assert sizes == [batch_size] * (37 // batch_size) + (
        [37 % batch_size] if 37 % batch_size else []
    )
    for x, y in batches:
        assert np.all(np.isfinite(y)) and np.all(np.abs(y) <= 3 + 1e-5)
        for m, d in DIMS.items():
            assert x[m].shape[1:] == (T, d) and np.all(np.isfinite(x[m]))


def test_mixup_in_pipeline_mixes_inputs_and_labels_alike():
    n = 24
    rng = np.random.default_rng(0)
    split = {}
    for m, extra in (("text", 2), ("audio", 1), ("video", 0)):
        x = rng.normal(size=(n, T, n + extra)).astype(np.float32)
        x[:, :, :n] = np.eye(n, dtype=np.float32)[:, None, :]  # one-hot of the sample index
        split[m] = x
    split["labels"] = rng.uniform(-3, 3, size=n).astype(np.float32)
    xs, ys = concat(collect(make_datasets({"train": split}, 5, {"aug_mixup": 0.5}, 4)["train"]))
    for i in range(n):
        w = xs["text"][i, 0, :n]
        assert np.all(w >= -1e-6) and abs(w.sum() - 1) < 1e-5
        assert np.count_nonzero(w > 1e-7) <= 2
        np.testing.assert_allclose(ys[i, 0], w @ split["labels"], rtol=1e-5, atol=1e-5)
        for m in DIMS:
            np.testing.assert_allclose(
                xs[m][i], np.tensordot(w, split[m], axes=1), rtol=1e-4, atol=1e-5
            )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"aug": {"aug_time_shift": 1.5}}, "aug_time_shift"),
        ({"aug": {"aug_noise": "lots"}}, "aug_noise"),
    ],
)
def test_bad_arguments_raise_user_error(splits, kwargs, match):
    args = {"batch_size": 4, **kwargs}
    with pytest.raises(UserError, match=match):
        make_datasets(splits, **args)


def test_bad_arrays_raise_user_error(splits):
    bad = {m: v for m, v in splits["train"].items() if m != "labels"}
    with pytest.raises(UserError, match="labels"):
        make_datasets({"train": bad}, 4)
    bad = dict(splits["train"], audio=splits["train"]["audio"][:-1])
    with pytest.raises(UserError, match="audio"):
        make_datasets({"train": bad}, 4)


def test_drop_last_partial_keeps_one_train_batch_shape_and_all_eval_samples():
    rng = np.random.default_rng(0)
    n = 37
    split = {
        "text": rng.normal(size=(n, 5, 4)).astype("float32"),
        "audio": rng.normal(size=(n, 5, 3)).astype("float32"),
        "video": rng.normal(size=(n, 5, 2)).astype("float32"),
        "labels": rng.uniform(-3, 3, size=n).astype("float32"),
    }
    ds = make_datasets({"train": split, "valid": split}, batch_size=8, seed=1,
                       drop_last_partial=True, eval_batch_size=32)
    train_sizes = [int(y.shape[0]) for _, y in ds["train"]]
    assert train_sizes == [8, 8, 8, 8]  # 5 dropped this epoch, reshuffled next epoch
    assert [int(y.shape[0]) for _, y in ds["valid"]] == [32, 5]  # evaluation keeps every sample
    tiny = {k: v[:3] for k, v in split.items()}
    only = make_datasets({"train": tiny}, batch_size=8, drop_last_partial=True)
    assert [int(y.shape[0]) for _, y in only["train"]] == [3]  # never drops the only batch


def _element_pipeline(split: dict, batch_size: int, aug: dict, seed: int, drop: bool) -> tf.data.Dataset:
    """What the train pipeline was before it read a batch at a time: TensorFlow's copy of the
    split, its samples shuffled one by one, then batched (the salts are the pipeline's own)."""
    from msatune.augment.pipeline import _AUG_SALT, _SHUFFLE_SALT
    from msatune.augment.transforms import augment_batch, validate_aug_config

    features = {m: split[m] for m in DIMS}
    labels = split["labels"].reshape(-1, 1)
    ds = tf.data.Dataset.from_tensor_slices((features, labels))
    ds = ds.shuffle(len(labels), seed=seed + _SHUFFLE_SALT, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop)
    seeds = tf.data.Dataset.random(seed=seed + _AUG_SALT, rerandomize_each_iteration=True).batch(2)
    cfg = validate_aug_config(aug)
    return tf.data.Dataset.zip(ds, seeds).map(lambda b, s: augment_batch(b[0], b[1], cfg, s))


@pytest.mark.parametrize("drop", [False, True])
def test_batches_are_those_of_shuffling_the_samples_themselves(splits, drop):
    # Reading a batch at a time must not change what a trial trains on: the same batches, in
    # the same order, epoch after epoch, as shuffling and batching a copy of the samples.
    got = make_datasets(splits, 5, ALL_ON, seed=7, drop_last_partial=drop)["train"]
    want = _element_pipeline(splits["train"], 5, ALL_ON, seed=7, drop=drop)
    for _ in range(2):
        mine, theirs = collect(got), collect(want)
        assert_batches_equal(mine, theirs)
        assert all(y.shape == (5, 1) for _, y in mine) == drop
    assert got.element_spec[1].shape.as_list() == want.element_spec[1].shape.as_list()


def test_the_pipelines_read_the_callers_arrays_and_hold_no_copy():
    # A trial's data arrive once (Ray's object store, or load_dataset); the pipelines gather each
    # batch from those arrays when it is needed instead of copying every split into TensorFlow
    # (and the train split once more into the shuffle buffer): on MOSEI that was 2.8 GB a trial.
    split = make_split(12, 3)
    ds = make_datasets({"train": split, "valid": split}, 4, None, seed=0, shuffle=False)
    split["text"][:] = 7.0  # changed after the pipelines were built
    split["labels"][:] = 1.5
    for name in ("train", "valid"):
        batches = collect(ds[name])
        assert all((x["text"] == 7.0).all() and (y == 1.5).all() for x, y in batches), name


def test_a_split_of_rows_is_read_in_place_batch_for_batch_as_a_copy_of_them():
    # A refit fold is rows of the pooled train+valid: its pipelines gather those rows from the
    # pool's arrays (a fold copied ~1.8 GB of features on MOSEI), with the batches a copy gives.
    pool = make_split(37, 5)
    rows = np.random.default_rng(1).permutation(37)[:23]
    copy = {k: v[rows] for k, v in pool.items()}
    got = make_datasets({"train": {**pool, "rows": rows}, "valid": {**pool, "rows": rows[:9]}},
                        5, ALL_ON, seed=7, drop_last_partial=True)
    want = make_datasets({"train": copy, "valid": {k: v[:9] for k, v in copy.items()}},
                         5, ALL_ON, seed=7, drop_last_partial=True)
    for _ in range(2):
        assert_batches_equal(collect(got["train"]), collect(want["train"]))
    assert_batches_equal(collect(got["valid"]), collect(want["valid"]))
    assert got["train"].element_spec[1].shape.as_list() == [5, 1]
    pool["text"][rows[:9]] = 7.0  # the pool changed after the pipelines were built
    assert all((x["text"] == 7.0).all() for x, _ in collect(got["valid"]))


@pytest.mark.parametrize("rows, match", [
    (np.array([0, 37]), r"rows must lie in \[0, 37\)"),
    (np.array([-1]), r"rows must lie in \[0, 37\)"),
    (np.array([[0, 1]]), "rows must be a 1-D integer array"),
    (np.array([0.0, 1.0]), "rows must be a 1-D integer array"),
])
def test_rows_outside_the_arrays_are_a_clear_error(splits, rows, match):
    with pytest.raises(UserError, match=match):
        make_datasets({"train": {**splits["train"], "rows": rows}}, 4)
