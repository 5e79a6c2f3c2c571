"""What a training run records beside its metrics: gradient norms and attention, per epoch.

**Gradient norms** (:class:`GradientNorms`): every training step, inside the traced train step,
the global L2 norm of the gradients and the norm of each branch's gradients (before clipping;
after loss-scale unscaling under mixed precision) are added to a running sum and a running max
held in non-trainable ``tf.Variable`` s; the epoch's mean and max are read once at its end. No
Python runs per step: the statistics are a few ops per variable in the graph Keras traces.
They are taken where the gradients meet the optimizer, by wrapping the optimizer instance's
public ``apply(grads, trainable_variables)`` (which Keras' ``apply_gradients`` and the
mixed-precision ``LossScaleOptimizer`` both call), so any model and optimizer work unchanged.

Branches (:func:`branch_of`): a variable belongs to the branch its top-level layer's name (the
first part of its Keras ``path``) starts with: ``text_`` / ``audio_`` / ``video_`` → that
modality's encoder, ``fuse_`` / ``fusion_`` → fusion, ``head_`` / ``output`` → head; anything
else (the improved family's ``attention_pool``, shared by the modality encoders and the fusion
stage) → ``shared``. Keys: ``grad_norm_mean``, ``grad_norm_max`` and ``grad_norm_{branch}_mean``,
``grad_norm_{branch}_max`` for each branch the model has.

**Attention** (:class:`AttentionProbe`): a model with a method ``attention_probe() ->
keras.Model`` (duck-typed) is probed on the validation split at every epoch's end, in the
epoch's validation pass itself: the probe's outputs and the model's prediction (its ``"prediction"``
output, ``models.prediction.PREDICTION``) are one traced graph (:func:`msatune.models.prediction.predict`).
The probe's output dict may hold ``"modality_weights"`` ``(B, 3)`` (softmax weights in the order
text, audio, video) and cross-attention maps ``"q<-c"`` ``(B, heads, Tq, Tc)``; the weights are
averaged over samples (keys ``modality_weight_text`` ...), the maps over samples (kept per head).

:class:`TrainingMonitor` puts both together for :mod:`msatune.models.training` and writes every
epoch to a TensorBoard event file (``tf.summary``; step = 1-based epoch): the scalars under their
keys, each map as an image averaged over heads (``attention/text_from_audio``, scaled to its max)
and as the raw ``(heads, Tq, Tc)`` tensor (``attention_map/text_from_audio``). The maps of the
best epoch so far are also kept in ``attention.npz`` beside the events (what the report draws).

The event file is an extra: when it cannot be written (TensorBoard not installed, the directory
not writable, the disk full) the monitor logs one warning, stops writing and the training goes
on; the epoch's scalars are still returned (they reach the trial's metrics as before).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from msatune.models.prediction import predict, probe_model

log = logging.getLogger(__name__)

#: Branches in display order (a model has a subset of them).
BRANCHES = ("text", "audio", "video", "fusion", "head", "shared")
_PREFIXES = (("text_", "text"), ("audio_", "audio"), ("video_", "video"), ("fuse_", "fusion"),
             ("fusion_", "fusion"), ("head_", "head"), ("output", "head"))

#: The order of a probe's ``modality_weights`` columns.
MODALITY_WEIGHT_ORDER = ("text", "audio", "video")
#: The file of the best epoch's attention maps, beside the event file.
ATTENTION_FILE = "attention.npz"


def branch_of(path: str) -> str:
    """The branch of a variable from its Keras path (see the module doc for the rule)."""
    top = path.split("/", 1)[0]
    for prefix, branch in _PREFIXES:
        if top.startswith(prefix):
            return branch
    return "shared"


def map_tag(key: str) -> str:
    """A probe's map key ("text<-audio") as a TensorBoard tag part ("text_from_audio")."""
    return key.replace("<-", "_from_")


