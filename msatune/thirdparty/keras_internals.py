"""Keras' and TensorFlow's private API as msatune uses it (checked against keras 3.15.1 and
tensorflow 2.21.0).

* ``keras.src.saving.saving_lib.save_weights_only(..., objects_to_skip=)``: a compiled model's
  weights without its optimizer state (a third of the checkpoint with Adam); the public
  ``save_weights`` writes both. The public call is the fallback.
* ``Model._symbolic_build(data_batch=)``: builds the model's metric variables before the first
  traced step, so TensorFlow does not trace the whole train step twice (an optional speed-up).
* A Keras optimizer's ``_backend_apply_gradients`` (overridden by :class:`ApplyGradientsHook`),
  and the ``_clip_gradients``, ``_use_weight_decay`` and ``_get_variable_index`` it needs, and
  ``Optimizer.build`` called past Adam's (its slots are not built): msatune's grouped Adam/AdamW
  (:mod:`msatune.models.optimizers`), which replicates ``tf.clip_by_norm`` (what Keras'
  TensorFlow optimizer clips ``clipnorm`` with) over all gradients at once.
* ``tensorflow.python.framework.ops._gradient_registry._registry``: TensorFlow's process-wide
  registry of custom gradients, from which each training run's entries are released
  (:mod:`msatune.models.graph_registry`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The Keras and TensorFlow releases these accesses were last checked against.
CHECKED_AGAINST = {"keras": "3.15.1", "tensorflow": "2.21.0"}


def save_weights_without(model: Any, path: Path, skip: list[Any]) -> bool:
    """Save ``model``'s weights to ``path`` leaving out the objects in ``skip`` (e.g. its
    optimizer); False (nothing written) when this Keras cannot."""
    try:
        from keras.src.saving import saving_lib

        saving_lib.save_weights_only(model, str(path), objects_to_skip=skip)
        return True
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - other Keras
        log.debug("Keras cannot save weights without %s", skip)
        return False


def symbolic_build(model: Any, data_batch: Any) -> bool:
    """Build ``model``'s variables from one batch before tracing; False when this Keras cannot."""
    build = getattr(model, "_symbolic_build", None)
    if build is None:
        return False
    build(data_batch=data_batch)
    return True


def gradient_registry() -> dict | None:
    """TensorFlow's registry of gradient functions (None if this TensorFlow has none we know)."""
    try:
        from tensorflow.python.framework import ops
    except ImportError:  # pragma: no cover - TensorFlow is a dependency
        return None
    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    return registry if isinstance(registry, dict) else None


class ApplyGradientsHook:
    """Mixin for an Adam-family Keras optimizer: its gradient step through :meth:`apply_update`.

    Keras' ``_backend_apply_gradients`` (after loss scaling and accumulation) clips the gradients,
    applies weight decay and updates each variable. When :meth:`can_apply` says so, the
    gradients go to the subclass's ``apply_update(grads, variables)`` instead (clipped by Keras
    first unless :attr:`clips_itself`); otherwise Keras' own path runs. The clipping and decay
    accessors below are the rest of what such a step needs.
    """

    def can_apply(self, grads: list, variables: list) -> bool:  # pragma: no cover - overridden
        return False

    def apply_update(self, grads: list, variables: list) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    #: True: :meth:`apply_update` gets the gradients unclipped and clips them itself (as Keras'
    #: TensorFlow optimizer does: ``tf.clip_by_norm`` per gradient for ``clipnorm``)
    clips_itself = False

    def _backend_apply_gradients(self, grads: list, trainable_variables: list) -> None:
        if not self.can_apply(grads, trainable_variables):
            super()._backend_apply_gradients(grads, trainable_variables)
            return
        self.apply_update(grads if self.clips_itself else self._clip_gradients(grads), trainable_variables)

    def clip_gradients(self, grads: list) -> list:
        """Keras' own clipping of ``grads`` (clipnorm, global_clipnorm or clipvalue, as set)."""
        return self._clip_gradients(grads)

    def variable_index(self, variable: Any) -> int:
        """The optimizer's index of ``variable`` (its place in the list it was built on)."""
        return int(self._get_variable_index(variable))

    @staticmethod
    def build_base(optimizer: Any, var_list: list) -> None:
        """``keras.optimizers.Optimizer.build`` alone: the step count and the variable index,
        without the subclass's slots (Adam's per-variable moments)."""
        import keras

        keras.optimizers.Optimizer.build(optimizer, var_list)

    def decays(self, variable: Any) -> bool:
        """Whether weight decay applies to ``variable``."""
        return bool(self._use_weight_decay(variable))


def check() -> list[str]:
    """Every access above, tried on a tiny real model and optimizer; what failed (empty: all work)."""
    import tempfile

    import keras
    import numpy as np

    problems: list[str] = []
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="adam", loss="mae")
    x, y = np.zeros((4, 3), "float32"), np.zeros((4, 1), "float32")
    try:
        if not symbolic_build(model, (x, y)):
            problems.append("Model._symbolic_build is gone")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"Model._symbolic_build: {type(exc).__name__}: {exc}")
    model.fit(x, y, epochs=1, verbose=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.weights.h5"
        if not save_weights_without(model, path, [model.optimizer]) or not path.is_file():
            problems.append("keras.src.saving.saving_lib.save_weights_only(objects_to_skip=) failed")
    if gradient_registry() is None:
        problems.append("tensorflow.python.framework.ops._gradient_registry._registry is gone")

    class Probe(ApplyGradientsHook, keras.optimizers.AdamW):
        seen: list = []

        clips_itself = True

        def build(self, var_list: list) -> None:
            self.build_base(self, var_list)

        def can_apply(self, grads: list, variables: list) -> bool:
            return True

        def apply_update(self, grads: list, variables: list) -> None:
            self.seen.append([(self.variable_index(v), self.decays(v), self.clip_gradients(grads)) for v in variables])

    try:
        probe = Probe(learning_rate=0.1, clipnorm=1.0)
        variable = keras.Variable(np.ones(2, "float32"))
        probe.apply_gradients([(keras.ops.ones(2), variable)])
        if not Probe.seen or len(Probe.seen[0]) != 1:
            problems.append("Optimizer._backend_apply_gradients is no longer called by apply_gradients")
        elif probe.variables and any(len(v.shape) for v in probe.variables):
            problems.append("Optimizer.build creates per-variable slots: the grouped Adam's own slots would double them")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"Keras optimizer internals: {type(exc).__name__}: {exc}")
    return problems
