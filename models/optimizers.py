"""Keras' Adam and AdamW, bit for bit, in a fraction of the traced ops.

Keras 3 builds Adam's update from ~30 small ops per variable (casts, the beta powers, the moment
updates, the step, the distribution strategy's wrappers), AdamW and ``clipnorm`` add ~15 more,
and a traced train step holds them once per variable: 9,288 of the improved model's 14,734
train-step ops at MOSI's dimensions (145 variables), 5,010 update ops for the baseline's 122.
Each op costs its Python construction when the step is traced and its dispatch on every step:
measured on 2 cores, the optimizer was a third of a batch-4 baseline step (12.0 ms vs 7.8 ms
with SGD) and 2-4 s of each trial's tracing, a third of a first-rung trial's (issue 25).

:class:`GroupedAdam` and :class:`GroupedAdamW` (the default, ``models.recipe.make_optimizer``)
run Keras' own ``update_step`` arithmetic once per step on one flat tensor per dtype instead of
once per variable: the gradients are concatenated, the first and second moments live in one flat
slot each, and the step is split back and subtracted from each variable. Every element goes
through exactly Keras' operations in Keras' order (the same ``keras.ops`` calls, the same Python
float constants, the moments updated in place and read back as Keras does), so a run is bitwise
the run with Keras' optimizer: pinned over the improved and baseline presets' whole recipes
(schedule, dropout, augmentation, clipnorm, AdamW weight decay), under XLA and loss scaling, by
``tests/models/test_optimizers.py``, and over a whole improved-preset run at MOSI's size by
``benchmarks/optimizer_rounding.py``. What changes is the graph: 2,438 update ops for the
improved model instead of 9,288 (701 fewer since each shape and axes constant is made once per
traced update: benchmarks/README.md, "What a trial's traced step is made of"), one elementwise
pass over all weights instead of one per variable. ``clipnorm`` is ``tf.clip_by_norm`` per
gradient (what Keras' TensorFlow optimizer calls) with only its sum of squares kept per variable
and the rest done once; weight decay (``var -= var * wd * lr`` before the update) stays per
variable; ``global_clipnorm`` and ``clipvalue`` are Keras' own code. Its slots are its own (``momentum_float32``,
``velocity_float32``, flat): optimizer state saved by Keras' Adam does not load into it, which
nothing in msatune does (checkpoints hold weights only).

Issue 15's fused optimizer (one ``ResourceApplyAdam`` per variable) is gone: that kernel forms
``1 - beta`` from float32 betas, so it was Keras' update with rounded betas, and its results
differed from the users' as any rounding does (benchmarks/README.md, "The fused optimizer's
difference"); this one traces fewer ops than it did for the improved model and changes nothing.

Anything unusual (AMSGrad, a ``tf.distribute`` strategy, gradient accumulation, EMA, a variable
that is overwritten with its gradient) falls back to Keras' own code path, decided when the
optimizer builds its slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from msatune.thirdparty.keras_internals import ApplyGradientsHook

__all__ = ["GroupedAdam", "GroupedAdamW"]


def _tf_variable(variable: Any) -> tf.Variable:
    return variable.value if isinstance(variable, keras.Variable) else variable


@dataclass(frozen=True)
class _Slot:
    """Where one variable's moments lie in its dtype's flat slots."""

    index: int  # the optimizer's index of the variable (``_get_variable_index``)
    shape: tuple[int, ...]
    offset: int
    size: int


class _Consts:
    """The int32 constants (shapes, reduction axes) of one traced update, each made once: the
    update reshapes and reduces once per variable, and a constant made for each of those calls
    was a quarter of its traced ops (each op costs ~1 ms of Python when the step is traced;
    benchmarks/trace_census.py). Made for one ``apply_update`` call, so all in its graph."""

    def __init__(self) -> None:
        self._made: dict[tuple[int, ...], tf.Tensor] = {}

    def __call__(self, values: Any) -> tf.Tensor:
        key = tuple(int(v) for v in values)
        if key not in self._made:
            self._made[key] = tf.constant(key, dtype=tf.int32)
        return self._made[key]


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
        self.updates_grouped = self._can_group(var_list)
        if not self.updates_grouped:
            super().build(var_list)  # Keras' own per-variable slots and update
            return
        self.build_base(self, var_list)  # the step count and the variable index, no per-variable slots
        self._layout: dict[str, list[_Slot]] = {}
        for variable in var_list:
            slots = self._layout.setdefault(variable.dtype, [])
            size = int(np.prod(variable.shape, dtype=np.int64))
            offset = slots[-1].offset + slots[-1].size if slots else 0
            slots.append(_Slot(self.variable_index(variable), tuple(variable.shape), offset, size))
        self._flat_slots = {}
        for dtype, slots in self._layout.items():
            total = slots[-1].offset + slots[-1].size
            self._flat_slots[dtype] = (
                self.add_variable((total,), dtype=dtype, name=f"momentum_{dtype}"),
                self.add_variable((total,), dtype=dtype, name=f"velocity_{dtype}"),
            )

    def can_apply(self, grads: list, variables: list) -> bool:
        return bool(getattr(self, "updates_grouped", False))

    def apply_update(self, grads: list, trainable_variables: list) -> None:
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
        consts = _Consts()
        given = {self.variable_index(v): (g, v) for g, v in zip(grads, trainable_variables, strict=True)}
        for dtype, slots in self._layout.items():
            present = [s for s in slots if s.index in given]
            if present:
                gradient = self._flat_gradient(dtype, [given[s.index][0] for s in present],
                                               [s.size for s in present], group_clip, consts)
                self._update(dtype, present, len(present) == len(slots), gradient, given, learning_rate,
                             consts)

    def _flat_gradient(self, dtype: str, grads: list, sizes: list[int], clip: bool, consts: _Consts) -> Any:
        """The gradients as one flat tensor of ``dtype``; with ``clip``, each clipped to norm
        ``clipnorm`` exactly as ``tf.clip_by_norm`` does it (its sum of squares per gradient, its
        where/sqrt/maximum on those sums, ``g * clipnorm / max(norm, clipnorm)`` per element)."""
        grads = [ops.cast(tf.convert_to_tensor(g), dtype) for g in grads]  # IndexedSlices: dense
        flat = tf.concat([tf.reshape(g, consts([-1])) for g in grads], 0)
        if not clip:
            return flat
        # each gradient's sum of squares over all its axes (tf.clip_by_norm's), stacked
        l2sum = tf.stack([tf.reduce_sum(g * g, consts(range(g.shape.rank))) for g in grads])
        pred = l2sum > 0
        l2sum_safe = tf.where(pred, l2sum, tf.ones_like(l2sum))
        l2norm = tf.where(pred, tf.sqrt(l2sum_safe), l2sum)
        clip_norm = max(float(self.clipnorm), 0.0)
        divisor = tf.repeat(tf.maximum(l2norm, clip_norm), sizes)
        return (flat * clip_norm) / divisor

    def _update(self, dtype: str, slots: list[_Slot], whole: bool, gradient: Any, given: dict,
                learning_rate: Any, consts: _Consts) -> None:
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
            _tf_variable(given[s.index][1]).assign_sub(tf.reshape(part, consts(s.shape)))

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
