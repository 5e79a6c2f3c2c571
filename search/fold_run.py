"""Refit folds on Ray Tune: every (configuration, repeat, fold) trained once, as one Tune trial.

A refit trains each chosen configuration on the folds of train+valid (:mod:`msatune.augment.folds`)
with the configuration's own recipe, for as many epochs as its trial trained in the search
(:func:`fold_training_config`: no early stopping; its checkpoint is its best epoch on the held-out
fold, as a trial's is on validation). :func:`run_folds` runs a
list of :class:`FoldTask` as one :func:`msatune.search.tune_run.run_tune`, the tasks handed out in
order by :class:`FoldQueue` (FIFO, no scheduler: every task that starts runs to its end; none starts
after a ``--time-budget``'s deadline), with the study's resources, actor reuse and failure
retries. The driver loads the data once and ships only the pooled train+valid samples and the
fold assignment to the workers (``tune.with_parameters``): the test split never reaches a fold.

Each finished fold reports a checkpoint in the :mod:`msatune.models.checkpoint` format whose
``valid`` predictions are the held-out fold's, indexed by position in the pool; the driver hands
every finished (or failed) fold to ``on_fold`` at once, so the caller can record it before the
next one ends. Resuming is the caller's business: it passes only the tasks not yet recorded.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.callback import Callback
from ray.tune.search import Searcher

from msatune.augment.dataset import MSADataset, SplitData
from msatune.augment.folds import SplitRows, fold_split
from msatune.search.search_settings import SearchSettings
from msatune.search.searcher import error_reason
from msatune.search.trainable import EpochReports, trial_artifact_dir, tune_trial
from msatune.search.tune_run import run_tune

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldTask:
    """One training of a refit: configuration ``trial`` on fold ``fold`` of repeat ``repeat``."""

    trial: int  # the source study's trial number
    repeat: int
    fold: int
    config: dict[str, Any]  # the full training config (the trial's, with this fold's seed)

    @property
    def key(self) -> tuple[int, int, int]:
        return (int(self.trial), int(self.repeat), int(self.fold))

    @property
    def name(self) -> str:
        return f"fold_t{self.trial}_r{self.repeat}_f{self.fold}"

    def as_config(self) -> dict[str, Any]:
        return {"trial": int(self.trial), "repeat": int(self.repeat), "fold": int(self.fold),
                "config": dict(self.config)}


def fold_seed(seed: int, repeat: int, fold: int, folds: int) -> int:
    """The training seed of one fold: the trial's seed, moved per fold so fold models differ."""
    return int(seed) + 7919 * (int(repeat) * int(folds) + int(fold) + 1)


@dataclass
class FoldOutcome:
    """What one fold ended with, as the driver saw it."""

    task: FoldTask
    state: str  # "COMPLETE" or "FAIL"
    held_out_mae: float | None = None
    checkpoint: str | None = None
    best_epoch: int | None = None  # 1-based
    epochs: int | None = None
    seconds: float | None = None
    n_train: int | None = None
    n_held_out: int | None = None
    reason: str | None = None
    #: how many times the fold traced its train step (0: it reused the previous fold's, models.step_cache)
    traces: int | None = None


@dataclass
class FoldProgress:
    total: int
    done: int
    failed: int
    running: int
    elapsed: float
    last: FoldOutcome | None = None

    @property
    def eta(self) -> float | None:
        finished = self.done + self.failed
        if finished == 0:
            return None
        return self.elapsed / finished * max(0, self.total - finished)


@dataclass
class FoldRunSummary:
    folds_run: int
    complete: int
    failed: int
    wall_seconds: float
    concurrency: int
    interrupted: bool = False
    outcomes: list[FoldOutcome] = field(default_factory=list)
    out_of_time: bool = False  # the deadline passed with folds not started (a normal end)
    folds_left: int = 0  # the folds the deadline kept from starting


