"""Custom Keras layers of the MSA models, all registered serializable (package ``msatune``).

Every layer takes only JSON-typed constructor arguments and returns them from ``get_config``, so a
model built from them round-trips through a ``.keras`` file with ``safe_mode=True``. All ops are
vectorized over batch and time (no Python loops over time steps) and work under ``jit_compile``
and mixed precision.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

PACKAGE = "msatune"


def l2_regularizer(l2: float) -> keras.regularizers.Regularizer | None:
    """An L2 kernel regularizer, or ``None`` when ``l2`` is 0."""
    return keras.regularizers.L2(float(l2)) if l2 and l2 > 0 else None


@keras.saving.register_keras_serializable(package=PACKAGE)
class TransformerEncoderLayer(keras.layers.Layer):
    """A post-norm transformer encoder layer (the msa-tf2 ``TransformerEncoder``).

    ``x1 = LN(x + Dropout(MHA(x, x)))``; ``y = LN(x1 + Dropout(FFN(x1)))`` with
    ``FFN = Dense(ff_dim, relu) -> Dense(model_dim)`` and both LayerNorms at epsilon 1e-6. With
    ``outer_residual`` the layer returns ``x + y`` (the improved model's residual connection
    around every encoder layer). Attention has ``num_heads`` heads of size ``key_dim`` each
    (query, key and value projections ``model_dim -> num_heads x key_dim``, output projection
    back to ``model_dim``, no attention dropout); ``key_dim`` 0 means ``model_dim``, as msa-tf2's
    ``MultiHeadAttention(num_heads, key_dim=model_dim)``. ``l2`` (> 0) regularizes the two FFN
    kernels (msa-tf2 never does; the models pass it only for ``l2_scope="all"``).
    """

    def __init__(
        self,
        model_dim: int,
        num_heads: int,
        ff_dim: int,
        dropout: float = 0.1,
        l2: float = 0.0,
        outer_residual: bool = False,
        key_dim: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_dim = int(model_dim)
        self.num_heads = int(num_heads)
        self.ff_dim = int(ff_dim)
        self.dropout = float(dropout)
        self.l2 = float(l2)
        self.outer_residual = bool(outer_residual)
        self.key_dim = int(key_dim)
        self.mha = keras.layers.MultiHeadAttention(
            num_heads=self.num_heads, key_dim=self.key_dim or self.model_dim, name="mha"
        )
        self.ffn1 = keras.layers.Dense(
            self.ff_dim,
            activation="relu",
            kernel_regularizer=l2_regularizer(self.l2),
            name="ffn1",
        )
        self.ffn2 = keras.layers.Dense(
            self.model_dim, kernel_regularizer=l2_regularizer(self.l2), name="ffn2"
        )
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-6, name="norm1")
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-6, name="norm2")
        self.drop1 = keras.layers.Dropout(self.dropout, name="drop1")
        self.drop2 = keras.layers.Dropout(self.dropout, name="drop2")

    def build(self, input_shape: tuple) -> None:
        self.mha.build(input_shape, input_shape)
        self.norm1.build(input_shape)
        self.ffn1.build(input_shape)
        self.ffn2.build(tuple(input_shape[:-1]) + (self.ff_dim,))
        self.norm2.build(input_shape)

    def call(self, x: Any, training: bool | None = None) -> Any:
        attn = self.mha(x, x, training=training)
        x1 = self.norm1(x + self.drop1(attn, training=training))
        ff = self.ffn2(self.ffn1(x1))
        y = self.norm2(x1 + self.drop2(ff, training=training))
        return x + y if self.outer_residual else y

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            model_dim=self.model_dim,
            num_heads=self.num_heads,
            ff_dim=self.ff_dim,
            dropout=self.dropout,
            l2=self.l2,
            outer_residual=self.outer_residual,
            key_dim=self.key_dim,
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class LearnedQueryAttentionPooling(keras.layers.Layer):
    """Pools ``(B, T, D)`` to ``(B, D)``: a learned ``(1, D)`` query attends over the T axis.

    ``MHA(query, x, x)`` with one head of key size ``model_dim`` (query/key/value/output
    projections with biases, no attention dropout) and the query initialized from
    ``RandomNormal(stddev=0.05)`` (Keras' ``"random_normal"``), as the msa-tf2 improved model's
    ``attention_pool`` with its ``pool_query``. Works for any T (the query is broadcast to the
    batch, never tiled over time).
    """

    def __init__(self, model_dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_dim = int(model_dim)
        self.mha = keras.layers.MultiHeadAttention(num_heads=1, key_dim=self.model_dim, name="mha")

    def build(self, input_shape: tuple) -> None:
        self.query = self.add_weight(
            name="query",
            shape=(1, self.model_dim),
            initializer=keras.initializers.RandomNormal(stddev=0.05),
        )
        batch = input_shape[0]
        self.mha.build((batch, 1, self.model_dim), input_shape)

    def call(self, x: Any, training: bool | None = None) -> Any:
        # (B, 1, D) query without a Python-level batch size: zeros shaped like one time step.
        q = ops.zeros_like(x[:, :1, :]) + ops.cast(self.query, x.dtype)
        pooled = self.mha(q, x, training=training)
        return pooled[:, 0, :]

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(model_dim=self.model_dim)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class StackModalities(keras.layers.Layer):
    """Stacks a list of ``(B, D)`` modality vectors into ``(B, M, D)`` tokens."""

    def call(self, vectors: list) -> Any:
        return ops.stack(vectors, axis=1)

    def compute_output_shape(self, input_shape: list) -> tuple:
        first = tuple(input_shape[0])
        return (first[0], len(input_shape), first[-1])


@keras.saving.register_keras_serializable(package=PACKAGE)
class WeightedTokenSum(keras.layers.Layer):
    """``sum_m w[b, m] * tokens[b, m, :]``: the adaptive fusion's weighted sum."""

    def call(self, inputs: list) -> Any:
        tokens, weights = inputs
        weights = ops.cast(weights, tokens.dtype)
        return ops.sum(tokens * ops.expand_dims(weights, -1), axis=1)

    def compute_output_shape(self, input_shape: list) -> tuple:
        tokens_shape = tuple(input_shape[0])
        return (tokens_shape[0], tokens_shape[-1])
