"""The two MSA model families: the baseline ``MSAModel`` and the ``ImprovedMSAModel``.

Both are functional Keras models (subclasses of ``keras.Model`` that build their graph in
``__init__`` from ``keras.Input``), so they are built on construction, can be called symbolically
inside another functional model (an ensemble), export with ``model.export``, and round-trip through
``.keras`` with ``safe_mode=True`` once this module is imported (Keras 3 does not import custom
modules itself).

Inputs: a dict ``{"text": (B, T, Dt), "audio": (B, T, Da), "video": (B, T, Dv)}`` of float32; T is
``None`` in the input spec unless ``seq_len`` is given. Output: ``(B, 1)`` float32 (the output
layer is float32 even under a mixed-precision policy).

Faithful to the msa-tf2 code: modality vectors are stacked as tokens in the order text, video,
audio; the baseline's adaptive fusion computes its softmax weights from the mean of the *fused*
tokens and applies them to the *pre-fusion* modality vectors (as msa-tf2 ``MSAModel`` does); the
improved model pools with one learned-query attention layer shared by the three modalities and
the fusion tokens, and weights the fused tokens.
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
        config.update({k: getattr(self, f"_cfg_{k}") for k in self._config_keys})
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> _MSABase:
        return cls(**config)

    def _store_config(self, values: dict[str, Any]) -> None:
        for k in self._config_keys:
            setattr(self, f"_cfg_{k}", values[k])

    @property
    def seq_len(self) -> int | None:
        return self._cfg_seq_len


@keras.saving.register_keras_serializable(package=PACKAGE)
class MSAModel(_MSABase):
    """The msa-tf2 baseline: per-modality encoders, cross-modal fusion, optional adaptive fusion.

    ``Dense(model_dim)`` projection per modality -> ``n_layers_mod`` post-norm encoder layers ->
    average over time; the three vectors as tokens -> ``n_layers_fuse`` fusion encoder layers;
    adaptive fusion: ``Dense(3, softmax)`` on the mean fused token, weighted sum of the modality
    vectors; otherwise the mean fused token; ``Dense(1)``. ``l2`` (> 0) regularizes the
    projection, feed-forward and gate kernels.
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
            seq_len=None if seq_len is None else int(seq_len),
        )
        v = values
        inputs = _inputs(v["text_dim"], v["audio_dim"], v["video_dim"], v["seq_len"])
        reg = v["l2"]

        def encoder(layer_name: str) -> TransformerEncoderLayer:
            return TransformerEncoderLayer(
                v["model_dim"], v["num_heads"], v["ff_dim"], v["dropout"], l2=reg, name=layer_name
            )

        vectors = {}
        for m in MODALITIES:
            x = keras.layers.Dense(
                v["model_dim"], kernel_regularizer=l2_regularizer(reg), name=f"{m}_proj"
            )(inputs[m])
            for i in range(v["n_layers_mod"]):
                x = encoder(f"{m}_enc_{i}")(x)
            vectors[m] = keras.layers.GlobalAveragePooling1D(name=f"{m}_pool")(x)

        tokens = StackModalities(name="stack_modal")([vectors[m] for m in FUSION_ORDER])
        fused = tokens
        for i in range(v["n_layers_fuse"]):
            fused = encoder(f"fuse_enc_{i}")(fused)
        fused_mean = keras.layers.GlobalAveragePooling1D(name="fuse_pool")(fused)
        if v["adaptive_fusion"]:
            weights = keras.layers.Dense(
                len(FUSION_ORDER),
                activation="softmax",
                kernel_regularizer=l2_regularizer(reg),
                name="fusion_weights",
            )(fused_mean)
            rep = WeightedTokenSum(name="adaptive_sum")([tokens, weights])
        else:
            rep = fused_mean
        output = keras.layers.Dense(1, dtype="float32", name="output_dense")(rep)
        super().__init__(inputs=inputs, outputs=output, name=name, **kwargs)
        self._store_config(values)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ImprovedMSAModel(_MSABase):
    """The msa-tf2 improved model.

    Projection ``Dense -> LayerNorm -> Dropout`` per modality; encoder layers with a residual
    connection around each (modality and fusion); learned-query attention pooling (one layer,
    shared by the modalities and the fusion tokens) instead of averaging; adaptive fusion with an
    MLP gate ``Dense(model_dim, relu) -> Dropout -> Dense(3, softmax)`` on the pooled fused tokens,
    weighted sum of the fused tokens (else the pooled fused tokens); head ``Dense(head_units,
    relu) -> BatchNorm -> Dropout -> Dense(head_units2, relu) -> Dropout -> Dense(1)``. ``l2``
    regularizes every Dense kernel except the output layer (attention projections excluded).
    """

    _config_keys = MSAModel._config_keys + ("head_units", "head_units2")

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
        dropout: float = 0.4,
        l2: float = 0.01,
        adaptive_fusion: bool = True,
        head_units: int = 64,
        head_units2: int = 32,
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
            head_units=int(head_units),
            head_units2=int(head_units2),
            seq_len=None if seq_len is None else int(seq_len),
        )
        v = values
        inputs = _inputs(v["text_dim"], v["audio_dim"], v["video_dim"], v["seq_len"])
        reg = v["l2"]
        rate = v["dropout"]

        def encoder(layer_name: str) -> TransformerEncoderLayer:
            return TransformerEncoderLayer(
                v["model_dim"],
                v["num_heads"],
                v["ff_dim"],
                rate,
                l2=reg,
                outer_residual=True,
                name=layer_name,
            )

        pool = LearnedQueryAttentionPooling(v["model_dim"], name="attention_pool")
        vectors = {}
        for m in MODALITIES:
            x = keras.layers.Dense(
                v["model_dim"], kernel_regularizer=l2_regularizer(reg), name=f"{m}_proj"
            )(inputs[m])
            x = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{m}_proj_norm")(x)
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
                v["model_dim"],
                activation="relu",
                kernel_regularizer=l2_regularizer(reg),
                name="fusion_gate_hidden",
            )(pooled)
            g = keras.layers.Dropout(rate, name="fusion_gate_drop")(g)
            weights = keras.layers.Dense(
                len(FUSION_ORDER),
                activation="softmax",
                kernel_regularizer=l2_regularizer(reg),
                name="fusion_weights",
            )(g)
            rep = WeightedTokenSum(name="adaptive_sum")([fused, weights])
        else:
            rep = pooled
        h = keras.layers.Dense(
            v["head_units"],
            activation="relu",
            kernel_regularizer=l2_regularizer(reg),
            name="head_dense1",
        )(rep)
        h = keras.layers.BatchNormalization(name="head_bn")(h)
        h = keras.layers.Dropout(rate, name="head_drop1")(h)
        h = keras.layers.Dense(
            v["head_units2"],
            activation="relu",
            kernel_regularizer=l2_regularizer(reg),
            name="head_dense2",
        )(h)
        h = keras.layers.Dropout(rate, name="head_drop2")(h)
        output = keras.layers.Dense(1, dtype="float32", name="output_dense")(h)
        super().__init__(inputs=inputs, outputs=output, name=name, **kwargs)
        self._store_config(values)
