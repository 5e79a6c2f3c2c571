"""msatune's Adam/AdamW (models.optimizers) update as Keras' do, in far fewer traced ops."""

from __future__ import annotations

import numpy as np
import pytest

from msatune.search.trial_config import PRESETS

DIMS = {"text": 6, "audio": 5, "video": 4}
SMALL = {"model_dim": 16, "num_heads": 2, "ff_dim": 32, "n_layers_mod": 1, "n_layers_fuse": 1, "dropout": 0.0}


def _data():
    rng = np.random.default_rng(0)
    x = {k: rng.normal(size=(32, 8, d)).astype("float32") for k, d in DIMS.items()}
    return x, rng.normal(size=(32, 1)).astype("float32")


def _traced_graph_ops(optimizer, model) -> list:
    import tensorflow as tf

    grads = [tf.ones_like(v) for v in model.trainable_variables]

    @tf.function
    def apply():
        optimizer.apply(grads, model.trainable_variables)

    return apply.get_concrete_function().graph.get_operations()


def _traced_ops(optimizer, model) -> list[str]:
    return [op.type for op in _traced_graph_ops(optimizer, model)]


def _run_recipe(monkeypatch, preset: str, update: str) -> np.ndarray:
    """The preset's whole recipe at tiny size through msatune's loop; the trained weights."""
    import keras

    import msatune.models.recipe as recipe
    import msatune.models.training as training
    from msatune.augment.pipeline import make_datasets
    from msatune.models.training import train_model
    from tests.conftest import make_tiny_arrays

    stock = recipe.make_optimizer
    monkeypatch.setattr(training, "make_optimizer", lambda settings: stock(settings, update=update))
    dims = {"text": 4, "audio": 3, "video": 2}
    arrays = make_tiny_arrays(sizes=(32, 8, 8), seq_len=6)
    config = {**PRESETS[preset], **SMALL, "dropout": 0.2, "epochs": 4, "warmup_epochs": 1,
              "patience": 0, "batch_size": 8}
    keras.utils.set_random_seed(0)
    datasets = make_datasets(arrays, batch_size=8, aug=config, seed=0)
    result = train_model(config, datasets, dims, monitor=False)
    assert type(result.model.optimizer).__name__.startswith({"grouped": "Grouped", "keras": "Adam"}[update])
    return np.concatenate([w.ravel() for w in result.model.get_weights()])


@pytest.mark.parametrize("preset", ["baseline", "improved"])  # Adam; AdamW + clipnorm + L2 + schedule
def test_the_grouped_update_is_keras_own_bit_for_bit_over_a_whole_recipe(monkeypatch, preset: str) -> None:
    """The default optimizer (models.optimizers' grouped Adam/AdamW) trains exactly as Keras'
    class: same seed, same data -> the same weights to the last bit after 16 steps with the
    recipe's schedule, dropout, augmentation, clipnorm and weight decay, so the presets keep the
    users' update while each trial traces ~2 s less."""
    grouped = _run_recipe(monkeypatch, preset, "grouped")
    keras_own = _run_recipe(monkeypatch, preset, "keras")
    assert grouped.size > 1000
    assert np.array_equal(grouped, keras_own)


