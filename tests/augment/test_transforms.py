"""Invariants of each augmentation transform, run inside ``tf.data`` (graph mode)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from msatune.augment.transforms import (
    AUG_DEFAULTS,
    augment_batch,
    feature_drop,
    gaussian_noise,
    mixup,
    modality_drop,
    time_mask,
    time_shift,
    validate_aug_config,
)
from msatune.errors import UserError

DIMS = {"text": 12, "audio": 5, "video": 4}
T = 20


def make_batch(
    b: int, seed: int = 0, offset: float = 0.0
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Features with no exact zeros (uniform in [1, 2] plus ``offset``), labels in [-3, 3]."""
    rng = np.random.default_rng(seed)
    inputs = {
        m: (rng.uniform(1.0, 2.0, size=(b, T, d)) + offset).astype(np.float32)
        for m, d in DIMS.items()
    }
    labels = rng.uniform(-3, 3, size=(b, 1)).astype(np.float32)
    return inputs, labels


def in_graph(fn, *args, seed=(7, 11)):
    """Run ``fn(*args, seed)`` inside a ``tf.data`` map (graph mode) and return numpy results."""

    def mapped(*tensors):
        assert not tf.executing_eagerly()
        return fn(*tensors, tf.constant(seed, tf.int64))

    ds = tf.data.Dataset.from_tensors(tuple(args)).map(mapped)
    return tf.nest.map_structure(lambda t: t.numpy(), next(iter(ds)))


def augment(inputs, labels, config, seed=(7, 11)):
    return in_graph(lambda x, y, s: augment_batch(x, y, config, s), inputs, labels, seed=seed)


# ----------------------------------------------------------------------------- config


def test_validate_fills_defaults_and_ignores_other_keys():
    cfg = validate_aug_config({"lr": 1e-3, "aug_noise": 0.1, "aug_mixup": 1, "dropout": 0.3})
    assert set(cfg) == set(AUG_DEFAULTS)
    assert cfg["aug_noise"] == 0.1 and cfg["aug_mixup"] == 1.0
    assert isinstance(cfg["aug_mixup"], float)
    assert validate_aug_config(None) == AUG_DEFAULTS
    assert validate_aug_config({"aug_noise": np.float32(0.5)})["aug_noise"] == 0.5


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("aug_noise", -0.1),
        ("aug_mixup", -1),
        ("aug_feature_drop", 1.5),
        ("aug_modality_drop", 1.01),
        ("aug_time_mask", 2.0),
        ("aug_time_shift", 1.1),
        ("aug_time_mask", "0.2"),
        ("aug_noise", True),
        ("aug_noise", float("nan")),
        ("aug_mixup", float("inf")),
        ("aug_feature_drop", [0.1]),
    ],
)
def test_bad_values_raise_user_error_naming_the_key(key, value):
    with pytest.raises(UserError, match=key):
        validate_aug_config({key: value, "lr": 0.1})


def test_unknown_aug_key_is_rejected():
    with pytest.raises(UserError, match="aug_nosie"):
        validate_aug_config({"aug_nosie": 0.1})


def test_bad_config_raises_through_augment_batch():
    inputs, labels = make_batch(2)
    with pytest.raises(UserError, match="aug_modality_drop"):
        augment_batch(inputs, labels, {"aug_modality_drop": 2.0}, tf.constant([1, 2]))


# ----------------------------------------------------------------------------- identity at 0


@pytest.mark.parametrize("key", sorted(AUG_DEFAULTS))
def test_strength_zero_is_identity_via_augment_batch(key):
    inputs, labels = make_batch(8)
    out, out_labels = augment(inputs, labels, {key: 0.0})
    for m in inputs:
        np.testing.assert_array_equal(out[m], inputs[m])
    np.testing.assert_array_equal(out_labels, labels)


