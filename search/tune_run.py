"""One Ray Tune run, as a study's search and a refit both make it.

:func:`run_tune` starts (or joins) Ray unless the caller already did, hands the trainable the
run's data through the object store (``tune.with_parameters``: remote nodes need no shared data
disk) with each trial's CPUs and GPUs, and runs a ``Tuner`` with actor reuse, ``max_failures``
retries of a trial after a transient error, trial names of the caller's, and each trial's working
directory synced to its storage dir. Ctrl-C ends the run as a stopped run, not an error.

What a search and a refit specialise is what they pass: the searcher and scheduler (a search) or
the grid of tasks (a refit), how Ray keeps checkpoints, the callbacks that record every trial as
it ends, and ``on_end``: what must happen before Ray stops, also after an error.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msatune.errors import UserError
from msatune.search.ray_session import quiet_ray_environment, start_ray, stop_ray
from msatune.search.search_settings import SearchSettings


@dataclass(frozen=True)
class TuneRun:
    """How a run went: trials at once, its wall time, and whether Ctrl-C stopped it."""

    concurrency: int
    wall_seconds: float
    interrupted: bool


class OutOfMemory(UserError):
    """Ray killed a trial's worker because its node ran out of memory. Ray Tune (2.5x) does not
    count that as a trial failure: the whole run stops, so it is told as one line of what to do
    (the finished trials and folds are stored; resume reconciles the ones that were running)."""

    def __init__(self, detail: str, concurrency: int) -> None:
        fewer = (f"run fewer at once (--concurrency {max(1, concurrency - 1)} on resume or on the "
                 "same refit command)" if concurrency > 1 else "free memory on the node")
        super().__init__(
            f"Ray killed a trial's worker because the node ran out of memory ({detail}); the run "
            f"stopped with {concurrency} trial(s) at once. Finished trials are stored: {fewer}, "
            "then continue it (msatune resume NAME, or the same refit command); `msatune data info "
            "DIR` says how much memory one trial needs")


def out_of_memory(exc: BaseException) -> str | None:
    """``"22.36GB used / 23.54GB limit"`` when ``exc`` (or its cause) is Ray's out-of-memory
    kill of a worker, else None."""
    import re

    from ray.exceptions import OutOfMemoryError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OutOfMemoryError) or "running low on memory" in str(seen):
            m = re.search(r"was ([\d.]+\s*GB used / [\d.]+\s*GB limit)", str(seen))
            return m.group(1) if m else "the node's memory was nearly full"
        seen = seen.__cause__
    return None


def in_object_store(value: Any) -> Any:
    """``value`` put in Ray's object store (Ray running): a ``ray.ObjectRef`` that
    :func:`run_tune`'s ``params`` hand to the trials as they are (``tune.with_parameters`` puts
    any other value there itself). A driver that passes the reference and drops ``value`` keeps no
    copy of its own beside the store's: on MOSEI 2 GB of the driver's memory."""
    import ray

    return ray.put(value)


def default_concurrency(settings: SearchSettings, trials: int) -> int:
    """Trials at once: what the cluster's CPUs and GPUs hold, at most ``trials``."""
    import ray

    res = ray.cluster_resources()
    slots = math.floor(res.get("CPU", 1) / settings.cpus_per_trial) if settings.cpus_per_trial > 0 else 10**6
    if settings.gpus_per_trial > 0:
        slots = min(slots, math.floor(res.get("GPU", 0) / settings.gpus_per_trial + 1e-9))
    return max(1, min(slots, trials))


def run_tune(
    trainable: Callable[..., None],
    params: Mapping[str, Any],
    settings: SearchSettings,
    *,
    trials: int,
    ray_dir: Path,
    run_name: str,
    trial_name: Callable[[Any], str],
    callbacks: list[Any],
    num_samples: int,
    search_alg: Any = None,
    scheduler: Any = None,
    param_space: dict[str, Any] | None = None,
    checkpoint_config: Any = None,
    on_end: Callable[[], None] | None = None,
    stop: Any = None,
) -> TuneRun:
    """Run ``trainable`` (given ``params`` through the object store) as one Ray Tune experiment
    ``run_name`` under ``ray_dir``: ``trials`` trials at most, resources and retries from
    ``settings``. ``on_end`` runs when the run ends, before a Ray started here is stopped;
    ``stop`` is a Ray Tune stopper (a search's: its driver lost the study)."""
    from ray import tune

    ray_dir = Path(ray_dir).resolve()
    quiet_ray_environment()
    started_here = start_ray(address=settings.address, verbose=settings.verbose, work_dir=ray_dir)
    t0 = time.time()
    interrupted = False
    concurrency = 0
    try:
        concurrency = settings.concurrency or default_concurrency(settings, trials)
        resources = {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial}
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(trainable, **params), resources),
            param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=search_alg,
                scheduler=scheduler,
                num_samples=num_samples,
                max_concurrent_trials=concurrency,
                reuse_actors=True,
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_name,
            ),
            run_config=tune.RunConfig(
                name=run_name,
                storage_path=str(ray_dir),
                checkpoint_config=checkpoint_config or tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                # Each trial's working dir (the session storage's trial_working_directory, with
                # work/training_log.csv and Ray's stdout/stderr files) is copied to the trial's
                # storage dir: on the first report, every sync_period, and when the trial ends.
                # Without it a reused actor's trials leave their logs under /tmp/ray/session_*.
                sync_config=tune.SyncConfig(sync_artifacts=True, sync_artifacts_on_checkpoint=False),
                verbose=1 if settings.verbose else 0,
                callbacks=callbacks,
                stop=stop,
                log_to_file=True,
            ),
        )
        # Ray Tune puts SIGINT's handler back only when it fires: after a run that ended by itself
        # its handler would swallow the next Ctrl-C (or SIGTERM) of the command (a refit after the
        # search, the demo's ensemble). Put it back here either way.
        sigint = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
        try:
            tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
        except RuntimeError as exc:
            oom = out_of_memory(exc)
            if oom is None:
                raise
            raise OutOfMemory(oom, concurrency) from None
        finally:
            if sigint is not None:
                signal.signal(signal.SIGINT, sigint)
    finally:
        if on_end is not None:
            on_end()
        if started_here:
            stop_ray(ray_dir)
    return TuneRun(concurrency=concurrency, wall_seconds=time.time() - t0, interrupted=interrupted)
