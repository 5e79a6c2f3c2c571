"""Two real drivers on one store, progress in a log file, Ctrl-C, and the demo's progress.

One launch runs with its stdout in a file (not a terminal). While it runs: the file already
holds a progress line per finished trial; a second driver (``msatune resume``) and
``msatune delete`` are refused in one line and change nothing. Then Ctrl-C (SIGINT): the launch
exits 130 and records the run as interrupted; ``resume`` takes the study over at once and meets
the budget with the labels still clipped as ``launch --clip-labels`` recorded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from msatune.search.reconcile import REQUEUED_ATTR

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def msatune(ws: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "msatune.studies.cli", "--workspace", str(ws), *args]


def env() -> dict[str, str]:
    e = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200"}
    e.pop("RAY_ADDRESS", None)
    return e


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


def test_one_driver_per_study_progress_in_a_log_and_ctrl_c(tmp_path: Path, tiny_data: Path,
                                                          tiny_space_file: Path) -> None:
    import h5py

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    with h5py.File(data / "y_train.h5", "r+") as f:
        f["d1"][0] = 3.6  # out of range: launch needs --clip-labels, resume must apply it too
    ws = tmp_path / "ws"
    url = f"sqlite:///{ws / 'studies.db'}"
    out, err = tmp_path / "launch.out", tmp_path / "launch.err"
    with out.open("w") as fo, err.open("w") as fe:
        driver = subprocess.Popen(
            msatune(ws, "launch", "live", "--data", str(data), "--space", str(tiny_space_file),
                    "--trials", "10", "--max-epochs", "4", "--grace-period", "4", "--clip-labels"),
            stdout=fo, stderr=fe, env=env())
    try:
        first = wait_for(lambda: progress_lines(out, "live"), driver, err, 300, "a progress line")
        assert driver.poll() is None  # the line is in the file while the launch still runs
        assert first[0].startswith("live: trial 1/10 finished (") and "best val MAE" in first[0]
        assert "ETA" in first[0]

        study = optuna.load_study(study_name="live", storage=url)
        wait_for(lambda: any(t.state == TrialState.RUNNING for t in study.get_trials()), driver, err, 120,
                 "a running trial")
        second = subprocess.run(msatune(ws, "resume", "live"), capture_output=True, text=True, env=env(),
                                timeout=120)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot resume study 'live': msatune launch (pid" in lines[0], second.stderr
        assert f"pid {driver.pid}" in lines[0]
        trials = study.get_trials()
        assert not any(t.user_attrs.get(REQUEUED_ATTR) for t in trials)  # nothing failed or re-queued

        refused = subprocess.run(msatune(ws, "delete", "live", "--yes"), capture_output=True, text=True,
                                 env=env(), timeout=120)
        assert refused.returncode == 2 and "cannot delete study 'live'" in refused.stderr
        assert "live" in optuna.get_all_study_names(url)

        wait_for(lambda: any(t.state == TrialState.RUNNING for t in study.get_trials()), driver, err, 120,
                 "a running trial to interrupt")
        os.kill(driver.pid, signal.SIGINT)
        rc = driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert rc == 130, err.read_text()[-3000:]
    assert "interrupted" in err.read_text() and "msatune resume live" in err.read_text()
    runs = optuna.load_study(study_name="live", storage=url).user_attrs["msatune:runs"]
    assert runs[-1]["interrupted"] is True
    finished = sum(t.state in FINISHED for t in optuna.load_study(study_name="live", storage=url).trials)
    assert len(progress_lines(out, "live")) == finished  # a line for every finished trial

    resumed = subprocess.run(msatune(ws, "resume", "live", "--json"), capture_output=True, text=True,
                             env=env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["interrupted"] is False
    states = [t.state for t in optuna.load_study(study_name="live", storage=url).trials]
    assert sum(s in FINISHED for s in states) == 10
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states


def test_the_demo_writes_progress_to_a_log_while_it_runs(tmp_path: Path, tiny_data: Path) -> None:
    """The demo on a workspace whose embedded dataset is the tiny one (what the demo finds there
    is what it uses), with its stdout in a file."""
    ws = tmp_path / "ws"
    shutil.copytree(tiny_data, ws / "data" / "synthetic-mosi")
    out, err = tmp_path / "demo.out", tmp_path / "demo.err"
    with out.open("w") as fo, err.open("w") as fe:
        demo = subprocess.Popen(msatune(ws, "demo", "--trials", "3", "--max-epochs", "1"),
                                stdout=fo, stderr=fe, env=env())
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
