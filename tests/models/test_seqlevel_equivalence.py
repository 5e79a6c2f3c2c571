"""The seqlevel family computes what msa-tf2's ``MSASeqLevelModel`` computes.

The oracle below is our own transcription, in plain Keras/TensorFlow, of their forward pass as
their ``models/msa_seqlevel.py``, ``models/blocks.py``, ``models/fusion.py`` and
``models/positional.py`` describe it (subclassed layers, their structure and names). It reads
nothing of ours: our weights are copied into it layer by layer (``set_weights`` checks every
shape), and both run in inference mode on inputs with zero-padded steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from msatune.errors import UserError
from msatune.models.build import FAMILY_MODEL_KEYS, FAMILY_ONLY_KEYS, build_model

DIMS = {"text": 6, "audio": 5, "video": 4}
T = 6
SMALL = {"model_dim": 8, "num_heads": 2, "ff_dim": 12, "n_layers_mod": 2, "n_layers_fuse": 2,
         "dropout": 0.1}
# train_seqlevel.py's defaults (T 20), as their own code counts them.
THEIRS = {"model_dim": 128, "num_heads": 4, "ff_dim": 256, "n_layers_mod": 2, "n_layers_fuse": 1,
          "dropout": 0.1, "bidirectional_fusion": False, "pooling_method": "mean"}
REPO = Path(__file__).resolve().parents[2]


# --- the oracle: their model, transcribed ---------------------------------------------------

def their_padding_mask(x, pad_value=0.0, epsilon=1e-9):
    return tf.logical_not(tf.reduce_all(tf.abs(x - pad_value) < epsilon, axis=-1))


class TheirBlock(keras.layers.Layer):
    """Their TransformerBlock (context = query) and CrossAttentionBlock."""

    def __init__(self, model_dim, num_heads, ff_dim, rate, **kwargs):
        super().__init__(**kwargs)
        self.attn = keras.layers.MultiHeadAttention(num_heads, key_dim=model_dim // num_heads,
                                                    dropout=rate)
        self.ffn = keras.Sequential([keras.layers.Dense(ff_dim, activation="gelu"),
                                     keras.layers.Dropout(rate), keras.layers.Dense(model_dim)])
        self.ln1 = keras.layers.LayerNormalization(epsilon=1e-6)
        self.ln2 = keras.layers.LayerNormalization(epsilon=1e-6)
        self.dropout1 = keras.layers.Dropout(rate)
        self.dropout2 = keras.layers.Dropout(rate)

    def call(self, query, context, context_mask=None, training=False):
        attn_mask = None if context_mask is None else context_mask[:, tf.newaxis, :]
        out = self.attn(query=query, key=context, value=context, attention_mask=attn_mask,
                        training=training)
        query = self.ln1(query + self.dropout1(out, training=training))
        ffn = self.dropout2(self.ffn(query, training=training), training=training)
        return self.ln2(query + ffn)


class TheirPositional(keras.layers.Layer):
    def __init__(self, seq_len, model_dim, **kwargs):
        super().__init__(**kwargs)
        self.seq_len, self.model_dim = seq_len, model_dim

    def build(self, input_shape):
        self.pos = self.add_weight(shape=(self.seq_len, self.model_dim), initializer="glorot_uniform")

    def call(self, x):
        return x + self.pos[: tf.shape(x)[1], :]


class TheirEncoder(keras.layers.Layer):
    def __init__(self, seq_len, c, **kwargs):
        super().__init__(**kwargs)
        self.projection = keras.layers.Dense(c["model_dim"])
        self.pos_embedding = TheirPositional(seq_len, c["model_dim"])
        self.blocks = [TheirBlock(c["model_dim"], c["num_heads"], c["ff_dim"], c["dropout"])
                       for _ in range(c["n_layers_mod"])]
        self.dropout = keras.layers.Dropout(c["dropout"])

    def call(self, x, padding_mask=None, training=False):  # their `mask` (Keras 3: no effect)
        x = self.dropout(self.pos_embedding(self.projection(x)), training=training)
        for block in self.blocks:
            x = block(x, x, padding_mask, training=training)
        return x


class TheirModel(keras.Model):
    """MSASeqLevelModel: encoders, CrossModalFusion, AdaptiveFusionHead, regression head."""

    def __init__(self, seq_len, c, **kwargs):
        super().__init__(**kwargs)
        self.c = c
        self.encoders = {m: TheirEncoder(seq_len, c) for m in DIMS}

        def blocks():
            return [TheirBlock(c["model_dim"], c["num_heads"], c["ff_dim"], c["dropout"])
                    for _ in range(c["n_layers_fuse"])]

        self.t_a, self.t_v = blocks(), blocks()
        self.a_t, self.v_t = (blocks(), blocks()) if c["bidirectional_fusion"] else (None, None)
        d = c["model_dim"]
        self.fusion_weight_layer = keras.Sequential([
            keras.layers.Dense(d // 2, activation="relu"), keras.layers.Dropout(c["dropout"]),
            keras.layers.Dense(3, activation="softmax")])
        self.attention_pools = None
        if c["pooling_method"] == "attention":
            self.attention_pools = [keras.Sequential([keras.layers.Dense(d // 4, activation="tanh"),
                                                      keras.layers.Dense(1)]) for _ in range(3)]
        self.regression_head = keras.layers.Dense(1, dtype="float32")

    def pool(self, i, seq, mask):
        m = tf.expand_dims(tf.cast(mask, seq.dtype), axis=-1)
        if self.attention_pools is not None:
            scores = self.attention_pools[i](seq)
            scores = scores * m + (1.0 - m) * (-1e9)
            return tf.reduce_sum(seq * tf.nn.softmax(scores, axis=1), axis=1)
        return tf.reduce_sum(seq * m, axis=1) / tf.maximum(tf.reduce_sum(m, axis=1), 1e-9)

    def call(self, inputs, training=False):
        masks = {m: their_padding_mask(inputs[m]) for m in DIMS}
        h = {m: self.encoders[m](inputs[m], padding_mask=masks[m], training=training) for m in DIMS}
        t, a, v = h["text"], h["audio"], h["video"]
        for i in range(self.c["n_layers_fuse"]):
            t = self.t_a[i](t, a, masks["audio"], training=training)
            t = self.t_v[i](t, v, masks["video"], training=training)
            if self.c["bidirectional_fusion"]:
                a = self.a_t[i](a, t, masks["text"], training=training)
                v = self.v_t[i](v, t, masks["text"], training=training)
        fused = {"text": t, "audio": a, "video": v}
        stack = tf.stack([self.pool(i, fused[m], masks[m])
                          for i, m in enumerate(("text", "audio", "video"))], axis=1)
        w = self.fusion_weight_layer(tf.reduce_mean(stack, axis=1), training=training)
        return self.regression_head(tf.reduce_sum(stack * tf.expand_dims(w, -1), axis=1))


# --- copying our weights into the oracle ---------------------------------------------------

def layer_pairs(ours: keras.Model, theirs: TheirModel, c: dict) -> list:
    """(our layer, their layer) for every layer that holds weights."""
    pairs = []

    def block(mine, their):
        pairs.extend([(mine.mha, their.attn), (mine.ffn1, their.ffn.layers[0]),
                      (mine.ffn2, their.ffn.layers[2]), (mine.norm1, their.ln1),
                      (mine.norm2, their.ln2)])

    for m, enc in theirs.encoders.items():
        pairs += [(ours.get_layer(f"{m}_proj"), enc.projection),
                  (ours.get_layer(f"{m}_pos"), enc.pos_embedding)]
        for i, b in enumerate(enc.blocks):
            block(ours.get_layer(f"{m}_enc_{i}"), b)
    for i in range(c["n_layers_fuse"]):
        block(ours.get_layer(f"fusion_text_audio_{i}"), theirs.t_a[i])
        block(ours.get_layer(f"fusion_text_video_{i}"), theirs.t_v[i])
        if c["bidirectional_fusion"]:
            block(ours.get_layer(f"fusion_audio_text_{i}"), theirs.a_t[i])
            block(ours.get_layer(f"fusion_video_text_{i}"), theirs.v_t[i])
    if theirs.attention_pools is not None:
        for m, pool in zip(("text", "audio", "video"), theirs.attention_pools, strict=True):
            mine = ours.get_layer(f"fusion_pool_{m}")
            pairs += [(mine.hidden, pool.layers[0]), (mine.score, pool.layers[1])]
    pairs += [(ours.get_layer("fusion_weights_hidden"), theirs.fusion_weight_layer.layers[0]),
              (ours.get_layer("fusion_weights"), theirs.fusion_weight_layer.layers[2]),
              (ours.get_layer("head_output"), theirs.regression_head)]
    return pairs


def randomize(model: keras.Model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape = tuple(v.shape)
        if v.path.endswith("gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        elif v.path.endswith("kernel"):  # fan-in scaled; the output's 10x, to show differences
            scale = 10.0 if v.path.startswith("head_") else 1.0
            value = rng.normal(0.0, scale / np.sqrt(np.prod(shape[:-1])), shape)
        else:
            value = rng.normal(0.0, 0.4, shape)
        v.assign(value.astype("float32"))


def padded_inputs(n: int = 4, seed: int = 1) -> dict[str, np.ndarray]:
    """Random features with padded steps: trailing zeros (a different count per modality and
    sample), an all-padded video, and steps within and just outside their 1e-9 padding bound."""
    rng = np.random.default_rng(seed)
    x = {m: rng.normal(size=(n, T, d)).astype("float32") for m, d in DIMS.items()}
    x["text"][0, 4:] = 0.0
    x["audio"][0, 2:] = 0.0
    x["audio"][1, 5:] = 0.0
    x["video"][1, 3:] = 0.0
    x["video"][2] = 0.0  # a modality with no valid step
    x["text"][3, 5] = 5e-10  # padding by their rule (|x| < 1e-9 everywhere)
    x["audio"][3, 4] = 0.0
    x["audio"][3, 4, 0] = 2e-9  # one feature over the bound: a valid step
    return x


def build_pair(config: dict):
    ours = build_model({"family": "seqlevel", **config}, DIMS, seq_len=T)
    randomize(ours)
    theirs = TheirModel(T, config)
    x = padded_inputs()
    theirs(x, training=False)
    pairs = layer_pairs(ours, theirs, config)
    for mine, their in pairs:
        their.set_weights(mine.get_weights())
    assert sum(len(mine.weights) for mine, _ in pairs) == len(ours.weights)  # every one copied
    assert theirs.count_params() == ours.count_params()
    return ours, theirs, x


# --- the tests -----------------------------------------------------------------------------

@pytest.mark.parametrize("pooling", ["mean", "attention"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_forward_pass_matches_their_model(pooling, bidirectional):
    config = {**SMALL, "pooling_method": pooling, "bidirectional_fusion": bidirectional}
    ours, theirs, x = build_pair(config)
    want = np.asarray(theirs(x, training=False))
    got = np.asarray(ours(x, training=False))
    assert got.shape == (4, 1) and np.std(want) > 0.1  # not a degenerate comparison
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("video_dim", "params"), [(47, 1_130_372), (713, 1_215_620)])
def test_parameter_counts_at_their_sizes(video_dim, params):
    dims = {"text": 300, "audio": 74, "video": video_dim}
    model = build_model({"family": "seqlevel", **THEIRS}, dims, seq_len=20)
    assert model.count_params() == params


def test_attention_probe_shares_the_weights_and_reports_weights_and_maps():
    config = {**SMALL, "bidirectional_fusion": True}
    model = build_model({"family": "seqlevel", **config}, DIMS, seq_len=T)
    randomize(model)
    probe = model.attention_probe()
    ids = {id(v) for v in model.weights}
    assert probe.weights and all(id(v) in ids for v in probe.weights)  # no new weights
    x = padded_inputs()
    out = {k: np.asarray(v) for k, v in probe(x, training=False).items()}
    assert set(out) == {"prediction", "modality_weights", "text<-audio", "text<-video", "audio<-text", "video<-text"}
    # the model's own output, so one pass validates and probes (models.prediction)
    np.testing.assert_array_equal(out["prediction"], np.asarray(model(x, training=False)))
    assert out["modality_weights"].shape == (4, 3)
    np.testing.assert_allclose(out["modality_weights"].sum(axis=1), 1.0, atol=1e-6)
    for key in ("text<-audio", "text<-video", "audio<-text", "video<-text"):
        assert out[key].shape == (4, SMALL["num_heads"], T, T)
        # Probabilities over the context's steps; a context with no valid step (sample 2's
        # video) gets none at all (Keras' masked softmax), in their model as in ours.
        context = key.split("<-")[1]
        has_steps = np.abs(x[context]).max(axis=(1, 2)) > 0
        np.testing.assert_allclose(out[key].sum(axis=-1), np.broadcast_to(
            has_steps[:, None, None].astype(float), (4, SMALL["num_heads"], T)), atol=1e-5)
    assert np.abs(out["text<-audio"][0, :, :, 2:]).max() < 1e-6  # padded audio steps: no attention
    unidirectional = build_model({"family": "seqlevel", **SMALL}, DIMS, seq_len=T)
    assert set(unidirectional.attention_probe().output) == {"prediction", "modality_weights", "text<-audio",
                                                            "text<-video"}


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_mixed_precision_output_is_float32_and_finite(pooling):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_model({"family": "seqlevel", **SMALL, "pooling_method": pooling}, DIMS, seq_len=T)
        out = model(padded_inputs(), training=False)
    finally:
        keras.config.set_dtype_policy(previous)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert np.isfinite(np.asarray(out)).all()


def test_trains_and_round_trips_through_keras_file_and_export(tmp_path):
    model = build_model({"family": "seqlevel", **SMALL, "pooling_method": "attention",
                         "bidirectional_fusion": True}, DIMS, seq_len=T)
    x = padded_inputs()
    model.compile(optimizer="adam", loss="mae")
    assert np.isfinite(model.train_on_batch(x, np.zeros((4, 1), "float32")))
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    model.export(tmp_path / "export", verbose=False)
    np.savez(tmp_path / "x.npz", **x)
    np.save(tmp_path / "expected.npy", expected)
    restored = tf.saved_model.load(str(tmp_path / "export"))
    out = restored.serve({k: tf.constant(v) for k, v in x.items()})
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
    script = textwrap.dedent(
        """
        import sys
        import msatune, keras, numpy as np  # import msatune registers the custom objects
        d = sys.argv[1]
        x = dict(np.load(d + "/x.npz"))
        m = keras.saving.load_model(d + "/m.keras", safe_mode=True)
        np.testing.assert_array_equal(m.predict(x, verbose=0), np.load(d + "/expected.npy"))
        assert set(m.attention_probe()(x)) >= {"modality_weights", "audio<-text"}
        print(type(m).__name__, m.seq_len)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"SeqLevelMSAModel {T}" in proc.stdout


