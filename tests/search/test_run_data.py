"""What a study's driver keeps of its data while trials run: nothing of its own.

The trials read the dataset from Ray's object store; the driver's loaded copy (2 GB on MOSEI)
goes once it is there, in a launch and in a resume."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import optuna
from optuna.trial import TrialState

from msatune.search.search_settings import SearchSettings
from msatune.studies.store.connect import open_storage
from msatune.studies.store.workspace import Workspace


def quick_trial(config: dict, data=None) -> None:
    """Reports from the dataset it was given (the store's), at once."""
    from ray import tune

    value = 1.0 + float(data.valid.labels.std()) + config["dropout"]
    tune.report({"val_mae": value, "best_val_mae": value, "rung_mae": value, "final": True})


class DriverMemory:
    """A progress sink that looks, while trials run, for the datasets the driver loaded."""

    def __init__(self) -> None:
        self.loaded: list[weakref.ref] = []
        self.seen_alive: list[bool] = []

    def loading(self, load):
        def load_and_watch(*args, **kwargs):
            data = load(*args, **kwargs)
            self.loaded.append(weakref.ref(data))
            return data
        return load_and_watch

    def __call__(self, state) -> None:  # called from the Tune loop, on the driver
        gc.collect()
        self.seen_alive.append(any(ref() is not None for ref in self.loaded))


def test_the_driver_keeps_no_copy_of_the_data_while_trials_run(
    tmp_path: Path, tiny_data: Path, tiny_space_file: Path, ray_session, monkeypatch
) -> None:
    import msatune.augment.dataset as dataset_module
    import msatune.studies.study_data as study_data_module
    from msatune.studies.runs import launch, resume

    watch = DriverMemory()
    monkeypatch.setattr(dataset_module, "load_dataset", watch.loading(dataset_module.load_dataset))
    monkeypatch.setattr(study_data_module, "load_dataset", watch.loading(study_data_module.load_dataset))
    ws = Workspace(tmp_path).ensure()
    opts = SearchSettings(trials=2, max_epochs=1, grace_period=1, cpus_per_trial=1.0, seed=0)
    launch(ws, open_storage(ws.storage_url), "kept", opts, data_dir=tiny_data, space_file=tiny_space_file,
           trainable=quick_trial, progress=watch)
    assert len(watch.loaded) == 1 and watch.seen_alive and not any(watch.seen_alive)
    watch.seen_alive.clear()
    resume(ws, open_storage(ws.storage_url), "kept", more_trials=1, progress=watch)  # a real trial
    assert len(watch.loaded) == 2 and watch.seen_alive and not any(watch.seen_alive)
    trials = optuna.load_study(study_name="kept", storage=ws.storage_url).trials
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