class FoldQueue(Searcher):
    """Hands Ray Tune the refit's tasks in order, one per trial, and no task once ``deadline``
    (a ``time.monotonic()`` value) has passed, except the run's first when ``first_always``: a
    refit of its own always trains one fold, so a rerun makes progress (a refit after a search in
    the same command has made its progress). Then :attr:`out_of_time` is true; running folds finish."""

    def __init__(self, tasks: list[FoldTask], deadline: float | None = None, first_always: bool = True) -> None:
        super().__init__()
        self.queue = [{"task": t.as_config()} for t in tasks]
        self.handed = 0
        self.deadline = deadline
        self.first_always = first_always
        self.out_of_time = False

    @property
    def left(self) -> int:
        return len(self.queue) - self.handed

    def suggest(self, trial_id: str) -> dict | None:
        if self.handed >= len(self.queue):
            return Searcher.FINISHED
        if ((self.handed or not self.first_always) and self.deadline is not None
                and time.monotonic() >= self.deadline):
            self.out_of_time = True
            return Searcher.FINISHED
        self.handed += 1
        return self.queue[self.handed - 1]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # FoldCallback records what a fold ended with

    def save(self, checkpoint_path: str) -> None:
        """Tune's snapshot of the queue (the store's fold records are the truth: a refit
        continues with a fresh run of the folds not recorded, never by restoring this)."""
        with open(checkpoint_path, "w", encoding="utf-8") as fh:
            json.dump({"handed": self.handed, "total": len(self.queue)}, fh)

    def restore(self, checkpoint_path: str) -> None:
        raise RuntimeError("a refit continues by running the same command again, never by restoring "
                           "a Tune experiment")


# ------------------------------------------------------------------------------------------------
# the worker side


def fold_dataset(pool: SplitData, assignment: np.ndarray, repeat: int, fold: int,
                 fingerprint: str) -> MSADataset:
    """The fold's training data: ``train`` = the other folds, ``valid`` = the held-out fold,
    both rows of ``pool`` read in place (the worker's copy of the pool is all it holds). It has
    no test split."""
    split = fold_split(assignment, repeat, fold)
    return MSADataset(
        path=Path(f"refit-r{repeat}-f{fold}"),
        splits={"train": SplitRows.of(pool, split.train), "valid": SplitRows.of(pool, split.held_out)},
        fingerprint=f"{fingerprint}:r{repeat}f{fold}",
    )


def train_fold(config: dict[str, Any], pool: SplitData | None = None,
               assignment: np.ndarray | None = None, fingerprint: str = "") -> None:
    """Ray Tune function trainable of one fold (``tune.with_parameters(train_fold, pool=...,
    assignment=..., fingerprint=...)``): one report per epoch, then a final report with the
    fold's checkpoint (best held-out epoch; predictions of the held-out samples)."""
    import ray.tune as tune

    from msatune.models.checkpoint import write_predictions
    from msatune.models.step_cache import process_step_cache
    from msatune.search.trial import run_trial

    if pool is None or assignment is None:
        raise ValueError("train_fold needs pool and assignment (tune.with_parameters)")
    task = config["task"]
    repeat, fold = int(task["repeat"]), int(task["fold"])
    data = fold_dataset(pool, assignment, repeat, fold, fingerprint)
    held_out = fold_split(assignment, repeat, fold).held_out
    t0 = time.time()
    reports = EpochReports()

    def on_epoch(report: Any, extra: dict) -> None:
        tune.report({**reports.metrics(report), "final": False})

    with tune_trial() as ckpt_work:
        outcome = run_trial(task["config"], data, out_dir=trial_artifact_dir() / "work",
                            on_epoch=on_epoch, checkpoint_dir=ckpt_work / "checkpoint",
                            step_cache=process_step_cache())  # the next fold of this configuration reuses its step
        ckpt = outcome.checkpoint
        pred = np.asarray(outcome.predictions["valid_pred"], dtype=np.float32)
        labels = np.asarray(data.valid.labels, dtype=np.float32)
        arrays = {"valid_pred": pred, "valid_label": labels, "valid_index": held_out.astype(np.int64)}
        if data.valid.ids is not None:
            arrays["valid_id"] = np.asarray(data.valid.ids).astype(str)
        write_predictions(ckpt, arrays)  # held-out predictions, indexed by position in the pool
        tune.report({"val_mae": outcome.result.best_val_mae, "best_val_mae": outcome.result.best_val_mae,
                     "held_out_mae": float(np.mean(np.abs(pred.astype(np.float64) - labels))),
                     "best_epoch": outcome.result.best_epoch + 1, "epochs": outcome.result.epochs_trained,
                     "fold_seconds": time.time() - t0, "n_train": data.train.n, "n_held_out": data.valid.n,
                     "traces": outcome.result.traces, "final": True},
                    checkpoint=tune.Checkpoint.from_directory(str(ckpt)))


