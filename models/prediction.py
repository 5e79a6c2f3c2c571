"""A trained model's predictions of a batched dataset, through one traced forward pass per model.

With ``outputs``, :func:`predict` also hands over each batch's attention-probe outputs (a model's
``attention_probe()``, see :mod:`msatune.models.monitoring`), computed in the same traced graph
and the same pass as the predictions: a monitored epoch validates and probes in one forward pass,
and the trial's test predictions later reuse that graph (two traces and two passes before).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

_FORWARD_ATTR = "_msatune_forward"
_PROBED_ATTR = "_msatune_forward_probed"
_PROBE_ATTR = "_msatune_probe"
#: The model's own output in a probe's output dict (the rest are the probe's).
PREDICTION = "prediction"


def probe_model(model: keras.Model) -> keras.Model | None:
    """``model.attention_probe()`` (duck-typed; None when the model has no probe), built once per
    model and kept on it."""
    if _PROBE_ATTR not in model.__dict__:
        make = getattr(model, "attention_probe", None)
        object.__setattr__(model, _PROBE_ATTR, make() if callable(make) else None)
    return model.__dict__[_PROBE_ATTR]


def _forward(model: keras.Model, element_spec: Any, probed: bool) -> Any:
    """The model's traced forward pass, ``inputs -> {PREDICTION: (B, 1), **probe outputs}``.

    Built once per model and kept on it; a probed one serves unprobed calls too (its extra
    outputs are dropped), an unprobed one is replaced the first time a probe is asked for.
    """
    forward = model.__dict__.get(_FORWARD_ATTR)
    if forward is not None and (model.__dict__.get(_PROBED_ATTR) or not probed):
        return forward
    spec = tf.nest.map_structure(  # batch dimension open even if this dataset's is fixed
        lambda s: tf.TensorSpec([None, *s.shape[1:]], s.dtype), element_spec
    )
    probe = probe_model(model) if probed else None

    def _outputs(inputs: Any) -> dict[str, tf.Tensor]:
        out = dict(probe(inputs, training=False)) if probe is not None else {}
        if PREDICTION not in out:  # a probe without the model's output: the model's own pass beside it
            out[PREDICTION] = model(inputs, training=False)
        return out

    forward = tf.function(_outputs, input_signature=[spec], autograph=False)
    object.__setattr__(model, _FORWARD_ATTR, forward)  # not tracked Keras attributes
    object.__setattr__(model, _PROBED_ATTR, probed)
    return forward


def predict(
    model: keras.Model,
    dataset: tf.data.Dataset,
    *,
    outputs: Callable[[dict[str, np.ndarray]], None] | None = None,
) -> np.ndarray:
    """Predictions of a batched ``(inputs, labels)`` dataset as a flat float32 array.

    One graph per model, traced on the first call with the batch dimension left open, serves
    every split and batch size (validation every epoch, then test for the checkpoints). Keras'
    ``model.predict`` traces again for each new batch shape: with validation's 229-sample batch
    and test's 256 + 174 that is two traces, about 0.5 s each on CPU, in every trial.

    ``outputs``: called with each batch's attention-probe outputs (``{key: array}``, batch
    first), from the same pass; the graph then includes the probe (see the module doc).
    """
    forward = _forward(model, dataset.element_spec[0], probed=outputs is not None)
    parts = []
    for x, _ in dataset:
        out = forward(x)
        parts.append(np.asarray(out[PREDICTION], dtype=np.float32).reshape(-1))
        if outputs is not None:
            outputs({k: np.asarray(v) for k, v in out.items() if k != PREDICTION})
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)
