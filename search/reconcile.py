"""Make the store tell the truth after a run: orphans fail, their configurations go back in the queue.

Optuna's heartbeat only works with ``Study.optimize``; with Ray Tune's ask/tell a trial left
RUNNING by a dead driver stays RUNNING forever. ``reconcile`` marks such trials FAIL (tagged
``msatune_requeued``) and enqueues their parameters again, so ``resume`` runs them first (one
caught before its configuration was written whole never ran: tagged too, and the run samples
anew in its place). Trials that already finished are never touched.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.trial import TrialState

from msatune.thirdparty.optuna_internals import study_storage
from msatune.thirdparty.optuna_internals import trial_id as trial_id_of

log = logging.getLogger(__name__)

REQUEUED_ATTR = "msatune_requeued"
FAIL_REASON_ATTR = "fail_reason"


#: The user attr the searcher sets once a trial's configuration is sampled whole (its Ray trial id).
SAMPLED_ATTR = "ray_trial_id"


def requeue_params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """What to enqueue to run ``trial`` again: its fixed params (an enqueued trial: a preset, a
    re-queued one), else what it sampled if it sampled its whole configuration (the searcher then
    tags it: :data:`SAMPLED_ATTR`); empty when there is nothing whole to run again (a driver
    stopped between two of its parameters leaves a part of a configuration, never run)."""
    fixed = trial.system_attrs.get("fixed_params")
    if fixed:
        return dict(fixed)
    return dict(trial.params) if trial.user_attrs.get(SAMPLED_ATTR) else {}


def fail_and_requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str) -> bool:
    """FAIL a RUNNING trial with ``reason`` and put its configuration back in the queue.

    A trial without its whole configuration (:func:`requeue_params` empty) never ran: its driver
    stopped (kill -9, a crash) or its sampling raised between creating the trial and writing the
    last of what it sampled. It is failed as interrupted (tagged, shown as such, using no budget)
    but nothing is re-queued: running a part of a configuration would not be "it" again, and
    sampling the rest is what the run does anyway in its place (a sampling that raises would raise
    again). Returns whether it re-queued.
    """
    storage = study_storage(study)
    trial_id = trial_id_of(trial)
    if not requeue_params(trial):
        try:
            storage.set_trial_user_attr(
                trial_id, FAIL_REASON_ATTR,
                f"{reason}; it never ran (stopped before its configuration was sampled whole): a new "
                "configuration is sampled in its place")
            storage.set_trial_user_attr(trial_id, REQUEUED_ATTR, True)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.info("trial %d finished meanwhile; left as is", trial.number)
        return False
    try:
        storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, reason)
        storage.set_trial_user_attr(trial_id, REQUEUED_ATTR, True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        log.info("trial %d finished meanwhile; left as is", trial.number)
        return False
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k in ("preset",)}
    user_attrs["requeued_from"] = trial.number
    study.enqueue_trial(requeue_params(trial), user_attrs=user_attrs)
    log.info("trial %d: %s; re-queued", trial.number, reason)
    return True


def reconcile(study: optuna.Study, reason: str = "driver stopped while the trial was running") -> list[int]:
    """FAIL every RUNNING trial of ``study`` and re-queue those that had parameters; returns the
    numbers of the re-queued ones."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return [t.number for t in running if fail_and_requeue(study, t, reason)]


def counts_toward_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """COMPLETE and PRUNED trials, and FAILs of a configuration that ran and was not re-queued
    (real errors) use budget; a FAIL without parameters never ran (stores written before such
    trials were tagged as interrupted have them untagged)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return (trial.state == TrialState.FAIL and not trial.user_attrs.get(REQUEUED_ATTR, False)
            and bool(trial.system_attrs.get("fixed_params") or trial.params))


def used_budget(study: optuna.Study) -> int:
    return sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False))