# ------------------------------------------------------------------------------------------------
# the driver side


def _task_of(trial: Any) -> FoldTask:
    t = trial.config["task"]
    return FoldTask(int(t["trial"]), int(t["repeat"]), int(t["fold"]), dict(t["config"]))


def _trial_name(trial: Any) -> str:
    return _task_of(trial).name


class FoldCallback(Callback):
    """Driver-side Ray Tune callback: hands each ended fold to ``on_fold``, feeds ``progress``."""

    def __init__(self, on_fold: Callable[[FoldOutcome], None], total: int,
                 progress: Callable[[FoldProgress], None] | None) -> None:
        self.on_fold, self.total, self.progress = on_fold, total, progress
        self.t0 = time.time()
        self.checkpoints: dict[str, str] = {}
        self.last: dict[str, dict] = {}
        self.running: set[str] = set()
        self.ended: set[str] = set()
        self.outcomes: list[FoldOutcome] = []

    def __getstate__(self) -> dict:  # Ray pickles callbacks with the experiment state
        return {**self.__dict__, "on_fold": None, "progress": None}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self._emit(None)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any,
                      **info: Any) -> None:
        self.checkpoints[trial.trial_id] = checkpoint.path

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self.last[trial.trial_id] = result

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = self.last.get(trial.trial_id) or trial.last_result or {}
        task = _task_of(trial)
        ckpt = self.checkpoints.get(trial.trial_id)
        if result.get("diverged"):
            out = FoldOutcome(task, "FAIL", reason=str(result["diverged"]))
        elif result.get("final") and ckpt:
            out = FoldOutcome(
                task, "COMPLETE", held_out_mae=float(result["held_out_mae"]), checkpoint=ckpt,
                best_epoch=int(result["best_epoch"]), epochs=int(result["epochs"]),
                seconds=float(result["fold_seconds"]), n_train=int(result["n_train"]),
                n_held_out=int(result["n_held_out"]),
                traces=int(result["traces"]) if result.get("traces") is not None else None)
        else:
            out = FoldOutcome(task, "FAIL", reason="the fold ended without its final report")
        self._end(trial.trial_id, out)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial.trial_id, FoldOutcome(_task_of(trial), "FAIL", reason=error_reason(trial)))

    def _end(self, trial_id: str, outcome: FoldOutcome) -> None:
        if trial_id in self.ended:
            return
        self.ended.add(trial_id)
        self.running.discard(trial_id)
        self.outcomes.append(outcome)
        if self.on_fold is not None:
            self.on_fold(outcome)
        self._emit(outcome)

    def _emit(self, last: FoldOutcome | None) -> None:
        if self.progress is None:
            return
        done = sum(o.state == "COMPLETE" for o in self.outcomes)
        self.progress(FoldProgress(self.total, done, len(self.outcomes) - done,
                                   len(self.running), time.time() - self.t0, last))