def test_layer_names_say_their_branch():
    model = build_model({"family": "seqlevel", **SMALL, "bidirectional_fusion": True,
                         "pooling_method": "attention"}, DIMS, seq_len=T)
    for v in model.trainable_weights:
        assert v.path.split("/")[0].startswith(("text_", "audio_", "video_", "fusion_", "head_"))


def test_seqlevel_config_errors_and_ignored_keys():
    with pytest.raises(UserError, match="model_dim.*num_heads") as info:
        build_model({"family": "seqlevel", "model_dim": 10, "num_heads": 4}, DIMS, seq_len=T)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="fixed sequence length"):
        build_model({"family": "seqlevel", **SMALL}, DIMS)
    with pytest.raises(UserError, match="pooling_method"):
        build_model({"family": "seqlevel", "pooling_method": "max"}, DIMS, seq_len=T)
    with pytest.raises(UserError, match="bidirectional_fusion"):
        build_model({"family": "seqlevel", "bidirectional_fusion": "yes"}, DIMS, seq_len=T)
    # Keys seqlevel does not read change nothing.
    plain = build_model({"family": "seqlevel", **SMALL}, DIMS, seq_len=T)
    other = build_model({"family": "seqlevel", **SMALL, "l2": 0.1, "l2_scope": "all", "key_dim": 3,
                         "adaptive_fusion": False, "gate_units": 5}, DIMS, seq_len=T)
    assert other.count_params() == plain.count_params() and not other.losses
    assert set(FAMILY_ONLY_KEYS) == {"bidirectional_fusion", "pooling_method"}
    for family, keys in FAMILY_MODEL_KEYS.items():
        assert "family" in keys
        assert (family == "seqlevel") == (set(FAMILY_ONLY_KEYS) <= set(keys))
