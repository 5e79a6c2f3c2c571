"""The baseline and improved MSA models: building, config validation, shapes, saving, export."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from msatune.errors import UserError
from msatune.models.build import MODEL_DEFAULTS, build_model, resolve_model_config
from msatune.models.networks import ImprovedMSAModel, MSAModel

DIMS = {"text": 6, "audio": 5, "video": 4}
TINY = {"model_dim": 16, "num_heads": 2, "ff_dim": 32, "n_layers_mod": 1, "n_layers_fuse": 1}
FAMILIES = ["baseline", "improved"]
REPO = Path(__file__).resolve().parents[2]


def batch(n: int = 3, t: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=(n, t, d)).astype("float32") for k, d in DIMS.items()}


def tiny(family: str, **extra) -> keras.Model:
    return build_model({"family": family, **TINY, **extra}, DIMS)


@pytest.mark.parametrize("family", FAMILIES)
def test_builds_and_predicts_shape_and_dtype(family):
    model = tiny(family)
    assert isinstance(model, MSAModel if family == "baseline" else ImprovedMSAModel)
    assert model.count_params() > 0  # built on return
    out = model(batch(), training=False)
    assert tuple(out.shape) == (3, 1)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


def test_defaults_and_foreign_keys_are_ignored():
    model = build_model({"learning_rate": 1e-3, "batch_size": 16, "aug_noise": 0.1}, DIMS)
    assert isinstance(model, ImprovedMSAModel)
    assert MODEL_DEFAULTS["family"] == "improved"
    cfg = model.get_config()
    for key in ("model_dim", "num_heads", "ff_dim", "n_layers_mod", "n_layers_fuse", "dropout"):
        assert cfg[key] == MODEL_DEFAULTS[key]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("adaptive", [True, False])
def test_variable_sequence_length(family, adaptive):
    model = tiny(family, adaptive_fusion=adaptive)
    assert model.seq_len is None
    for t in (5, 9, 1):
        assert tuple(model(batch(t=t), training=False).shape) == (3, 1)


def test_fixed_seq_len_in_input_spec():
    model = build_model({"family": "baseline", **TINY}, DIMS, seq_len=5)
    assert model.seq_len == 5
    assert tuple(model.inputs[0].shape)[1] == 5


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("family", "transformer"),
        ("model_dim", 0),
        ("num_heads", -1),
        ("ff_dim", 12.5),
        ("n_layers_mod", -1),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("l2", -1e-3),
        ("l2", float("nan")),
        ("adaptive_fusion", "yes"),
        ("head_units", 0),
        ("model_dim", True),
        ("key_dim", -1),
        ("key_dim", 2.5),
        ("gate_units", -8),
        ("l2_scope", "some"),
    ],
)
def test_bad_model_values_raise_user_error(key, value):
    with pytest.raises(UserError) as info:
        build_model({key: value}, DIMS)
    message = str(info.value)
    assert "\n" not in message
    assert key in message
    assert "allowed" in message


@pytest.mark.parametrize(
    "dims", [{"text": 6, "audio": 5}, {"text": 6, "audio": 5, "video": 0}, [6, 5, 4]]
)
def test_bad_dims_raise_user_error(dims):
    with pytest.raises(UserError):
        build_model({}, dims)


def test_json_numbers_are_normalized():
    resolved = resolve_model_config({"model_dim": 32.0, "num_heads": np.int64(4), "dropout": 0})
    assert resolved["model_dim"] == 32 and isinstance(resolved["model_dim"], int)
    assert resolved["num_heads"] == 4 and isinstance(resolved["num_heads"], int)
    assert resolved["dropout"] == 0.0


def test_train_on_batch_with_jit_compile():
    # The improved model exercises every custom layer (encoder, attention pooling, gate, BN).
    model = tiny("improved", l2=0.01, n_layers_fuse=0)
    model.compile(optimizer="adam", loss="mae", jit_compile=True)
    x = batch(n=4)
    y = np.zeros((4, 1), "float32")
    loss = model.train_on_batch(x, y)
    assert np.isfinite(np.asarray(loss)).all()


def test_mixed_precision_output_is_float32():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = tiny("improved")
        out = model(batch(), training=False)
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        assert np.isfinite(np.asarray(out)).all()
    finally:
        keras.config.set_dtype_policy(previous)


def test_models_compose_inside_a_functional_model_and_export(tmp_path):
    members = [tiny("baseline"), tiny("improved")]
    inputs = {k: keras.Input(shape=(None, d), name=k) for k, d in DIMS.items()}
    avg = keras.layers.Average()([m(inputs) for m in members])
    ensemble = keras.Model(inputs, avg)
    x = batch()
    expected = np.mean([m.predict(x, verbose=0) for m in members], axis=0)
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), expected, atol=1e-6)

    ensemble.export(tmp_path / "export", verbose=False)
    import tensorflow as tf

    restored = tf.saved_model.load(str(tmp_path / "export"))
    out = restored.serve({k: tf.constant(v) for k, v in x.items()})
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)


def test_layers_round_trip_their_config():
    from msatune.models.layers import LearnedQueryAttentionPooling, TransformerEncoderLayer

    enc = TransformerEncoderLayer(16, 2, 32, 0.2, l2=0.01, outer_residual=True, key_dim=4, name="e")
    assert TransformerEncoderLayer.from_config(enc.get_config()).get_config() == enc.get_config()
    assert enc.get_config()["key_dim"] == 4
    pool = LearnedQueryAttentionPooling(16, name="p")
    assert LearnedQueryAttentionPooling.from_config(pool.get_config()).model_dim == 16


def test_whole_model_keras_round_trip_in_fresh_process(tmp_path):
    x = batch(n=4, t=7)
    np.savez(tmp_path / "x.npz", **x)
    expected = {}
    variants = {"baseline": {"adaptive_fusion": True},  # msatune's own options, as JSON config
                "improved": {"key_dim": 4, "gate_units": 0, "l2_scope": "all", "head_units": 8}}
    for family in FAMILIES:
        model = tiny(family, **variants[family])
        model.save(tmp_path / f"{family}.keras")
        expected[family] = model.predict(x, verbose=0)
    script = textwrap.dedent(
        """
        import sys
        import msatune, keras, numpy as np  # import msatune registers the custom objects
        d = sys.argv[1]
        x = dict(np.load(d + "/x.npz"))
        for family in ("baseline", "improved"):
            m = keras.saving.load_model(f"{d}/{family}.keras", safe_mode=True)
            np.save(f"{d}/{family}.pred.npy", m.predict(x, verbose=0))
            print(family, type(m).__name__)
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "baseline MSAModel" in proc.stdout and "improved ImprovedMSAModel" in proc.stdout
    for family in FAMILIES:
        got = np.load(tmp_path / f"{family}.pred.npy")
        np.testing.assert_array_equal(got, expected[family])


# msa-tf2's balanced_train.py: BalancedMSAModel is the baseline architecture (plus a Dropout
# before the output Dense, weightless) with dropout_rate 0.2 and l2_reg 0.001 on the three
# projection kernels, at model_dim 64, 4 heads, ff 256, 2 + 1 layers, adaptive fusion.
BALANCED_ARCHITECTURE = {"family": "baseline", "model_dim": 64, "num_heads": 4, "ff_dim": 256,
                         "n_layers_mod": 2, "n_layers_fuse": 1, "adaptive_fusion": True,
                         "dropout": 0.2, "l2": 0.001, "l2_scope": "theirs", "key_dim": 0}


@pytest.mark.parametrize(("video_dim", "params"), [(47, 725_380), (713, 768_004)])
def test_balanced_recipe_architecture_parameter_counts(video_dim, params):
    model = build_model(BALANCED_ARCHITECTURE, {"text": 300, "audio": 74, "video": video_dim},
                        seq_len=20)
    assert model.count_params() == params
    assert len(model.losses) == 3  # L2 on text_proj, audio_proj and video_proj, as theirs
