"""The training recipe: one configuration trained to its best epoch, driven by a flat config dict.

``train_model`` builds the model, the optimizer (adam | adamw), the loss (mae | huber), the LR
schedule (constant | plateau | cosine with linear warm-up), fits with early stopping, keeps the
best-val-MAE weights, writes a CSV log in the msa-tf2 columns and calls ``on_epoch`` after every
epoch (the search reports through it). The input pipelines are built by the caller (see
``search.trial``), so this module only sees ``tf.data`` datasets.

The rules are those of the Keras callbacks msa-tf2's scripts register, evaluated the way Keras
evaluates them (``train.py``: EarlyStopping and ReduceLROnPlateau on val_mae; ``improved_train.py``:
EarlyStopping on val_loss, LearningRateScheduler, ReduceLROnPlateau on val_loss):

* early stopping (``EarlyStopping(monitor, patience, min_delta=0, restore_best_weights=True)``):
  an epoch improves when its ``early_stop_metric`` is strictly below the best so far; training
  stops after ``patience`` epochs in a row without improvement (0 = never).
* ``lr_schedule="plateau"`` (``ReduceLROnPlateau(plateau_metric, plateau_factor,
  plateau_patience, min_delta=1e-4, cooldown=0, min_lr)``): an epoch improves when the metric is
  more than 1e-4 below the best so far; after ``plateau_patience`` epochs without, the rate is
  multiplied by ``plateau_factor`` (never below ``min_lr``; nothing happens once it is there) and
  the count restarts. The new rate applies from the next epoch.
* ``lr_schedule="cosine"`` (``LearningRateScheduler``): the rate of each epoch is set when the
  epoch begins (:func:`epoch_learning_rate`). A ReduceLROnPlateau registered beside it, as in
  ``improved_train.py``, lowers the rate at an epoch's end and the scheduler overwrites it when
  the next epoch begins (its schedule ignores the current rate), so it never changes a rate that
  any epoch trains with: under ``cosine`` the plateau keys have no effect, as in Keras.
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

log = logging.getLogger(__name__)

TRAIN_DEFAULTS: dict[str, Any] = {
    "optimizer": "adamw",
    "learning_rate": 5e-4,
    "weight_decay": 0.01,
    "clipnorm": 1.0,  # 0 = no clipping
    "loss": "huber",
    "huber_delta": 1.0,
    "lr_schedule": "cosine",
    "warmup_epochs": 5,
    "cosine_epochs": 50,  # the cosine's horizon (msa-tf2: 50); 0 = the run's ``epochs``
    "plateau_metric": "val_loss",
    "plateau_factor": 0.5,
    "plateau_patience": 5,
    "min_lr": 1e-6,  # the plateau schedule's floor
    "batch_size": 16,
    "epochs": 50,
    "early_stop_metric": "val_loss",
    "patience": 8,  # early stopping on early_stop_metric; 0 = off
    "seed": 0,
    "jit_compile": False,
    "mixed_precision": False,
}

TRAIN_CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("adam", "adamw"),
    "loss": ("mae", "huber"),
    "lr_schedule": ("constant", "plateau", "cosine"),
    "early_stop_metric": ("val_loss", "val_mae"),
    "plateau_metric": ("val_loss", "val_mae"),
}

#: Keras' ReduceLROnPlateau default ``min_delta`` (msa-tf2 keeps it): the least improvement.
PLATEAU_MIN_DELTA = 1e-4

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
    model: keras.Model
    seconds: float  # wall time of this epoch (train + validation)
    last: bool = False  # no epoch follows (budget reached or early stopping)
    valid_predictions: np.ndarray | None = None  # this epoch's validation predictions (flat)
    started: float = 0.0  # time.perf_counter() when the epoch began
    validation_seconds: float = 0.0  # the part of ``seconds`` spent validating


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

    @property
    def best(self) -> dict[str, float]:
        return self.history[self.best_epoch]


def training_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The training keys of a flat trial config, defaults filled, validated (UserError names the key)."""
    out = {k: config.get(k, v) for k, v in TRAIN_DEFAULTS.items()}
    for key, choices in TRAIN_CHOICES.items():
        if out[key] not in choices:
            raise UserError(f"{key}={out[key]!r} is not allowed; choose one of {', '.join(choices)}")
    positive = ("learning_rate", "batch_size", "epochs", "huber_delta")
    for key in positive:
        if not _is_number(out[key]) or out[key] <= 0:
            raise UserError(f"{key}={out[key]!r} must be a number > 0")
    non_negative = (
        "weight_decay", "clipnorm", "warmup_epochs", "cosine_epochs", "patience",
        "plateau_patience", "min_lr",
    )
    for key in non_negative:
        if not _is_number(out[key]) or out[key] < 0:
            raise UserError(f"{key}={out[key]!r} must be a number >= 0")
    if not (_is_number(out["plateau_factor"]) and 0 < out["plateau_factor"] < 1):
        raise UserError(f"plateau_factor={out['plateau_factor']!r} must be in (0, 1)")
    integers = (
        "batch_size", "epochs", "warmup_epochs", "cosine_epochs", "patience", "plateau_patience",
        "seed",
    )
    for key in integers:
        if float(out[key]) != int(out[key]):
            raise UserError(f"{key}={out[key]!r} must be an integer")
        out[key] = int(out[key])
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def epoch_learning_rate(settings: Mapping[str, Any], epoch: int) -> float:
    """The cosine schedule's learning rate for ``epoch`` (0-based, as Keras' LearningRateScheduler
    passes it), msa-tf2's ``cosine_decay_with_warmup``.

    With ``lr`` = ``learning_rate``, ``w`` = ``warmup_epochs`` and ``H`` = ``cosine_epochs`` (0:
    ``epochs``): ``lr/5 + (lr - lr/5) * epoch / w`` while ``epoch < w``, then
    ``lr * 0.5 * (1 + cos(pi * (epoch - w) / (H - w)))``. msa-tf2 (lr 5e-4, w 5, H 50): 1e-4,
    1.8e-4, 2.6e-4, 3.4e-4, 4.2e-4, then 5e-4 at epoch 5 and 2.07e-4 at epoch 30. Past the horizon
    the rate stays at 0 (their formula would rise again; their 50-epoch run never gets there).
    The rate changes once per epoch: a per-step schedule object makes Keras rebuild the schedule
    for every variable in the traced training step (~9 s more tracing per trial on CPU).
    """
    lr = float(settings["learning_rate"])
    warmup = int(settings["warmup_epochs"])
    horizon = int(settings["cosine_epochs"]) or int(settings["epochs"])
    if epoch < warmup:
        start = lr / 5
        return start + (lr - start) * epoch / warmup
    span = max(1, horizon - warmup)
    progress = min(1.0, (epoch - warmup) / span)
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(settings: Mapping[str, Any]) -> keras.optimizers.Optimizer:
    """Adam or AdamW with a plain learning-rate variable (schedules set it per epoch)."""
    lr = float(settings["learning_rate"])
    if settings["lr_schedule"] == "cosine":
        lr = epoch_learning_rate(settings, 0)
    kwargs: dict[str, Any] = {"learning_rate": lr}
    if float(settings["clipnorm"]) > 0:
        kwargs["clipnorm"] = float(settings["clipnorm"])
    if settings["optimizer"] == "adamw":
        return keras.optimizers.AdamW(weight_decay=float(settings["weight_decay"]), **kwargs)
    return keras.optimizers.Adam(**kwargs)


