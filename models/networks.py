"""The two MSA model families: the baseline ``MSAModel`` and the ``ImprovedMSAModel``.

Both are functional Keras models (subclasses of ``keras.Model`` that build their graph in
``__init__`` from ``keras.Input``), so they are built on construction, can be called symbolically
inside another functional model (an ensemble), export with ``model.export``, and round-trip through
``.keras`` with ``safe_mode=True`` once this module is imported (Keras 3 does not import custom
modules itself).

Inputs: a dict ``{"text": (B, T, Dt), "audio": (B, T, Da), "video": (B, T, Dv)}`` of float32; T is
``None`` in the input spec unless ``seq_len`` is given. Output: ``(B, 1)`` float32 (the output
layer is float32 even under a mixed-precision policy).

With their defaults (``key_dim=0``, ``l2_scope="theirs"``, and for the improved model
``gate_units=64``, ``head_units=128``, ``head_units2=64``) the models compute what msa-tf2's
``models/msamodel.py`` ``MSAModel`` and ``models/improved_msamodel.py`` ``ImprovedMSAModel``
compute, weight for weight (same variables and shapes, so the same parameter counts: 725,380 and
763,716 at model_dim 64, 4 heads, ff 256, 2 + 1 layers, dims 300/74/47). Modality vectors are
stacked as fusion tokens in the order text, video, audio; adaptive fusion weights the *fused*
tokens (the fusion encoders' output), in both families. The other values of those keys are
msatune's own variants, for the search space.
"""

from __future__ import annotations

from typing import Any

import keras

from msatune.modalities import MODALITIES
from msatune.models.layers import (
    PACKAGE,
    LearnedQueryAttentionPooling,
    StackModalities,
    TransformerEncoderLayer,
    WeightedTokenSum,
    l2_regularizer,
)

# Token order of the fusion stage (msa-tf2 stacks [h_t, h_v, h_a]).
FUSION_ORDER = ("text", "video", "audio")


def _inputs(
    text_dim: int, audio_dim: int, video_dim: int, seq_len: int | None
) -> dict[str, keras.KerasTensor]:
    dims = {"text": text_dim, "audio": audio_dim, "video": video_dim}
    return {
        m: keras.Input(shape=(seq_len, int(dims[m])), dtype="float32", name=m) for m in MODALITIES
    }


class _MSABase(keras.Model):
    """Shared config handling; subclasses build the graph."""

    _config_keys: tuple[str, ...] = ()

    def get_config(self) -> dict[str, Any]:
        config = {"name": self.name, "trainable": self.trainable}
        config.update({k: self._config_value(k) for k in self._config_keys})
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> _MSABase:
        return cls(**config)

    def _store_config(self, values: dict[str, Any]) -> None:
        for k in self._config_keys:
            setattr(self, f"_cfg_{k}", values[k])

    def _config_value(self, key: str) -> Any:
        return getattr(self, f"_cfg_{key}")

    @property
    def seq_len(self) -> int | None:
        return self._config_value("seq_len")

    def attention_probe(self) -> keras.Model | None:
        """A model over the same inputs (this model's layers) whose output is ``{"prediction":
        (B, 1), "modality_weights": (B, 3)}``: this model's own output (so one pass gives both,
        :mod:`msatune.models.prediction`) and the adaptive fusion's softmax weights in the order
        text, audio, video (the fusion tokens' order is :data:`FUSION_ORDER`); None without
        adaptive fusion. For :mod:`msatune.models.monitoring`; call it in inference (dropout off)."""
        if not self._config_value("adaptive_fusion"):
            return None
        weights = self.get_layer("fusion_weights").output
        order = [FUSION_ORDER.index(m) for m in ("text", "audio", "video")]
        outputs = {"prediction": self.output, "modality_weights": keras.ops.take(weights, order, axis=-1)}
        return keras.Model(inputs=self.input, outputs=outputs, name=f"{self.name}_attention_probe")


L2_SCOPES = ("theirs", "all")


def _scoped(reg: float, scope: str, wanted: str) -> float:
    """``reg`` for a kernel in L2 group ``wanted`` ("theirs": msa-tf2 regularizes it; "all":
    only ``l2_scope="all"`` does), else 0."""
    return reg if wanted == "theirs" or scope == "all" else 0.0


