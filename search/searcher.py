"""``StudySearcher``: a Ray Tune searcher that asks and tells an Optuna study, and records what
really happened.

Ray's stock OptunaSearch (ray 2.60) stores scheduler-stopped trials as COMPLETE with their
low-budget value, never reports the result that triggered the stop, can leave NaN trials RUNNING,
and crashes on trials the store already finished. This searcher speaks only Ray Tune's public
``Searcher`` interface and Optuna's public ask/report/tell (the study is loaded with the run's
sampler and no pruner: ASHA decides), and:

- asks the study for a trial and samples the search space on it (define-by-run,
  :meth:`msatune.search.space.SearchSpace.sample`): an enqueued trial (a preset, a re-queued
  trial) comes first, with its own values;
- reports the **best-so-far** validation MAE as each epoch's intermediate value, so that every
  trial's value is its best val MAE: Optuna stores a PRUNED trial's last intermediate value as its
  value, and TPE ranks pruned trials by the value at their deepest step (optuna 5.0,
  ``_get_pruned_trial_score``): with best-so-far values that is their best val MAE at the deepest
  rung they reached, not the noise of the epoch they were stopped in. The raw per-epoch val MAE
  stays in each trial's ``work/training_log.csv`` and Ray ``progress.csv``;
- tells PRUNED for trials the scheduler stopped, after reporting their last step;
- tells COMPLETE with the trial's best val MAE when the trainable finished on its own;
- tells FAIL with a ``fail_reason`` user attr for errors (reason from Ray's error file) and NaN;
- records ``ray_trial_id``, ``epochs``, ``best_val_mae`` and ``checkpoint`` user attrs while the
  trial is RUNNING (a finished trial accepts no user attrs);
- tolerates a write the store refuses because the trial is finished (a driver that took the
  study over ended it): the fence is asked again, and a taken-over run stops without counting it.
Only the driver runs this, so the store has exactly one writer.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.callback import Callback
from ray.tune.search import Searcher
from ray.tune.stopper import Stopper

from msatune.search.reconcile import FAIL_REASON_ATTR, SAMPLED_ATTR, fail_and_requeue
from msatune.search.space import SearchSpace
from msatune.thirdparty.optuna_internals import frozen_trial, study_storage

log = logging.getLogger(__name__)

#: What trials are ranked on, by the searcher and ASHA alike: the best validation MAE so far.
METRIC = "best_val_mae"
#: The validation MAE of the epoch itself (every result has it; a fallback for old trainables).
EPOCH_METRIC = "val_mae"


def ranked_value(result: dict) -> float | None:
    """The value a result ranks its trial by (best val MAE so far), None if it has none."""
    value = result.get(METRIC, result.get(EPOCH_METRIC))
    return None if value is None else float(value)


@dataclass
class SearchCounters:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    best_val_mae: float = math.inf
    best_trial: int | None = None
    running: set[str] = field(default_factory=set)


class StudySearcher(Searcher):
    def __init__(self, space: SearchSpace, study: optuna.Study, sampler: optuna.samplers.BaseSampler,
                 fence: Callable[[], bool] | None = None, deadline: float | None = None) -> None:
        """``fence()`` is asked before every write to the store (a new trial, a result, a trial's
        end): once it says False (the study was taken over), nothing more is written, no trial is
        started and :meth:`fenced` is true (the run's stopper ends the run).

        ``deadline`` (a ``time.monotonic()`` value, the run's ``--time-budget``): no trial is
        proposed after it but the run's first (a run always starts one) and :attr:`out_of_time`
        becomes true; running trials finish."""
        super().__init__(metric=METRIC, mode="min")
        self.fence = fence
        self.fenced = False
        self.deadline = deadline
        self.out_of_time = False
        self.space = space
        self.study = optuna.load_study(study_name=study.study_name, storage=study_storage(study),
                                       sampler=sampler, pruner=optuna.pruners.NopPruner())
        self.counters = SearchCounters()
        self._trials: dict[str, optuna.Trial] = {}  # Ray trial id -> its Optuna trial
        self._finished: set[str] = set()
        self._last_result: dict[str, dict] = {}
        self._reported_steps: dict[str, set[int]] = {}
        self._checkpoints: dict[str, str] = {}
        self._pending_errors: dict[str, Any] = {}

    # -- Ray Tune searcher API -------------------------------------------------------------
    def __getstate__(self) -> dict:  # Ray pickles the searcher with the experiment state
        return {**self.__dict__, "fence": None}

    def may_write(self) -> bool:
        """Whether this driver may still write to the study (the lease's fence; once no, no)."""
        if not self.fenced and self.fence is not None and not self.fence():
            self.fenced = True
        return not self.fenced

    def suggest(self, trial_id: str) -> dict | None:
        if not self.may_write():
            return Searcher.FINISHED
        if (trial_id not in self._trials and self._trials and self.deadline is not None
                and time.monotonic() >= self.deadline):  # a run's first trial always starts
            self.out_of_time = True
            return Searcher.FINISHED
        if trial_id not in self._trials:
            self._trials[trial_id] = self.study.ask()
        trial = self._trials[trial_id]
        try:
            config = self.space.sample(trial)
            trial.set_user_attr(SAMPLED_ATTR, trial_id)  # last: the configuration is whole (reconcile)
        except optuna.exceptions.UpdateFinishedTrialError:
            if self.may_write():  # not a takeover (see _report): a real error
                raise
            return Searcher.FINISHED
        self.counters.running.add(trial_id)
        return config

    def save(self, checkpoint_path: str) -> None:
        """Tune's snapshot of the searcher: which Optuna trial each Ray trial is (the store is the
        truth; msatune resumes with a fresh run on the study, never from this file)."""
        with open(checkpoint_path, "w", encoding="utf-8") as fh:
            json.dump({tid: t.number for tid, t in self._trials.items()}, fh)

    def restore(self, checkpoint_path: str) -> None:
        raise RuntimeError("msatune resumes a study with `msatune resume` (a fresh run on the study "
                           "in the store), never by restoring a Tune experiment")

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._finished or trial_id not in self._trials or not self.may_write():
            return
        self._last_result[trial_id] = result
        if result.get("diverged"):
            return
        value = ranked_value(result)
        if value is None or not math.isfinite(value):
            return
        step = int(result.get("training_iteration", 0))
        if not self._report(trial_id, float(value), step):
            return
        self._set_attr(trial_id, "epochs", step)
        if "best_val_mae" in result:
            self._set_attr(trial_id, "best_val_mae", float(result["best_val_mae"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._finished or trial_id not in self._trials or not self.may_write():
            return
        if error:
            # Ray calls the searcher before the callbacks that know the error: wait for the reason
            # from ``StoreCallback.on_trial_error`` (or ``flush``).
            self._pending_errors[trial_id] = True
            return
        result = result or self._last_result.get(trial_id)
        self._record_checkpoint_attr(trial_id)
        if result and result.get("diverged"):
            self._finish(trial_id, TrialState.FAIL, reason=str(result["diverged"]))
        elif result and result.get("final"):
            # The scheduler sees the last result first and may stop the trial on it, in which
            # case ``on_trial_result`` never ran for it: report that step here.
            self._report_last(trial_id, result)
            self._finish(trial_id, TrialState.COMPLETE, value=ranked_value(result))
        elif result and ranked_value(result) is not None:
            step = self._report_last(trial_id, result)
            self._set_attr(trial_id, "pruned_at_epoch", step)
            self._finish(trial_id, TrialState.PRUNED)
        else:
            # Stopped before its first epoch (e.g. Ctrl-C): not a result, run it again later.
            frozen = self._frozen(trial_id)
            if frozen is not None and frozen.state == TrialState.RUNNING:
                fail_and_requeue(self.study, frozen, "stopped before its first epoch")
            self._done(trial_id)

    # -- called by StoreCallback ------------------------------------------------------------
    def record_checkpoint(self, trial_id: str, path: str) -> None:
        self._checkpoints[trial_id] = path
        if self.may_write():
            self._record_checkpoint_attr(trial_id)

    def record_error(self, trial_id: str, reason: str) -> None:
        if self._pending_errors.pop(trial_id, None) is None or not self.may_write():
            return
        self._record_checkpoint_attr(trial_id)
        self._finish(trial_id, TrialState.FAIL, reason=reason)

    def flush(self) -> None:
        """Finish errors whose reason never arrived."""
        for trial_id in list(self._pending_errors):
            self.record_error(trial_id, "trial raised an error (see the Ray trial's error.txt)")

    def record_cuda_devices(self, trial_id: str, devices: str) -> None:
        if self.may_write():
            self._set_attr(trial_id, "cuda_visible_devices", devices)

    # -- helpers ------------------------------------------------------------------------------
    def _report_last(self, trial_id: str, result: dict) -> int:
        """Report ``result``'s step unless it was reported; record the epochs; return the step."""
        step = int(result.get("training_iteration", 0))
        value = ranked_value(result)
        if (step not in self._reported_steps.get(trial_id, set()) and value is not None
                and math.isfinite(value)):
            self._report(trial_id, float(value), step)
        self._set_attr(trial_id, "epochs", step)
        best = result.get("best_val_mae")
        if best is not None and math.isfinite(float(best)):
            self._set_attr(trial_id, "best_val_mae", float(best))
        return step

    def _report(self, trial_id: str, value: float, step: int) -> bool:
        """Report ``value`` at ``step``; False when the store has the trial finished already: a
        driver that stalled between its fence check and this write finds its study taken over
        (the new driver ended the trial), so the fence is asked again and says so."""
        try:
            self._trials[trial_id].report(value, step)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.info("trial %s already finished in the store; epoch %d not recorded", trial_id, step)
            self.may_write()
            return False
        self._reported_steps.setdefault(trial_id, set()).add(step)
        return True

    def _frozen(self, trial_id: str) -> optuna.trial.FrozenTrial | None:
        ot_trial = self._trials.get(trial_id)
        return None if ot_trial is None else frozen_trial(self.study, ot_trial)

    def _set_attr(self, trial_id: str, key: str, value: Any) -> None:
        ot_trial = self._trials.get(trial_id)
        if ot_trial is None or trial_id in self._finished:
            return
        try:
            ot_trial.set_user_attr(key, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.debug("trial %s already finished; %s not recorded", trial_id, key)

    def _record_checkpoint_attr(self, trial_id: str) -> None:
        path = self._checkpoints.get(trial_id)
        if path:
            self._set_attr(trial_id, "checkpoint", path)

    def _finish(self, trial_id: str, state: TrialState, value: float | None = None,
                reason: str | None = None) -> None:
        ot_trial = self._trials[trial_id]
        if reason:
            self._set_attr(trial_id, FAIL_REASON_ATTR, reason[:2000])
        try:
            self.study.tell(ot_trial, value, state=state)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as exc:
            # Optuna says "already finished" as UpdateFinishedTrialError when the trial ended
            # between its read and its write, as ValueError("Cannot tell a FAIL trial") when before.
            stored = self._frozen(trial_id)
            if stored is not None and stored.state.is_finished():
                log.info("trial %d was already %s in the store; left as is", ot_trial.number,
                         stored.state.name)
                if not self.may_write():  # taken over (see _report): not this run's result
                    self._done(trial_id)
                    return
            else:  # e.g. a NaN value
                log.warning("trial %d: %s; marked FAIL", ot_trial.number, exc)
                state = TrialState.FAIL
                try:
                    self.study.tell(ot_trial, state=TrialState.FAIL)
                except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
                    pass
        c = self.counters
        if state == TrialState.COMPLETE:
            c.complete += 1
            if value is not None and value < c.best_val_mae:
                c.best_val_mae, c.best_trial = value, ot_trial.number
        elif state == TrialState.PRUNED:
            c.pruned += 1
        else:
            c.failed += 1
        self._done(trial_id)

    def _done(self, trial_id: str) -> None:
        self._finished.add(trial_id)
        self.counters.running.discard(trial_id)


class FencedStopper(Stopper):
    """Ends the whole run once the searcher is fenced (its driver lost the study's lease)."""

    def __init__(self, searcher: StudySearcher) -> None:
        self.searcher: StudySearcher | None = searcher

    def __getstate__(self) -> dict:  # Ray pickles the stopper with the experiment state
        return {"searcher": None}

    def __call__(self, trial_id: str, result: dict) -> bool:
        return self.stop_all()

    def stop_all(self) -> bool:
        # The flag only: the searcher's own writes ask the lease (one store read each); Tune asks
        # a stopper at every step of its loop, too often for a read each time.
        return self.searcher is not None and self.searcher.fenced


class StoreCallback(Callback):
    """Driver-side Ray Tune callback feeding the searcher what only Ray knows."""

    def __init__(self, searcher: StudySearcher) -> None:
        self.searcher = searcher

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        self.searcher.record_checkpoint(trial.trial_id, checkpoint.path)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        devices = result.get("cuda_visible_devices")
        if devices is not None and result.get("training_iteration") == 1:
            self.searcher.record_cuda_devices(trial.trial_id, str(devices))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.searcher.record_error(trial.trial_id, error_reason(trial))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.searcher.flush()


def error_reason(trial: Any) -> str:
    """The last meaningful line of Ray's error file for ``trial`` (the exception message)."""
    text = ""
    try:
        path = getattr(trial, "error_file", None)
        if path:
            with open(path) as f:
                text = f.read()
    except OSError:
        text = ""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        if ":" in line and not line.startswith("File "):
            return line[:1000]
    return lines[-1][:1000] if lines else "trial raised an error"
