"""The presets' models compute what msa-tf2's ``MSAModel`` and ``ImprovedMSAModel`` compute.

The reference below is written from the description of their forward pass (issue 13, their
``models/transformer.py``, ``models/msamodel.py``, ``models/improved_msamodel.py``) in plain
NumPy, in float64; it reads our model's weights by variable path and nothing else of ours.
Inference mode: dropout is the identity, BatchNorm uses its moving statistics.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from msatune.models.build import build_model

DIMS = {"text": 6, "audio": 5, "video": 4}
SMALL = {"model_dim": 8, "num_heads": 2, "ff_dim": 12, "n_layers_mod": 2, "n_layers_fuse": 2}
TOKEN_ORDER = ("text", "video", "audio")  # their tf.stack([h_t, h_v, h_a], axis=1)


# --- the reference -------------------------------------------------------------------------

def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def dense(W, name, x, relu=False):
    y = x @ W[f"{name}/kernel"] + W[f"{name}/bias"]
    return np.maximum(y, 0.0) if relu else y


def layer_norm(W, name, x, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * W[f"{name}/gamma"] + W[f"{name}/beta"]


def attention(W, name, query, value):
    """Keras MultiHeadAttention(query, value) (key = value): per-head projections, scaled dot
    product over the value's time axis, output projection."""
    q = np.einsum("btd,dhk->bthk", query, W[f"{name}/query/kernel"]) + W[f"{name}/query/bias"]
    k = np.einsum("bsd,dhk->bshk", value, W[f"{name}/key/kernel"]) + W[f"{name}/key/bias"]
    v = np.einsum("bsd,dhk->bshk", value, W[f"{name}/value/kernel"]) + W[f"{name}/value/bias"]
    scores = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1])
    context = np.einsum("bhts,bshk->bthk", softmax(scores), v)
    out = W[f"{name}/attention_output/kernel"]
    return np.einsum("bthk,hkd->btd", context, out) + W[f"{name}/attention_output/bias"]


def encoder(W, name, x):
    """Their TransformerEncoder: post-norm, LayerNorm epsilon 1e-6, FFN Dense(ff, relu) -> Dense."""
    x1 = layer_norm(W, f"{name}/norm1", x + attention(W, f"{name}/mha", x, x), 1e-6)
    ff = dense(W, f"{name}/ffn2", dense(W, f"{name}/ffn1", x1, relu=True))
    return layer_norm(W, f"{name}/norm2", x1 + ff, 1e-6)


def reference_baseline(W, x, n_mod, n_fuse, adaptive):
    vectors = {}
    for m in DIMS:
        h = dense(W, f"{m}_proj", x[m])
        for i in range(n_mod):
            h = encoder(W, f"{m}_enc_{i}", h)
        vectors[m] = h.mean(axis=1)
    fused = np.stack([vectors[m] for m in TOKEN_ORDER], axis=1)
    for i in range(n_fuse):
        fused = encoder(W, f"fuse_enc_{i}", fused)
    if adaptive:  # weights from the mean fused token, applied to the fused tokens
        w = softmax(dense(W, "fusion_weights", fused.mean(axis=1)))
        rep = (fused * w[:, :, None]).sum(axis=1)
    else:
        rep = fused.mean(axis=1)
    return dense(W, "output_dense", rep)


def reference_improved(W, x, n_mod, n_fuse, adaptive):
    def pool(seq):  # one learned query attends over the sequence; shared everywhere
        query = np.broadcast_to(W["attention_pool/query"], (seq.shape[0],) + W["attention_pool/query"].shape)
        return attention(W, "attention_pool/mha", query, seq)[:, 0, :]

    vectors = {}
    for m in DIMS:
        h = layer_norm(W, f"{m}_proj_norm", dense(W, f"{m}_proj", x[m]), 1e-3)
        for i in range(n_mod):
            h = h + encoder(W, f"{m}_enc_{i}", h)
        vectors[m] = pool(h)
    fused = np.stack([vectors[m] for m in TOKEN_ORDER], axis=1)
    for i in range(n_fuse):
        fused = fused + encoder(W, f"fuse_enc_{i}", fused)
    if adaptive:
        hidden = dense(W, "fusion_gate_hidden", pool(fused), relu=True)
        w = softmax(dense(W, "fusion_weights", hidden))
        rep = (fused * w[:, :, None]).sum(axis=1)
    else:
        rep = pool(fused)
    h = dense(W, "head_dense1", rep, relu=True)
    h = (h - W["head_bn/moving_mean"]) / np.sqrt(W["head_bn/moving_variance"] + 1e-3)
    h = h * W["head_bn/gamma"] + W["head_bn/beta"]
    h = dense(W, "head_dense2", h, relu=True)
    return dense(W, "output_dense", h)


REFERENCE = {"baseline": reference_baseline, "improved": reference_improved}


# --- helpers -------------------------------------------------------------------------------

