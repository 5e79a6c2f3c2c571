"""The Ray instance a search runs on: start or join it, ship the code, quiet it, clean up after it.

A local instance is always new and owned by the driver (``address="local"``); its processes are
recorded in a pid file so that a later run can end what a dead driver left behind (never
``ray stop``, which would also end other users' clusters). Joining a cluster (``address=``) ships
the installed ``msatune`` package to the workers through ``runtime_env`` (``py_modules``), so
remote nodes need neither msatune installed nor the launch directory: the workers import exactly
the driver's msatune, never a ``models`` package of the user's own.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import msatune
from msatune.errors import UserError

log = logging.getLogger(__name__)

RAY_PIDS_FILE = "ray-processes.json"

#: Environment of the trial workers. A trial stopped by ASHA ends at its next report, i.e. after
#: the epoch it is in; Ray waits only 2 s for that before refusing to reuse the actor ("Could not
#: re-use actor ... reset_config()"), which fails the next trial on a slow or loaded machine.
WORKER_ENV = {"TUNE_FUNCTION_THREAD_TIMEOUT_S": "600", "TF_CPP_MIN_LOG_LEVEL": "3"}


def package_for_workers(staging: Path) -> Path:
    """A copy of the running ``msatune`` package (its ``.py`` files) at ``staging/msatune``.

    Ray's ``py_modules`` zips a module's directory. An installed wheel has every subpackage under
    ``msatune/``; an editable install maps them to the repository's top-level folders, so the
    package is assembled here from where Python imports each part.
    """
    target = Path(staging) / "msatune"
    if target.exists():
        shutil.rmtree(target)
    parts = {"": Path(msatune.__file__).parent}
    for sub in msatune.SUBPACKAGES:
        spec = importlib.util.find_spec(f"msatune.{sub}")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"msatune.{sub} is not importable; reinstall msatune")
        parts[sub] = Path(list(spec.submodule_search_locations)[0])
    for sub, source in parts.items():
        dest = target / sub if sub else target
        dest.mkdir(parents=True, exist_ok=True)
        for py in source.glob("*.py"):
            shutil.copy2(py, dest / py.name)
    return target


def start_ray(*, address: str | None, verbose: bool, work_dir: Path) -> bool:
    """Start a local Ray instance owned by this driver, or join ``address``, unless Ray is
    already initialised in this process. True if this call started or joined it.

    ``work_dir`` holds the pid file (local) or the staged package (cluster).
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.WARNING,
        "configure_logging": True,
    }
    if address:
        kwargs["address"] = address
        shipped = package_for_workers(Path(work_dir) / "code")
        kwargs["runtime_env"] = {"py_modules": [str(shipped)], "env_vars": dict(WORKER_ENV)}
        _enable_token_auth_if_available()
    else:
        # "local": always a new instance owned by this driver. Without it ray.init() joins any
        # cluster that `ray start` left on this machine, and its processes are not ours to end.
        kwargs["address"] = "local"
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise UserError(
            f"cannot connect to the Ray cluster at {address}: {exc}; check the address "
            "(ray start --head prints it) and that this machine can reach it"
        ) from None
    if not address:
        record_ray_processes(Path(work_dir))
    return True


def stop_ray(work_dir: Path) -> None:
    """Shut down the Ray instance this driver started and forget its processes."""
    import ray

    ray.shutdown()
    (Path(work_dir) / RAY_PIDS_FILE).unlink(missing_ok=True)


def _enable_token_auth_if_available() -> None:
    """Send Ray's auth token when joining a cluster (ray 2.60 does not detect it by itself).

    A head started with ``ray start`` uses token authentication when ``~/.ray/auth_token`` (or
    ``RAY_AUTH_TOKEN[_PATH]``) exists; a driver joining it must then run with
    ``RAY_AUTH_MODE=token`` or its calls are refused ("Missing authorization header").
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or (
        Path.home() / ".ray" / "auth_token"
    ).exists():
        os.environ["RAY_AUTH_MODE"] = "token"
        try:  # Ray read its config at import: make it read the mode again (as Ray's tests do)
            from ray._raylet import AuthenticationTokenLoader, Config

            Config.initialize("")
            AuthenticationTokenLoader.instance().reset_cache()
        except (ImportError, AttributeError) as exc:  # pragma: no cover - Ray changed
            log.warning("could not switch Ray to token authentication: %s", exc)


def record_ray_processes(pid_dir: Path) -> None:
    """Remember the Ray processes this driver started (by session dir), for ``end_orphans``."""
    import ray

    node = ray._private.worker._global_node
    session_dir = node.get_session_dir_path() if node is not None else None
    pids = sorted({p.process.pid for infos in node.all_processes.values() for p in infos}) if node else []
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


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (on this host)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def quiet_ray_environment() -> None:
    """Silence Ray Tune's snapshot-frequency warnings (we checkpoint only on improvement)."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    # Ray Tune suggests Tuner.restore after an interrupt: msatune resumes differently (and safely).
    logging.getLogger("ray.tune.tune").addFilter(_DropMessages("Tuner.restore", "Resume experiment with"))
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        _DropMessages("Token authentication is enabled")
    )


class _DropMessages(logging.Filter):
    def __init__(self, *needles: str) -> None:
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in self.needles)
