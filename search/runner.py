"""The search runner: a Ray Tune ``Tuner`` with the store-truthful OptunaSearch and ASHA.

``run_search`` runs ``num_trials`` more trials of an existing Optuna study (the caller creates or
loads it, and reconciles it first on resume). Ray is started here unless the caller already did
(``ray.init`` in tests, or ``address=`` for an existing cluster, where the code travels with the
job through ``runtime_env``). Processes of a Ray instance started here are recorded in a pid file so
that a later run can end what a dead driver left behind (never ``ray stop``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna

from augment.dataset import MSADataset
from msatune.errors import UserError
from search.reconcile import reconcile
from search.searcher import SearchCounters, StoreCallback, StoreTruthfulOptunaSearch
from search.space import SearchSpace

log = logging.getLogger(__name__)

RAY_PIDS_FILE = "ray-processes.json"

#: Environment of the trial workers. A trial stopped by ASHA ends at its next report, i.e. after
#: the epoch it is in; Ray waits only 2 s for that before refusing to reuse the actor ("Could not
#: re-use actor ... reset_config()"), which fails the next trial on a slow or loaded machine.
WORKER_ENV = {"TUNE_FUNCTION_THREAD_TIMEOUT_S": "600", "TF_CPP_MIN_LOG_LEVEL": "3"}


@dataclass
class RunSettings:
    num_trials: int
    max_epochs: int = 30
    grace_period: int = 3
    reduction_factor: int = 3
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    concurrency: int | None = None  # None: as many as the cluster's resources allow
    seed: int = 0  # this run's sampler seed (derived per run by the caller)
    address: str | None = None
    max_failures: int = 1
    verbose: bool = False
    n_startup_trials: int | None = None  # None: min(10, max(3, budget // 3))


@dataclass
class ProgressState:
    budget: int
    started: int
    counters: SearchCounters
    elapsed: float

    @property
    def done(self) -> int:
        c = self.counters
        return c.complete + c.pruned + c.failed

    @property
    def running(self) -> int:
        return len(self.counters.running)

    @property
    def eta(self) -> float | None:
        if self.done == 0:
            return None
        return self.elapsed / self.done * max(0, self.budget - self.done)


@dataclass
class RunSummary:
    trials_run: int
    complete: int
    pruned: int
    failed: int
    requeued: list[int]
    wall_seconds: float
    concurrency: int
    interrupted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[ProgressState], None]


def _code_packages() -> list[Any]:
    import augment
    import ensemble
    import models
    import msatune
    import search

    return [augment, models, search, ensemble, msatune]


def start_ray(settings: RunSettings, pid_dir: Path | None) -> bool:
    """Start (or connect to) Ray unless it is running; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": settings.verbose,
        "logging_level": logging.INFO if settings.verbose else logging.WARNING,
        "configure_logging": True,
    }
    if settings.address:
        kwargs["address"] = settings.address
        kwargs["runtime_env"] = {"py_modules": _code_packages(), "env_vars": dict(WORKER_ENV)}
        _enable_token_auth_if_available()
    else:
        # "local": always a new instance owned by this driver. Without it ray.init() joins any
        # cluster that `ray start` left on this machine, and its processes are not ours to end.
        kwargs["address"] = "local"
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise UserError(
            f"cannot connect to the Ray cluster at {settings.address}: {exc}; check the address "
            "(ray start --head prints it) and that this machine can reach it"
        ) from None
    if pid_dir is not None and not settings.address:
        record_ray_processes(pid_dir)
    return True


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


def _session_processes(session_dir: str) -> list[int]:
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


