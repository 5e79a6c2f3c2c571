"""The seqlevel family: msa-tf2's ``MSASeqLevelModel`` (``models/msa_seqlevel.py``), the users'
final model, as a functional Keras model.

Like :mod:`msatune.models.networks`: built on construction from ``keras.Input``, inputs a dict
``{"text": (B, T, Dt), "audio": (B, T, Da), "video": (B, T, Dv)}`` of float32 with ``T =
seq_len`` fixed (the positional embedding has one vector per step), output ``(B, 1)`` float32
(also under a mixed-precision policy); round-trips through ``.keras`` with ``safe_mode=True`` once
msatune is imported, and exports with ``model.export``.

The forward pass, variable for variable msa-tf2's (same shapes, so the same parameter counts:
1,130,372 at dims 300/74/47 and 1,215,620 at 300/74/713 with T 20, model_dim 128, 4 heads, ff 256,
2 + 1 layers, unidirectional, mean pooling):

* masks: a step is padding when all its features are ``|x| < 1e-9`` (per modality);
* per modality m: ``x = Dropout(PositionalEmbedding(Dense(model_dim)(x_m)))``, then
  ``n_layers_mod`` post-norm self-attention blocks (:class:`MaskedAttentionBlock`: GELU FFN,
  LayerNorm epsilon 1e-6, heads ``model_dim // num_heads`` wide, padded keys masked);
* cross-modal fusion, ``n_layers_fuse`` times: text <- audio, then text <- video (the
  cross-attention blocks update text in turn); with ``bidirectional_fusion`` then audio <- text
  and video <- text, attending to the text just updated;
* adaptive fusion head: each modality pooled over its valid steps (``pooling_method`` "mean" or
  "attention"), stacked in the order **text, audio, video**, modality weights ``w =
  softmax(Dense(3)(Dropout(relu(Dense(model_dim // 2)(mean of the three)))))``, representation
  ``sum_k w_k v_k``; output ``Dense(1)``.

Layer names start with the part they belong to: ``text_`` / ``audio_`` / ``video_`` for a
modality's encoder (mask, projection, positional embedding, dropout, blocks ``{m}_enc_{i}``),
``fusion_`` for the cross-modal blocks (``fusion_text_audio_{i}``: text attends to audio) and the
adaptive fusion head (pooling, stack, modality weights, weighted sum), ``head_`` for the output.
:meth:`SeqLevelMSAModel.attention_probe` exposes the modality weights and cross-attention maps.
"""

from __future__ import annotations

from typing import Any

import keras

from msatune.modalities import MODALITIES
from msatune.models.layers import PACKAGE, StackModalities, WeightedTokenSum
from msatune.models.seqlevel_layers import (
    MaskedAttentionBlock,
    MaskedAttentionPool,
    MaskedMeanPool,
    PaddingMask,
    PositionalEmbedding,
)

#: Order of the modality vectors in the fusion head, so of ``modality_weights`` (theirs).
MODALITY_WEIGHT_ORDER = ("text", "audio", "video")

POOLING_METHODS = ("mean", "attention")


def _pairs(bidirectional: bool) -> tuple[tuple[str, str], ...]:
    """(query, context) of the cross-attention blocks of one fusion layer, in their order."""
    forward = (("text", "audio"), ("text", "video"))
    return forward + (("audio", "text"), ("video", "text")) if bidirectional else forward


