"""How a refit's folds train: as many epochs as their trial trained in the search, no early stop."""

from __future__ import annotations

from msatune.search.fold_run import fold_training_config, task_configs
from msatune.search.trial_config import PRESETS


def test_a_fold_trains_its_trials_epochs_without_early_stopping() -> None:
    trial = {**PRESETS["improved"], "epochs": 27, "patience": 8, "seed": 5}
    fold = fold_training_config(trial, 13)
    # A held-out fold's noisy first epochs stopped folds at `patience` with epoch-1 weights.
    assert fold["patience"] == 0 and fold["epochs"] == 13
    assert {k: v for k, v in fold.items() if k not in ("patience", "epochs")} == {
        k: v for k, v in trial.items() if k not in ("patience", "epochs")}  # the recipe otherwise
    assert trial["patience"] == 8 and trial["epochs"] == 27  # the trial's config is not changed
    assert fold_training_config(trial, None)["epochs"] == 27  # unknown: the config's own budget
    assert fold_training_config(trial, 40)["epochs"] == 27  # never more than the config's budget
    tasks = task_configs({7: fold}, folds=3, repeats=1)
    assert [(t.config["epochs"], t.config["patience"]) for t in tasks] == [(13, 0)] * 3
    assert len({t.config["seed"] for t in tasks}) == 3
