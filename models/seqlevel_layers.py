"""The custom layers of the seqlevel family (:mod:`msatune.models.seqlevel`), registered
serializable (package ``msatune``) with JSON-typed constructor arguments, so the model round-trips
through a ``.keras`` file with ``safe_mode=True`` and exports with ``model.export``.

Masks are boolean ``(B, T)``, True on a valid step. The mask and the two pooling layers compute in
float32 whatever the dtype policy: msa-tf2 derives its masks from the float32 inputs (a step is
padding when every feature's ``|x| < 1e-9``, which float16 cannot tell from 0), and the pooling's
``1e-9`` floor and ``-1e9`` fill overflow or vanish in float16.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from msatune.models.layers import PACKAGE

#: A step is padding when every feature is within this of 0 (msa-tf2's ``create_padding_mask``).
PAD_EPSILON = 1e-9


def _float32(kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs.setdefault("dtype", "float32")
    return kwargs


@keras.saving.register_keras_serializable(package=PACKAGE)
class PaddingMask(keras.layers.Layer):
    """``(B, T, D)`` features to a ``(B, T)`` boolean mask: False where every feature of the step
    has ``|x| < 1e-9`` (an all-zero, padded step), True elsewhere. Computes in float32."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**_float32(kwargs))

    def call(self, x: Any) -> Any:
        return ops.logical_not(ops.all(ops.abs(x) < PAD_EPSILON, axis=-1))

    def compute_output_spec(self, x: Any) -> keras.KerasTensor:
        return keras.KerasTensor(tuple(x.shape[:-1]), dtype="bool")


@keras.saving.register_keras_serializable(package=PACKAGE)
class PositionalEmbedding(keras.layers.Layer):
    """Adds a learned ``(seq_len, model_dim)`` embedding (Glorot-uniform initialized), one vector
    per time step, to a ``(B, T, model_dim)`` sequence (its first T rows, ``T <= seq_len``)."""

    def __init__(self, seq_len: int, model_dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seq_len = int(seq_len)
        self.model_dim = int(model_dim)

    def build(self, input_shape: tuple) -> None:
        self.positional_embedding = self.add_weight(
            name="positional_embedding",
            shape=(self.seq_len, self.model_dim),
            initializer="glorot_uniform",
        )

    def call(self, x: Any) -> Any:
        steps = ops.shape(x)[1]
        return x + ops.cast(self.positional_embedding[:steps, :], x.dtype)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(seq_len=self.seq_len, model_dim=self.model_dim)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskedAttentionBlock(keras.layers.Layer):
    """msa-tf2's ``TransformerBlock`` (``query`` is ``context``) and ``CrossAttentionBlock``.

    ``a = MHA(query, context, context)`` with ``num_heads`` heads of size ``model_dim //
    num_heads``, attention dropout ``dropout``, the context's padded steps masked out as keys;
    ``x = LN(query + Dropout(a))``; ``y = LN(x + Dropout(FFN(x)))`` with ``FFN = Dense(ff_dim,
    gelu) -> Dropout -> Dense(model_dim)`` and both LayerNorms at epsilon 1e-6 (post-norm: the
    norm follows each residual sum). Returns ``(y, scores)``: the block's output and the
    attention probabilities, ``(B, heads, T_query, T_context)`` (always both, so that every call
    of the layer has the same outputs, as Keras' functional graph requires of a shared layer).
    """

    def __init__(
        self, model_dim: int, num_heads: int, ff_dim: int, dropout: float = 0.1, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.model_dim = int(model_dim)
        self.num_heads = int(num_heads)
        self.ff_dim = int(ff_dim)
        self.dropout = float(dropout)
        self.mha = keras.layers.MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=self.model_dim // self.num_heads,
            dropout=self.dropout,
            name="mha",
        )
        self.ffn1 = keras.layers.Dense(self.ff_dim, activation="gelu", name="ffn1")
        self.ffn_drop = keras.layers.Dropout(self.dropout, name="ffn_drop")
        self.ffn2 = keras.layers.Dense(self.model_dim, name="ffn2")
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-6, name="norm1")
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-6, name="norm2")
        self.drop1 = keras.layers.Dropout(self.dropout, name="drop1")
        self.drop2 = keras.layers.Dropout(self.dropout, name="drop2")

    def build(
        self, query_shape: tuple, context_shape: tuple, context_mask_shape: Any = None
    ) -> None:
        self.mha.build(query_shape, context_shape)
        self.norm1.build(query_shape)
        self.ffn1.build(query_shape)
        self.ffn2.build(tuple(query_shape[:-1]) + (self.ff_dim,))
        self.norm2.build(query_shape)

    def call(
        self,
        query: Any,
        context: Any,
        context_mask: Any,
        training: bool | None = None,
    ) -> tuple[Any, Any]:
        attention_mask = context_mask[:, None, :]  # (B, 1, T_context): every query step
        attn, scores = self.mha(
            query=query,
            value=context,
            key=context,
            attention_mask=attention_mask,
            return_attention_scores=True,
            training=training,
        )
        x = self.norm1(query + self.drop1(attn, training=training))
        ff = self.ffn2(self.ffn_drop(self.ffn1(x), training=training))
        y = self.norm2(x + self.drop2(ff, training=training))
        return y, scores

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            model_dim=self.model_dim,
            num_heads=self.num_heads,
            ff_dim=self.ff_dim,
            dropout=self.dropout,
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskedMeanPool(keras.layers.Layer):
    """``(B, T, D)`` and its ``(B, T)`` mask to ``(B, D)``: the mean over the valid steps
    (``sum(x * mask) / max(count, 1e-9)``, so an all-padded sequence pools to 0). Float32."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**_float32(kwargs))

    def call(self, x: Any, step_mask: Any) -> Any:
        valid = ops.expand_dims(ops.cast(step_mask, x.dtype), -1)
        count = ops.maximum(ops.sum(valid, axis=1), 1e-9)
        return ops.sum(x * valid, axis=1) / count

    def compute_output_shape(self, x_shape: tuple, step_mask_shape: tuple) -> tuple:
        return (x_shape[0], x_shape[-1])


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskedAttentionPool(keras.layers.Layer):
    """``(B, T, D)`` and its mask to ``(B, D)``: ``s = Dense(1)(Dense(model_dim // 4, tanh)(x))``,
    padded steps' scores set to ``-1e9`` (``s * m + (1 - m) * -1e9``), softmax over time, and the
    weighted sum of ``x`` (msa-tf2's ``attention_pool_i``). Float32."""

    def __init__(self, model_dim: int, **kwargs: Any) -> None:
        super().__init__(**_float32(kwargs))
        self.model_dim = int(model_dim)
        self.hidden = keras.layers.Dense(
            self.model_dim // 4, activation="tanh", dtype=self.dtype_policy, name="hidden"
        )
        self.score = keras.layers.Dense(1, dtype=self.dtype_policy, name="score")

    def build(self, x_shape: tuple, step_mask_shape: Any = None) -> None:
        self.hidden.build(x_shape)
        self.score.build(tuple(x_shape[:-1]) + (self.model_dim // 4,))

    def call(self, x: Any, step_mask: Any) -> Any:
        scores = self.score(self.hidden(x))
        valid = ops.expand_dims(ops.cast(step_mask, scores.dtype), -1)
        scores = scores * valid + (1.0 - valid) * -1e9
        weights = ops.softmax(scores, axis=1)
        return ops.sum(x * weights, axis=1)

    def compute_output_shape(self, x_shape: tuple, step_mask_shape: tuple) -> tuple:
        return (x_shape[0], x_shape[-1])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(model_dim=self.model_dim)
        return config
