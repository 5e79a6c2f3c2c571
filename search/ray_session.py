"""The Ray instance a run uses: start or join it, ship the code, check it, quiet it, stop it.

A local instance is always new and owned by the driver (``address="local"``); its processes are
recorded in a pid file so that a later run can end what a dead driver left behind
(:mod:`msatune.search.ray_orphans`; never ``ray stop``, which would also end other users'
clusters). Joining a cluster (``address=``) ships
the installed ``msatune`` package to the workers through ``runtime_env`` (``py_modules``), so
remote nodes need neither msatune installed nor the launch directory: the workers import exactly
the driver's msatune, never a ``models`` package of the user's own.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import msatune
from msatune.errors import UserError, first_line
from msatune.models.step_cache import STEP_CACHE_ENV
from msatune.search.ray_orphans import forget_processes, record_ray_processes, start_watchdog
from msatune.stop_signals import reclaim_sigterm, take_sigterm, watch_after_sigterm
from msatune.thirdparty.ray_internals import (
    AUTH_TOKEN_LOGGER,
    local_node_core_processes,
    reread_auth_mode,
)

log = logging.getLogger(__name__)

#: Environment of the trial workers. A trial stopped by ASHA ends at its next report, i.e. after
#: the epoch it is in; Ray waits only 2 s for that before refusing to reuse the actor ("Could not
#: re-use actor ... reset_config()"), which fails the next trial on a slow or loaded machine.
WORKER_ENV = {"TUNE_FUNCTION_THREAD_TIMEOUT_S": "600", "TF_CPP_MIN_LOG_LEVEL": "3"}

#: How long a driver that stopped its own Ray waits for the trial processes to end before it
#: sweeps their working checkpoints (a process still alive then keeps its directory).
SWEEP_WAIT_S = 5.0


def package_for_workers(staging: Path) -> Path:
    """A copy of the running ``msatune`` package (its ``.py`` files, nested packages too) at
    ``staging/msatune``.

    Ray's ``py_modules`` zips a module's directory. An installed wheel has every subpackage under
    ``msatune/``; an editable install maps the architecture's subpackages to the repository's
    top-level folders, so the package is assembled here from where Python imports each part.
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
        for py in source.rglob("*.py"):
            relative = py.relative_to(source)
            if relative.parts[0] in msatune.SUBPACKAGES and not sub:
                continue  # a wheel's root holds the subpackages too: copied from their own place
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(py, dest / relative)
    return target


def start_ray(*, address: str | None, verbose: bool, work_dir: Path, record: bool = True) -> bool:
    """Start a local Ray instance owned by this driver, or join ``address``, unless Ray is
    already initialised in this process. True if this call started or joined it.

    ``work_dir`` holds the pid file of a local instance (unless ``record=False``: then
    :func:`record_ray_processes` is the caller's to call). Nothing else is written there: the
    package shipped to a cluster is staged in a temporary directory, uploaded by ``ray.init``.
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
    with tempfile.TemporaryDirectory(prefix="msatune-code-") as staging:
        if address:
            kwargs["address"] = address
            shipped = package_for_workers(Path(staging))
            env_vars = dict(WORKER_ENV)
            if STEP_CACHE_ENV in os.environ:  # a cluster's workers do not inherit the driver's environment
                env_vars[STEP_CACHE_ENV] = os.environ[STEP_CACHE_ENV]
            kwargs["runtime_env"] = {"py_modules": [str(shipped)], "env_vars": env_vars}
            _enable_token_auth_if_available()
        else:
            # "local": always a new instance owned by this driver. Without it ray.init() joins any
            # cluster that `ray start` left on this machine, and its processes are not ours to end.
            kwargs["address"] = "local"
            # Ray's usage-stats reporting: nothing of msatune needs it (a user's own value wins).
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            if not verbose:
                lean_local_ray_environment()
        try:
            ray.init(**kwargs)
        except SystemExit:  # Ray's own SIGTERM handler, installed by ray.init, took a SIGTERM
            if not take_sigterm():
                raise
            raise KeyboardInterrupt from None  # inside the CLI: stopped as on Ctrl-C (status 143), not 15
        except Exception as exc:  # Ray raises a bare Exception when its processes do not come up
            if not address:
                raise UserError(f"cannot start Ray on this machine: {first_line(exc)} (a full disk or a "
                                "file size limit stops its processes; its logs are under "
                                "/tmp/ray/session_latest/logs)") from None
            raise UserError(
                f"cannot connect to the Ray cluster at {address}: {first_line(exc)}; "
                "check the address (ray start --head prints it) and that this machine can reach it"
            ) from None
    reclaim_sigterm()  # ray.init took SIGTERM over; inside the CLI it stops a command as Ctrl-C does
    if not address:  # a SIGTERM to the whole job (Slurm, systemd) ends this Ray too: no graceful stop
        core = local_node_core_processes()
        watch_after_sigterm(lambda: any(p.poll() is not None for p in core),
                            "Ray's own processes were stopped too (a signal to the whole job, as Slurm "
                            "and systemd send it); what finished is stored, what was running re-runs")
    if not address and record:
        record_ray_processes(Path(work_dir))
    return True


#: How long ``check_address`` keeps trying to reach a cluster's head (``$MSATUNE_CONNECT_TIMEOUT_S``).
CONNECT_TIMEOUT_ENV = "MSATUNE_CONNECT_TIMEOUT_S"


def parse_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a Ray address (``HOST:PORT``, ``[IPv6]:PORT``, ``ray://HOST:PORT``);
    ``None`` for ``auto``. Raises a UserError naming the expected form."""
    text = address.strip()
    if not text:
        raise UserError("--address is empty; leave it out to run on this machine, or give HOST:PORT as "
                        "printed by `ray start --head` (or auto)")
    if text == "auto":
        return None
    bare = text.split("://", 1)[1] if "://" in text else text
    host, sep, port = bare.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or (
            ":" in host and not bare.startswith("[")):
        raise UserError(f"--address {address!r} is not a Ray address; use HOST:PORT as printed by "
                        "`ray start --head` (e.g. 10.0.0.5:6379), or auto")
    return host, int(port)


