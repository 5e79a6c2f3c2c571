"""The training recipe: one configuration trained to its best epoch, driven by a flat config dict.

``train_model`` builds the model, the optimizer (adam | adamw), the loss (mae | huber), the LR
schedule (constant | plateau | cosine with linear warm-up), fits with early stopping, keeps the
best-val-MAE weights, writes a CSV log in the msa-tf2 columns and calls ``on_epoch`` after every
epoch (the search reports through it). The input pipelines are built by the caller (see
``search.trial``), so this module only sees ``tf.data`` datasets. The recipe's settings and rules
(learning rate per epoch, plateau, early stopping) are :mod:`msatune.models.recipe`'s.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from msatune.errors import UserError
from msatune.models.build import build_model
from msatune.models.graph_registry import released_custom_gradients
from msatune.models.monitoring import TrainingMonitor
from msatune.models.prediction import predict
from msatune.models.recipe import (
    EarlyStopRule,
    PlateauRule,
    current_learning_rate,
    epoch_learning_rate,
    make_loss,
    make_optimizer,
    training_settings,
)
from msatune.models.step_cache import CompiledRun, StepCache, count_traces, graph_key, reuse_run
from msatune.thirdparty.keras_internals import symbolic_build

log = logging.getLogger(__name__)

#: Default training steps per call of the traced train function (one call per epoch at MOSI's
#: sizes from batch 16 up): Keras' per-step Python work and callback dispatch are paid per call.
MAX_STEPS_PER_EXECUTION = 128

#: The msa-tf2 CSV log columns (the users' own tools read these).
CSV_COLUMNS = ("epoch", "learning_rate", "loss", "mae", "mse", "val_loss", "val_mae", "val_mse")

EpochCallback = Callable[["EpochReport"], None]


class TrainingDiverged(RuntimeError):
    """The loss became NaN/Inf: the configuration failed (not a user error, not a best)."""


@dataclass
class EpochReport:
    """What one finished epoch tells the caller."""

    epoch: int  # 0-based, like Keras' CSV logs
    metrics: dict[str, float]  # loss, mae, mse, val_loss, val_mae, val_mse, learning_rate, gap
    improved: bool  # val MAE is the best so far (the model holds these weights right now)
    model: keras.Model  # on the last epoch: holds the best epoch's weights (restored before the hook)
    seconds: float  # wall time of this epoch (train + validation)
    last: bool = False  # no epoch follows (budget reached or early stopping)
    valid_predictions: np.ndarray | None = None  # this epoch's validation predictions (flat)
    started: float = 0.0  # time.perf_counter() when the epoch began
    validation_seconds: float = 0.0  # the part of ``seconds`` spent validating
    #: gradient norms and modality weights of the epoch (:mod:`msatune.models.monitoring`)
    monitor: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    model: keras.Model  # holds the best-val-MAE epoch's weights (the trial's checkpoint)
    history: list[dict[str, float]]
    best_epoch: int  # of the best val MAE
    best_val_mae: float
    epochs_trained: int
    stopped_early: bool
    train_seconds: float  # time inside epochs (the harness overhead is wall time minus this)
    config: dict[str, Any] = field(default_factory=dict)
    #: The epoch of the best ``early_stop_metric``: the weights Keras' EarlyStopping
    #: (restore_best_weights=True) leaves in the model. Equals ``best_epoch`` for val_mae.
    early_stop_best_epoch: int = -1
    #: each epoch's monitoring scalars (:attr:`EpochReport.monitor`; empty dicts when off)
    monitor: list[dict[str, float]] = field(default_factory=list)
    #: the compiled run (model, optimizer, traced step) a caller done with the model may hand to
    #: the ``step_cache`` it trained with (:meth:`msatune.models.step_cache.StepCache.keep`)
    compiled: CompiledRun | None = None
    #: how many times this run traced its train step (0: it reused a kept run's graph)
    traces: int = 0

    @property
    def best(self) -> dict[str, float]:
        return self.history[self.best_epoch]


class _EpochDriver(keras.callbacks.Callback):
    """Per-epoch bookkeeping: CSV row, best weights, early stopping, NaN guard, caller hook."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        on_epoch: EpochCallback | None,
        csv_path: Path | None,
        valid: tf.data.Dataset,
        monitor: TrainingMonitor | None = None,
    ) -> None:
        super().__init__()
        self.monitor = monitor
        self.monitored: list[dict[str, float]] = []
        self.settings = settings
        self.valid = valid
        self.valid_labels = np.concatenate([np.asarray(y, np.float32).reshape(-1) for _, y in valid])
        self.on_epoch = on_epoch
        self.csv_path = csv_path
        self.history: list[dict[str, float]] = []
        self.best_val = math.inf
        self.best_epoch = -1
        self.best_weights: list[np.ndarray] | None = None
        self.stopper = EarlyStopRule(int(settings["patience"]))
        self.plateau = PlateauRule(
            float(settings["plateau_factor"]),
            int(settings["plateau_patience"]),
            float(settings["min_lr"]),
        )
        self.stopped_early = False
        self.train_seconds = 0.0
        self._t0 = 0.0
        self._csv_file = None
        self._csv = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.csv_path is not None:
            self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            self._csv_file = open(self.csv_path, "w", newline="")  # noqa: SIM115 - closed in on_train_end
            self._csv = csv.writer(self._csv_file)
            self._csv.writerow(CSV_COLUMNS)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.settings["lr_schedule"] == "cosine":
            self.model.optimizer.learning_rate = epoch_learning_rate(self.settings, epoch)
        self._lr_at_start = current_learning_rate(self.model.optimizer)
        if self.monitor is not None:
            self.monitor.begin_epoch()
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        t_valid = time.perf_counter()
        # monitored: the attention probe's outputs come from this same pass (models.monitoring)
        valid_pred = self.monitor.predict_valid() if self.monitor is not None else predict(self.model, self.valid)
        valid_metrics = self._valid_metrics(valid_pred)
        logs = logs if logs is not None else {}
        logs.update(valid_metrics)  # in place: Keras' History and progress bar run after this callback
        monitored = self.monitor.end_epoch(epoch) if self.monitor is not None else {}
        self.monitored.append(monitored)
        t_end = time.perf_counter()
        seconds = t_end - self._t0
        self.train_seconds += seconds
        row = {
            "epoch": float(epoch),
            "learning_rate": self._lr_at_start,
            "loss": float(logs.get("loss", math.nan)),
            "mae": float(logs.get("mae", math.nan)),
            "mse": float(logs.get("mse", math.nan)),
            "val_loss": float(logs.get("val_loss", math.nan)),
            "val_mae": float(logs.get("val_mae", math.nan)),
            "val_mse": float(logs.get("val_mse", math.nan)),
        }
        row["gap"] = row["val_mae"] - row["mae"]
        self.history.append(row)
        if self._csv is not None:
            self._csv.writerow([_csv_value(row[c]) for c in CSV_COLUMNS])
            self._csv_file.flush()
        if not (math.isfinite(row["loss"]) and math.isfinite(row["val_mae"])):
            self.model.stop_training = True
            raise TrainingDiverged(
                f"loss became non-finite at epoch {epoch} (loss={row['loss']}, val_mae={row['val_mae']}); "
                "lower the learning rate or enable clipnorm"
            )
        improved = row["val_mae"] < self.best_val
        if improved:
            self.best_val = row["val_mae"]
            self.best_epoch = epoch
            self.best_weights = [np.copy(w) for w in self.model.get_weights()]
            if self.monitor is not None:
                self.monitor.keep_best(epoch)
        stop = self.stopper.update(epoch, row[self.settings["early_stop_metric"]])
        last = stop or epoch + 1 >= int(self.settings["epochs"])
        if last and not improved and self.best_weights is not None:
            # Nothing trains after this epoch: the best weights go back now (train_model would
            # restore them after fit), so the last hook sees the model the trial returns.
            self.model.set_weights(self.best_weights)
        if self.on_epoch is not None:
            self.on_epoch(EpochReport(epoch, dict(row), improved, self.model, seconds, last, valid_pred,
                                      started=self._t0, validation_seconds=t_end - t_valid,
                                      monitor=dict(monitored)))
        if self.settings["lr_schedule"] == "plateau":
            opt = self.model.optimizer
            new_lr = self.plateau.update(row[self.settings["plateau_metric"]], current_learning_rate(opt))
            if new_lr is not None:
                opt.learning_rate = new_lr
        if stop:
            self.stopped_early = True
            self.model.stop_training = True

    def _valid_metrics(self, pred: np.ndarray) -> dict[str, float]:
        """Validation loss/MAE/MSE from the predictions, as Keras' evaluation would report them.

        Validating through ``predict`` instead of ``fit(validation_data=...)`` traces one graph
        (the forward pass) instead of two (Keras' test step, then the predict step that the
        checkpoints' predictions need): about 1 s less per trial on CPU, and the validation
        predictions come with the epoch for free. The loss adds the weight regularization, as
        Keras' ``compute_loss`` does.
        """
        y = self.valid_labels
        err = pred.astype(np.float64) - y
        abs_err = np.abs(err)
        if self.settings["loss"] == "huber":
            d = float(self.settings["huber_delta"])
            per_sample = np.where(abs_err <= d, 0.5 * err**2, d * (abs_err - 0.5 * d))
        else:
            per_sample = abs_err
        # Weight regularizers only (no add_loss/activity regularizers in these models): Keras
        # computes them from the current variables, outside any traced call.
        reg = sum(float(keras.ops.convert_to_numpy(v)) for v in self.model.losses)
        return {
            "val_loss": float(per_sample.mean()) + reg,
            "val_mae": float(abs_err.mean()),
            "val_mse": float((err**2).mean()),
        }

    def on_train_end(self, logs: dict | None = None) -> None:
        self.close()

    def close(self) -> None:
        if self._csv_file is not None:
            self._csv_file.close()
            self._csv_file = None
            self._csv = None


