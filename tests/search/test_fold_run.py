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


def test_a_folds_splits_are_rows_of_the_pool_read_in_place(tiny_data) -> None:
    # Every fold worker gets the pool once (Ray's object store); its train and held-out splits
    # are rows of it, gathered a batch at a time: no copy of the pool's features per fold.
    import numpy as np

    from msatune.augment.dataset import load_dataset
    from msatune.augment.folds import fold_split, pool_splits, stratified_folds
    from msatune.search.fold_run import fold_dataset
    from msatune.search.trial import build_pipelines

    pool = pool_splits(load_dataset(tiny_data).splits)
    assignment = stratified_folds(pool.labels, 3, seed=0)
    data = fold_dataset(pool, assignment, 0, 1, "fp")
    held_out = fold_split(assignment, 0, 1).held_out
    assert set(data.splits) == {"train", "valid"}  # never the test split
    assert data.valid.n == held_out.size and data.train.n == pool.n - held_out.size
    assert np.array_equal(data.valid.labels, pool.labels[held_out])
    assert data.dims == {m: getattr(pool, m).shape[2] for m in ("text", "audio", "video")}
    assert data.seq_len == pool.text.shape[1]
    datasets = build_pipelines({**PRESETS["improved"], "seed": 0}, data)
    valid = np.concatenate([x["audio"].numpy() for x, _ in datasets["valid"]])
    assert np.array_equal(valid, pool.audio[held_out])
    pool.audio[held_out] = 5.0  # the pool changed after the pipelines were built
    assert all((x["audio"].numpy() == 5.0).all() for x, _ in datasets["valid"])