class GradientNorms:
    """Per-epoch mean and max of the global and per-branch gradient norms (see the module doc)."""

    def __init__(self, variables: list[Any]) -> None:
        present = {branch_of(v.path) for v in variables}
        self.branches = tuple(b for b in BRANCHES if b in present)
        self._index = {b: i + 1 for i, b in enumerate(self.branches)}  # 0 is the global norm
        n = len(self.branches) + 1
        self._sums = tf.Variable(tf.zeros([n]), trainable=False, name="grad_norm_sums")
        self._maxes = tf.Variable(tf.zeros([n]), trainable=False, name="grad_norm_maxes")
        self._steps = tf.Variable(0.0, trainable=False, name="grad_norm_steps")
        self._wrapped: Any = None

    def attach(self, optimizer: keras.optimizers.Optimizer) -> None:
        """Record the gradients every ``optimizer.apply`` receives (this instance only)."""
        original = optimizer.apply

        def apply(grads: list, trainable_variables: list | None = None) -> Any:
            if trainable_variables is not None:
                self.record(grads, trainable_variables)
            return original(grads, trainable_variables)

        object.__setattr__(optimizer, "apply", apply)  # not a tracked Keras attribute
        self._wrapped = optimizer

    def detach(self) -> None:
        """Give the optimizer its own ``apply`` back."""
        if self._wrapped is not None:
            self._wrapped.__dict__.pop("apply", None)
            self._wrapped = None

    def record(self, grads: list, variables: list) -> None:
        """Add one step's norms (traced into the train step, under the name scope
        ``grad_norms``: benchmarks/trace_census.py counts its ops by it)."""
        with tf.name_scope("grad_norms"):
            self._record(grads, variables)

    def _record(self, grads: list, variables: list) -> None:
        squares: dict[str, list[tf.Tensor]] = {b: [] for b in self.branches}
        for grad, variable in zip(grads, variables, strict=True):
            if grad is None:
                continue
            if isinstance(grad, tf.IndexedSlices):
                grad = grad.values
            # l2_loss is half the sum of squares, one op per variable
            squares[branch_of(variable.path)].append(tf.nn.l2_loss(tf.cast(grad, tf.float32)))
        per_branch = [2.0 * tf.add_n(squares[b]) if squares[b] else tf.constant(0.0) for b in self.branches]
        stacked = tf.stack(per_branch)
        norms = tf.sqrt(tf.concat([tf.reshape(tf.reduce_sum(stacked), [1]), stacked], 0))
        self._sums.assign_add(norms)
        self._maxes.assign(tf.maximum(self._maxes, norms))
        self._steps.assign_add(1.0)

    def reset(self) -> None:
        self._sums.assign(tf.zeros_like(self._sums))
        self._maxes.assign(tf.zeros_like(self._maxes))
        self._steps.assign(0.0)

    def values(self) -> dict[str, float]:
        """This epoch's ``grad_norm_*`` keys (empty before any step)."""
        steps = float(self._steps.numpy())
        if steps <= 0:
            return {}
        sums, maxes = self._sums.numpy() / steps, self._maxes.numpy()
        out = {"grad_norm_mean": float(sums[0]), "grad_norm_max": float(maxes[0])}
        for b, i in self._index.items():
            out[f"grad_norm_{b}_mean"] = float(sums[i])
            out[f"grad_norm_{b}_max"] = float(maxes[i])
        return out


class AttentionProbe:
    """A model's ``attention_probe()`` outputs averaged over the samples of one pass.

    It runs no graph of its own: :meth:`TrainingMonitor.predict_valid` feeds it the probe's
    outputs from the validation pass (:func:`msatune.models.prediction.predict` with
    ``outputs=``), so probing costs neither a second trace nor a second forward pass.
    """

    def __init__(self) -> None:
        self._sums: dict[str, np.ndarray] = {}
        self._n = 0

    @classmethod
    def of(cls, model: keras.Model) -> AttentionProbe | None:
        """A probe for ``model`` (None when it has none)."""
        return None if probe_model(model) is None else cls()

    def add(self, outputs: Mapping[str, np.ndarray]) -> None:
        """One batch's probe outputs (batch first)."""
        for key, value in outputs.items():
            self._sums[key] = self._sums.get(key, 0.0) + np.asarray(value, dtype=np.float64).sum(axis=0)
        if outputs:
            self._n += int(np.shape(next(iter(outputs.values())))[0])

    def result(self) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """``(modality_weight_* scalars, {map key: (heads, Tq, Tc) mean over samples})`` of the
        batches added since the last call (then forgotten)."""
        sums, n = self._sums, self._n
        self._sums, self._n = {}, 0
        if n == 0:
            return {}, {}
        means = {k: (v / n).astype(np.float32) for k, v in sums.items()}
        scalars: dict[str, float] = {}
        weights = means.pop("modality_weights", None)
        if weights is not None:
            scalars = {f"modality_weight_{m}": float(w) for m, w in zip(MODALITY_WEIGHT_ORDER, weights, strict=True)}
        return scalars, means


