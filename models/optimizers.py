"""Keras' Adam and AdamW in far fewer traced ops: grouped (Keras' arithmetic, bit for bit) and fused.

Keras 3 builds Adam's update from ~30 small ops per variable (casts, the beta powers, the moment
updates, the step, the distribution strategy's wrappers), AdamW adds ~8 more for the weight decay,
and a traced train step holds them once per variable: 4,270 of the baseline model's 7,921
train-step ops (122 variables), 8,410 of the improved model's 13,570. Each op costs its Python
construction when the step is traced and its dispatch on every step: measured on 2 cores, the
optimizer was a third of a batch-4 baseline step (12.0 ms vs 7.8 ms with SGD) and 2-4 s of each
trial's tracing, a third of a first-rung trial's (issue 25).

:class:`GroupedAdam` and :class:`GroupedAdamW` (the default, ``models.recipe.make_optimizer``)
run Keras' own ``update_step`` arithmetic once per step on one flat tensor per dtype instead of
once per variable: the gradients are concatenated, the first and second moments live in one flat
slot each, and the step is split back and subtracted from each variable. Every element goes
through exactly Keras' operations in Keras' order (the same ``keras.ops`` calls, the same Python
float constants, the moments updated in place and read back as Keras does), so a run is bitwise
the run with Keras' optimizer: pinned over the improved and baseline presets' whole recipes
(schedule, dropout, augmentation, clipnorm, AdamW weight decay) by
``tests/models/test_optimizers.py``. What it changes is the graph: ~4 ops per variable instead of
~30, one elementwise pass over all weights instead of one per variable. ``clipnorm`` is
``tf.clip_by_norm`` per gradient (what Keras' TensorFlow optimizer calls) with only its sum of
squares kept per variable and the rest done once; weight decay (``var -= var * wd * lr`` before
the update) stays per variable; ``global_clipnorm`` and ``clipvalue`` are Keras' own code. Its slots are its own (``momentum_float32``,
``velocity_float32``, flat): optimizer state saved by Keras' Adam does not load into it, which
nothing in msatune does (checkpoints hold weights only).

:class:`FusedAdam` and :class:`FusedAdamW` (opt-in, ``make_optimizer(update="fused")``) update each
variable with one ``ResourceApplyAdam``, whose CPU and GPU kernels compute Keras' formulas but
form ``1 - beta`` from the float32 betas (``1 - 0.999`` -> 0.00099998713; Keras, from Python
floats: 0.0010000000). Over the improved preset's whole run they are bitwise Keras' AdamW given
``beta_1=float(np.float32(0.9))``, ``beta_2=float(np.float32(0.999))``, and Keras' with the exact
betas is not: the weights differ by 0.3% after one epoch and 35% after ten, and the test MAE was
0.9287 (float32 betas, fused) against 0.9746 (exact). Training amplifies any rounding this way;
the earlier "worse at 6 of 6 seeds" (1.032 vs 0.981) was that noise, not a different update
(benchmarks/README.md, "The fused optimizer's difference").

Anything unusual (AMSGrad, a ``tf.distribute`` strategy, gradient accumulation, EMA, a variable
that is overwritten with its gradient) falls back to Keras' own code path; the grouped update
decides that when it builds its slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from msatune.thirdparty.keras_internals import ApplyGradientsHook

__all__ = ["FusedAdam", "FusedAdamW", "GroupedAdam", "GroupedAdamW"]


def _tf_variable(variable: Any) -> tf.Variable:
    return variable.value if isinstance(variable, keras.Variable) else variable


class _FusedAdamUpdate(ApplyGradientsHook):
    """The fused update of an Adam-family Keras optimizer (mixed into Adam and AdamW). Keras'
    internals it needs (the gradient step it replaces, the moment slots, which variables decay)
    are :class:`msatune.thirdparty.keras_internals.ApplyGradientsHook`'s."""

    def can_fuse(self, grads: list, variables: list) -> bool:
        return (
            keras.backend.backend() == "tensorflow"
            and not self.amsgrad
            and not tf.distribute.has_strategy()
            and not self.gradient_accumulation_steps
            and not self.use_ema
            and all(not isinstance(g, tf.IndexedSlices) for g in grads)
        )

    def apply_fused(self, grads: list, trainable_variables: list) -> None:
        """One ``ResourceApplyAdam`` per variable on the clipped ``grads``, after weight decay."""
        variables = [_tf_variable(v) for v in trainable_variables]
        lr = tf.convert_to_tensor(self.learning_rate)  # one read per step, not one per variable
        by_dtype: dict[tf.DType, dict[str, tf.Tensor]] = {}

        def scalars(dtype: tf.DType) -> dict[str, tf.Tensor]:
            if dtype not in by_dtype:
                step = tf.cast(self.iterations + 1, dtype)
                beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
                by_dtype[dtype] = {
                    "lr": tf.cast(lr, dtype), "beta_1": beta_1, "beta_2": beta_2,
                    "beta_1_power": tf.pow(beta_1, step), "beta_2_power": tf.pow(beta_2, step),
                    "epsilon": tf.cast(self.epsilon, dtype),
                }
            return by_dtype[dtype]

        if self.weight_decay is not None:
            for variable in variables:
                if self.decays(variable):
                    s = scalars(variable.dtype)
                    variable.assign_sub(variable * tf.cast(self.weight_decay, variable.dtype) * s["lr"])
        for grad, variable in zip(grads, variables, strict=True):
            m, v = self.moment_slots(variable)
            s = scalars(variable.dtype)
            tf.raw_ops.ResourceApplyAdam(
                var=variable.handle,
                m=_tf_variable(m).handle,
                v=_tf_variable(v).handle,
                beta1_power=s["beta_1_power"],
                beta2_power=s["beta_2_power"],
                lr=s["lr"],
                beta1=s["beta_1"],
                beta2=s["beta_2"],
                epsilon=s["epsilon"],
                grad=tf.cast(grad, variable.dtype),
                use_locking=False,
                use_nesterov=False,
            )