def test_the_grouped_update_is_a_few_ops_per_variable_and_amsgrad_falls_back() -> None:
    import keras
    import tensorflow as tf

    from msatune.models.build import build_model
    from msatune.models.optimizers import GroupedAdam, GroupedAdamW

    model = build_model({**PRESETS["improved"], **SMALL}, DIMS, 8)
    n = len(model.trainable_variables)
    keras_own = keras.optimizers.AdamW(1e-3, weight_decay=0.01, clipnorm=1.0)
    keras_own.build(model.trainable_variables)
    keras_ops = len(_traced_ops(keras_own, model))
    for opt in (GroupedAdam(1e-3), GroupedAdamW(1e-3, weight_decay=0.01, clipnorm=1.0)):
        opt.build(model.trainable_variables)
        assert [v.shape for v in opt.variables[2:]] == [(sum(int(np.prod(v.shape)) for v in model.trainable_variables),)] * 2
        graph_ops = _traced_graph_ops(opt, model)
        ops = [op.type for op in graph_ops]
        assert ops.count("Pow") == 2 and ops.count("SplitV") == 1  # once per step, not per variable
        assert ops.count("AssignSubVariableOp") == n * (2 if opt.weight_decay else 1)
        # a reshape in and out per variable (the sums of squares are stacked, not reshaped); the
        # shapes and reduction axes (int32 constants) made once per traced update, not per variable
        assert ops.count("Reshape") < 2 * n + 8, (ops.count("Reshape"), n)
        # (made per variable, the plain Adam update alone traced 199 of them here; AdamW now 60)
        int_consts = [op for op in graph_ops if op.type == "Const" and op.get_attr("dtype") == tf.int32]
        assert len(int_consts) < n, (len(int_consts), n)
        assert len(ops) < keras_ops / 2, (len(ops), keras_ops)
    fallback = GroupedAdam(1e-3, amsgrad=True)
    fallback.build(model.trainable_variables)
    ops = _traced_ops(fallback, model)
    assert ops.count("SplitV") == 0 and ops.count("Pow") >= n  # Keras' own per-variable update


def test_a_variable_without_a_gradient_keeps_its_moments_as_in_keras() -> None:
    """Keras skips a variable whose gradient is None (its moments do not decay); so does the
    grouped update, and the other variables still update bit for bit as Keras'."""
    import keras

    from msatune.models.optimizers import GroupedAdamW

    rng = np.random.default_rng(1)
    shapes = [(3, 4), (5,), (2, 2, 2)]
    grads = [[rng.normal(size=s).astype("float32") for s in shapes] for _ in range(4)]
    finals = []
    for cls in (keras.optimizers.AdamW, GroupedAdamW):
        variables = [keras.Variable(rng.normal(size=s).astype("float32") * 0 + i, name=f"v{i}")
                     for i, s in enumerate(shapes)]
        opt = cls(1e-2, weight_decay=0.05, clipnorm=1.0)
        for step, gs in enumerate(grads):
            if step % 2:  # every other step, the middle variable gets no gradient
                opt.apply([gs[0], None, gs[2]], variables)
            else:
                opt.apply(gs, variables)
        finals.append([v.numpy() for v in variables])
    for ref, got in zip(*finals, strict=True):
        assert np.array_equal(ref, got)


@pytest.mark.parametrize("mode", ["jit_compile", "mixed_float16"])
def test_the_grouped_update_under_xla_and_loss_scaling(mode: str) -> None:
    """``jit_compile`` (XLA) and mixed precision (Keras wraps the optimizer in a loss-scale one)
    train with the grouped update as with Keras' own: the same weights (XLA may fuse the
    elementwise ops, so to float32 rounding there; bitwise with loss scaling)."""
    import keras

    from msatune.models.build import build_model
    from msatune.models.optimizers import GroupedAdamW

    config = {**PRESETS["improved"], **SMALL}
    x, y = _data()
    previous = keras.config.dtype_policy()
    weights = []
    try:
        if mode == "mixed_float16":
            keras.config.set_dtype_policy("mixed_float16")
        for cls in (keras.optimizers.AdamW, GroupedAdamW):
            keras.utils.set_random_seed(0)
            model = build_model(config, DIMS, 8)
            model.compile(optimizer=cls(1e-3, weight_decay=0.01, clipnorm=1.0), loss="mae",
                          jit_compile=mode == "jit_compile")
            for step in range(3):
                model.train_on_batch({k: v[step * 8:(step + 1) * 8] for k, v in x.items()}, y[step * 8:(step + 1) * 8])
            weights.append(np.concatenate([w.ravel() for w in model.get_weights()]))
            inner = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # loss scaling wraps it
            assert (mode == "mixed_float16") == (inner is not model.optimizer)
            if cls is GroupedAdamW:  # the grouped path ran (its flat slots), not Keras' fallback
                assert [v.name for v in inner.variables[2:]] == ["momentum_float32", "velocity_float32"]
    finally:
        keras.config.set_dtype_policy(previous)
    assert np.isfinite(weights[1]).all()
    if mode == "jit_compile":
        np.testing.assert_allclose(weights[1], weights[0], rtol=1e-5, atol=1e-6)
    else:
        assert np.array_equal(weights[1], weights[0])