def _alive(pid: int) -> bool:
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
    if _alive(int(info.get("driver_pid", -1))):
        return []  # that driver still runs: its processes are not orphans
    pids = set(info.get("pids", []))
    if info.get("session_dir"):
        pids.update(_session_processes(info["session_dir"]))
    pids = {p for p in pids if p != os.getpid() and _alive(p)}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in list(pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pids.discard(pid)
        deadline = time.time() + 3
        while pids and time.time() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
    ended = sorted(pids)
    path.unlink(missing_ok=True)
    if ended:
        log.info("ended %d orphan Ray process(es) of a previous driver", len(ended))
    return ended


def default_concurrency(settings: RunSettings) -> int:
    import ray

    res = ray.cluster_resources()
    slots = math.floor(res.get("CPU", 1) / settings.cpus_per_trial) if settings.cpus_per_trial > 0 else 10**6
    if settings.gpus_per_trial > 0:
        slots = min(slots, math.floor(res.get("GPU", 0) / settings.gpus_per_trial + 1e-9))
    return max(1, min(slots, settings.num_trials))


def make_sampler(settings: RunSettings) -> optuna.samplers.BaseSampler:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna.samplers.TPESampler(
        seed=settings.seed,
        # Optuna's default of 10 random start-up trials is the whole budget of a small study.
        n_startup_trials=(settings.n_startup_trials if settings.n_startup_trials is not None
                          else min(10, max(3, settings.num_trials // 3))),
        constant_liar=True,  # parallel trials: avoid sampling next to the running ones
        multivariate=True,
        group=True,
    )


class _ProgressCallback:
    """Calls ``progress`` at most twice a second from the Tune loop (driver thread)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # build a real ray Callback subclass lazily
        from ray.tune.callback import Callback

        class ProgressCallback(Callback):
            def __init__(self, searcher: StoreTruthfulOptunaSearch, budget: int, fn: ProgressFn) -> None:
                self.searcher, self.budget, self.fn = searcher, budget, fn
                self.t0 = time.time()
                self.last = 0.0

            def __getstate__(self) -> dict:  # Ray pickles callbacks with the experiment state
                return {**self.__dict__, "fn": None}

            def _emit(self, force: bool = False) -> None:
                if self.fn is None:
                    return
                now = time.time()
                if force or now - self.last >= 0.5:
                    self.last = now
                    self.fn(ProgressState(self.budget, 0, self.searcher.counters, now - self.t0))

            def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
                self._emit()

            def on_experiment_end(self, trials: list, **info: Any) -> None:
                self._emit(force=True)

        return ProgressCallback(*args, **kwargs)


PRESET_KEY = "_preset"


def make_scheduler(asha_class: type) -> type:
    """ASHA that never stops the reference trials (the enqueued presets).

    The ``baseline`` and ``improved`` trials are what every study is compared with; stopping them
    at a low rung (the improved recipe is still warming up at epoch 3) would make that comparison
    meaningless. Their results still enter the rungs, so they shape the cut-offs for others.
    """

    class ReferenceKeepingASHA(asha_class):
        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            action = super().on_trial_result(tune_controller, trial, result)
            if action == self.STOP and trial.config.get(PRESET_KEY):
                if result.get(self._time_attr, 0) < self._max_t:
                    self._num_stopped -= 1
                    return self.CONTINUE
            return action

    return ReferenceKeepingASHA


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


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


def run_search(
    study: optuna.Study,
    space: SearchSpace,
    data: MSADataset,
    settings: RunSettings,
    *,
    ray_dir: Path,
    run_name: str,
    progress: ProgressFn | None = None,
    trainable: Callable[..., None] | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> RunSummary:
    """Run ``settings.num_trials`` trials of ``study`` with Ray Tune; the store is reconciled at the end.

    ``trainable`` replaces the function trainable (default ``search.trainable.train_trial``);
    it is called as ``trainable(config, data=data)`` and reports through ``ray.tune.report``.
    ``sampler`` replaces the TPE sampler (benchmarks compare with random search).
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from search.trainable import train_trial

    if settings.num_trials <= 0:
        raise ValueError("num_trials must be > 0")
    ray_dir = Path(ray_dir).resolve()
    quiet_ray_environment()
    started_here = start_ray(settings, ray_dir)
    t0 = time.time()
    interrupted = False
    searcher = StoreTruthfulOptunaSearch(space, study._storage, study.study_name,
                                         sampler or make_sampler(settings))
    try:
        concurrency = settings.concurrency or default_concurrency(settings)
        scheduler = make_scheduler(ASHAScheduler)(
            time_attr="training_iteration",
            metric="val_mae",
            mode="min",
            max_t=settings.max_epochs,
            grace_period=min(settings.grace_period, settings.max_epochs),
            reduction_factor=settings.reduction_factor,
        )
        resources = {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial}
        fn = tune.with_resources(tune.with_parameters(trainable or train_trial, data=data), resources)
        callbacks: list[Any] = [StoreCallback(searcher)]
        if progress is not None:
            callbacks.append(_ProgressCallback(searcher, settings.num_trials, progress))
        tuner = tune.Tuner(
            fn,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=settings.num_trials,
                max_concurrent_trials=concurrency,
                reuse_actors=True,
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
            ),
            run_config=tune.RunConfig(
                name=run_name,
                storage_path=str(ray_dir),
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=1,
                    checkpoint_score_attribute="val_mae",
                    checkpoint_score_order="min",
                ),
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                # Each trial's working dir (the session storage's trial_working_directory, with
                # work/training_log.csv and Ray's stdout/stderr files) is copied to the trial's
                # storage dir: on the first report, every sync_period, and when the trial ends.
                # Without it a reused actor's trials leave their logs under /tmp/ray/session_*.
                sync_config=tune.SyncConfig(sync_artifacts=True, sync_artifacts_on_checkpoint=False),
                verbose=1 if settings.verbose else 0,
                callbacks=callbacks,
                log_to_file=True,
            ),
        )
        try:
            tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
    finally:
        searcher.flush()
        requeued = reconcile(study, "interrupted: the driver stopped while the trial was running")
        if started_here:
            ray.shutdown()
            (ray_dir / RAY_PIDS_FILE).unlink(missing_ok=True)
    c = searcher.counters
    return RunSummary(
        trials_run=c.complete + c.pruned + c.failed,
        complete=c.complete,
        pruned=c.pruned,
        failed=c.failed,
        requeued=requeued,
        wall_seconds=time.time() - t0,
        concurrency=concurrency,
        interrupted=interrupted,
        extra={"settings": asdict(settings)},
    )