@keras.saving.register_keras_serializable(package="msatune")
class FusedAdam(_FusedAdamUpdate, keras.optimizers.Adam):
    """``keras.optimizers.Adam`` updating each variable with one fused op (see the module doc)."""


@keras.saving.register_keras_serializable(package="msatune")
class FusedAdamW(_FusedAdamUpdate, keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` updating each variable with one fused op (see the module doc)."""


@dataclass(frozen=True)
class _Slot:
    """Where one variable's moments lie in its dtype's flat slots."""

    index: int  # the optimizer's index of the variable (``_get_variable_index``)
    shape: tuple[int, ...]
    offset: int
    size: int


class _GroupedAdamUpdate(ApplyGradientsHook):
    """Keras' Adam update on one flat tensor per dtype (mixed into Adam and AdamW; module doc)."""

    clips_itself = True  # clipnorm over all gradients at once, as tf.clip_by_norm per gradient

    def _can_group(self, var_list: list) -> bool:
        return (
            keras.backend.backend() == "tensorflow"
            and not self.amsgrad
            and not tf.distribute.has_strategy()
            and not self.gradient_accumulation_steps
            and not self.use_ema
            and not any(getattr(v, "overwrite_with_gradient", False) for v in var_list)
        )

    def build(self, var_list: list) -> None:
        if self.built:
            return
        self._grouped = self._can_group(var_list)
        if not self._grouped:
            super().build(var_list)  # Keras' own per-variable slots and update
            return
        keras.optimizers.Optimizer.build(self, var_list)  # the step count and the variable index
        self._momentums, self._velocities = [], []
        self._layout: dict[str, list[_Slot]] = {}
        for variable in var_list:
            slots = self._layout.setdefault(variable.dtype, [])
            size = int(np.prod(variable.shape, dtype=np.int64))
            offset = slots[-1].offset + slots[-1].size if slots else 0
            slots.append(_Slot(self._get_variable_index(variable), tuple(variable.shape), offset, size))
        self._flat_slots = {}
        for dtype, slots in self._layout.items():
            total = slots[-1].offset + slots[-1].size
            self._flat_slots[dtype] = (
                self.add_variable((total,), dtype=dtype, name=f"momentum_{dtype}"),
                self.add_variable((total,), dtype=dtype, name=f"velocity_{dtype}"),
            )

    def can_fuse(self, grads: list, variables: list) -> bool:
        return bool(getattr(self, "_grouped", False))

    def apply_fused(self, grads: list, trainable_variables: list) -> None:
        """Weight decay per variable, then clipping and Keras' update over each dtype's variables
        at once (the gradients come unclipped: :attr:`clips_itself`)."""
        # Keras' priority: clipnorm first; clipped here over all gradients when each has its
        # variable's dtype (else Keras clips each in its own dtype before the update casts it)
        group_clip = bool(self.clipnorm and self.clipnorm > 0) and all(
            tf.as_dtype(g.dtype) == tf.as_dtype(v.dtype) for g, v in zip(grads, trainable_variables, strict=True))
        if not group_clip:
            grads = self.clip_gradients(grads)  # global_clipnorm, clipvalue or none: Keras' own
        if self.weight_decay is not None:  # var -= var * wd * lr, as Keras' TensorFlow optimizer
            lr, wd = {}, {}
            for variable in trainable_variables:
                if self.decays(variable):
                    tf_var = _tf_variable(variable)
                    if tf_var.dtype not in lr:
                        lr[tf_var.dtype] = tf.cast(self.learning_rate, tf_var.dtype)
                        wd[tf_var.dtype] = tf.cast(self.weight_decay, tf_var.dtype)
                    tf_var.assign_sub(tf_var * wd[tf_var.dtype] * lr[tf_var.dtype])
        learning_rate = self.learning_rate
        given = {self._get_variable_index(v): (g, v) for g, v in zip(grads, trainable_variables, strict=True)}
        for dtype, slots in self._layout.items():
            present = [s for s in slots if s.index in given]
            if present:
                gradient = self._flat_gradient(dtype, [given[s.index][0] for s in present],
                                               [s.size for s in present], group_clip)
                self._update(dtype, present, len(present) == len(slots), gradient, given, learning_rate)

    def _flat_gradient(self, dtype: str, grads: list, sizes: list[int], clip: bool) -> Any:
        """The gradients as one flat tensor of ``dtype``; with ``clip``, each clipped to norm
        ``clipnorm`` exactly as ``tf.clip_by_norm`` does it (its sum of squares per gradient, its
        where/sqrt/maximum on those sums, ``g * clipnorm / max(norm, clipnorm)`` per element)."""
        grads = [ops.cast(tf.convert_to_tensor(g), dtype) for g in grads]  # IndexedSlices: dense
        flat = tf.concat([tf.reshape(g, [-1]) for g in grads], 0)
        if not clip:
            return flat
        l2sum = tf.concat([tf.reshape(tf.reduce_sum(g * g, None, keepdims=True), [1]) for g in grads], 0)
        pred = l2sum > 0
        l2sum_safe = tf.where(pred, l2sum, tf.ones_like(l2sum))
        l2norm = tf.where(pred, tf.sqrt(l2sum_safe), l2sum)
        clip_norm = max(float(self.clipnorm), 0.0)
        divisor = tf.repeat(tf.maximum(l2norm, clip_norm), sizes)
        return (flat * clip_norm) / divisor

    def _update(self, dtype: str, slots: list[_Slot], whole: bool, gradient: Any, given: dict,
                learning_rate: Any) -> None:
        # Adam.update_step's lines, in its order, on the concatenated gradients
        lr = ops.cast(learning_rate, dtype)
        local_step = ops.cast(self.iterations + 1, dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, dtype), local_step)
        alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        m_all, v_all = self._flat_slots[dtype]
        if whole:
            m, v = m_all, v_all
        else:  # some variables got no gradient (Keras leaves them and their moments alone)
            m = tf.concat([m_all.value[s.offset:s.offset + s.size] for s in slots], 0)
            v = tf.concat([v_all.value[s.offset:s.offset + s.size] for s in slots], 0)
        m = self._moment(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        v = self._moment(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        step = ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), self.epsilon))
        sizes = [s.size for s in slots]
        if not whole:
            for s, m_part, v_part in zip(slots, tf.split(m, sizes), tf.split(v, sizes), strict=True):
                m_all.value[s.offset:s.offset + s.size].assign(m_part)
                v_all.value[s.offset:s.offset + s.size].assign(v_part)
        for s, part in zip(slots, tf.split(step, sizes), strict=True):
            _tf_variable(given[s.index][1]).assign_sub(tf.reshape(part, s.shape))

    def _moment(self, moment: Any, delta: Any) -> Any:
        """``moment += delta`` as Keras does it: in place on the slot variable, read back after;
        on a gathered copy (some variables without a gradient), the same addition."""
        if isinstance(moment, keras.Variable):
            self.assign_add(moment, delta)
            return moment
        return ops.add(moment, delta)


@keras.saving.register_keras_serializable(package="msatune")
class GroupedAdam(_GroupedAdamUpdate, keras.optimizers.Adam):
    """``keras.optimizers.Adam``, bit for bit, updating all variables at once (see the module doc)."""


@keras.saving.register_keras_serializable(package="msatune")
class GroupedAdamW(_GroupedAdamUpdate, keras.optimizers.AdamW):
    """``keras.optimizers.AdamW``, bit for bit, updating all variables at once (see the module doc)."""