class TrainingMonitor:
    """Gradient norms and attention of one training run, per epoch (see the module doc).

    ``log_dir``: where the event file (and ``attention.npz``) go; None records in memory only.
    """

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                 valid: tf.data.Dataset, log_dir: Path | None, *,
                 grads: GradientNorms | None = None, probe: AttentionProbe | None = None) -> None:
        # grads/probe: a previous run's, whose traced train step (forward pass) this run reuses
        # (models.step_cache): its step already records into those variables
        if grads is None:
            grads = GradientNorms(model.trainable_variables)
            grads.attach(optimizer)
        self.grads = grads
        self.model = model
        self.valid = valid
        self.probe = probe if probe is not None else AttentionProbe.of(model)
        self._probed: tuple[dict[str, float], dict[str, np.ndarray]] | None = None
        self.log_dir = log_dir
        self.maps: dict[str, np.ndarray] = {}  # the last epoch's
        self._writer = None
        if log_dir is not None:
            try:
                log_dir.mkdir(parents=True, exist_ok=True)
                self._writer = tf.summary.create_file_writer(str(log_dir))
            except Exception as exc:  # noqa: BLE001 - the event file must never fail a training
                self._give_up(exc)

    def begin_epoch(self) -> None:
        self.grads.reset()
        self._probed = None

    def predict_valid(self) -> np.ndarray:
        """The epoch's validation predictions; the probe's outputs come from the same pass."""
        if self.probe is None:
            return predict(self.model, self.valid)
        pred = predict(self.model, self.valid, outputs=self.probe.add)
        self._probed = self.probe.result()
        return pred

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """The epoch's scalars (gradient norms, and the modality weights of this epoch's
        :meth:`predict_valid`), written to the event file."""
        scalars = self.grads.values()
        if self._probed is not None:
            weights, self.maps = self._probed
            scalars.update(weights)
        if self._writer is not None:
            try:
                self._write(epoch + 1, scalars, self.maps)
            except Exception as exc:  # noqa: BLE001 - the event file must never fail a training
                self._give_up(exc)
        return scalars

    def keep_best(self, epoch: int) -> None:
        """The last epoch is the best so far: its maps go to ``attention.npz``."""
        if self.log_dir is not None and self.maps:
            arrays = {map_tag(k): v for k, v in self.maps.items()}
            try:
                np.savez(self.log_dir / ATTENTION_FILE, epoch=np.int64(epoch + 1), **arrays)
            except OSError as exc:
                self._give_up(exc)

    def _give_up(self, exc: BaseException) -> None:
        """Stop writing under ``log_dir`` after ``exc``, with one warning; training goes on."""
        if self.log_dir is None:
            return
        log.warning("msatune: monitoring files in %s are not written from now on (%s: %s); the training "
                    "goes on and its metrics are kept. For TensorBoard's events: pip install tensorboard, "
                    "and check that the directory is writable", self.log_dir, type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "")
        writer, self._writer, self.log_dir = self._writer, None, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001,S110 - already failing; nothing more to save
                pass

    def _write(self, step: int, scalars: Mapping[str, float], maps: Mapping[str, np.ndarray]) -> None:
        with self._writer.as_default(step=step):
            for key, value in scalars.items():
                tf.summary.scalar(key, value)
            for key, heads in maps.items():
                tag = map_tag(key)
                picture = heads.mean(axis=0) if heads.ndim == 3 else heads
                top = float(picture.max()) or 1.0
                tf.summary.image(f"attention/{tag}", (picture / top)[None, :, :, None])
                tf.summary.write(f"attention_map/{tag}", tf.constant(heads))
        self._writer.flush()

    def close(self) -> None:
        self.grads.detach()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
