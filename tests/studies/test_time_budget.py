"""``--time-budget``: no trial starts after it, running trials finish, the rest waits for resume."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from msatune.search.search_settings import SearchSettings
from msatune.studies.cli.context import Duration
from msatune.studies.runs import launch, resume
from msatune.studies.store.connect import open_storage
from msatune.studies.store.studies import study_attrs
from msatune.studies.store.workspace import Workspace
from tests.conftest import one_line_error
from tests.conftest import run_in as run

TRIAL_SECONDS = 6.0
BUDGET_SECONDS = 2.0


def slow_trial(config: dict, data=None) -> None:
    """A trial that outlasts the time budget by itself, then finishes normally."""
    import time

    from ray import tune

    time.sleep(TRIAL_SECONDS)
    value = 1.0 + config["dropout"]
    tune.report({"val_mae": value, "best_val_mae": value, "rung_mae": value, "final": True})


def test_a_run_starts_no_trial_after_its_time_budget_and_resume_runs_the_rest(
    tmp_path: Path, tiny_data: Path, tiny_space_file: Path, ray_session, monkeypatch: pytest.MonkeyPatch
) -> None:
    import msatune.search.trainable as trainable_module

    ws = Workspace(tmp_path).ensure()
    storage = open_storage(ws.storage_url)
    settings = SearchSettings(trials=3, max_epochs=1, grace_period=1, cpus_per_trial=1.0, concurrency=1,
                              seed=0, time_budget_s=BUDGET_SECONDS)
    summary = launch(ws, storage, "timed", settings, data_dir=tiny_data, space_file=tiny_space_file,
                     trainable=slow_trial, presets=False)

    # The first trial outlasted the budget, so the run proposed nothing after it, and ended as a
    # normal end (not an interruption): nothing re-queued, nothing left RUNNING or FAILed.
    assert summary["trials"] == 1 and summary["complete"] == 1
    assert summary["out_of_time"] is True and summary["interrupted"] is False
    assert summary["trials_left"] == 2 and summary["requeued"] == []
    study = optuna.load_study(study_name="timed", storage=ws.storage_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
    assert study_attrs(study)["runs"][-1]["out_of_time"] is True

    # resume (no budget this time) runs the rest of the study's budget, losing nothing
    monkeypatch.setattr(trainable_module, "train_trial", slow_trial)
    more = resume(ws, storage, "timed")
    assert more["trials"] == 2 and more["interrupted"] is False and "out_of_time" not in more
    study = optuna.load_study(study_name="timed", storage=ws.storage_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3


@pytest.mark.parametrize(("text", "seconds"), [("900", 900.0), ("90s", 90.0), ("30m", 1800.0),
                                               ("1.5h", 5400.0), ("1h30m", 5400.0), ("2 h", 7200.0)])
def test_durations_read_as_seconds(text: str, seconds: float) -> None:
    assert Duration().convert(text, None, None) == seconds


@pytest.mark.parametrize(("text", "needle"), [("abc", "is not a duration"), ("0", "more than 0 seconds"),
                                              ("1h abc", "is not a duration")])
def test_a_bad_time_budget_is_a_one_line_error_before_anything_runs(tmp_path: Path, text: str,
                                                                   needle: str) -> None:
    ws = tmp_path / "ws"
    one_line_error(run(ws, "launch", "x", "--time-budget", text), "--time-budget", needle)
    assert not ws.exists()  # nothing written


def test_settings_refuse_a_time_budget_that_is_not_positive() -> None:
    from msatune.errors import UserError

    with pytest.raises(UserError, match="--time-budget"):
        SearchSettings(time_budget_s=0).validate()


def test_a_search_its_time_budget_ended_leaves_the_refit_to_the_resume(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    from msatune.studies.cli.context import AppContext
    from msatune.studies.cli.launch import _refit

    app = AppContext(workspace=tmp_path / "ws")
    summary = {"out_of_time": True, "interrupted": False, "trials_left": 3}
    # Nothing runs (no store exists: a refit would fail to open it), one note says what will.
    assert _refit(app, None, "s", {"top_k": 5, "folds": 3}, summary, {}, as_json=False) is None
    assert "runs once the search has used its budget: msatune resume s" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


def test_the_budget_counts_from_the_commands_start_when_given() -> None:
    import time

    started = time.monotonic() - 100.0  # a command that has run 100 s (data, Ray) before its search
    settings = SearchSettings(time_budget_s=60.0, budget_from=started)
    assert settings.deadline() == started + 60.0
    assert settings.for_run(3, 1).deadline() == started + 60.0  # every run of the command: one clock
    assert SearchSettings().deadline() is None
    before = time.monotonic()
    assert before + 60.0 <= SearchSettings(time_budget_s=60.0).deadline() <= time.monotonic() + 60.0


def test_a_search_that_used_the_budget_leaves_the_refit_to_the_resume(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    import time

    from msatune.studies.cli.context import AppContext
    from msatune.studies.cli.launch import _refit

    app = AppContext(workspace=tmp_path / "ws")
    summary = {"out_of_time": False, "interrupted": False, "trials": 3}  # every trial ran, but late
    assert _refit(app, None, "s", {"top_k": 5, "folds": 3}, summary, {}, as_json=False,
                  deadline=time.monotonic() - 1.0) is None
    assert ("the time budget was used before the refit could start; the refit of the top 5 (--refit-top) "
            "runs with: msatune resume s") in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


def test_a_refit_starts_no_fold_after_its_deadline_and_the_same_command_trains_the_rest(
    tiny_study: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A refit whose deadline has passed trains its first fold only (a run always makes progress),
    ends normally with ``out_of_time``, and running it again trains the other folds, not that one."""
    import shutil
    import time

    from msatune.studies.cli.refit import render_refit
    from msatune.studies.refit.run import RefitOptions, run_refit

    ws = Workspace(tmp_path / "ws").ensure()
    shutil.copy(Path(tiny_study["workspace"]) / "studies.db", ws.root / "studies.db")
    storage = open_storage(ws.storage_url)
    options = RefitOptions(top_k=2, folds=2)
    where = {"concurrency": 1}
    # after a search in the same command (launch --refit-top), a passed deadline starts no fold at all
    none = run_refit(ws, storage, "tiny", options, where=where, deadline=time.monotonic(), after_search=True)
    assert none["run"]["folds_run"] == 0 and none["run"]["folds_left"] == 4
    assert none["run"]["out_of_time"] is True and none["run"]["interrupted"] is False
    cut = run_refit(ws, storage, "tiny", options, where=where, deadline=time.monotonic())
    run_record = cut["run"]
    assert run_record["folds_run"] == run_record["complete"] == 1
    assert run_record["out_of_time"] is True and run_record["folds_left"] == 3
    assert run_record["interrupted"] is False
    first = [t for t in optuna.load_study(study_name="tiny:refit", storage=ws.storage_url).trials
             if t.state == TrialState.COMPLETE]
    assert len(first) == 1
    render_refit(cut)
    assert "time budget reached: 3 fold(s) not started" in capsys.readouterr().out

    rest = run_refit(ws, storage, "tiny", options, where=where)
    assert rest["run"]["already_done"] == 1 and rest["run"]["folds_run"] == 3
    assert "out_of_time" not in rest["run"]
    folds = [t for t in optuna.load_study(study_name="tiny:refit", storage=ws.storage_url).trials
             if t.state == TrialState.COMPLETE]
    assert len(folds) == 4 and first[0].number in {t.number for t in folds}
    keys = {(t.params["trial"], t.params["fold"]) for t in folds}
    assert len(keys) == 4  # no fold trained twice


