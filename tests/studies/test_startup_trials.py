"""TPE's random start-up: ``--startup-trials`` (or the default for the budget) is recorded on the
study and a resume keeps it, however few trials the resume runs."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from msatune.search.search_settings import SearchSettings, default_startup_trials
from msatune.studies.runs import launch, resume
from msatune.studies.store.connect import open_storage
from msatune.studies.store.studies import study_attrs
from msatune.studies.store.workspace import Workspace
from tests.conftest import one_line_error
from tests.conftest import run_in as run


def quick_trial(config: dict, data=None) -> None:
    from ray import tune

    value = 1.0 + config["dropout"]
    tune.report({"val_mae": value, "best_val_mae": value, "rung_mae": value, "final": True})


def sampled_by_tpe(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether TPE's model proposed the trial: Optuna 4-5 keeps a TPE trial's relative sample in
    its system attrs (``optuna.samplers._tpe.sampler._RELATIVE_PARAMS_KEY``, written with
    ``constant_liar``, which msatune's sampler uses); a random start-up trial has none."""
    return any(key.startswith("tpe:relative_params") for key in trial.system_attrs)


def test_the_start_up_is_recorded_and_a_short_resume_keeps_it(
    tmp_path: Path, tiny_data: Path, tiny_space_file: Path, ray_session, monkeypatch: pytest.MonkeyPatch
) -> None:
    import msatune.search.trainable as trainable_module

    ws = Workspace(tmp_path).ensure()
    storage = open_storage(ws.storage_url)
    settings = SearchSettings(trials=3, max_epochs=1, grace_period=1, cpus_per_trial=1.0, concurrency=1,
                              seed=0, n_startup_trials=5).validate()
    launch(ws, storage, "warm", settings, data_dir=tiny_data, space_file=tiny_space_file,
           trainable=quick_trial, presets=False)
    study = optuna.load_study(study_name="warm", storage=ws.storage_url)
    assert study_attrs(study)["startup_trials"] == 5
    assert [sampled_by_tpe(t) for t in study.trials] == [False] * 3

    # 4 more trials, one at a time (with two, a trial sampled while another runs is counted
    # before that one ends): the study's start-up of 5 still holds (the default for a run of 4
    # would be 3, so every one of them would have been TPE's), then TPE takes over
    monkeypatch.setattr(trainable_module, "train_trial", quick_trial)
    resume(ws, storage, "warm", more_trials=4, where={"concurrency": 1})
    study = optuna.load_study(study_name="warm", storage=ws.storage_url)
    assert [sampled_by_tpe(t) for t in study.trials] == [False] * 5 + [True] * 2


def test_the_default_start_up_follows_the_budget_and_is_recorded() -> None:
    assert [default_startup_trials(n) for n in (4, 10, 20, 24, 30, 200)] == [3, 5, 10, 12, 12, 12]
    assert SearchSettings(trials=24).study_record()["startup_trials"] == 12
    # a study made before the start-up was recorded: the default for its budget, in every run
    record = SearchSettings(trials=24).study_record()
    del record["startup_trials"]
    assert SearchSettings.from_study(record).for_run(5, 1).startup_trials == 12


@pytest.mark.parametrize("value", ["-1", "1.5", "many"])
def test_a_bad_start_up_is_a_one_line_error_before_anything_is_written(tmp_path: Path, value: str) -> None:
    ws = tmp_path / "ws"
    one_line_error(run(ws, "launch", "x", "--startup-trials", value), "--startup-trials")
    assert not ws.exists()