def test_each_transform_function_is_identity_at_zero():
    inputs, labels = make_batch(8)
    x = inputs["text"]
    for fn in (gaussian_noise, time_mask, feature_drop):
        np.testing.assert_array_equal(in_graph(lambda v, s, fn=fn: fn(v, 0.0, s), x), x)
    for fn in (modality_drop, time_shift):
        out = in_graph(lambda d, s, fn=fn: fn(d, 0.0, s), inputs)
        for m in inputs:
            np.testing.assert_array_equal(out[m], inputs[m])
    out, out_labels = in_graph(lambda d, y, s: mixup(d, y, 0.0, s), inputs, labels)
    np.testing.assert_array_equal(out_labels, labels)
    for m in inputs:
        np.testing.assert_array_equal(out[m], inputs[m])


# ----------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("prob", [0.9, 1.0])
def test_modality_drop_never_zeroes_all_three(prob):
    inputs, labels = make_batch(2000)
    out, out_labels = augment(inputs, labels, {"aug_modality_drop": prob})
    np.testing.assert_array_equal(out_labels, labels)
    dropped = np.zeros((2000, len(DIMS)), bool)
    for i, m in enumerate(DIMS):
        zero = np.all(out[m] == 0, axis=(1, 2))
        kept = np.all(out[m] == inputs[m], axis=(1, 2))
        assert np.all(zero | kept), "a modality is either zeroed whole or untouched"
        dropped[:, i] = zero
    n_dropped = dropped.sum(axis=1)
    assert n_dropped.max() <= 2
    if prob == 1.0:
        assert np.all(n_dropped == 2)
    assert dropped.mean() > 0.55  # it does drop a lot at high probability
    assert dropped.any(axis=0).all()  # every modality gets dropped sometimes
    assert (~dropped).any(axis=0).all()  # and every one is the survivor sometimes


@pytest.mark.parametrize("frac", [0.05, 0.3, 1.0])
def test_time_mask_zeroes_one_contiguous_span(frac):
    b = 300
    inputs, labels = make_batch(b)
    out, _ = augment(inputs, labels, {"aug_time_mask": frac})
    max_len = int(np.floor(frac * T + 1e-9))
    lengths = []
    for m in DIMS:
        zero_steps = np.all(out[m] == 0, axis=2)  # (B, T)
        untouched = np.all(out[m] == inputs[m], axis=2)
        assert np.all(zero_steps | untouched), "whole time steps are masked, all features"
        for i in range(b):
            idx = np.flatnonzero(zero_steps[i])
            assert len(idx) >= 1, "exactly one span per sample per modality"
            assert np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx))), "contiguous"
            lengths.append(len(idx))
    assert max(lengths) <= max_len and min(lengths) >= 1
    assert max(lengths) == max_len  # the full range of lengths is used
    # spans are drawn independently per modality
    assert not np.array_equal(np.all(out["text"] == 0, 2), np.all(out["audio"] == 0, 2))


def test_time_mask_below_one_step_masks_nothing():
    inputs, labels = make_batch(16)
    out, _ = augment(inputs, labels, {"aug_time_mask": 0.04})  # 0.04 * 20 < 1 step
    for m in DIMS:
        np.testing.assert_array_equal(out[m], inputs[m])


def test_feature_drop_zeroes_whole_feature_dims():
    b, prob = 400, 0.3
    inputs, labels = make_batch(b)
    out, out_labels = augment(inputs, labels, {"aug_feature_drop": prob})
    np.testing.assert_array_equal(out_labels, labels)
    fractions = []
    for m in DIMS:
        zero = np.all(out[m] == 0, axis=1)  # (B, D): the dim is zero at every time step
        kept = np.all(out[m] == inputs[m], axis=1)
        assert np.all(zero | kept)
        fractions.append(zero.mean())
        # per sample: different samples drop different dims
        assert len({tuple(r) for r in zero}) > 10
    assert abs(np.mean(fractions) - prob) < 0.05


def test_feature_drop_at_one_zeroes_everything():
    inputs, labels = make_batch(4)
    out, _ = augment(inputs, labels, {"aug_feature_drop": 1.0})
    for m in DIMS:
        assert np.all(out[m] == 0)