def _csv_value(v: float) -> str:
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(float(v))


def _prebuild(model: keras.Model, train: tf.data.Dataset) -> None:
    """Create the optimizer slots and metric variables before the first traced step.

    Variables created inside the first ``tf.function`` call make TensorFlow trace the whole
    training step twice (measured: 8.1 s → 4.3 s for the first epoch of a small model on CPU).
    """
    model.optimizer.build(model.trainable_variables)
    try:
        symbolic_build(model, next(iter(train.take(1))))  # Keras internal; optional speed-up only
    except (TypeError, ValueError, RuntimeError) as exc:  # pragma: no cover - Keras changed
        log.debug("symbolic pre-build skipped: %s", exc)


@contextmanager
def _global_policy(name: str | None) -> Iterator[None]:
    """Keras' global dtype policy set to ``name`` inside the block (``None``: left as it is)."""
    if name is None:
        yield
        return
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def train_model(
    config: Mapping[str, Any],
    datasets: Mapping[str, tf.data.Dataset],
    dims: Mapping[str, int],
    *,
    seq_len: int | None = None,
    on_epoch: EpochCallback | None = None,
    csv_path: str | Path | None = None,
    verbose: int = 0,
    steps_per_execution: int | None = None,
    monitor: bool = True,
    monitor_dir: str | Path | None = None,
    step_cache: StepCache | None = None,
) -> TrainResult:
    """Train one configuration to its best epoch (the best val MAE: its weights are returned).

    Early stopping decides when training ends (see the module doc); with ``early_stop_metric``
    val_mae the returned weights are exactly the ones Keras' ``restore_best_weights`` restores,
    with val_loss they are the separately kept best-val-MAE ones (msa-tf2 ``improved_train.py``
    keeps both: its val_mae checkpoint is the one these weights match) and
    ``early_stop_best_epoch`` says which epoch Keras would have restored.

    ``steps_per_execution``: training steps per call into the traced graph (Keras' option; the
    same steps in the same order, so the same results); default: a whole epoch, up to
    :data:`MAX_STEPS_PER_EXECUTION` (Python's per-step share of a small-batch step goes; nothing
    here needs per-batch callbacks).

    ``monitor``: record each epoch's gradient norms and (for a model with an ``attention_probe``)
    its validation attention (:mod:`msatune.models.monitoring`), into the epoch reports and, with
    ``monitor_dir``, a TensorBoard event file there.

    ``step_cache``: reuse the compiled train step of a finished run of the same graph that its
    caller kept there (:mod:`msatune.models.step_cache`; the same results as building anew), and
    make this run's :attr:`TrainResult.compiled` keepable. Keep it only once done with the model.

    ``datasets`` must hold ``train`` and ``valid`` (batched ``({text,audio,video}, labels)``).
    Raises :class:`TrainingDiverged` when the loss goes NaN, ``UserError`` for a bad config.
    """
    settings = training_settings(config)
    if "train" not in datasets or "valid" not in datasets:
        raise ValueError("train_model needs 'train' and 'valid' datasets")
    steps = int(datasets["train"].cardinality().numpy())
    if steps <= 0:
        raise UserError("the training split is empty or of unknown size; nothing to train on")

    use_mp = bool(settings["mixed_precision"]) and bool(tf.config.list_physical_devices("GPU"))
    key = graph_key(config, dims, seq_len, datasets["train"].element_spec, monitor=monitor, mixed_precision=use_mp)
    run = step_cache.take(key) if step_cache is not None else None
    # released_custom_gradients: the train step's graph goes with the model (models.graph_registry)
    with released_custom_gradients(), _global_policy("mixed_float16" if use_mp else None):
        keras.utils.set_random_seed(int(settings["seed"]))
        model = build_model(config, dims, seq_len)
        optimizer = make_optimizer(settings)
        if run is not None:
            run = reuse_run(run, model, optimizer)
            if run is not None:
                model, optimizer = run.model, run.optimizer
                # _prebuild's batch: iterating the train pipeline advances its reshuffle and
                # augmentation seeds, so the epochs must see the same data as a fresh build's
                next(iter(datasets["train"].take(1)))
            else:
                optimizer = make_optimizer(settings)  # the checked one was built on the fresh model
        if run is None:
            model.compile(
                optimizer=optimizer,
                loss=make_loss(settings),
                metrics=["mae", "mse"],
                jit_compile=bool(settings["jit_compile"]),
                steps_per_execution=steps_per_execution if steps_per_execution else min(steps, MAX_STEPS_PER_EXECUTION),
            )
            _prebuild(model, datasets["train"])
            run = CompiledRun(key, model, optimizer)
            count_traces(model, run.traces)
        traces_before = run.traces[0]
        watch = (TrainingMonitor(model, optimizer, datasets["valid"], Path(monitor_dir) if monitor_dir else None,
                                 grads=run.grads, probe=run.probe)
                 if monitor else None)
        if watch is not None:
            run.grads, run.probe = watch.grads, watch.probe
        driver = _EpochDriver(settings, on_epoch, Path(csv_path) if csv_path else None, datasets["valid"], watch)
        try:
            model.fit(
                datasets["train"],
                epochs=int(settings["epochs"]),
                callbacks=[driver],
                verbose=verbose,
                shuffle=False,  # the train pipeline shuffles (seeded) itself
            )
        finally:
            driver.close()
            if watch is not None:
                watch.close()
    if driver.best_weights is not None:
        model.set_weights(driver.best_weights)
    return TrainResult(
        model=model,
        history=driver.history,
        best_epoch=driver.best_epoch,
        best_val_mae=driver.best_val,
        epochs_trained=len(driver.history),
        stopped_early=driver.stopped_early,
        train_seconds=driver.train_seconds,
        config=dict(config),
        early_stop_best_epoch=driver.stopper.best_epoch,
        monitor=driver.monitored,
        compiled=run,
        traces=run.traces[0] - traces_before,
    )
