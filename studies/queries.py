"""Read-only questions to the store: the study list, a study's trials by state, its presets.

On an RDB store the counts, the ranking and the presets are SQL queries (a 2,000-trial study
answers in milliseconds, :mod:`msatune.studies.store.sql`); only the few trials shown are loaded
whole. Other storages fall back to loading every trial. Everything returned is plain data.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from msatune.search.reconcile import FAIL_REASON_ATTR, REQUEUED_ATTR
from msatune.studies.refit.table import finalists_ranking, refit_table
from msatune.studies.store import sql as store_sql
from msatune.studies.store.lease import read_lease
from msatune.studies.store.refit_records import REFIT_SUFFIX, SPEC_KEY
from msatune.studies.store.studies import (
    INTERRUPTED,
    load_study,
    state_counts,
    study_attrs,
    trial_kind,
)
from msatune.thirdparty.optuna_internals import study_id

#: What a trial's value is (shown by ``show`` and the report): one rule for every state.
VALUE_RULE = ("a trial's value is its best validation MAE over the epochs it trained (a pruned "
              "trial's: up to the epoch ASHA stopped it); raw per-epoch val MAE is in each trial's "
              "work/training_log.csv and Ray progress.csv")

#: ``show --state`` names and the state kinds they list (INTERRUPTED: failed by a stopped driver,
#: then re-queued and run again).
STATE_FILTERS: dict[str, tuple[str, ...]] = {
    "complete": ("COMPLETE",), "pruned": ("PRUNED",), "fail": ("FAIL",),
    "interrupted": (INTERRUPTED,), "running": ("RUNNING",), "waiting": ("WAITING",),
}
DEFAULT_STATES: tuple[str, ...] = ("complete", "pruned", "fail")


#: The family of each preset (``search.trial_config.PRESETS``; read here without importing
#: TensorFlow, which the presets' module does; a test keeps the two equal).
PRESET_FAMILIES: dict[str | None, str] = {
    "baseline": "baseline", "improved": "improved", "seqlevel": "seqlevel", "balanced": "baseline",
}


def trial_value(t: optuna.trial.FrozenTrial) -> float | None:
    """The trial's best validation MAE (see :data:`VALUE_RULE`); None when it has none."""
    if t.state == TrialState.COMPLETE:
        return t.value
    best = t.user_attrs.get("best_val_mae")
    if best is not None:
        return float(best)
    return t.value if t.state == TrialState.PRUNED else None


def trial_family(t: optuna.trial.FrozenTrial) -> str | None:
    """The model family a trial trains (recorded at sampling; for older studies, its searched
    ``family`` param or its preset's family); None when the store does not say."""
    family = t.user_attrs.get("family") or t.params.get("family")  # search.space.FAMILY_ATTR
    family = family or (t.user_attrs.get("constants") or {}).get("family")  # .CONSTANTS_ATTR
    return str(family) if family else PRESET_FAMILIES.get(t.user_attrs.get("preset"))


def trial_record(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {
        "number": t.number,
        "family": trial_family(t),
        "state": trial_kind(t),
        "val_mae": trial_value(t),
        "epochs": t.user_attrs.get("epochs"),
        "params": t.params,
        "preset": t.user_attrs.get("preset"),
        "checkpoint": t.user_attrs.get("checkpoint"),
        "fail_reason": t.user_attrs.get(FAIL_REASON_ATTR),
        "requeued": bool(t.user_attrs.get(REQUEUED_ATTR, False)),
        "duration_s": t.duration.total_seconds() if t.duration else None,
    }


def _kinds(states: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(k for s in states for k in STATE_FILTERS[s])


class _Summary:
    """Counts, best-first COMPLETE trials, the listed trials, presets and failures of one study."""

    def __init__(self, storage: optuna.storages.BaseStorage, study_id: int, top: int,
                 states: tuple[str, ...] = ()) -> None:
        kinds = _kinds(states)
        rdb = store_sql.rdb_of(storage)
        if rdb is not None:
            self.counts = store_sql.state_counts(rdb, study_id, INTERRUPTED, REQUEUED_ATTR)
            self.ranked = [rdb.get_trial(i) for i in store_sql.best_complete_ids(rdb, study_id, top)]
            self.listed = [rdb.get_trial(i) for i in store_sql.listed_ids(
                rdb, study_id, kinds, top, INTERRUPTED, REQUEUED_ATTR)]
            self.presets = [rdb.get_trial(i) for i in store_sql.ids_with_user_attr(rdb, study_id, "preset")]
            self.failed = [rdb.get_trial(i) for i in store_sql.ids_in_state(rdb, study_id, "FAIL", top)]
            return
        trials = storage.get_all_trials(study_id, deepcopy=False)
        self.counts = state_counts(trials)
        ranked = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
                        key=lambda t: (t.value, t.number))
        self.ranked = ranked[:top]
        listed = [t for t in trials if trial_kind(t) in kinds]
        listed.sort(key=lambda t: (t.value is None, t.value if t.value is not None else 0.0, t.number))
        self.listed = listed[:top]
        self.presets = [t for t in trials if t.user_attrs.get("preset")]
        self.failed = [t for t in trials if t.state == TrialState.FAIL][:top]


def list_studies(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    rows = []
    for frozen in storage.get_all_studies():
        if frozen.study_name.endswith(REFIT_SUFFIX) and SPEC_KEY in study_attrs(frozen):
            continue  # a study's refit folds: shown by `msatune show STUDY`, not as a study
        summary = _Summary(storage, study_id(frozen), 1)
        best = summary.ranked[0] if summary.ranked else None
        attrs = study_attrs(frozen)
        rows.append({
            "name": frozen.study_name,
            "counts": summary.counts,
            "best_val_mae": best.value if best else None,
            "best_trial": best.number if best else None,
            "budget": attrs.get("budget"),
            "created": attrs.get("created"),
        })
    return rows


def show_study(storage: optuna.storages.BaseStorage, name: str, top: int,
               states: tuple[str, ...] = DEFAULT_STATES) -> dict[str, Any]:
    """A study's counts, reference MAEs, and its ``top`` trials in ``states`` (``STATE_FILTERS``
    names), finished ones best first; ``best`` is the best COMPLETE trial."""
    study = load_study(storage, name)
    attrs = study_attrs(study)
    summary = _Summary(storage, study_id(study), top, states)
    best = summary.ranked[0] if summary.ranked else None
    refit = refit_table(storage, name)
    driver = None
    if summary.counts.get("RUNNING"):  # who runs them: a live driver, or one that died (kill -9, crash)
        lease = read_lease(storage, study_id(study))
        driver = {"alive": bool(lease and lease.holder_alive()),
                  "describe": lease.describe() if lease else None}
    presets = {t.user_attrs["preset"]: trial_record(t) for t in summary.presets
               if t.state != TrialState.WAITING and not t.user_attrs.get(REQUEUED_ATTR)}
    return {
        "name": name,
        "counts": summary.counts,
        "driver": driver,
        "budget": attrs.get("budget"),
        "data_path": attrs.get("data_path"),
        "family": attrs.get("family", "improved"),
        "reference": attrs.get("reference"),
        "value_rule": VALUE_RULE,
        "states": list(states),
        "trials": [trial_record(t) for t in summary.listed],
        "best": trial_record(best) if best else None,
        "presets": presets,
        "failed": [trial_record(t) for t in summary.failed],
        "refit": refit,
        "ranking": finalists_ranking(refit, trial_record(best) if best else None, name),
    }


__all__ = ["STATE_FILTERS", "VALUE_RULE", "list_studies", "show_study", "trial_family", "trial_record"]
