"""The training recipe's settings and rules: defaults, validation, optimizer, loss, learning
rate per epoch, plateau and early stopping (``models.training`` runs them).

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

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from msatune.errors import UserError

if TYPE_CHECKING:  # Keras (and TensorFlow under it) only where an optimizer or loss is built:
    import keras  # reading and checking settings stays light (launch's checks before Ray)

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


#: How an optimizer applies Adam's update (``make_optimizer(update=)``; models.optimizers).
OPTIMIZER_UPDATES = ("grouped", "keras")


def make_optimizer(settings: Mapping[str, Any], *, update: str = "grouped") -> keras.optimizers.Optimizer:
    """Adam or AdamW with a plain learning-rate variable (schedules set it per epoch).

    ``update``: ``grouped`` (the default) is Keras' own Adam/AdamW arithmetic run once per step
    over all variables (:mod:`msatune.models.optimizers`): bit for bit Keras' results, so the
    presets keep the users' update, with ~2 s less tracing per trial; ``keras`` is Keras' class
    itself (the users' setup, for comparisons).
    """
    import keras

    if update not in OPTIMIZER_UPDATES:
        raise ValueError(f"update must be one of {OPTIMIZER_UPDATES}, got {update!r}")
    lr = float(settings["learning_rate"])
    if settings["lr_schedule"] == "cosine":
        lr = epoch_learning_rate(settings, 0)
    kwargs: dict[str, Any] = {"learning_rate": lr}
    if float(settings["clipnorm"]) > 0:
        kwargs["clipnorm"] = float(settings["clipnorm"])
    if update == "grouped":
        from msatune.models.optimizers import GroupedAdam as Adam
        from msatune.models.optimizers import GroupedAdamW as AdamW
    else:
        Adam, AdamW = keras.optimizers.Adam, keras.optimizers.AdamW
    if settings["optimizer"] == "adamw":
        return AdamW(weight_decay=float(settings["weight_decay"]), **kwargs)
    return Adam(**kwargs)


def make_loss(settings: Mapping[str, Any]) -> keras.losses.Loss:
    import keras

    if settings["loss"] == "huber":
        return keras.losses.Huber(delta=float(settings["huber_delta"]))
    return keras.losses.MeanAbsoluteError()


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    import keras

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
