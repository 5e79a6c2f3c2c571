"""The custom layers of exported ensembles: each member's output clipped to the label range, and
the per-sample median of the members' outputs.

Registered serializable (package ``msatune_ensemble``), so an ensemble's ``.keras`` file loads
with ``safe_mode=True`` once this module (and ``models.networks``) is imported. The SavedModel
export of any ensemble needs no msatune code at all.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

PACKAGE = "msatune_ensemble"


@keras.saving.register_keras_serializable(package=PACKAGE)
class LabelRange(keras.layers.Layer):
    """A member's predictions clipped to [low, high] (the sentiment scale, -3..3): what the
    study's recorded predictions are scored as (:mod:`msatune.label_range`)."""

    def __init__(self, low: float = -3.0, high: float = 3.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.low, self.high = float(low), float(high)

    def call(self, x: Any) -> Any:
        return ops.clip(x, self.low, self.high)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "low": self.low, "high": self.high}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MemberMedian(keras.layers.Layer):
    """``(B, k)`` member predictions -> ``(B, 1)`` per-sample median (the mean of the two middle
    values for even ``k``, like ``numpy.median``)."""

    def call(self, x: Any) -> Any:
        k = x.shape[-1]
        s = ops.sort(x, axis=-1)
        mid = k // 2
        if k % 2:
            out = s[:, mid : mid + 1]
        else:
            out = (s[:, mid - 1 : mid] + s[:, mid : mid + 1]) * 0.5
        return out

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], 1)

    def get_config(self) -> dict[str, Any]:
        return super().get_config()
