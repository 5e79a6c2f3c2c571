"""Keras' Adam and AdamW with TensorFlow's fused update kernel: the same update, far fewer ops.

Keras 3 builds Adam's update from ~30 small ops per variable (casts, the beta powers, the moment
updates, the step), AdamW adds ~8 more for the weight decay, and a traced train step holds them
once per variable: 4,270 of the baseline model's 7,921 train-step ops (122 variables), 8,410 of
the improved model's 13,570. On a CPU at small batches each op costs its dispatch: measured on
2 cores, the optimizer was a third of a batch-4 baseline step (12.0 ms vs 7.8 ms with SGD) and
2-4 s of each trial's tracing.

:class:`FusedAdam` and :class:`FusedAdamW` compute the beta powers and read the learning rate once
per step and update each variable with one ``ResourceApplyAdam``, whose CPU and GPU kernels
compute Keras' formulas (``alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)``, ``m += (g - m) * (1 -
b1)``, ``v += (g^2 - v) * (1 - b2)``, ``var -= m * alpha / (sqrt(v) + eps)``). Weight decay (``var
-= var * wd * lr``, before the update, as Keras) and clipnorm (``tf.clip_by_norm`` per gradient,
as Keras' TensorFlow optimizer) are unchanged.

The one difference, measured (issue 25): the kernel forms ``1 - beta`` from the float32 betas
(``1 - 0.999`` -> 0.00099998713), Keras from Python floats (0.0010000000), so the second-moment
rate differs by 1.3e-5 relative (the first by 2.4e-7). Over the improved preset's whole run
(schedule, dropout, augmentation, clipnorm, weight decay, early stopping; synthetic mosi, seed 0)
these optimizers are bitwise equal to Keras' AdamW given ``beta_1=float(np.float32(0.9))``,
``beta_2=float(np.float32(0.999))``, and Keras' with the exact betas is not: the weights differ
by 0.3% after one epoch and 35% after ten, and the test MAE was 0.9287 (float32 betas, fused)
against 0.9746 (exact). Training amplifies any rounding this way; the earlier "worse at 6 of 6
seeds" (1.032 vs 0.981) was that noise, not a different update
(``tests/models/test_optimizers.py`` pins the equality; benchmarks/README.md, "The fused
optimizer's difference").

Not the default (``models.recipe.make_optimizer(fused=True)`` asks for it): the presets train
with Keras' own Adam/AdamW, bit for bit the users' update; making the fused one the default waits
for the presets' multi-seed check (issue 25).

Anything unusual (AMSGrad, a ``tf.distribute`` strategy, sparse gradients, gradient
accumulation, EMA, loss scaling) falls back to Keras' own code path.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from msatune.thirdparty.keras_internals import ApplyGradientsHook

__all__ = ["FusedAdam", "FusedAdamW"]


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
