"""A trained model's predictions of a batched dataset, through one traced forward pass per model."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

_FORWARD_ATTR = "_msatune_forward"


def predict(model: keras.Model, dataset: tf.data.Dataset) -> np.ndarray:
    """Predictions of a batched ``(inputs, labels)`` dataset as a flat float32 array.

    One graph per model, traced on the first call with the batch dimension left open, serves
    every split and batch size (validation every epoch, then test for the checkpoints). Keras'
    ``model.predict`` traces again for each new batch shape: with validation's 229-sample batch
    and test's 256 + 174 that is two traces, about 0.5 s each on CPU, in every trial.
    """
    forward = model.__dict__.get(_FORWARD_ATTR)
    if forward is None:
        spec = tf.nest.map_structure(  # batch dimension open even if this dataset's is fixed
            lambda s: tf.TensorSpec([None, *s.shape[1:]], s.dtype), dataset.element_spec[0]
        )

        def _forward(inputs: Any) -> tf.Tensor:
            return model(inputs, training=False)

        forward = tf.function(_forward, input_signature=[spec], autograph=False)
        object.__setattr__(model, _FORWARD_ATTR, forward)  # not a tracked Keras attribute
    parts = [np.asarray(forward(x), dtype=np.float32).reshape(-1) for x, _ in dataset]
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)
