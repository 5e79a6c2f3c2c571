"""Ray's private API as msatune uses it (checked against ray 2.60.0).

* ``ray._private.worker._global_node``: the local Ray node this driver started, for its session
  dir and the pids of its processes (the pid file that lets a later run, or the watchdog, end
  what a killed driver left running: :mod:`msatune.search.ray_orphans`).
* ``ray._raylet.Config`` / ``AuthenticationTokenLoader``: make Ray read its auth mode again after
  msatune switched on token authentication to join a cluster whose head uses it (Ray reads it at
  import; Ray's own tests do the same).
* The logger ``ray._private.authentication.authentication_token_setup``: its notice is quieted.
* ``ray.train._internal.session.get_session()``: the trial's synced working directory (Tune's
  public ``get_trial_dir()`` names the driver's staging dir for a reused actor's next trials) and
  the experiment's directory on disk (where a trial keeps its working checkpoint).
* ``AsyncHyperBandScheduler._num_stopped``: ASHA's count of the trials it stopped; a preset trial
  that ASHA decided to stop but msatune keeps is taken off the count again.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

#: The Ray release these accesses were last checked against.
CHECKED_AGAINST = "2.60.0"

#: The logger of Ray's token-authentication notice (filtered in ``quiet_ray_environment``).
AUTH_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"


def _local_node() -> Any:
    """Ray's record of the local node this process started (``None``: none)."""
    import ray

    return ray._private.worker._global_node


def local_node_processes() -> tuple[str | None, list[int]]:
    """``(session_dir, pids)`` of the local Ray node this process started (``(None, [])``: none)."""
    node = _local_node()
    if node is None:
        return None, []
    pids = sorted({p.process.pid for infos in node.all_processes.values() for p in infos})
    return node.get_session_dir_path(), pids


def local_node_core_processes() -> list[subprocess.Popen]:
    """The GCS server and the raylet of the local Ray node this process started (the two without
    which no Ray call of the driver returns), as Ray's ``Popen`` objects (``poll()`` reaps them);
    ``[]`` where none."""
    from ray._private import ray_constants

    node = _local_node()
    if node is None:
        return []
    kinds = (ray_constants.PROCESS_TYPE_GCS_SERVER, ray_constants.PROCESS_TYPE_RAYLET)
    return [p.process for kind in kinds for p in node.all_processes.get(kind, [])]


def reread_auth_mode() -> None:
    """Make Ray read ``RAY_AUTH_MODE`` and the auth token again (after they were set)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def trial_session_dirs() -> tuple[Path, Path] | None:
    """``(trial working dir, experiment dir)`` of the Tune trial running in this process (None
    outside a trial)."""
    from ray.train._internal.session import get_session

    session = get_session()
    if session is None:
        return None
    return Path(session.storage.trial_working_directory), Path(session.storage.experiment_fs_path)


def uncount_stop(scheduler: Any) -> None:
    """Take one stopped trial off an ASHA scheduler's count (msatune kept the trial running)."""
    scheduler._num_stopped -= 1


def check() -> list[str]:
    """Every access above, tried against the installed Ray (without starting it); what failed."""
    problems: list[str] = []
    try:
        import ray

        ray._private.worker._global_node  # noqa: B018 - the attribute must exist
        if ray.is_initialized():
            local_node_processes()
    except Exception as exc:  # noqa: BLE001
        problems.append(f"ray._private.worker._global_node: {type(exc).__name__}: {exc}")
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        if not (callable(getattr(Config, "initialize", None))
                and callable(getattr(AuthenticationTokenLoader.instance(), "reset_cache", None))):
            problems.append("ray._raylet: Config.initialize / AuthenticationTokenLoader.reset_cache gone")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"ray._raylet: {type(exc).__name__}: {exc}")
    try:
        import importlib

        importlib.import_module(AUTH_TOKEN_LOGGER)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"{AUTH_TOKEN_LOGGER}: {type(exc).__name__}: {exc}")
    try:
        from ray.train._internal import storage
        from ray.train._internal.session import get_session

        if get_session() is not None or not all(
                isinstance(getattr(storage.StorageContext, name, None), property)
                for name in ("trial_working_directory", "experiment_fs_path")):
            problems.append("ray.train._internal: StorageContext's trial/experiment directories moved")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"ray.train._internal.session.get_session: {type(exc).__name__}: {exc}")
    try:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="training_iteration", metric="m", mode="min", max_t=3)
        before = scheduler._num_stopped
        uncount_stop(scheduler)
        if scheduler._num_stopped != before - 1 or "num_stopped=-1" not in scheduler.debug_string():
            problems.append("AsyncHyperBandScheduler._num_stopped: not the count debug_string shows")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"AsyncHyperBandScheduler._num_stopped: {type(exc).__name__}: {exc}")
    return problems