def _make_layers(v: dict[str, Any]) -> dict[str, keras.layers.Layer]:
    dim, rate = v["model_dim"], v["dropout"]

    def block(name: str) -> MaskedAttentionBlock:
        return MaskedAttentionBlock(dim, v["num_heads"], v["ff_dim"], rate, name=name)

    layers: list[keras.layers.Layer] = []
    for m in MODALITIES:
        layers += [
            PaddingMask(name=f"{m}_mask"),
            keras.layers.Dense(dim, name=f"{m}_proj"),
            PositionalEmbedding(v["seq_len"], dim, name=f"{m}_pos"),
            keras.layers.Dropout(rate, name=f"{m}_drop"),
        ]
        layers += [block(f"{m}_enc_{i}") for i in range(v["n_layers_mod"])]
    for i in range(v["n_layers_fuse"]):
        layers += [block(f"fusion_{q}_{c}_{i}") for q, c in _pairs(v["bidirectional_fusion"])]
    for m in MODALITY_WEIGHT_ORDER:
        name = f"fusion_pool_{m}"
        pool = MaskedAttentionPool(dim, name=name) if v["pooling_method"] == "attention" else None
        layers.append(pool or MaskedMeanPool(name=name))
    layers += [
        StackModalities(name="fusion_stack"),
        keras.layers.GlobalAveragePooling1D(name="fusion_global_mean"),
        keras.layers.Dense(dim // 2, activation="relu", name="fusion_weights_hidden"),
        keras.layers.Dropout(rate, name="fusion_weights_drop"),
        keras.layers.Dense(len(MODALITY_WEIGHT_ORDER), activation="softmax", name="fusion_weights"),
        WeightedTokenSum(name="fusion_sum"),
        keras.layers.Dense(1, dtype="float32", name="head_output"),
    ]
    return {layer.name: layer for layer in layers}


def _forward(
    layers: dict[str, keras.layers.Layer], inputs: dict[str, Any], v: dict[str, Any], probe: bool
) -> Any:
    """The forward graph over ``inputs`` with ``layers``; with ``probe`` the probe's outputs."""
    seqs, masks = {}, {}
    for m in MODALITIES:
        masks[m] = layers[f"{m}_mask"](inputs[m])
        x = layers[f"{m}_pos"](layers[f"{m}_proj"](inputs[m]))
        x = layers[f"{m}_drop"](x)
        for i in range(v["n_layers_mod"]):
            x, _ = layers[f"{m}_enc_{i}"](x, x, masks[m])
        seqs[m] = x
    probed: dict[str, Any] = {}
    for i in range(v["n_layers_fuse"]):
        for q, c in _pairs(v["bidirectional_fusion"]):
            # The last fusion layer's maps are the probe's.
            seqs[q], probed[f"{q}<-{c}"] = layers[f"fusion_{q}_{c}_{i}"](seqs[q], seqs[c], masks[c])
    vectors = [layers[f"fusion_pool_{m}"](seqs[m], masks[m]) for m in MODALITY_WEIGHT_ORDER]
    stack = layers["fusion_stack"](vectors)
    hidden = layers["fusion_weights_hidden"](layers["fusion_global_mean"](stack))
    weights = layers["fusion_weights"](layers["fusion_weights_drop"](hidden))
    prediction = layers["head_output"](layers["fusion_sum"]([stack, weights]))
    if probe:
        return {"prediction": prediction, "modality_weights": weights, **probed}
    return prediction


def _inputs(v: dict[str, Any]) -> dict[str, keras.KerasTensor]:
    return {
        m: keras.Input(shape=(v["seq_len"], v[f"{m}_dim"]), dtype="float32", name=m)
        for m in MODALITIES
    }


@keras.saving.register_keras_serializable(package=PACKAGE)
class SeqLevelMSAModel(keras.Model):
    """msa-tf2's ``MSASeqLevelModel`` (see the module docstring for the forward pass).

    ``dropout`` is their ``dropout_rate`` (every Dropout, attention dropout included). Their
    sizes need ``model_dim`` divisible by ``num_heads`` and ``model_dim >= 4``
    (:func:`msatune.models.build.build_model` says so as a user error).
    """

    _config_keys = (
        "text_dim",
        "audio_dim",
        "video_dim",
        "seq_len",
        "model_dim",
        "num_heads",
        "ff_dim",
        "n_layers_mod",
        "n_layers_fuse",
        "dropout",
        "bidirectional_fusion",
        "pooling_method",
    )

    def __init__(
        self,
        text_dim: int,
        audio_dim: int,
        video_dim: int,
        seq_len: int,
        model_dim: int = 128,
        num_heads: int = 4,
        ff_dim: int = 256,
        n_layers_mod: int = 2,
        n_layers_fuse: int = 1,
        dropout: float = 0.1,
        bidirectional_fusion: bool = False,
        pooling_method: str = "mean",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if pooling_method not in POOLING_METHODS:
            raise ValueError(f"pooling_method {pooling_method!r} is not one of {POOLING_METHODS}")
        values = dict(
            text_dim=int(text_dim),
            audio_dim=int(audio_dim),
            video_dim=int(video_dim),
            seq_len=int(seq_len),
            model_dim=int(model_dim),
            num_heads=int(num_heads),
            ff_dim=int(ff_dim),
            n_layers_mod=int(n_layers_mod),
            n_layers_fuse=int(n_layers_fuse),
            dropout=float(dropout),
            bidirectional_fusion=bool(bidirectional_fusion),
            pooling_method=str(pooling_method),
        )
        inputs = _inputs(values)
        output = _forward(_make_layers(values), inputs, values, probe=False)
        super().__init__(inputs=inputs, outputs=output, name=name, **kwargs)
        self._seqlevel_config = values

    @property
    def seq_len(self) -> int:
        return self._seqlevel_config["seq_len"]

    def get_config(self) -> dict[str, Any]:
        config = {"name": self.name, "trainable": self.trainable}
        config.update({k: self._seqlevel_config[k] for k in self._config_keys})
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> SeqLevelMSAModel:
        return cls(**config)

    def attention_probe(self) -> keras.Model:
        """A functional model over the same input dict, made of this model's layers (no new
        weights), whose output is a dict: ``"prediction"``, this model's own output (so one pass
        gives both, :mod:`msatune.models.prediction`); ``"modality_weights"`` ``(B, 3)``, the fusion head's
        softmax weights in the order text, audio, video; ``"text<-audio"`` and ``"text<-video"``
        (and with ``bidirectional_fusion`` ``"audio<-text"``, ``"video<-text"``): the attention
        probabilities ``(B, heads, T, T)`` (query step, context step) of the last cross-modal
        fusion layer (none with ``n_layers_fuse = 0``). Call it in inference (dropout off)."""
        layers = {layer.name: layer for layer in self.layers}
        values = self._seqlevel_config
        inputs = _inputs(values)
        outputs = _forward(layers, inputs, values, probe=True)
        return keras.Model(inputs=inputs, outputs=outputs, name=f"{self.name}_attention_probe")
