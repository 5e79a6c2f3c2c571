"""The presets' training rules are msa-tf2's: learning rate per epoch, plateau, early stopping.

The numbers come from their scripts (``train.py``, ``improved_train.py``) and from their own
training logs (the fixture CSVs, written by Keras' CSVLogger during their runs), so the rules are
checked against what Keras did for them, epoch by epoch.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from msatune.errors import UserError
from msatune.models.recipe import EarlyStopRule, PlateauRule, epoch_learning_rate, training_settings
from msatune.models.training import predict, train_model
from msatune.search.trial_config import PRESETS

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / ".." / "shared" / "fixtures" / "msa-tf2-logs"
needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"fixture logs not found at {FIXTURES} (shared/ beside the repo)"
)

IMPROVED = training_settings(PRESETS["improved"])
BASELINE = training_settings(PRESETS["baseline"])


def f32(x: float) -> np.float32:
    """The rate as the optimizer's float32 variable holds it (and Keras' CSV log shows it)."""
    return np.float32(x)


def read_log(name: str) -> list[dict[str, float]]:
    with open(FIXTURES / name, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


# --- the improved recipe: warm-up + cosine over 50 epochs -----------------------------------

def test_improved_learning_rate_epoch_by_epoch():
    # improved_train.py: 1e-4 + (5e-4 - 1e-4) * epoch / 5 for epoch < 5, then
    # 5e-4 * 0.5 * (1 + cos(pi * (epoch - 5) / 45)); Keras passes the 0-based epoch.
    warmup = [1e-4, 1.8e-4, 2.6e-4, 3.4e-4, 4.2e-4]
    for epoch, lr in enumerate(warmup):
        assert f32(epoch_learning_rate(IMPROVED, epoch)) == f32(lr), epoch
    for epoch in range(5, 50):
        lr = 5e-4 * 0.5 * (1 + math.cos(math.pi * (epoch - 5) / 45))
        assert f32(epoch_learning_rate(IMPROVED, epoch)) == f32(lr), epoch
    assert epoch_learning_rate(IMPROVED, 5) == pytest.approx(5e-4)
    assert epoch_learning_rate(IMPROVED, 30) == pytest.approx(2.0659e-4, rel=1e-4)  # their log
    assert epoch_learning_rate(IMPROVED, 49) == pytest.approx(6.09e-7, rel=1e-2)
    assert IMPROVED["epochs"] == 50 and IMPROVED["cosine_epochs"] == 50


def test_cosine_horizon_is_its_own_key():
    # More epochs do not stretch their 50-epoch cosine; past the horizon the rate stays at 0.
    longer = {**IMPROVED, "epochs": 100}
    assert epoch_learning_rate(longer, 30) == epoch_learning_rate(IMPROVED, 30)
    assert epoch_learning_rate(longer, 50) == epoch_learning_rate(longer, 80) == 0.0
    # cosine_epochs = 0: the horizon is the run's epochs (msatune's earlier schedule).
    stretched = {**longer, "cosine_epochs": 0}
    assert epoch_learning_rate(stretched, 30) == pytest.approx(4.19e-4, rel=1e-3)
    assert epoch_learning_rate(stretched, 99) > 0


@needs_fixtures
def test_improved_learning_rate_matches_their_log():
    rows = read_log("improved_training_log_20250917_021016.csv")
    assert len(rows) == 21
    for row in rows:
        assert f32(epoch_learning_rate(IMPROVED, int(row["epoch"]))) == f32(row["learning_rate"])


@needs_fixtures
def test_improved_early_stopping_on_val_loss_against_their_log():
    # EarlyStopping(val_loss, patience 8): their run's val_loss kept improving often enough
    # that it never stopped in these 21 epochs; val MAE was best at epoch 12 (our checkpoint).
    rows = read_log("improved_training_log_20250917_021016.csv")
    rule = EarlyStopRule(IMPROVED["patience"])
    assert [rule.update(int(r["epoch"]), r["val_loss"]) for r in rows] == [False] * 21
    assert rule.best_epoch == 20
    assert IMPROVED["early_stop_metric"] == "val_loss" and IMPROVED["patience"] == 8
    assert int(np.argmin([r["val_mae"] for r in rows])) == 12


# --- the baseline recipe: ReduceLROnPlateau + EarlyStopping on val_mae ----------------------

@needs_fixtures
@pytest.mark.parametrize(
    ("log", "best", "reduced_from", "stopped"),
    [
        # best val MAE at 3: 8 epochs without -> halved from epoch 12; 15 without -> stop at 18
        ("training_log_20250902_adaptivefusion.csv", 3, 12, 18),
        # best at 20: halved from 29, stopped at 35
        ("training_log_20250902_no_adaptivefusion.csv", 20, 29, 35),
    ],
)
def test_baseline_plateau_and_early_stopping_reproduce_their_logs(log, best, reduced_from, stopped):
    rows = read_log(log)
    assert BASELINE["plateau_metric"] == BASELINE["early_stop_metric"] == "val_mae"
    plateau = PlateauRule(BASELINE["plateau_factor"], BASELINE["plateau_patience"], BASELINE["min_lr"])
    stopper = EarlyStopRule(BASELINE["patience"])
    lr = BASELINE["learning_rate"]
    stop_epoch = None
    for row in rows:
        epoch = int(row["epoch"])
        assert f32(lr) == f32(row["learning_rate"]), epoch  # the rate this epoch trained with
        if stopper.update(epoch, row["val_mae"]):
            stop_epoch = epoch
        lr = plateau.update(row["val_mae"], float(f32(lr))) or lr
    assert stop_epoch == stopped == int(rows[-1]["epoch"])
    assert stopper.best_epoch == best
    assert [int(r["epoch"]) for r in rows if f32(r["learning_rate"]) < f32(1e-3)][0] == reduced_from


def test_baseline_recipe_numbers():
    b = BASELINE
    assert (b["optimizer"], b["learning_rate"], b["loss"], b["batch_size"], b["epochs"]) == (
        "adam", 1e-3, "mae", 4, 100)
    assert (b["lr_schedule"], b["plateau_factor"], b["plateau_patience"], b["min_lr"]) == (
        "plateau", 0.5, 8, 1e-6)
    assert (b["early_stop_metric"], b["patience"]) == ("val_mae", 15)
    i = IMPROVED
    assert (i["optimizer"], i["learning_rate"], i["weight_decay"], i["clipnorm"]) == (
        "adamw", 5e-4, 0.01, 1.0)
    assert (i["loss"], i["huber_delta"], i["batch_size"]) == ("huber", 1.0, 16)


# --- the rules themselves (Keras' semantics) ------------------------------------------------

def test_early_stop_rule_is_strict_and_counts_epochs_without_improvement():
    rule = EarlyStopRule(patience=2)
    values = [1.0, 0.9, 0.9, 0.95, 0.8, 0.85, 0.85]
    assert [rule.update(e, v) for e, v in enumerate(values)] == [
        False, False, False, True, False, False, True]
    assert rule.best_epoch == 4  # an equal value is no improvement (min_delta 0)
    never = EarlyStopRule(patience=0)
    assert not any(never.update(e, v) for e, v in enumerate([1.0, 2.0, 3.0, 4.0]))


def test_plateau_rule_needs_more_than_min_delta_and_stops_at_min_lr():
    rule = PlateauRule(factor=0.5, patience=2, min_lr=3e-4)
    lr = 1e-3
    # 0.99995 improves on 1.0 by less than 1e-4: not an improvement for ReduceLROnPlateau
    seq = [1.0, 0.99995, 0.99993, 0.99, 0.99, 0.99, 0.99, 0.99, 0.99]
    rates = []
    for v in seq:
        rates.append(lr)
        lr = rule.update(v, lr) or lr
    assert rates == [1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 5e-4, 3e-4, 3e-4, 3e-4]
    assert lr == 3e-4  # at the floor nothing changes any more


def test_new_keys_are_validated_with_one_line_errors():
    for key, value in [("early_stop_metric", "val_acc"), ("plateau_metric", "loss"),
                       ("cosine_epochs", -1), ("cosine_epochs", 2.5), ("min_lr", -1e-6)]:
        with pytest.raises(UserError, match=key) as info:
            training_settings({key: value})
        assert "\n" not in str(info.value)


def test_keras_overwrites_a_plateau_reduction_under_their_scheduler():
    """What Keras does with improved_train.py's LearningRateScheduler + ReduceLROnPlateau.

    The loss cannot improve here (zero inputs, no bias), so ReduceLROnPlateau (patience 1)
    reduces the rate at the end of every epoch after the first; the scheduler sets its own
    rate again at every epoch begin, so every epoch trains with the schedule's rate. That is
    why the cosine recipe ignores the plateau keys.
    """
    import keras

    schedule = lambda epoch, lr: epoch_learning_rate(IMPROVED, epoch)  # noqa: E731
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer=keras.optimizers.AdamW(5e-4, weight_decay=0.01, clipnorm=1.0),
                  loss=keras.losses.Huber(1.0))
    seen = []
    probe = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: seen.append(float(model.optimizer.learning_rate.numpy())))
    x, y = np.zeros((8, 3), "float32"), np.ones((8, 1), "float32")
    history = model.fit(
        x, y, validation_data=(x, y), epochs=8, batch_size=4, verbose=0,
        callbacks=[keras.callbacks.LearningRateScheduler(schedule),
                   keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.5, patience=1, min_lr=1e-6),
                   probe],
    )
    used = history.history["learning_rate"]
    assert [f32(v) for v in used] == [f32(epoch_learning_rate(IMPROVED, e)) for e in range(8)]
    # ... although ReduceLROnPlateau did halve the rate at the end of epochs 1..7
    assert [f32(v) for v in seen[1:]] == [f32(0.5 * epoch_learning_rate(IMPROVED, e)) for e in range(1, 8)]


# --- the rules inside a real (tiny) training ------------------------------------------------

DIMS = {"text": 4, "audio": 3, "video": 2}
SMALL = {"model_dim": 8, "num_heads": 2, "ff_dim": 16, "n_layers_mod": 1, "n_layers_fuse": 1,
         "head_units": 8, "head_units2": 4, "gate_units": 4}


def tiny_run(**overrides):
    import keras

    from msatune.augment.pipeline import make_datasets
    from tests.conftest import make_tiny_arrays

    # tf.data's seeded shuffle also depends on TF's global seed, which train_model sets only
    # after the pipelines exist: set it first, so the run does not depend on earlier tests.
    keras.utils.set_random_seed(0)
    arrays = make_tiny_arrays(sizes=(24, 12, 6))
    datasets = make_datasets(arrays, batch_size=8, seed=0, eval_batch_size=12)
    config = {**PRESETS["improved"], **SMALL, "batch_size": 8, **overrides}
    return train_model(config, datasets, DIMS), datasets


def first_stop(values: list[float], patience: int) -> int | None:
    """The epoch at which ``patience`` epochs in a row failed to beat the running best."""
    best, wait = math.inf, 0
    for epoch, v in enumerate(values):
        if v < best:
            best, wait = v, 0
        else:
            wait += 1
            if wait >= patience:
                return epoch
    return None


@pytest.mark.parametrize("metric", ["val_loss", "val_mae"])
def test_training_stops_on_the_recipe_metric_and_keeps_the_best_mae_weights(metric):
    # With this much L2 the penalty keeps val_loss falling while val MAE stalls, so the two
    # metrics stop training at different epochs.
    run = {"patience": 2, "epochs": 12, "learning_rate": 0.02, "l2": 0.1, "warmup_epochs": 0,
           "cosine_epochs": 0}
    result, datasets = tiny_run(early_stop_metric=metric, **run)
    history = result.history
    stops = {m: first_stop([row[m] for row in history], 2) for m in ("val_loss", "val_mae")}
    assert stops["val_loss"] != stops["val_mae"]  # the check below tells the metrics apart
    monitored = [row[metric] for row in history]
    assert result.stopped_early == (stops[metric] is not None)
    assert result.epochs_trained == (12 if stops[metric] is None else stops[metric] + 1)
    assert result.early_stop_best_epoch == int(np.argmin(monitored))  # what Keras restores
    # The returned weights are the best val MAE epoch's (the trial's checkpoint) ...
    maes = [row["val_mae"] for row in history]
    assert result.best_epoch == int(np.argmin(maes))
    labels = np.concatenate([np.asarray(y).reshape(-1) for _, y in datasets["valid"]])
    got = float(np.mean(np.abs(predict(result.model, datasets["valid"]) - labels)))
    assert got == pytest.approx(maes[result.best_epoch], rel=1e-5)
    # ... and the learning rate of every epoch is the cosine schedule's
    settings = training_settings({**PRESETS["improved"], **SMALL, **run})
    for row in history:
        assert f32(row["learning_rate"]) == f32(epoch_learning_rate(settings, int(row["epoch"])))


def test_plateau_schedule_in_training_follows_the_rule():
    result, _ = tiny_run(lr_schedule="plateau", plateau_metric="val_mae", plateau_patience=1,
                         plateau_factor=0.5, min_lr=1e-4, learning_rate=0.02, patience=0, epochs=8)
    rule = PlateauRule(0.5, 1, 1e-4)
    lr = 0.02
    for row in result.history:
        assert f32(row["learning_rate"]) == f32(lr), row["epoch"]
        lr = rule.update(row["val_mae"], float(f32(lr))) or lr
    assert any(f32(r["learning_rate"]) < f32(0.02) for r in result.history)  # it did reduce