def make_loss(settings: Mapping[str, Any]) -> keras.losses.Loss:
    if settings["loss"] == "huber":
        return keras.losses.Huber(delta=float(settings["huber_delta"]))
    return keras.losses.MeanAbsoluteError()


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    lr = optimizer.learning_rate
    return float(keras.ops.convert_to_numpy(lr))


@dataclass
class EarlyStopRule:
    """Keras' ``EarlyStopping(monitor, mode="min", patience, min_delta=0)`` decision, per epoch.

    ``update(epoch, value)`` returns True when training stops after this epoch. ``best_epoch``
    is the epoch whose weights ``restore_best_weights=True`` restores. ``patience`` 0 = never
    stop (Keras would stop at the first epoch without improvement).
    """

    patience: int
    best: float | None = None
    best_epoch: int = -1
    wait: int = 0

    def update(self, epoch: int, value: float) -> bool:
        self.wait += 1
        if self.best is None or value < self.best:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return False
        return self.patience > 0 and self.wait >= self.patience and epoch > 0


@dataclass
class PlateauRule:
    """Keras' ``ReduceLROnPlateau(monitor, mode="min", factor, patience, min_delta=1e-4,
    cooldown=0, min_lr)`` decision, per epoch.

    ``update(value, lr)`` returns the new learning rate, or None to leave it.
    """

    factor: float
    patience: int
    min_lr: float
    min_delta: float = PLATEAU_MIN_DELTA
    best: float | None = None
    wait: int = 0

    def update(self, value: float, lr: float) -> float | None:
        if self.best is None or value + self.min_delta < self.best:
            self.best, self.wait = value, 0
            return None
        self.wait += 1
        if self.wait < self.patience or not lr > float(np.float32(self.min_lr)):
            return None  # at the floor Keras leaves the rate and the count as they are
        self.wait = 0
        return max(lr * self.factor, self.min_lr)


