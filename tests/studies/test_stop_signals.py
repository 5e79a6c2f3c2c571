"""SIGTERM stops a command as Ctrl-C does (Slurm's ``scancel`` and time limit, systemd, Kubernetes
and ``kill`` send it): a launch on a real local Ray ends its run gracefully, keeps every finished
trial, prints its summary and how to continue, leaves no Ray process behind and exits 143; no
native stack dump. The handler itself: forwarded to the SIGINT handler of the moment (Ray Tune's
during a run), ``KeyboardInterrupt`` otherwise, the previous handler restored after the command,
and nothing changed outside a command (a library user's own script).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from msatune import stop_signals
from msatune.search.ray_orphans import RAY_PIDS_FILE
from msatune.studies.store.connect import open_storage
from tests.conftest import cli_env, msatune_argv, ray_left


def _deliver_sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100):  # Python runs the handler between bytecodes, soon after delivery
        time.sleep(0.01)


def test_sigterm_is_forwarded_to_the_sigint_handler_of_the_moment() -> None:
    calls: list[int] = []
    before_term, before_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))  # as Ray Tune's
        with stop_signals.sigterm_as_ctrl_c():
            _deliver_sigterm()
            assert calls == [signal.SIGINT] and stop_signals.terminated()
            signal.signal(signal.SIGINT, signal.default_int_handler)  # what Tune restores after one
            with pytest.raises(KeyboardInterrupt):
                _deliver_sigterm()
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job's Ctrl-C: still stops
            with pytest.raises(KeyboardInterrupt):
                _deliver_sigterm()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as ray.init replaces it
            stop_signals.reclaim_sigterm()
            with pytest.raises(KeyboardInterrupt):
                _deliver_sigterm()
        assert signal.getsignal(signal.SIGTERM) is before_term  # restored after the command
        stop_signals.reclaim_sigterm()  # outside a command: a library user's handler stays theirs
        assert signal.getsignal(signal.SIGTERM) is before_term
    finally:
        signal.signal(signal.SIGTERM, before_term)
        signal.signal(signal.SIGINT, before_int)


def test_sigterm_stops_a_launch_as_ctrl_c_does(tmp_path: Path, tiny_data: Path) -> None:
    ws = tmp_path / "ws"
    url = f"sqlite:///{ws / 'studies.db'}"
    out, err = tmp_path / "launch.out", tmp_path / "launch.err"
    with out.open("w") as fo, err.open("w") as fe:
        driver = subprocess.Popen(
            msatune_argv("launch", "term", "--data", tiny_data, "--trials", "8", "--max-epochs", "3",
                         workspace=ws),
            stdout=fo, stderr=fe, env=cli_env())
    try:
        deadline = time.time() + 400
        while time.time() < deadline:
            assert driver.poll() is None, err.read_text()[-3000:]
            if "term: trial 1/8 finished" in out.read_text():
                study = optuna.load_study(study_name="term", storage=open_storage(url, read_only=True))
                if any(t.state == TrialState.RUNNING for t in study.trials):
                    break
            time.sleep(0.5)
        else:
            raise AssertionError("timed out waiting for a finished and a running trial")
        ray_info = json.loads((ws / "studies" / "term" / "ray" / RAY_PIDS_FILE).read_text())
        os.kill(driver.pid, signal.SIGTERM)
        rc = driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    text = err.read_text()
    assert rc == 143, text[-3000:]
    assert "continue with: msatune resume term" in text, text[-3000:]
    assert "SIGTERM received" not in text and "PC: @" not in text, text[-3000:]  # no native dump
    study = optuna.load_study(study_name="term", storage=url)
    assert study.user_attrs["msatune:runs"][-1]["interrupted"] is True
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    progress = [ln for ln in out.read_text().splitlines() if ln.startswith("term: trial ")]
    assert done and len(progress) == len(done)  # every finished trial stored, one line each
    assert not any(t.state == TrialState.RUNNING for t in study.trials)
    assert "run 0:" in out.read_text()  # the run's summary, as after Ctrl-C
    deadline = time.time() + 60
    while ray_left(ray_info) and time.time() < deadline:
        time.sleep(0.5)
    assert not ray_left(ray_info)
