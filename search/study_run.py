"""A study's search run: Ray Tune with the store-truthful Optuna searcher and ASHA.

``run_search`` runs ``settings.trials`` more trials of an existing Optuna study (the caller
creates or loads it, and reconciles it first on resume) as one :func:`msatune.search.tune_run.run_tune`:
TPE (:func:`make_sampler`) proposes through :class:`msatune.search.searcher.StudySearcher`,
ASHA stops poor trials at its rungs (never the enqueued presets: :func:`make_scheduler`), and the
store is reconciled when the run ends, however it ends.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from ray.tune.callback import Callback

from msatune.augment.dataset import MSADataset
from msatune.search.reconcile import reconcile
from msatune.search.search_settings import SearchSettings
from msatune.search.searcher import FencedStopper, SearchCounters, StoreCallback, StudySearcher
from msatune.search.space import SearchSpace
from msatune.search.trainable import RUNG_METRIC
from msatune.search.tune_run import run_tune
from msatune.thirdparty.ray_internals import uncount_stop

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
    fenced: bool = False
    out_of_time: bool = False  # the run's time budget ended it: no trial started after it


ProgressFn = Callable[[ProgressState], None]


def make_sampler(settings: SearchSettings) -> optuna.samplers.BaseSampler:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna.samplers.TPESampler(
        seed=settings.seed,
        n_startup_trials=settings.startup_trials,
        constant_liar=True,  # parallel trials: avoid sampling next to the running ones
        multivariate=True,
        group=True,
    )


class ProgressCallback(Callback):
    """Calls ``fn`` at most twice a second from the Tune loop (driver thread)."""

    def __init__(self, searcher: StudySearcher, budget: int, fn: ProgressFn) -> None:
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


PRESET_KEY = "_preset"


def make_scheduler(asha_class: type) -> type:
    """ASHA that never stops the reference trials (the enqueued presets).

    The ``baseline`` and ``improved`` trials are what every study is compared with; stopping them
    at a low rung (the improved recipe is still warming up at epoch 3) would make that comparison
    meaningless. Their results still enter the rungs, so they shape the cut-offs for others.
    """

    class ReferenceKeepingASHA(asha_class):
        def __init__(self, *, time_attr: str, max_t: int, **kwargs: Any) -> None:
            super().__init__(time_attr=time_attr, max_t=max_t, **kwargs)
            self.reference_time_attr, self.reference_max_t = time_attr, max_t

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            action = super().on_trial_result(tune_controller, trial, result)
            if action == self.STOP and trial.config.get(PRESET_KEY):
                if result.get(self.reference_time_attr, 0) < self.reference_max_t:
                    uncount_stop(self)
                    return self.CONTINUE
            return action

    return ReferenceKeepingASHA


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def run_search(
    study: optuna.Study,
    space: SearchSpace,
    data: MSADataset | Any,
    settings: SearchSettings,
    *,
    ray_dir: Path,
    run_name: str,
    progress: ProgressFn | None = None,
    trainable: Callable[..., None] | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
    fence: Callable[[], bool] | None = None,
) -> RunSummary:
    """Run ``settings.trials`` trials of ``study`` with Ray Tune; the store is reconciled at the end.

    ``trainable`` replaces the function trainable (default ``search.trainable.train_trial``);
    it is called as ``trainable(config, data=data)`` and reports through ``ray.tune.report``.
    ``data`` is the dataset, or its reference in Ray's object store
    (:func:`msatune.search.tune_run.in_object_store`; the trainable gets the dataset either way).
    ``sampler`` replaces the TPE sampler (benchmarks compare with random search). ``fence()``
    (the study lease's ``held``) is asked before every write; once it says no, the run writes
    nothing more, stops, and its summary says ``fenced``. ``settings.time_budget_s``: no trial
    starts once that many seconds have passed since ``settings.budget_from`` (the command's start;
    unset: this call); the summary says ``out_of_time``.
    """
    from ray.tune import CheckpointConfig
    from ray.tune.schedulers import ASHAScheduler

    from msatune.search.trainable import train_trial

    if settings.trials <= 0:
        raise ValueError("settings.trials must be > 0")
    deadline = settings.deadline()
    searcher = StudySearcher(space, study, sampler or make_sampler(settings), fence=fence, deadline=deadline)
    scheduler = make_scheduler(ASHAScheduler)(
        time_attr="training_iteration",
        metric=RUNG_METRIC,  # train MAE early, then best val MAE so far too (search/trainable.rung_score)
        mode="min",
        max_t=settings.max_epochs,
        grace_period=settings.grace,
        reduction_factor=settings.reduction_factor,
    )
    callbacks: list[Any] = [StoreCallback(searcher)]
    if progress is not None:
        callbacks.append(ProgressCallback(searcher, settings.trials, progress))
    requeued: list[int] = []

    def on_end() -> None:
        searcher.flush()
        if not searcher.may_write():
            return  # another driver owns the study now: its reconciliation is not ours to do
        requeued.extend(reconcile(study, "interrupted: the driver stopped while the trial was running"))

    run = run_tune(
        trainable or train_trial, {"data": data}, settings,
        trials=settings.trials, ray_dir=ray_dir, run_name=run_name, trial_name=_trial_name,
        callbacks=callbacks, num_samples=settings.trials, search_alg=searcher, scheduler=scheduler,
        # best_val_mae, not val_mae: a trial's last report carries its best epoch's checkpoint
        # again, completed with test predictions (search.trial); on a tie Ray keeps the later
        # one and deletes the earlier.
        checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="best_val_mae",
                                           checkpoint_score_order="min"),
        on_end=on_end,
        stop=FencedStopper(searcher),
    )
    c = searcher.counters
    return RunSummary(
        trials_run=c.complete + c.pruned + c.failed,
        complete=c.complete,
        pruned=c.pruned,
        failed=c.failed,
        requeued=requeued,
        wall_seconds=run.wall_seconds,
        concurrency=run.concurrency,
        interrupted=run.interrupted,
        fenced=searcher.fenced,
        out_of_time=searcher.out_of_time,
    )