class _EpochDriver(keras.callbacks.Callback):
    """Per-epoch bookkeeping: CSV row, best weights, early stopping, NaN guard, caller hook."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        on_epoch: EpochCallback | None,
        csv_path: Path | None,
        valid: tf.data.Dataset,
    ) -> None:
        super().__init__()
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
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        t_valid = time.perf_counter()
        valid_pred = predict(self.model, self.valid)
        valid_metrics = self._valid_metrics(valid_pred)
        logs = logs if logs is not None else {}
        logs.update(valid_metrics)  # in place: Keras' History and progress bar run after this callback
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
        stop = self.stopper.update(epoch, row[self.settings["early_stop_metric"]])
        last = stop or epoch + 1 >= int(self.settings["epochs"])
        if self.on_epoch is not None:
            self.on_epoch(EpochReport(epoch, dict(row), improved, self.model, seconds, last, valid_pred,
                                      started=self._t0, validation_seconds=t_end - t_valid))
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
    build = getattr(model, "_symbolic_build", None)  # Keras 3 internal; optional speed-up only
    if build is None:
        return
    try:
        build(data_batch=next(iter(train.take(1))))
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
) -> TrainResult:
    """Train one configuration to its best epoch (the best val MAE: its weights are returned).

    Early stopping decides when training ends (see the module doc); with ``early_stop_metric``
    val_mae the returned weights are exactly the ones Keras' ``restore_best_weights`` restores,
    with val_loss they are the separately kept best-val-MAE ones (msa-tf2 ``improved_train.py``
    keeps both: its val_mae checkpoint is the one these weights match) and
    ``early_stop_best_epoch`` says which epoch Keras would have restored.

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
    # released_custom_gradients: the train step's graph goes with the model (models.graph_registry)
    with released_custom_gradients(), _global_policy("mixed_float16" if use_mp else None):
        keras.utils.set_random_seed(int(settings["seed"]))
        model = build_model(config, dims, seq_len)
        model.compile(
            optimizer=make_optimizer(settings),
            loss=make_loss(settings),
            metrics=["mae", "mse"],
            jit_compile=bool(settings["jit_compile"]),
        )
        _prebuild(model, datasets["train"])
        driver = _EpochDriver(settings, on_epoch, Path(csv_path) if csv_path else None, datasets["valid"])
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
    )


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