@keras.saving.register_keras_serializable(package=PACKAGE)
class MSAModel(_MSABase):
    """The msa-tf2 baseline: per-modality encoders, cross-modal fusion, optional adaptive fusion.

    Per modality m: ``h_m = mean_t(Enc_m(Dense(model_dim)(x_m)))`` with ``n_layers_mod``
    post-norm encoder layers (:class:`TransformerEncoderLayer`, dropout ``dropout``, no outer
    residual). Fusion: ``F = Enc_fuse(stack(h_text, h_video, h_audio))``, ``(B, 3, model_dim)``,
    through ``n_layers_fuse`` encoder layers. Adaptive fusion: ``w = softmax(Dense(3)(mean_k
    F_k))`` and ``r = sum_k w_k F_k`` (the weights multiply the *fused* tokens); otherwise
    ``r = mean_k F_k``. Output ``Dense(1)(r)``.

    ``key_dim``: per-head attention size of the encoders, 0 = ``model_dim`` (msa-tf2).
    ``l2`` (> 0; msa-tf2's baseline has none) regularizes with ``l2_scope="theirs"`` the
    projection kernels (the layers the improved model regularizes), with ``"all"`` also the
    encoders' feed-forward kernels and the fusion-weight kernel.
    """

    _config_keys = (
        "text_dim",
        "audio_dim",
        "video_dim",
        "model_dim",
        "num_heads",
        "ff_dim",
        "n_layers_mod",
        "n_layers_fuse",
        "dropout",
        "l2",
        "adaptive_fusion",
        "key_dim",
        "l2_scope",
        "seq_len",
    )

    def __init__(
        self,
        text_dim: int,
        audio_dim: int,
        video_dim: int,
        model_dim: int = 64,
        num_heads: int = 4,
        ff_dim: int = 256,
        n_layers_mod: int = 2,
        n_layers_fuse: int = 1,
        dropout: float = 0.1,
        l2: float = 0.0,
        adaptive_fusion: bool = True,
        key_dim: int = 0,
        l2_scope: str = "theirs",
        seq_len: int | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        values = dict(
            text_dim=int(text_dim),
            audio_dim=int(audio_dim),
            video_dim=int(video_dim),
            model_dim=int(model_dim),
            num_heads=int(num_heads),
            ff_dim=int(ff_dim),
            n_layers_mod=int(n_layers_mod),
            n_layers_fuse=int(n_layers_fuse),
            dropout=float(dropout),
            l2=float(l2),
            adaptive_fusion=bool(adaptive_fusion),
            key_dim=int(key_dim),
            l2_scope=str(l2_scope),
            seq_len=None if seq_len is None else int(seq_len),
        )
        v = values
        inputs = _inputs(v["text_dim"], v["audio_dim"], v["video_dim"], v["seq_len"])
        reg, scope = v["l2"], v["l2_scope"]

        def encoder(layer_name: str) -> TransformerEncoderLayer:
            return TransformerEncoderLayer(
                v["model_dim"],
                v["num_heads"],
                v["ff_dim"],
                v["dropout"],
                l2=_scoped(reg, scope, "all"),
                key_dim=v["key_dim"],
                name=layer_name,
            )

        vectors = {}
        for m in MODALITIES:
            x = keras.layers.Dense(
                v["model_dim"],
                kernel_regularizer=l2_regularizer(_scoped(reg, scope, "theirs")),
                name=f"{m}_proj",
            )(inputs[m])
            for i in range(v["n_layers_mod"]):
                x = encoder(f"{m}_enc_{i}")(x)
            vectors[m] = keras.layers.GlobalAveragePooling1D(name=f"{m}_pool")(x)

        fused = StackModalities(name="stack_modal")([vectors[m] for m in FUSION_ORDER])
        for i in range(v["n_layers_fuse"]):
            fused = encoder(f"fuse_enc_{i}")(fused)
        fused_mean = keras.layers.GlobalAveragePooling1D(name="fuse_pool")(fused)
        if v["adaptive_fusion"]:
            weights = keras.layers.Dense(
                len(FUSION_ORDER),
                activation="softmax",
                kernel_regularizer=l2_regularizer(_scoped(reg, scope, "all")),
                name="fusion_weights",
            )(fused_mean)
            rep = WeightedTokenSum(name="adaptive_sum")([fused, weights])
        else:
            rep = fused_mean
        output = keras.layers.Dense(1, dtype="float32", name="output_dense")(rep)
        super().__init__(inputs=inputs, outputs=output, name=name, **kwargs)
        self._store_config(values)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ImprovedMSAModel(_MSABase):
    """The msa-tf2 improved model.

    Per modality m: ``x = Dropout(LayerNorm(Dense(model_dim)(x_m)))`` (LayerNorm at Keras'
    default epsilon 1e-3), then ``n_layers_mod`` encoder layers each with a residual around it
    (``x = x + Enc(x)``, encoder dropout ``dropout``), then ``h_m = Pool(x)``: one learned-query
    attention pooling layer (:class:`LearnedQueryAttentionPooling`, one head of size
    ``model_dim``) whose weights are shared by the three modalities and the fusion stage.
    Fusion: ``F = stack(h_text, h_video, h_audio)`` through ``n_layers_fuse`` residual encoder
    layers. Adaptive fusion: ``w = softmax(Dense(3)(Dropout(relu(Dense(gate_units)(Pool(F))))))``
    and ``r = sum_k w_k F_k`` (the fused tokens); otherwise ``r = Pool(F)``. Head: ``Dense(
    head_units, relu) -> BatchNorm -> Dropout -> Dense(head_units2, relu) -> Dropout ->
    Dense(1)``. Every Dropout has rate ``dropout`` (msa-tf2's ``dropout_rate``).

    ``l2`` (msa-tf2's ``l2_reg``) with ``l2_scope="theirs"`` regularizes exactly msa-tf2's
    kernels: the three projections, the gate's hidden Dense and the head's two hidden Dense
    layers; ``"all"`` adds the encoders' feed-forward kernels and the gate's output kernel.
    ``key_dim``: per-head size of the encoders' attention, 0 = ``model_dim`` (msa-tf2).
    ``gate_units``: the gate's hidden width, 0 = ``model_dim`` (msa-tf2: a fixed 64).
    """

    _config_keys = MSAModel._config_keys + ("gate_units", "head_units", "head_units2")

    def __init__(
        self,
        text_dim: int,
        audio_dim: int,
        video_dim: int,
        model_dim: int = 64,
        num_heads: int = 4,
        ff_dim: int = 256,
        n_layers_mod: int = 2,
        n_layers_fuse: int = 1,
        dropout: float = 0.3,
        l2: float = 0.01,
        adaptive_fusion: bool = True,
        key_dim: int = 0,
        l2_scope: str = "theirs",
        gate_units: int = 64,
        head_units: int = 128,
        head_units2: int = 64,
        seq_len: int | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        values = dict(
            text_dim=int(text_dim),
            audio_dim=int(audio_dim),
            video_dim=int(video_dim),
            model_dim=int(model_dim),
            num_heads=int(num_heads),
            ff_dim=int(ff_dim),
            n_layers_mod=int(n_layers_mod),
            n_layers_fuse=int(n_layers_fuse),
            dropout=float(dropout),
            l2=float(l2),
            adaptive_fusion=bool(adaptive_fusion),
            key_dim=int(key_dim),
            l2_scope=str(l2_scope),
            gate_units=int(gate_units),
            head_units=int(head_units),
            head_units2=int(head_units2),
            seq_len=None if seq_len is None else int(seq_len),
        )
        v = values
        inputs = _inputs(v["text_dim"], v["audio_dim"], v["video_dim"], v["seq_len"])
        reg, scope = v["l2"], v["l2_scope"]
        rate = v["dropout"]
        theirs = l2_regularizer(_scoped(reg, scope, "theirs"))

        def encoder(layer_name: str) -> TransformerEncoderLayer:
            return TransformerEncoderLayer(
                v["model_dim"],
                v["num_heads"],
                v["ff_dim"],
                rate,
                l2=_scoped(reg, scope, "all"),
                outer_residual=True,
                key_dim=v["key_dim"],
                name=layer_name,
            )

        pool = LearnedQueryAttentionPooling(v["model_dim"], name="attention_pool")
        vectors = {}
        for m in MODALITIES:
            x = keras.layers.Dense(v["model_dim"], kernel_regularizer=theirs, name=f"{m}_proj")(
                inputs[m]
            )
            x = keras.layers.LayerNormalization(epsilon=1e-3, name=f"{m}_proj_norm")(x)
            x = keras.layers.Dropout(rate, name=f"{m}_proj_drop")(x)
            for i in range(v["n_layers_mod"]):
                x = encoder(f"{m}_enc_{i}")(x)
            vectors[m] = pool(x)

        fused = StackModalities(name="stack_modal")([vectors[m] for m in FUSION_ORDER])
        for i in range(v["n_layers_fuse"]):
            fused = encoder(f"fuse_enc_{i}")(fused)
        pooled = pool(fused)
        if v["adaptive_fusion"]:
            g = keras.layers.Dense(
                v["gate_units"] or v["model_dim"],
                activation="relu",
                kernel_regularizer=theirs,
                name="fusion_gate_hidden",
            )(pooled)
            g = keras.layers.Dropout(rate, name="fusion_gate_drop")(g)
            weights = keras.layers.Dense(
                len(FUSION_ORDER),
                activation="softmax",
                kernel_regularizer=l2_regularizer(_scoped(reg, scope, "all")),
                name="fusion_weights",
            )(g)
            rep = WeightedTokenSum(name="adaptive_sum")([fused, weights])
        else:
            rep = pooled
        h = keras.layers.Dense(
            v["head_units"], activation="relu", kernel_regularizer=theirs, name="head_dense1"
        )(rep)
        h = keras.layers.BatchNormalization(name="head_bn")(h)
        h = keras.layers.Dropout(rate, name="head_drop1")(h)
        h = keras.layers.Dense(
            v["head_units2"], activation="relu", kernel_regularizer=theirs, name="head_dense2"
        )(h)
        h = keras.layers.Dropout(rate, name="head_drop2")(h)
        output = keras.layers.Dense(1, dtype="float32", name="output_dense")(h)
        super().__init__(inputs=inputs, outputs=output, name=name, **kwargs)
        self._store_config(values)