def run_folds(
    tasks: list[FoldTask],
    pool: SplitData,
    assignment: np.ndarray,
    settings: SearchSettings,
    *,
    fingerprint: str,
    ray_dir: Path,
    run_name: str,
    on_fold: Callable[[FoldOutcome], None],
    progress: Callable[[FoldProgress], None] | None = None,
    trainable: Callable[..., None] | None = None,
    deadline: float | None = None,
    first_always: bool = True,
) -> FoldRunSummary:
    """Train every task (one Ray Tune trial each) and call ``on_fold`` as each one ends.

    ``settings`` gives the resources (cpus/gpus per fold, concurrency, address, retries);
    ``trainable`` replaces :func:`train_fold` (tests). Ray is started here unless the caller
    already did. Ctrl-C stops the run (``interrupted``); folds that ended were handed over.
    ``deadline`` (``time.monotonic()``): no fold starts after it but the first (unless not
    ``first_always``); the run then ends normally with ``out_of_time`` and ``folds_left``.
    """
    if not tasks:
        raise ValueError("run_folds needs at least one task")
    callback = FoldCallback(on_fold, len(tasks), progress)
    queue = FoldQueue(tasks, deadline, first_always)
    run = run_tune(
        trainable or train_fold, {"pool": pool, "assignment": np.asarray(assignment), "fingerprint": fingerprint},
        settings, trials=len(tasks), ray_dir=ray_dir, run_name=run_name, trial_name=_trial_name,
        callbacks=[callback], num_samples=len(tasks), search_alg=queue,
    )
    outcomes = list(callback.outcomes)
    complete = sum(o.state == "COMPLETE" for o in outcomes)
    started = len(tasks) - queue.left
    return FoldRunSummary(
        folds_run=len(outcomes), complete=complete, failed=len(outcomes) - complete,
        wall_seconds=run.wall_seconds, concurrency=run.concurrency,
        interrupted=run.interrupted or len(outcomes) < (started if queue.out_of_time else len(tasks)),
        outcomes=outcomes,
        out_of_time=queue.out_of_time, folds_left=queue.left,
    )


def fold_training_config(config: Mapping[str, Any], trial_epochs: int | None) -> dict[str, Any]:
    """The training config of a configuration's folds: its trial's, trained for the epochs the
    trial trained in the search (``trial_epochs``; the config's own when unknown), with early
    stopping off.

    Early stopping on a held-out fold stopped folds before their configuration had settled: a
    configuration whose validation MAE swings for its first ~10 epochs (e.g. a high learning rate
    without warm-up) can stop at ``patience`` epochs with its epoch-1 weights, no better than the
    constant predictor, where its trial went on to be the study's best (benchmarks/README.md,
    "Folds that stopped before their configuration settled"). The trial's own length is what
    the search found that configuration needs; the fold's checkpoint is still its best epoch.
    A refit records this rule (``refit_records.FOLD_STOPPING``) and does not continue one of another.
    """
    out = dict(config)
    if trial_epochs is not None and int(trial_epochs) > 0:
        out["epochs"] = min(int(trial_epochs), int(out.get("epochs", trial_epochs)))
    out["patience"] = 0
    return out


def seed_training_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The training config of a configuration's seed repeats (the seeds scheme): its trial's own
    recipe, early stopping on valid included, as the benchmark that made the scheme the default
    trained them (benchmarks/README.md, "Seed repeats where the fold refit lost"); only the
    seed moves (:func:`task_configs`)."""
    return dict(config)


def task_configs(configs: Mapping[int, Mapping[str, Any]], folds: int, repeats: int) -> list[FoldTask]:
    """Every (trial, repeat, fold) task of ``configs`` (trial number -> its training config), in
    trial order then repeat then fold; each fold's seed is :func:`fold_seed` of the trial's."""
    tasks = []
    for trial, config in configs.items():
        for r in range(int(repeats)):
            for f in range(int(folds)):
                cfg = {**config, "seed": fold_seed(int(config.get("seed", 0)), r, f, folds)}
                tasks.append(FoldTask(int(trial), r, f, cfg))
    return tasks