def randomized(model: keras.Model, seed: int = 0) -> dict[str, np.ndarray]:
    """Give every weight (biases, norms, BatchNorm statistics included) a random value; return
    them by variable path, in float64."""
    rng = np.random.default_rng(seed)
    weights = {}
    for v in model.weights:
        shape = tuple(v.shape)
        if v.path.endswith("moving_variance"):
            value = rng.uniform(0.5, 2.0, shape)
        elif v.path.endswith("gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        elif v.path.endswith("kernel"):  # fan-in scaled, so outputs stay O(1) in float32
            value = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[:-1])), shape)
        else:
            value = rng.normal(0.0, 0.4, shape)
        v.assign(value.astype("float32"))
        weights[v.path] = np.asarray(v.numpy(), dtype=np.float64)
    return weights


def inputs(n: int = 4, t: int = 5, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {m: rng.normal(size=(n, t, d)).astype("float32") for m, d in DIMS.items()}


def max_difference(family: str, config: dict) -> float:
    model = build_model({"family": family, **config}, DIMS)
    weights = randomized(model)
    x = inputs()
    ours = np.asarray(model(x, training=False), dtype=np.float64)
    theirs = REFERENCE[family](
        weights, {m: a.astype(np.float64) for m, a in x.items()},
        config["n_layers_mod"], config["n_layers_fuse"], config["adaptive_fusion"],
    )
    assert ours.shape == theirs.shape == (4, 1)
    assert np.abs(theirs).max() > 0.1  # not a degenerate comparison
    return float(np.abs(ours - theirs).max())


# --- the tests -----------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["baseline", "improved"])
@pytest.mark.parametrize("adaptive", [True, False])
def test_forward_pass_matches_the_msa_tf2_computation(family, adaptive):
    assert max_difference(family, {**SMALL, "adaptive_fusion": adaptive}) < 1e-5


@pytest.mark.parametrize("family", ["baseline", "improved"])
def test_other_layer_counts_and_heads_that_do_not_divide_model_dim(family):
    # Their constructors take any layer counts and head count (each head is model_dim wide).
    config = {"model_dim": 10, "num_heads": 3, "ff_dim": 7, "n_layers_mod": 1, "n_layers_fuse": 0,
              "adaptive_fusion": True}
    assert max_difference(family, config) < 1e-5


@pytest.mark.parametrize("family", ["baseline", "improved"])
def test_msatune_variants_compute_what_their_keys_say(family):
    # key_dim: the per-head size; gate/head widths: the hidden Dense widths (the reference reads
    # the sizes from the weights, so the same forward pass must hold).
    config = {**SMALL, "adaptive_fusion": True, "key_dim": 3, "gate_units": 5, "head_units": 6,
              "head_units2": 7}
    assert max_difference(family, config) < 1e-5
    model = build_model({"family": family, **config}, DIMS)
    shapes = {v.path: tuple(v.shape) for v in model.weights}
    assert shapes["text_enc_0/mha/query/kernel"] == (8, 2, 3)
    if family == "improved":
        assert shapes["fusion_gate_hidden/kernel"] == (8, 5)
        assert shapes["head_dense1/kernel"] == (8, 6) and shapes["head_dense2/kernel"] == (6, 7)


def test_their_attention_heads_are_model_dim_wide():
    model = build_model({"family": "baseline", **SMALL}, DIMS)
    shapes = {v.path: tuple(v.shape) for v in model.weights}
    assert shapes["fuse_enc_0/mha/query/kernel"] == (8, 2, 8)
    assert shapes["fuse_enc_0/mha/attention_output/kernel"] == (2, 8, 8)


@pytest.mark.parametrize(
    ("family", "adaptive", "params"),
    [
        ("baseline", True, 725_380),
        ("baseline", False, 725_185),
        ("improved", True, 763_716),
        ("improved", False, 759_361),
    ],
)
def test_parameter_counts_at_their_sizes(family, adaptive, params):
    # train.py / improved_train.py sizes on MOSI features (dims 300/74/47, T=20).
    from msatune.search.trial_config import PRESETS

    config = {**PRESETS[family], "adaptive_fusion": adaptive}
    model = build_model(config, {"text": 300, "audio": 74, "video": 47}, seq_len=20)
    assert model.count_params() == params


# Kernels their improved model regularizes with l2_reg; "all" adds the encoders' FFN kernels and
# the gate's output kernel.
THEIR_L2 = ("text_proj", "audio_proj", "video_proj", "fusion_gate_hidden", "head_dense1", "head_dense2")


@pytest.mark.parametrize(("family", "scope"), [("improved", "theirs"), ("improved", "all"),
                                               ("baseline", "theirs"), ("baseline", "all")])
def test_l2_penalty_covers_exactly_the_scoped_kernels(family, scope):
    l2 = 0.03
    model = build_model({"family": family, **SMALL, "l2": l2, "l2_scope": scope}, DIMS)
    weights = randomized(model)
    kernels = [p for p in weights if p.endswith("/kernel") and p.split("/")[0] in THEIR_L2]
    if scope == "all":
        kernels += [p for p in weights if p.endswith(("ffn1/kernel", "ffn2/kernel"))]
        kernels.append("fusion_weights/kernel")
    expected = l2 * sum(float((weights[p] ** 2).sum()) for p in kernels)
    got = sum(float(keras.ops.convert_to_numpy(v)) for v in model.losses)
    assert got == pytest.approx(expected, rel=1e-5)
    assert len(model.losses) == len(kernels)
