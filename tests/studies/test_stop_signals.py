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
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from msatune import stop_signals
from msatune.search.ray_orphans import RAY_PIDS_FILE
from msatune.studies.store.connect import open_storage
from tests.conftest import cli_env, msatune_argv, ray_left, run_in


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


ANNOUNCE = """
import os, signal, sys, time
from msatune import stop_signals
signal.signal(signal.SIGINT, lambda signum, frame: None)  # as Ray Tune's: no KeyboardInterrupt
with stop_signals.sigterm_as_ctrl_c():
    stop_signals.continue_with("msatune resume nightly")
    for _ in range(2):  # a second SIGTERM is not announced again
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
assert signal.set_wakeup_fd(-1) == -1  # the command's wakeup fd is gone with it
signal.signal(signal.SIGTERM, lambda signum, frame: None)  # a library user's own, after it
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(0.5)
"""


def test_a_sigterm_is_announced_at_once_with_how_to_continue() -> None:
    """Ray's core worker may end the process ~0.1 s after a job-wide SIGTERM (exit 1, no word):
    the line comes from a thread Python's C-level handler wakes, not from the main thread.
    In its own process: a SIGTERM of an earlier test could still be in this process's pipe."""
    proc = subprocess.run([sys.executable, "-c", ANNOUNCE], capture_output=True, text=True,
                          env=cli_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = "msatune: SIGTERM: stopping as on Ctrl-C; continue with: msatune resume nightly"
    assert proc.stderr.count(line) == 1 and proc.stderr.count("msatune: SIGTERM") == 1, proc.stderr[-3000:]


def test_a_finished_tune_run_leaves_ctrl_c_to_the_command(tiny_study: dict) -> None:
    """Ray Tune's SIGINT handler, left installed after a run that ended by itself, would swallow the
    next Ctrl-C or SIGTERM (a refit after the search, the demo's ensemble)."""
    before, after = tiny_study["sigint_before_and_after"]
    assert after is before


def test_a_sigterm_while_ray_starts_stops_as_ctrl_c(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``ray.init`` installs Ray's own SIGTERM handlers (``sys.exit``) before ours is back."""
    import ray

    from msatune.search.ray_session import start_ray

    def init_then_sigterm(**kwargs: object) -> None:
        raise SystemExit(signal.SIGTERM)  # what Ray's handler does with a SIGTERM during ray.init

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init_then_sigterm)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    before = signal.getsignal(signal.SIGTERM)
    with stop_signals.sigterm_as_ctrl_c():
        with pytest.raises(KeyboardInterrupt):
            start_ray(address=None, verbose=True, work_dir=tmp_path)
        assert stop_signals.terminated()  # so the command exits 143
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(SystemExit):  # a library user's own script: Ray's exit stays as Ray made it
        start_ray(address=None, verbose=True, work_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


def _launch_until_a_trial_finished(tmp_path: Path, data: Path, name: str, **popen: object):
    """``launch NAME`` on ``data``, returned once a trial finished and another runs: the driver,
    its store's URL, its stdout and stderr files and its Ray pid file's record."""
    ws = tmp_path / "ws"
    url = f"sqlite:///{ws / 'studies.db'}"
    out, err = tmp_path / "launch.out", tmp_path / "launch.err"
    with out.open("w") as fo, err.open("w") as fe:
        driver = subprocess.Popen(
            msatune_argv("launch", name, "--data", data, "--trials", "8", "--max-epochs", "3", workspace=ws),
            stdout=fo, stderr=fe, env=cli_env(), **popen)
    try:
        deadline = time.time() + 400
        while time.time() < deadline:
            assert driver.poll() is None, err.read_text()[-3000:]
            if f"{name}: trial 1/8 finished" in out.read_text():
                study = optuna.load_study(study_name=name, storage=open_storage(url, read_only=True))
                if any(t.state == TrialState.RUNNING for t in study.trials):
                    break
            time.sleep(0.5)
        else:
            raise AssertionError("timed out waiting for a finished and a running trial")
        ray_info = json.loads((ws / "studies" / name / "ray" / RAY_PIDS_FILE).read_text())
    except BaseException:
        driver.kill()
        raise
    return driver, url, out, err, ray_info


def _stopped(driver: subprocess.Popen, err: Path, ray_info: dict, name: str,
             statuses: tuple[int, ...] = (143,)) -> str:
    """What every SIGTERM'd launch owes: its exit status, the SIGTERM announced with how to
    continue, no native stack dump, no Ray process left. Returns its stderr."""
    try:
        rc = driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    text = err.read_text()
    assert rc in statuses, text[-3000:]
    assert f"msatune: SIGTERM: stopping as on Ctrl-C; continue with: msatune resume {name}" in text, text[-3000:]
    assert "SIGTERM received" not in text and "PC: @" not in text, text[-3000:]  # no native dump
    deadline = time.time() + 60
    while ray_left(ray_info) and time.time() < deadline:
        time.sleep(0.5)
    assert not ray_left(ray_info)
    return text


def _finished(url: str, name: str) -> list:
    study = optuna.load_study(study_name=name, storage=url)
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def test_sigterm_stops_a_launch_as_ctrl_c_does(tmp_path: Path, tiny_data: Path) -> None:
    """``kill PID`` (Kubernetes, docker stop): the graceful stop Ctrl-C makes, summary included."""
    driver, url, out, err, ray_info = _launch_until_a_trial_finished(tmp_path, tiny_data, "term")
    os.kill(driver.pid, signal.SIGTERM)
    text = _stopped(driver, err, ray_info, "term")
    assert "msatune: interrupted; finished trials are stored" in text  # the graceful stop's line
    study = optuna.load_study(study_name="term", storage=url)
    assert study.user_attrs["msatune:runs"][-1]["interrupted"] is True
    progress = [ln for ln in out.read_text().splitlines() if ln.startswith("term: trial ")]
    assert _finished(url, "term") and len(progress) == len(_finished(url, "term"))  # all stored
    assert not any(t.state == TrialState.RUNNING for t in study.trials)  # re-queued, as after Ctrl-C
    assert "run 0:" in out.read_text()  # the run's summary


def test_sigterm_to_the_whole_job_stops_a_launch_at_once(tmp_path: Path, tiny_data: Path) -> None:
    """Slurm and systemd signal every process of the job, Ray's own too: no graceful stop can
    finish then, and the launch must not wait a minute for Ray's GCS (past Slurm's SIGKILL)."""
    driver, url, out, err, ray_info = _launch_until_a_trial_finished(
        tmp_path, tiny_data, "job", start_new_session=True)
    done = {t.number: t.value for t in _finished(url, "job")}
    os.killpg(driver.pid, signal.SIGTERM)
    # 143, or 1 when Ray's core worker ended the process first (it exits at once when its object
    # store's connection breaks, ~0.1 s after the raylet's SIGTERM): the announcement came before
    text = _stopped(driver, err, ray_info, "job", statuses=(143, 1))
    stop_lines = [ln for ln in text.splitlines() if ln.startswith("msatune: ")]
    assert stop_lines[0].startswith("msatune: SIGTERM: ") and len(stop_lines) <= 2, text[-3000:]
    after = {t.number: t.value for t in _finished(url, "job")}
    assert done and all(after[n] == v for n, v in done.items())  # nothing finished is lost
    study = optuna.load_study(study_name="job", storage=url)
    if any(t.state == TrialState.RUNNING for t in study.trials):  # stopped at once (the usual case)
        shown = run_in(tmp_path / "ws", "show", "job", timeout=120)
        assert "have no live driver" in shown.stdout and "msatune resume job runs them again" in shown.stdout
    else:  # the graceful stop won the race against Ray's own exit
        assert study.user_attrs["msatune:runs"][-1]["interrupted"] is True