def test_time_shift_is_a_zero_padded_shift():
    b, frac = 300, 0.25
    inputs, labels = make_batch(b)
    out, out_labels = augment(inputs, labels, {"aug_time_shift": frac})
    np.testing.assert_array_equal(out_labels, labels)
    max_shift = int(np.floor(frac * T))
    shifts = []
    for i in range(b):
        found = None
        for s in range(-max_shift, max_shift + 1):
            ok = True
            for m in DIMS:
                expected = np.zeros_like(inputs[m][i])
                if s >= 0:
                    expected[s:] = inputs[m][i][: T - s]
                else:
                    expected[:s] = inputs[m][i][-s:]
                ok = ok and np.array_equal(out[m][i], expected)
            if ok:
                found = s
                break
        assert found is not None, f"sample {i} is not a zero-padded shift (same for all modalities)"
        shifts.append(found)
    shifts = np.array(shifts)
    assert shifts.min() == -max_shift and shifts.max() == max_shift
    assert (shifts == 0).mean() < 0.3


def test_gaussian_noise_has_requested_std():
    std = 0.3
    inputs, labels = make_batch(200)
    out, out_labels = augment(inputs, labels, {"aug_noise": std})
    np.testing.assert_array_equal(out_labels, labels)
    for m in DIMS:
        diff = out[m] - inputs[m]
        assert abs(diff.std() - std) < 0.02 * std + 0.005
        assert abs(diff.mean()) < 0.02
    # modalities get independent noise
    assert not np.allclose(
        out["audio"][..., :4] - inputs["audio"][..., :4], out["video"] - inputs["video"]
    )


def one_hot_batch(b: int, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every modality carries the sample's index as a one-hot in its first ``b`` dims."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for m, extra in (("text", 3), ("audio", 2), ("video", 1)):
        x = rng.normal(size=(b, T, b + extra)).astype(np.float32)
        x[:, :, :b] = np.eye(b, dtype=np.float32)[:, None, :]
        inputs[m] = x
    labels = rng.uniform(-3, 3, size=(b, 1)).astype(np.float32)
    return inputs, labels


@pytest.mark.parametrize(("b", "alpha"), [(32, 0.4), (32, 2.0), (7, 0.05), (1, 1.0)])
def test_mixup_labels_are_the_same_convex_combination(b, alpha):
    inputs, labels = one_hot_batch(b)
    out, out_labels = augment(inputs, labels, {"aug_mixup": alpha})
    lams = []
    for i in range(b):
        w = out["text"][i, 0, :b]  # the mixing weights over the batch's samples
        assert np.all(w >= -1e-6) and abs(w.sum() - 1) < 1e-5
        assert np.count_nonzero(w > 1e-7) <= 2, "mixed with at most one partner"
        lam = w[i]  # the sample's own weight (1 when mixed with itself)
        assert -1e-6 <= lam <= 1 + 1e-6
        lams.append(lam)
        # labels: the same convex combination as the inputs
        np.testing.assert_allclose(out_labels[i], w @ labels, rtol=1e-5, atol=1e-5)
        # inputs: every modality mixed with the same weights, at every time step
        for m in DIMS:
            np.testing.assert_allclose(
                out[m][i], np.tensordot(w, inputs[m], axes=1), rtol=1e-4, atol=1e-5
            )
    if b > 1:
        assert np.std(lams) > 0.01, "lambda is drawn per sample"


def test_all_transforms_handle_batch_of_one_and_are_seeded():
    config = dict.fromkeys(AUG_DEFAULTS, 0.5)
    config["aug_mixup"] = 0.4
    inputs, labels = make_batch(1)
    out, out_labels = augment(inputs, labels, config)
    assert out_labels.shape == (1, 1)
    for m, d in DIMS.items():
        assert out[m].shape == (1, T, d) and np.all(np.isfinite(out[m]))
    inputs, labels = make_batch(16)
    a = augment(inputs, labels, config, seed=(1, 2))
    b = augment(inputs, labels, config, seed=(1, 2))
    c = augment(inputs, labels, config, seed=(1, 3))
    for m in DIMS:
        np.testing.assert_array_equal(a[0][m], b[0][m])
    assert not np.array_equal(a[0]["text"], c[0]["text"])
