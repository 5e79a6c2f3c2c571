"""Real drivers on one study, end to end through the CLI: one driver at a time, progress in a log,
``kill -9``, Ctrl-C, resume, a dashboard polling all along, and the demo's progress.

One study (SQLite, the workspace's store; labels out of range so ``--clip-labels`` is needed and
every resume must apply it) lives through three drivers, while ``msatune dashboard`` polls it:

1. ``launch`` with its stdout in a file: the file holds a progress line per finished trial while
   the launch runs; a second driver (``resume``) and ``delete`` are refused in one line and change
   nothing; then ``kill -9`` with finished and running trials: the driver's watchdog ends its Ray
   processes without waiting for a resume.
2. ``resume`` takes the dead driver's study over at once; Ctrl-C (SIGINT) stops it cleanly: exit
   status 130, the run recorded as interrupted, a progress line for every trial it finished.
3. ``resume`` to the end: the budget is met exactly, nothing is left running or queued, every
   trial finished before the kill is unchanged, every trial a stopped driver left running failed
   and ran again (a trial it had created but not yet sampled never ran and uses no budget), and
   the trials' temporary checkpoint copies are swept.

The dashboard's polls all succeed and no trial fails on a locked store. The same kill -9 on a
PostgreSQL store is ``test_resume_and_cluster.py``'s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from msatune.search.ray_orphans import RAY_PIDS_FILE
from msatune.search.reconcile import REQUEUED_ATTR, requeue_params
from msatune.studies.store.connect import open_storage
from tests.conftest import cli_env, ctrl_c_reaches_children, kill_9, msatune_argv, ray_left, run_in
from tests.studies.test_dashboard import Dashboard, http

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
BUDGET = 8


def progress_lines(path: Path, name: str) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.startswith(f"{name}: trial ")]


def wait_for(predicate, proc: subprocess.Popen, err: Path, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        assert proc.poll() is None, f"the driver ended before {what}: {err.read_text()[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def snapshot(study: optuna.Study) -> dict[int, tuple]:
    return {t.number: (t.state, t.params, t.value, dict(t.intermediate_values))
            for t in study.trials if t.state in FINISHED}


def finished(study: optuna.Study) -> int:
    return sum(t.state in FINISHED for t in study.trials)


class Poller:
    """Polls the dashboard's study list and every study's trials as fast as it can."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash, self.polls, self.errors = dash, [], []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                status, listing = http("GET", self.dash.base + "/api/studies")
                if status != 200:
                    self.errors.append(f"/api/studies {status}: {listing}")
                for s in (listing or {}).get("study_summaries", []):
                    status, detail = http("GET", f"{self.dash.base}/api/studies/{s['study_id']}")
                    if status != 200:
                        self.errors.append(f"study {status}: {detail}")
                    else:
                        self.polls.append(len(detail["trials"]))
            except OSError as exc:
                self.errors.append(repr(exc))
            time.sleep(0.05)

    def end(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.dash.stop()


def test_one_driver_at_a_time_kill_9_ctrl_c_and_resume_under_a_polling_dashboard(
        tmp_path: Path, tiny_data: Path, tiny_space_file: Path) -> None:
    import h5py

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    with h5py.File(data / "y_train.h5", "r+") as f:
        f["d1"][0] = 3.6  # out of range: launch needs --clip-labels, resume must apply it too
    ws = tmp_path / "ws"
    ws.mkdir()
    url = f"sqlite:///{ws / 'studies.db'}"
    open_storage(url)  # the store exists before the read-only dashboard opens it
    poller = Poller(Dashboard(ws))
    try:
        before, ray_info = _launch_then_kill_9(tmp_path, ws, url, data, tiny_space_file)
        _resume_then_ctrl_c(tmp_path, ws, url)
        resumed = run_in(ws, "resume", "live", "--json", timeout=600, env=cli_env())
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert json.loads(resumed.stdout)["interrupted"] is False
    finally:
        poller.end()

    study = optuna.load_study(study_name="live", storage=url)
    states = [t.state for t in study.trials]
    trials = [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in study.trials]
    assert sum(s in FINISHED for s in states) == BUDGET, trials
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    after = snapshot(study)
    for number, record in before.items():
        assert after[number] == record, f"trial {number} changed across the crash"
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and all(t.user_attrs[REQUEUED_ATTR] for t in failed), trials
    requeued_from = {t.user_attrs.get("requeued_from") for t in study.trials} - {None}
    # every orphan ran again (a preset's configuration is its fixed params, not t.params); one
    # caught before its configuration was written (the kill lands while the driver samples the
    # next trial) never ran and has nothing to run again
    assert requeued_from == {t.number for t in failed if requeue_params(t)}, trials
    assert not list((ws / "studies" / "live" / "ray" / "tmp").glob("msatune-ckpt-*")), \
        "temporary checkpoint copies were left behind"
    assert not ray_left(ray_info)

    assert not any("locked" in str(t.user_attrs.get("fail_reason", "")) for t in study.trials)
    assert not poller.errors, poller.errors[:5]
    assert len(poller.polls) > 20 and max(poller.polls) == len(study.trials), poller.polls[-5:]
    assert "locked" not in poller.dash.err.read_text()


def _launch_then_kill_9(tmp_path: Path, ws: Path, url: str, data: Path, space: Path) -> tuple[dict, dict]:
    """Driver 1: progress in its log while it runs, a second driver and delete refused, then
    kill -9 with finished and running trials; returns the finished trials and its Ray pid file."""
    out, err = tmp_path / "launch.out", tmp_path / "launch.err"
    with out.open("w") as fo, err.open("w") as fe:
        driver = subprocess.Popen(
            msatune_argv("launch", "live", "--data", data, "--space", space, "--trials", str(BUDGET),
                         "--max-epochs", "4", "--grace-period", "1", "--reduction-factor", "2",
                         "--clip-labels", workspace=ws),
            stdout=fo, stderr=fe, env=cli_env())
    try:
        first = wait_for(lambda: progress_lines(out, "live"), driver, err, 400, "a progress line")
        assert driver.poll() is None  # the line is in the file while the launch still runs
        assert first[0].startswith(f"live: trial 1/{BUDGET} finished (") and "best val MAE" in first[0]
        assert "ETA" in first[0]

        study = optuna.load_study(study_name="live", storage=open_storage(url, read_only=True))
        wait_for(lambda: any(t.state == TrialState.RUNNING for t in study.get_trials()), driver, err, 120,
                 "a running trial")
        second = run_in(ws, "resume", "live", timeout=120)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot resume study 'live': msatune launch (pid" in lines[0], second.stderr
        assert f"pid {driver.pid}" in lines[0]
        assert not any(t.user_attrs.get(REQUEUED_ATTR) for t in study.get_trials())  # nothing failed
        refused = run_in(ws, "delete", "live", "--yes", timeout=120)
        assert refused.returncode == 2 and "cannot delete study 'live'" in refused.stderr
        shown = run_in(ws, "show", "live", timeout=120)  # who runs the running trials
        assert f"running under msatune launch (pid {driver.pid} on host" in shown.stdout, shown.stdout
        assert "live" in optuna.get_all_study_names(url)

        def finished_and_running() -> dict[int, tuple] | None:
            s = optuna.load_study(study_name="live", storage=open_storage(url, read_only=True))
            states = [t.state for t in s.trials]
            return snapshot(s) if sum(x in FINISHED for x in states) >= 2 and TrialState.RUNNING in states \
                else None

        before = wait_for(finished_and_running, driver, err, 400, "finished and running trials at once")
        # the driver's watchdog ends its Ray processes (agents included) without waiting for a resume
        ray_info = kill_9(driver, ws / "studies" / "live" / "ray" / RAY_PIDS_FILE)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert not ray_left(ray_info)
    assert TrialState.RUNNING in [t.state for t in optuna.load_study(study_name="live", storage=url).trials]
    shown = run_in(ws, "show", "live", timeout=120)  # running, and nobody runs them: the user is told
    assert re.search(r"the \d+ running trial\(s\) have no live driver \(last: msatune launch \(pid "
                     rf"{ray_info['driver_pid']} .*msatune resume live runs them again", shown.stdout), shown.stdout
    return before, ray_info


def _resume_then_ctrl_c(tmp_path: Path, ws: Path, url: str) -> None:
    """Driver 2: takes the killed driver's study over at once; Ctrl-C stops it cleanly."""
    done_before = finished(optuna.load_study(study_name="live", storage=url))
    out, err = tmp_path / "resume.out", tmp_path / "resume.err"
    with out.open("w") as fo, err.open("w") as fe, ctrl_c_reaches_children():
        driver = subprocess.Popen(msatune_argv("resume", "live", workspace=ws), stdout=fo, stderr=fe,
                                  env=cli_env())
    try:
        wait_for(lambda: progress_lines(out, "live"), driver, err, 400, "a progress line of the resume")
        wait_for(lambda: any(t.state == TrialState.RUNNING for t in
                             optuna.load_study(study_name="live", storage=open_storage(url, read_only=True)).trials),
                 driver, err, 120, "a running trial to interrupt")
        os.kill(driver.pid, signal.SIGINT)
        rc = driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert rc == 130, err.read_text()[-3000:]
    assert "interrupted" in err.read_text() and "msatune resume live" in err.read_text()
    study = optuna.load_study(study_name="live", storage=url)
    assert study.user_attrs["msatune:runs"][-1]["interrupted"] is True
    assert len(progress_lines(out, "live")) == finished(study) - done_before  # a line per finished trial
    assert finished(study) < BUDGET


def test_the_demo_writes_progress_to_a_log_while_it_runs(tmp_path: Path, tiny_data: Path) -> None:
    """The demo on a workspace whose embedded dataset is the tiny one (what the demo finds there
    is what it uses), with its stdout in a file."""
    ws = tmp_path / "ws"
    shutil.copytree(tiny_data, ws / "data" / "synthetic-mosi")
    out, err = tmp_path / "demo.out", tmp_path / "demo.err"
    with out.open("w") as fo, err.open("w") as fe:
        demo = subprocess.Popen(msatune_argv("demo", "--trials", "3", "--max-epochs", "1", workspace=ws),
                                stdout=fo, stderr=fe, env=cli_env())
    try:
        lines = wait_for(lambda: len(progress_lines(out, "demo")) >= 3 and progress_lines(out, "demo"),
                         demo, err, 400, "three progress lines")
        assert [ln.split(" finished")[0] for ln in lines] == [f"demo: trial {k}/3" for k in (1, 2, 3)]
        rc = demo.wait(timeout=400)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert rc == 0, err.read_text()[-3000:]
    text = out.read_text()
    for preset in ("baseline", "improved"):  # each preset's score and how long it took
        assert re.search(rf"your {preset} recipe \(trial \d+\): val MAE [0-9.]+ \(\w+, 1 epochs, \d+ s\)", text), text
    assert "demo done in" in text
