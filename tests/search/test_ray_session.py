"""The Ray a driver uses: the pid file ``stop_ray`` forgets only for processes this driver started,
a lean local start, and the package shipped to a cluster's workers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import ray

from msatune.search.ray_orphans import RAY_PIDS_FILE
from msatune.search.ray_session import package_for_workers, stop_ray
from tests.test_architecture import package_dirs


def test_the_package_shipped_to_a_cluster_holds_every_module_nested_ones_too(tmp_path: Path) -> None:
    """``--address``: Ray's workers get msatune through ``py_modules`` (this copy), not an install."""
    shipped = package_for_workers(tmp_path)
    copied = {str(p.relative_to(tmp_path)) for p in shipped.rglob("*.py")}
    expected = {f"{pkg.replace('.', '/')}/{py.name}" for pkg, folder in package_dirs().items()
                for py in folder.glob("*.py")}
    assert copied == expected, (sorted(expected - copied), sorted(copied - expected))


def test_stop_ray_leaves_the_pid_file_of_the_driver_that_took_the_study_over(tmp_path: Path,
                                                                             monkeypatch) -> None:
    # the suite's one Ray session stays up: only the pid-file rule is under test
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    pid_file = tmp_path / RAY_PIDS_FILE
    theirs = {"driver_pid": os.getpid() + 1, "session_dir": "/tmp/ray/session_x", "pids": [12345]}
    pid_file.write_text(json.dumps(theirs))
    stop_ray(tmp_path)
    assert json.loads(pid_file.read_text()) == theirs  # the new driver's watchdog still needs it
    pid_file.write_text(json.dumps({**theirs, "driver_pid": os.getpid()}))
    stop_ray(tmp_path)
    assert not pid_file.exists()
    stop_ray(tmp_path)  # no file: nothing to do


def test_a_local_ray_starts_lean_no_idle_workers_and_no_metrics(tmp_path: Path) -> None:
    """msatune's own local Ray pre-starts no Python workers (trial actors start theirs),
    collects no metrics and reports no usage stats: the processes a study runs besides its trials are Ray's seven helpers."""
    import subprocess
    import sys

    script = f"""
import json, os, pathlib, time
from msatune.search.ray_session import start_ray, stop_ray
from msatune.search.ray_orphans import session_processes
start_ray(address=None, verbose=False, work_dir=pathlib.Path({str(tmp_path)!r}))
import ray
session = ray._private.worker._global_node.get_session_dir_path()
time.sleep(4)  # pre-started workers would be up by now
names = []
for pid in session_processes(session):
    try:
        names.append(pathlib.Path(f"/proc/{{pid}}/cmdline").read_bytes().replace(b"\\0", b" ").decode())
    except OSError:
        pass
env = {{k: os.environ.get(k) for k in ("RAY_enable_metrics_collection", "RAY_enable_worker_prestart",
                                     "RAY_USAGE_STATS_ENABLED")}}
print(json.dumps({{"names": names, "env": env}}))
stop_ray(pathlib.Path({str(tmp_path)!r}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["env"] == {"RAY_enable_metrics_collection": "0", "RAY_enable_worker_prestart": "0",
                          "RAY_USAGE_STATS_ENABLED": "0"}
    workers = [n for n in out["names"]  # the raylet's own command line names the worker script too
               if not n.split()[0].endswith("raylet") and ("default_worker.py" in n or "ray::IDLE" in n)]
    assert not workers, workers
    assert any("raylet" in n for n in out["names"])  # the session's processes were found at all


def test_a_sweep_removes_dead_trials_checkpoint_work_and_keeps_what_a_live_trial_writes(tmp_path: Path) -> None:
    """A resume sweeps the working checkpoints killed trials left; it must not delete under the
    trials of a driver that stalled and was taken over (alive, still writing until it sees it)."""
    import shutil
    import socket
    import subprocess
    import sys

    from msatune.search.trainable import (
        CHECKPOINT_WORK_PREFIX,
        TMP_DIR_NAME,
        checkpoint_work_dir,
        checkpoint_work_owner,
        sweep_checkpoint_work_dirs,
    )

    made = checkpoint_work_dir()  # outside Ray: in the system temp dir, named for its maker
    try:
        assert checkpoint_work_owner(made) == (socket.gethostname(), os.getpid())
    finally:
        shutil.rmtree(made)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    host = socket.gethostname()
    tmp = tmp_path / TMP_DIR_NAME
    names = {
        "live": f"{CHECKPOINT_WORK_PREFIX}{host}-{os.getpid()}-abc_1",
        "dead": f"{CHECKPOINT_WORK_PREFIX}{host}-{dead_pid}-abc_2",
        "other host": f"{CHECKPOINT_WORK_PREFIX}node-7.cluster-{dead_pid}-abc_3",
        "old form": f"{CHECKPOINT_WORK_PREFIX}abc_4",
    }
    for name in names.values():
        (tmp / name / "checkpoint").mkdir(parents=True)
    assert sweep_checkpoint_work_dirs(tmp_path) == 2
    assert sorted(p.name for p in tmp.iterdir()) == sorted([names["live"], names["other host"]])
    assert checkpoint_work_owner(tmp / names["other host"]) == ("node-7.cluster", dead_pid)
    assert sweep_checkpoint_work_dirs(tmp_path / "nothing-here") == 0


def test_a_sweep_waits_for_trial_processes_that_are_ending(tmp_path: Path) -> None:
    """A driver that stopped its own Ray sweeps what its trials left (a trial the scheduler
    stopped mid-epoch ends with the run, before its own clean-up): Ray's workers exit a moment
    after the shutdown, so the sweep waits for them, boundedly, and keeps what still lives."""
    import socket
    import subprocess
    import sys
    import threading

    from msatune.search.trainable import (
        CHECKPOINT_WORK_PREFIX,
        TMP_DIR_NAME,
        sweep_checkpoint_work_dirs,
    )

    host = socket.gethostname()
    ending = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    lasting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tmp = tmp_path / TMP_DIR_NAME
        for proc in (ending, lasting):
            (tmp / f"{CHECKPOINT_WORK_PREFIX}{host}-{proc.pid}-abc" / "checkpoint").mkdir(parents=True)
        assert sweep_checkpoint_work_dirs(tmp_path) == 0  # both alive, no wait: both kept
        reaper = threading.Thread(target=ending.wait)  # reap it, as init would
        reaper.start()
        assert sweep_checkpoint_work_dirs(tmp_path, wait_s=30) == 1
        reaper.join()
        assert [p.name for p in tmp.iterdir()] == [f"{CHECKPOINT_WORK_PREFIX}{host}-{lasting.pid}-abc"]
    finally:
        for proc in (ending, lasting):
            proc.kill()
            proc.wait()
