"""The search runner: a Ray Tune ``Tuner`` with the store-truthful OptunaSearch and ASHA.

``run_search`` runs ``settings.trials`` more trials of an existing Optuna study (the caller
creates or loads it, and reconciles it first on resume). Ray is started here unless the caller
already did (``ray.init`` in tests); starting, joining and cleaning up Ray is
:mod:`msatune.search.ray_session`'s job.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from msatune.augment.dataset import MSADataset
from msatune.search.ray_session import quiet_ray_environment, start_ray, stop_ray
from msatune.search.reconcile import reconcile
from msatune.search.searcher import SearchCounters, StoreCallback, StoreTruthfulOptunaSearch
from msatune.search.settings import SearchSettings
from msatune.search.space import SearchSpace
from msatune.search.trainable import RUNG_METRIC

log = logging.getLogger(__name__)

@dataclass
class ProgressState:
    budget: int
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


ProgressFn = Callable[[ProgressState], None]


def default_concurrency(settings: SearchSettings) -> int:
    import ray

    res = ray.cluster_resources()
    slots = math.floor(res.get("CPU", 1) / settings.cpus_per_trial) if settings.cpus_per_trial > 0 else 10**6
    if settings.gpus_per_trial > 0:
        slots = min(slots, math.floor(res.get("GPU", 0) / settings.gpus_per_trial + 1e-9))
    return max(1, min(slots, settings.trials))


def make_sampler(settings: SearchSettings) -> optuna.samplers.BaseSampler:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna.samplers.TPESampler(
        seed=settings.seed,
        n_startup_trials=settings.startup_trials,
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
                    self.fn(ProgressState(self.budget, self.searcher.counters, now - self.t0))

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


def run_search(
    study: optuna.Study,
    space: SearchSpace,
    data: MSADataset,
    settings: SearchSettings,
    *,
    ray_dir: Path,
    run_name: str,
    progress: ProgressFn | None = None,
    trainable: Callable[..., None] | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> RunSummary:
    """Run ``settings.trials`` trials of ``study`` with Ray Tune; the store is reconciled at the end.

    ``trainable`` replaces the function trainable (default ``search.trainable.train_trial``);
    it is called as ``trainable(config, data=data)`` and reports through ``ray.tune.report``.
    ``sampler`` replaces the TPE sampler (benchmarks compare with random search).
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from msatune.search.trainable import train_trial

    if settings.trials <= 0:
        raise ValueError("settings.trials must be > 0")
    ray_dir = Path(ray_dir).resolve()
    quiet_ray_environment()
    started_here = start_ray(address=settings.address, verbose=settings.verbose, work_dir=ray_dir)
    t0 = time.time()
    interrupted = False
    searcher = StoreTruthfulOptunaSearch(space, study._storage, study.study_name,
                                         sampler or make_sampler(settings))
    try:
        concurrency = settings.concurrency or default_concurrency(settings)
        scheduler = make_scheduler(ASHAScheduler)(
            time_attr="training_iteration",
            metric=RUNG_METRIC,  # best val MAE so far and train MAE (search/trainable.rung_score)
            mode="min",
            max_t=settings.max_epochs,
            grace_period=settings.grace,
            reduction_factor=settings.reduction_factor,
        )
        resources = {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial}
        fn = tune.with_resources(tune.with_parameters(trainable or train_trial, data=data), resources)
        callbacks: list[Any] = [StoreCallback(searcher)]
        if progress is not None:
            callbacks.append(_ProgressCallback(searcher, settings.trials, progress))
        tuner = tune.Tuner(
            fn,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=settings.trials,
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
            stop_ray(ray_dir)
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
    )
