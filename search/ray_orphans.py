"""The Ray processes a driver started, recorded so that none outlives it.

A driver that starts a local Ray records its processes in a pid file (:data:`RAY_PIDS_FILE`, in
the run's directory) and starts a small watchdog process; if the driver dies (``kill -9``), the
watchdog ends them, and a later run of the study ends what is still left (:func:`end_orphans`).
Ray's agents and idle workers ignore SIGTERM and survive their driver otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from msatune.processes import alive

log = logging.getLogger(__name__)

RAY_PIDS_FILE = "ray-processes.json"


def record_ray_processes(pid_dir: Path) -> None:
    """Remember the Ray processes this driver started (by session dir), for ``end_orphans``."""
    from msatune.thirdparty.ray_internals import local_node_processes

    session_dir, pids = local_node_processes()
    pid_dir.mkdir(parents=True, exist_ok=True)
    (pid_dir / RAY_PIDS_FILE).write_text(
        json.dumps({"driver_pid": os.getpid(), "session_dir": session_dir, "pids": pids})
    )


def session_processes(session_dir: str) -> list[int]:
    """PIDs of processes belonging to the Ray session ``session_dir`` (Linux ``/proc``).

    Ray renames its processes (``ray::DashboardAgent``, ``ray::ImplicitFunc``), so the command line
    does not always name the session; their open log files under the session dir do.
    """
    found: list[int] = []
    proc = Path("/proc")
    if not proc.exists() or not session_dir:
        return found
    needle = session_dir.encode()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
                continue
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd).startswith(session_dir):
                    found.append(int(entry.name))
                    break
        except OSError:
            continue
    return found


def end_orphans(pid_dir: Path) -> list[int]:
    """End the Ray processes a dead driver started (from its pid file); returns the PIDs ended."""
    path = pid_dir / RAY_PIDS_FILE
    if not path.exists():
        return []
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    if alive(int(info.get("driver_pid", -1))):
        return []  # that driver still runs: its processes are not orphans
    pids = set(info.get("pids", []))
    if info.get("session_dir"):
        pids.update(session_processes(info["session_dir"]))
    pids = {p for p in pids if p != os.getpid() and alive(p)}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in list(pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pids.discard(pid)
        deadline = time.time() + 3
        while pids and time.time() < deadline and any(alive(p) for p in pids):
            time.sleep(0.1)
    ended = sorted(pids)
    path.unlink(missing_ok=True)
    if ended:
        log.info("ended %d orphan Ray process(es) of a previous driver", len(ended))
    return ended


def forget_processes(pid_dir: Path) -> None:
    """Remove the pid file of this driver's Ray (after it stopped Ray itself)."""
    pid_file = Path(pid_dir) / RAY_PIDS_FILE
    try:
        info = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        info = {}
    # a driver that took the study over after this one released its lease may own the file now
    if int(info.get("driver_pid", os.getpid())) == os.getpid():
        pid_file.unlink(missing_ok=True)


def start_watchdog(pid_dir: Path) -> subprocess.Popen | None:
    """A detached process that waits for this driver to end and then ends the Ray processes its
    pid file lists (nothing when the driver stopped Ray itself: the pid file is gone)."""
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "msatune.search.ray_orphans", str(Path(pid_dir) / RAY_PIDS_FILE),
             str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True,
        )
    except OSError as exc:  # the driver still works; `msatune resume` ends orphans instead
        log.warning("no watchdog for the Ray processes of this driver: %s", exc)
        return None


def watch(pid_file: Path, driver_pid: int, poll_s: float = 1.0) -> None:
    """The watchdog's loop: end the pid file's processes once ``driver_pid`` is gone."""
    while alive(driver_pid):
        if not pid_file.exists():
            return
        time.sleep(poll_s)
    end_orphans(pid_file.parent)


def live_driver(pid_dir: Path) -> int | None:
    """The pid of another live driver whose Ray processes the pid file in ``pid_dir`` lists."""
    path = Path(pid_dir) / RAY_PIDS_FILE
    try:
        pid = int(json.loads(path.read_text()).get("driver_pid", -1))
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return pid if pid != os.getpid() and pid > 0 and alive(pid) else None


if __name__ == "__main__":  # the watchdog (start_watchdog): PID_FILE DRIVER_PID
    watch(Path(sys.argv[1]), int(sys.argv[2]))