def check_address(address: str | None, timeout_s: float | None = None) -> None:
    """Fail in one line, within ``timeout_s`` (default ``$MSATUNE_CONNECT_TIMEOUT_S`` or 30 s),
    when the head of the cluster at ``address`` cannot be reached: a name that does not resolve,
    or a port that refuses or does not answer (retried until the timeout: a head may be starting)."""
    if not address:
        return
    target = parse_address(address)
    if target is None:
        return
    host, port = target
    if timeout_s is None:
        try:
            timeout_s = float(os.environ.get(CONNECT_TIMEOUT_ENV, "30"))
        except ValueError:
            timeout_s = 30.0
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UserError(f"--address {address!r}: host {host!r} does not resolve ({exc}); "
                        "check the address (ray start --head prints it)") from None
    deadline = time.monotonic() + timeout_s
    last: OSError | None = None
    while True:
        try:
            wait = min(5.0, max(0.5, deadline - time.monotonic()))
            if _answers_grpc(host, port, wait):
                return
            last = OSError(0, "the port accepts connections but does not answer as a Ray head (gRPC)")
        except OSError as exc:
            last = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    reason = last.strerror if last is not None and last.strerror else str(last)
    raise UserError(f"cannot reach the Ray cluster at {address} within {timeout_s:g} s ({reason}); "
                    f"check that `ray start --head` runs there and the port is open "
                    f"(${CONNECT_TIMEOUT_ENV} sets the wait)")


#: An HTTP/2 client's connection preface and an empty SETTINGS frame (RFC 9113 3.4, 6.5).
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _answers_grpc(host: str, port: int, timeout_s: float) -> bool:
    """Whether ``host:port`` speaks HTTP/2 as a Ray head's gRPC servers (GCS, Ray client) do: its
    first frame answers our preface with SETTINGS within ``timeout_s``. A port that accepts and
    then stays silent (a wrong service, a stuck head) would make ``ray.init`` wait forever."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        sock.sendall(_H2_PREFACE)
        head = b""
        try:
            while len(head) < 9:
                chunk = sock.recv(9 - len(head))
                if not chunk:
                    return False
                head += chunk
        except TimeoutError:
            return False
        return head[3] == 0x04  # frame type SETTINGS


def check_resources(cpus_per_trial: float, gpus_per_trial: float) -> dict[str, float]:
    """Refuse (one UserError line) a trial that no node of the running Ray cluster can hold, instead
    of waiting forever for resources; returns the largest node's ``{"CPU", "GPU"}``."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive", True)]
    cpu = max((float(n.get("CPU", 0)) for n in nodes), default=0.0)
    gpu = max((float(n.get("GPU", 0)) for n in nodes), default=0.0)
    total_gpu = sum(float(n.get("GPU", 0)) for n in nodes)
    if gpus_per_trial > 0 and gpu + 1e-9 < gpus_per_trial:
        where = f"its largest node has {gpu:g}" if len(nodes) > 1 else f"it has {total_gpu:g}"
        raise UserError(f"--gpus-per-trial {gpus_per_trial:g} asks for more GPUs than Ray sees: {where} "
                        "GPU(s); lower --gpus-per-trial (0 trains on CPUs) or add GPU nodes")
    if cpus_per_trial > 0 and cpu + 1e-9 < cpus_per_trial:
        raise UserError(f"--cpus-per-trial {cpus_per_trial:g} asks for more CPUs than any Ray node has "
                        f"({math.floor(cpu)}); lower --cpus-per-trial")
    return {"CPU": cpu, "GPU": gpu}


