"""The study lease, reconciliation of parameterless trials, and what show/studies/export list.

Real SQLite stores made here (no Ray): trials are created with Optuna's ``create_trial`` or
``ask``, exactly as the searcher leaves them.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from msatune.errors import UserError
from msatune.search.reconcile import REQUEUED_ATTR, SAMPLED_ATTR, reconcile, used_budget
from msatune.studies.store.connect import open_storage
from msatune.studies.store.lease import LEASE_KEY, StudyLease, check_free, live_holder
from msatune.studies.store.studies import INTERRUPTED, trial_kind
from tests.conftest import run_in as run

optuna.logging.set_verbosity(optuna.logging.WARNING)


def new_study(tmp_path: Path, name: str = "s") -> optuna.Study:
    storage = open_storage(f"sqlite:///{tmp_path / 'studies.db'}")
    return optuna.create_study(study_name=name, storage=storage)


def put_lease(study: optuna.Study, **fields) -> None:
    lease = {"driver": "other", "host": socket.gethostname(), "pid": os.getpid(),
             "heartbeat": time.time(), "started": None, "command": "launch", **fields}
    study._storage.set_study_user_attr(study._study_id, LEASE_KEY, lease)


def test_a_live_driver_on_this_host_holds_the_study(tmp_path: Path) -> None:
    study = new_study(tmp_path)
    put_lease(study)  # this very process: alive
    with pytest.raises(UserError, match=r"cannot resume study 's': msatune launch \(pid \d+ on host"):
        check_free(study, "resume")
    with pytest.raises(UserError, match="is running it"), StudyLease(study, "resume"):
        pass


def test_a_dead_driver_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    study = new_study(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    put_lease(study, pid=dead.pid, heartbeat=time.time())  # fresh heartbeat, but the pid is gone
    assert live_holder(study) is None
    with StudyLease(study, "resume") as lease:
        assert live_holder(study).driver == lease.driver
    assert live_holder(study) is None  # released


def test_another_hosts_lease_holds_until_its_heartbeat_is_stale(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MSATUNE_LEASE_TIMEOUT_S", "60")
    study = new_study(tmp_path)
    put_lease(study, host="another-host.example", pid=1, heartbeat=time.time() - 5)
    with pytest.raises(UserError, match="on host another-host.example, heartbeat 5 s ago"):
        check_free(study, "delete")
    put_lease(study, host="another-host.example", pid=1, heartbeat=time.time() - 61)
    with StudyLease(study, "resume"):
        assert study._storage.get_study_user_attrs(study._study_id)[LEASE_KEY]["host"] == socket.gethostname()


def test_a_stalled_driver_that_was_taken_over_never_takes_the_lease_back(tmp_path: Path, monkeypatch) -> None:
    """Across hosts a driver that stalls past the timeout is taken over; when it wakes, its
    heartbeat must see the new holder and stop, or two drivers would run one study."""
    import msatune.studies.store.lease as lease_module

    monkeypatch.setattr(lease_module, "HEARTBEAT_S", 0.05)
    study = new_study(tmp_path)
    with StudyLease(study, "launch") as mine:
        put_lease(study, driver="taker", host="another-host.example", pid=1, command="resume")
        time.sleep(0.5)  # several heartbeats
        holder = study._storage.get_study_user_attrs(study._study_id)[LEASE_KEY]
        assert holder["driver"] == "taker" and mine.driver != "taker"
    # leaving does not release someone else's lease either
    assert study._storage.get_study_user_attrs(study._study_id)[LEASE_KEY]["driver"] == "taker"


def test_a_trial_without_its_whole_configuration_never_ran_uses_no_budget_and_is_not_requeued(tmp_path: Path) -> None:
    """The driver stopped (kill -9 while it sampled the next trial, or its sampling raised)
    between creating a trial and writing its whole configuration: left RUNNING, empty or with a
    part of one. It never ran:
    shown as interrupted, nothing of it re-queued (it has nothing to run again), and it uses no
    budget, so a resume samples one in its place and the budget ends with that many finished."""
    study = new_study(tmp_path)
    empty = study.ask()  # RUNNING, no params
    # stopped between two parameters: a part of a configuration, never handed to Ray
    partial = study.ask({"x": FloatDistribution(0, 1)})
    sampled = study.ask({"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 1)})
    sampled.set_user_attr(SAMPLED_ATTR, "ray-trial-1")  # what the searcher does once it is whole
    assert reconcile(study) == [sampled.number]
    trials = {t.number: t for t in study.get_trials()}
    for never in (empty, partial):
        assert trials[never.number].state == TrialState.FAIL
        assert trials[never.number].user_attrs[REQUEUED_ATTR] is True
        assert trial_kind(trials[never.number]) == INTERRUPTED
        assert "it never ran" in trials[never.number].user_attrs["fail_reason"]
    waiting = [t for t in trials.values() if t.state == TrialState.WAITING]
    assert [t.user_attrs["requeued_from"] for t in waiting] == [sampled.number]
    assert [t.system_attrs["fixed_params"] for t in waiting] == [trials[sampled.number].params]
    assert used_budget(study) == 0


def test_an_untagged_fail_without_params_from_an_older_store_uses_no_budget(tmp_path: Path) -> None:
    study = new_study(tmp_path)
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={
        "fail_reason": "driver stopped while the trial was running; it had no parameters yet, so it "
                       "is not run again"}))
    study.add_trial(create_trial(state=TrialState.FAIL, params={"x": 0.5},
                                 distributions={"x": FloatDistribution(0, 1)},
                                 user_attrs={"fail_reason": "ValueError: a real error"}))
    assert used_budget(study) == 1  # the configuration that ran and raised counts; the empty one not


@pytest.fixture
def mixed_ws(tmp_path: Path) -> Path:
    """A study with a complete, a pruned, a failed and an interrupted (re-queued) trial."""
    ws = tmp_path / "ws"
    ws.mkdir()
    study = new_study(ws, "mix")
    study.set_user_attr("msatune:reference", {"valid": {"constant_mae": 1.25, "floor_mae": 0.5},
                                              "test": {"constant_mae": 1.3, "floor_mae": None}})
    dist = {"dropout": FloatDistribution(0, 0.5)}
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=1.1, params={"dropout": 0.1},
                                 distributions=dist, user_attrs={"epochs": 4, "best_val_mae": 1.1}))
    study.add_trial(create_trial(state=TrialState.PRUNED, value=1.3, params={"dropout": 0.4},
                                 distributions=dist, user_attrs={"epochs": 2, "best_val_mae": 1.2},
                                 intermediate_values={1: 1.25, 2: 1.3}))
    study.add_trial(create_trial(state=TrialState.FAIL, params={"dropout": 0.2}, distributions=dist,
                                 user_attrs={"fail_reason": "ValueError: injected for the test"}))
    study.add_trial(create_trial(state=TrialState.FAIL, params={"dropout": 0.3}, distributions=dist,
                                 user_attrs={"fail_reason": "interrupted", REQUEUED_ATTR: True}))
    return ws


def test_show_lists_pruned_and_failed_trials_and_counts_interrupted_apart(mixed_ws: Path) -> None:
    proc = run(mixed_ws, "show", "mix", "--json")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["counts"]["FAIL"] == 1 and shown["counts"]["INTERRUPTED"] == 1
    assert [(t["number"], t["state"]) for t in shown["trials"]] == [(0, "COMPLETE"), (1, "PRUNED"), (2, "FAIL")]
    assert shown["trials"][1]["val_mae"] == 1.2  # a pruned trial's value: its best val MAE
    assert "best validation MAE" in shown["value_rule"]
    assert shown["ranking"]["measure"] == "val_mae" and shown["ranking"]["trial"] == 0  # no refit: val ranks

    text = run(mixed_ws, "show", "mix").stdout
    assert "finalists ranked by validation MAE (no refit yet: msatune refit mix" in text
    assert "by the seeds' averaged valid MAE" in text  # the measure the default (seeds) refit ranks by
    assert "1 failed, 1 interrupted (re-run)" in text
    assert "PRUNED" in text and "injected for the test" in text
    assert "constant predictor valid MAE 1.2500, noise floor 0.5000" in text
    only = run(mixed_ws, "show", "mix", "--state", "interrupted", "--json")
    assert [t["number"] for t in json.loads(only.stdout)["trials"]] == [3]

    listing = run(mixed_ws, "studies", "--json")
    counts = json.loads(listing.stdout)[0]["counts"]
    assert counts["FAIL"] == 1 and counts["INTERRUPTED"] == 1


def test_export_writes_every_trial_in_csv_and_json(mixed_ws: Path, tmp_path: Path) -> None:
    out = tmp_path / "mix.csv"
    proc = run(mixed_ws, "export", "mix", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert [r["state"] for r in rows] == ["COMPLETE", "PRUNED", "FAIL", "INTERRUPTED"]
    assert rows[1]["best_val_mae"] == "1.2" and rows[2]["fail_reason"].startswith("ValueError")
    assert [r["dropout"] for r in rows] == ["0.1", "0.4", "0.2", "0.3"]
    proc = run(mixed_ws, "export", "mix", "--out", str(tmp_path / "mix.json"))
    assert proc.returncode == 0 and len(json.loads((tmp_path / "mix.json").read_text())) == 4
    bad = run(mixed_ws, "export", "mix", "--out", str(tmp_path / "mix.txt"))
    assert bad.returncode == 2 and ".csv or .json" in bad.stderr


def test_export_of_a_real_study_holds_the_baselines_fixed_keys(tiny_study: dict, tmp_path: Path) -> None:
    out = tmp_path / "tiny.csv"
    proc = run(Path(tiny_study["workspace"]), "export", "tiny", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = {r["preset"]: r for r in csv.DictReader(out.open())}
    assert rows["baseline"]["batch_size"] == "4" and float(rows["baseline"]["l2"]) == 0.0
    assert rows["improved"]["batch_size"] == "16"
    assert rows["baseline"]["epochs"] == "4"


def test_delete_asks_refuses_a_live_driver_and_removes(mixed_ws: Path) -> None:
    no_tty = subprocess.run([sys.executable, "-m", "msatune.studies.cli", "--workspace", str(mixed_ws),
                             "delete", "mix"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            timeout=60)
    assert no_tty.returncode == 2 and "--yes" in no_tty.stderr
    study = optuna.load_study(study_name="mix", storage=f"sqlite:///{mixed_ws / 'studies.db'}")
    put_lease(study)  # held by this (live) process
    refused = run(mixed_ws, "delete", "mix", "--yes")
    assert refused.returncode == 2 and "cannot delete study 'mix'" in refused.stderr
    study._storage.set_study_user_attr(study._study_id, LEASE_KEY, None)
    (mixed_ws / "studies" / "mix" / "ray").mkdir(parents=True)
    done = run(mixed_ws, "delete", "mix", "--yes", "--files")
    assert done.returncode == 0, done.stderr
    assert "lease" not in done.stderr  # deleted under its own lease, released without a warning
    assert optuna.get_all_study_names(f"sqlite:///{mixed_ws / 'studies.db'}") == []
    assert not (mixed_ws / "studies" / "mix").exists()
