"""Read-only questions to the store: the study list, a study's best trials, its presets.

On an RDB store the counts, the ranking and the presets are SQL queries (a 2,000-trial study
answers in milliseconds, :mod:`msatune.studies.store_sql`); only the few trials shown are loaded
whole. Other storages fall back to loading every trial. Everything returned is plain data.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from msatune.search.reconcile import FAIL_REASON_ATTR, REQUEUED_ATTR
from msatune.studies import store_sql
from msatune.studies.refit_records import REFIT_SUFFIX, SPEC_KEY, refit_table
from msatune.studies.store import load_study, state_counts, study_attrs


def trial_record(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {
        "number": t.number,
        "state": t.state.name,
        "val_mae": t.value if t.state == TrialState.COMPLETE else t.user_attrs.get("best_val_mae"),
        "epochs": t.user_attrs.get("epochs"),
        "params": t.params,
        "preset": t.user_attrs.get("preset"),
        "checkpoint": t.user_attrs.get("checkpoint"),
        "fail_reason": t.user_attrs.get(FAIL_REASON_ATTR),
        "requeued": bool(t.user_attrs.get(REQUEUED_ATTR, False)),
        "duration_s": t.duration.total_seconds() if t.duration else None,
    }


class _Summary:
    """Counts, best-first COMPLETE trials, presets and failures of one study."""

    def __init__(self, storage: optuna.storages.BaseStorage, study_id: int, top: int) -> None:
        rdb = store_sql.rdb_of(storage)
        if rdb is not None:
            self.counts = store_sql.state_counts(rdb, study_id)
            self.ranked = [rdb.get_trial(i) for i in store_sql.best_complete_ids(rdb, study_id, top)]
            self.presets = [rdb.get_trial(i) for i in store_sql.ids_with_user_attr(rdb, study_id, "preset")]
            self.failed = [rdb.get_trial(i) for i in store_sql.ids_in_state(rdb, study_id, "FAIL", top)]
            return
        trials = storage.get_all_trials(study_id, deepcopy=False)
        self.counts = state_counts(trials)
        ranked = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
                        key=lambda t: (t.value, t.number))
        self.ranked = ranked[:top]
        self.presets = [t for t in trials if t.user_attrs.get("preset")]
        self.failed = [t for t in trials if t.state == TrialState.FAIL][:top]


def list_studies(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    rows = []
    for frozen in storage.get_all_studies():
        if frozen.study_name.endswith(REFIT_SUFFIX) and SPEC_KEY in study_attrs(frozen):
            continue  # a study's refit folds: shown by `msatune show STUDY`, not as a study
        summary = _Summary(storage, frozen._study_id, 1)
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


def show_study(storage: optuna.storages.BaseStorage, name: str, top: int) -> dict[str, Any]:
    study = load_study(storage, name)
    attrs = study_attrs(study)
    summary = _Summary(storage, study._study_id, top)
    best = summary.ranked[0] if summary.ranked else None
    presets = {t.user_attrs["preset"]: trial_record(t) for t in summary.presets
               if t.state != TrialState.WAITING and not t.user_attrs.get(REQUEUED_ATTR)}
    return {
        "name": name,
        "counts": summary.counts,
        "budget": attrs.get("budget"),
        "data_path": attrs.get("data_path"),
        "trials": [trial_record(t) for t in summary.ranked],
        "best": trial_record(best) if best else None,
        "presets": presets,
        "failed": [trial_record(t) for t in summary.failed],
        "refit": refit_table(storage, name),
    }


__all__ = ["list_studies", "show_study", "trial_record"]