class RaySession:
    """The Ray a run uses, for a ``with`` block: reach the cluster (bounded), start or join Ray,
    check that a trial fits on a node; ``own()`` then records a local instance's processes and
    starts a watchdog that ends them if the driver dies; leaving the block stops what it started.
    Nothing is written before ``own()``.
    """

    def __init__(self, *, address: str | None, verbose: bool, work_dir: Path,
                 cpus_per_trial: float, gpus_per_trial: float) -> None:
        self.address, self.verbose, self.work_dir = address, verbose, Path(work_dir)
        self.cpus_per_trial, self.gpus_per_trial = cpus_per_trial, gpus_per_trial
        self.started = False

    def __enter__(self) -> RaySession:
        import ray

        if not ray.is_initialized():
            check_address(self.address)
            quiet_ray_environment()
            self.started = start_ray(address=self.address, verbose=self.verbose,
                                     work_dir=self.work_dir, record=False)
        try:
            check_resources(self.cpus_per_trial, self.gpus_per_trial)
        except BaseException:
            self.__exit__()
            raise
        return self

    def own(self) -> None:
        """Record the processes of the local instance this session started (pid file) and watch
        the driver: if it dies (``kill -9``), a small watchdog process ends them."""
        if self.started and not self.address:
            record_ray_processes(self.work_dir)
            start_watchdog(self.work_dir)

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.started = False
            stop_ray(self.work_dir)
            from msatune.search.trainable import sweep_checkpoint_work_dirs

            try:  # what the trials of this instance left, now that its workers are gone
                sweep_checkpoint_work_dirs(self.work_dir, wait_s=SWEEP_WAIT_S)
            except OSError as exc:
                log.warning("could not remove the trials' working checkpoints under %s: %s",
                            self.work_dir, exc)


def stop_ray(work_dir: Path) -> None:
    """Shut down the Ray instance this driver started and forget its processes."""
    import ray

    watch_after_sigterm(None)  # Ray's processes end now by our own hand
    ray.shutdown()
    forget_processes(Path(work_dir))


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
            reread_auth_mode()
        except (ImportError, AttributeError) as exc:  # pragma: no cover - Ray changed
            log.warning("could not switch Ray to token authentication: %s", exc)


#: A local Ray started lean (``benchmarks/README.md``, "Ray's processes"): no metrics collection
#: (nothing reads it: this Ray install is minimal, with no exporter), and no Python workers
#: pre-started for the driver (trial actors start their own, with Tune's runtime env). Set in the
#: environment before ``ray.init`` so gcs_server, raylet and agents inherit them; a user's own
#: value wins. The seven helper processes themselves (gcs_server, raylet, dashboard head and
#: agent, runtime-env agent, log monitor, autoscaler monitor) cannot be left out from ``ray.init``
#: in Ray 2.60, and Tune needs the runtime-env agent.
LEAN_LOCAL_RAY_ENV = {
    "RAY_enable_metrics_collection": "0",
    "RAY_prestart_worker_first_driver": "0",
    "RAY_enable_worker_prestart": "0",
}


def lean_local_ray_environment() -> None:
    """Put :data:`LEAN_LOCAL_RAY_ENV` into this process's environment (not over a user's value)."""
    for key, value in LEAN_LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)


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
    logging.getLogger(AUTH_TOKEN_LOGGER).addFilter(
        _DropMessages("Token authentication is enabled")
    )


class _DropMessages(logging.Filter):
    def __init__(self, *needles: str) -> None:
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in self.needles)