@pytest.mark.parametrize("first_always", [True, False])
def test_the_fold_queue_hands_folds_in_order_and_none_after_the_deadline(
    monkeypatch: pytest.MonkeyPatch, first_always: bool
) -> None:
    """Before the deadline every fold is handed once, in order; after it none (a refit of its own
    still starts its first; one after a search in the same command does not)."""
    from ray.tune.search import Searcher

    import msatune.search.fold_run as fold_run
    from msatune.search.fold_run import FoldQueue, FoldTask

    now = [100.0]
    monkeypatch.setattr(fold_run.time, "monotonic", lambda: now[0])
    tasks = [FoldTask(t, 0, f, {"seed": f}) for t in (3, 1) for f in range(2)]
    queue = FoldQueue(tasks, deadline=110.0, first_always=first_always)
    assert [queue.suggest(f"t{i}")["task"]["fold"] for i in range(2)] == [0, 1]
    now[0] = 110.0
    assert queue.suggest("t2") is Searcher.FINISHED and queue.out_of_time and queue.left == 2

    late = FoldQueue(tasks, deadline=90.0, first_always=first_always)
    first = late.suggest("t0")
    if first_always:
        assert first == {"task": tasks[0].as_config()} and late.suggest("t1") is Searcher.FINISHED
    else:
        assert first is Searcher.FINISHED
    assert late.out_of_time and late.left == (3 if first_always else 4)

    unbounded = FoldQueue(tasks)
    handed = [unbounded.suggest(f"t{i}")["task"] for i in range(4)]
    assert [(h["trial"], h["fold"]) for h in handed] == [(3, 0), (3, 1), (1, 0), (1, 1)]
    assert unbounded.suggest("t4") is Searcher.FINISHED and not unbounded.out_of_time
