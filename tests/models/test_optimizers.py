"""The fused Adam/AdamW update the same way Keras' do, with one op per variable."""

from __future__ import annotations

import numpy as np
import pytest

from msatune.models.recipe import make_optimizer, training_settings
from msatune.search.trial_config import PRESETS

DIMS = {"text": 6, "audio": 5, "video": 4}
SMALL = {"model_dim": 16, "num_heads": 2, "ff_dim": 32, "n_layers_mod": 1, "n_layers_fuse": 1, "dropout": 0.0}


def _data():
    rng = np.random.default_rng(0)
    x = {k: rng.normal(size=(32, 8, d)).astype("float32") for k, d in DIMS.items()}
    return x, rng.normal(size=(32, 1)).astype("float32")


@pytest.mark.parametrize("preset", ["baseline", "improved"])  # Adam; AdamW + clipnorm + L2
def test_fused_optimizers_train_like_keras_own(preset: str) -> None:
    import keras

    from msatune.models.build import build_model
    from msatune.models.optimizers import FusedAdam, FusedAdamW

    config = {**PRESETS[preset], **SMALL}
    settings = training_settings(config)
    x, y = _data()
    weights, optimizers = [], []
    for fused in (False, True):
        keras.utils.set_random_seed(0)
        model = build_model(config, DIMS, 8)
        model.compile(optimizer=make_optimizer(settings, fused=fused), loss="mae")
        model.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False)  # 12 steps
        weights.append(model.get_weights())
        optimizers.append(model.optimizer)
    assert isinstance(optimizers[1], FusedAdamW if preset == "improved" else FusedAdam)
    assert type(optimizers[0]) in (keras.optimizers.Adam, keras.optimizers.AdamW)
    assert int(optimizers[1].iterations.numpy()) == int(optimizers[0].iterations.numpy()) == 12
    keras.utils.set_random_seed(0)
    starts = build_model(config, DIMS, 8).get_weights()
    # Attention key biases have an exactly-zero gradient (softmax ignores a per-query constant):
    # Adam turns the gradient's rounding noise into steps of up to ~1e-5 in either direction, in
    # Keras' optimizer as in the fused one. Such variables move < 1% of lr x steps; they must
    # stay that small, every other variable must match Keras' to floating-point noise.
    noise_scale = 0.01 * settings["learning_rate"] * 12
    moved = 0
    for ref, got, start in zip(weights[0], weights[1], starts, strict=True):
        if np.max(np.abs(ref - start)) < noise_scale:
            assert np.max(np.abs(got - start)) < noise_scale
            continue
        # floating-point noise only (the kernel forms 1 - beta in float32), never a different update
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
        moved += 1
    assert moved > len(weights[0]) // 2  # the comparison is about trained weights


def _traced_ops(optimizer, model) -> list[str]:
    import tensorflow as tf

    grads = [tf.ones_like(v) for v in model.trainable_variables]

    @tf.function
    def apply():
        optimizer.apply(grads, model.trainable_variables)

    return [op.type for op in apply.get_concrete_function().graph.get_operations()]


def test_the_fused_update_is_one_op_per_variable_and_amsgrad_falls_back() -> None:
    from msatune.models.build import build_model
    from msatune.models.optimizers import FusedAdam, FusedAdamW

    model = build_model({**PRESETS["improved"], **SMALL}, DIMS, 8)
    n = len(model.trainable_variables)
    for opt in (FusedAdam(1e-3), FusedAdamW(1e-3, weight_decay=0.01, clipnorm=1.0)):
        opt.build(model.trainable_variables)
        ops = _traced_ops(opt, model)
        assert ops.count("ResourceApplyAdam") == n
        assert ops.count("Pow") == 2  # the beta powers, once per step
    keras_like = FusedAdam(1e-3, amsgrad=True)
    keras_like.build(model.trainable_variables)
    ops = _traced_ops(keras_like, model)
    assert ops.count("ResourceApplyAdam") == 0 and ops.count("Pow") >= n
