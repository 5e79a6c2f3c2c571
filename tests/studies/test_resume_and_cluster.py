"""Crash safety on PostgreSQL and clusters, end to end through the CLI with real Ray and stores.

* ``kill -9`` of the driver mid-study on a real PostgreSQL server, then ``msatune resume``: the
  budget is met exactly, nothing is left RUNNING, every trial finished before the kill is
  unchanged, the dead driver's Ray processes end without a resume (its watchdog ends them by PID,
  never ``ray stop``), the trials' temporary checkpoint copies are swept, and the dead driver's
  lease is taken over at once; then show, ensemble and a dashboard poll against it. (The same on
  the workspace's SQLite store, with Ctrl-C and a polling dashboard, is ``test_drivers.py``'s.)
* ``--address``: a study runs on a Ray head started by the test on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from msatune.search.ray_orphans import RAY_PIDS_FILE, session_processes
from msatune.search.reconcile import requeue_params
from msatune.studies.store.connect import open_storage
from tests.conftest import cli_env, free_port, kill_9, msatune_argv, ray_left

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def msatune_in(ws: Path, *args: str) -> list[str]:
    return msatune_argv(*args, workspace=ws)


def snapshot(study: optuna.Study) -> dict[int, tuple]:
    return {t.number: (t.state, t.params, t.value, dict(t.intermediate_values))
            for t in study.trials if t.state in FINISHED}


@pytest.fixture
def store_url():
    """A PostgreSQL server started for the test (skipped, saying why, only where its binaries are
    not installed)."""
    from tests.studies.postgres_server import postgres_url

    with postgres_url() as url:
        yield url


def test_kill_9_then_resume_on_postgresql_meets_the_budget_and_keeps_finished_trials(
    tmp_path: Path, tiny_data: Path, tiny_space_file: Path, store_url: str
) -> None:
    ws = tmp_path / "ws"
    url = store_url
    storage = ["--storage", url]
    driver = subprocess.Popen(
        msatune_in(ws, "launch", "k9", "--data", str(tiny_data), "--space", str(tiny_space_file),
                "--trials", "6", "--max-epochs", "4", "--grace-period", "1", "--reduction-factor", "2",
                *storage, "--json"),
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "driver.err", "w"), env=cli_env(),  # noqa: SIM115
    )
    try:
        deadline = time.time() + 240
        before: dict[int, tuple] = {}
        while time.time() < deadline:
            time.sleep(1.0)
            assert driver.poll() is None, (
                "the study ended before it could be killed: " + (tmp_path / "driver.err").read_text()[-3000:])
            try:  # read-only: a poller that created the tables would race the driver creating them
                study = optuna.load_study(study_name="k9", storage=open_storage(url, read_only=True))
            except (KeyError, Exception):  # noqa: BLE001 - store not created yet
                continue
            states = [t.state for t in study.trials]
            if sum(s in FINISHED for s in states) >= 2 and TrialState.RUNNING in states:
                before = snapshot(study)
                break
        assert before, "never saw finished and running trials at once"
        # the driver's watchdog ends its Ray processes (agents included) without waiting for a resume
        ray_info = kill_9(driver, ws / "studies" / "k9" / "ray" / RAY_PIDS_FILE)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert not ray_left(ray_info)

    study = optuna.load_study(study_name="k9", storage=url)
    assert TrialState.RUNNING in [t.state for t in study.trials]

    # the dead driver's lease does not hold the study: resume takes over at once
    resumed = subprocess.run(msatune_in(ws, "resume", "k9", *storage, "--json"), capture_output=True, text=True,
                             env=cli_env(), timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout)["interrupted"] is False
    tmp = ws / "studies" / "k9" / "ray" / "tmp"
    assert not list(tmp.glob("msatune-ckpt-*")), "temporary checkpoint copies were left behind"

    study = optuna.load_study(study_name="k9", storage=url)
    states = [t.state for t in study.trials]
    trials = [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in study.trials]
    assert sum(s in FINISHED for s in states) == 6, trials
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    after = snapshot(study)
    for number, record in before.items():
        assert after[number] == record, f"trial {number} changed across the crash"
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and all(t.user_attrs["msatune_requeued"] for t in failed), trials
    requeued_from = {t.user_attrs.get("requeued_from") for t in study.trials} - {None}
    # every orphan ran again; one the kill caught before its configuration was written never ran
    assert requeued_from == {t.number for t in failed if requeue_params(t)}, trials
    _read_back_from_postgres(ws, url, study)


def _read_back_from_postgres(ws: Path, url: str, study: optuna.Study) -> None:
    """show, ensemble and a dashboard poll against the PostgreSQL store."""
    shown = subprocess.run(msatune_in(ws, "show", "k9", "--storage", url, "--json"), capture_output=True,
                           text=True, env=cli_env(), timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    payload = json.loads(shown.stdout)
    assert payload["counts"]["COMPLETE"] + payload["counts"]["PRUNED"] == 6
    assert payload["counts"]["INTERRUPTED"] == sum(t.state == TrialState.FAIL for t in study.trials)
    best = min((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: (t.value, t.number))
    assert payload["best"]["number"] == best.number
    ens = subprocess.run(msatune_in(ws, "ensemble", "k9", "--storage", url, "--no-export", "--json"),
                         capture_output=True, text=True, env=cli_env(), timeout=300)
    assert ens.returncode == 0, ens.stderr[-2000:]
    assert "msatune:ensemble:greedy" in optuna.load_study(study_name="k9", storage=url).user_attrs

    import threading
    import urllib.request

    from msatune.studies.dashboard import DashboardServer

    server = DashboardServer(url, port=0, artifact_dir=ws / "artifacts")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(f"{server.base_url}/api/studies", timeout=30) as resp:
            listing = json.loads(resp.read())
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert [s["study_name"] for s in listing["study_summaries"]] == ["k9"]


def test_a_study_runs_on_an_existing_ray_head_via_address(
    tmp_path: Path, tiny_data: Path, tiny_space_file: Path
) -> None:
    port = free_port()
    ray_bin = Path(sys.executable).with_name("ray")
    # Ray's socket paths must stay under ~107 characters: pytest's tmp_path is too deep.
    temp_dir = Path(tempfile.mkdtemp(prefix="msat-ray-", dir="/tmp"))
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp_dir}",
         "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env(), start_new_session=True,
    )
    try:
        ws = tmp_path / "ws"
        deadline = time.time() + 60
        launched = None
        while time.time() < deadline:
            launched = subprocess.run(
                msatune_in(ws, "launch", "remote", "--address", f"127.0.0.1:{port}", "--data", str(tiny_data),
                        "--space", str(tiny_space_file), "--trials", "2", "--max-epochs", "2", "--json"),
                capture_output=True, text=True, env=cli_env(), timeout=300,
            )
            if launched.returncode == 0 or "already exists" not in launched.stderr:
                break
        assert launched is not None and launched.returncode == 0, launched.stderr[-3000:]
        study = optuna.load_study(study_name="remote", storage=f"sqlite:///{ws / 'studies.db'}")
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
        # the head (not a local instance) ran the trials: its session holds their worker logs
        assert list(temp_dir.glob("session_*/logs/worker-*"))
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        # the head's raylet and workers run in their own sessions: end them by their session dir
        for session in temp_dir.glob("session_2*"):
            for pid in session_processes(str(session)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(temp_dir, ignore_errors=True)
