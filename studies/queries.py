"""Read-only questions to the store: the study list, a study's best trials.

On an RDB store the counts, the ranking and the presets are SQL queries (a 2,000-trial study
answers in milliseconds); only the few trials shown are loaded whole. Other storages fall back to
loading every trial.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from studies.store import load_study, state_counts, study_attrs
from studies.workspace import Workspace


def trial_record(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {
        "number": t.number,
        "state": t.state.name,
        "val_mae": t.value if t.state == TrialState.COMPLETE else t.user_attrs.get("best_val_mae"),
        "epochs": t.user_attrs.get("epochs"),
        "params": t.params,
        "preset": t.user_attrs.get("preset"),
        "checkpoint": t.user_attrs.get("checkpoint"),
        "fail_reason": t.user_attrs.get("fail_reason"),
        "requeued": bool(t.user_attrs.get("msatune_requeued", False)),
        "duration_s": t.duration.total_seconds() if t.duration else None,
    }


class _Summary:
    """Counts, best-first COMPLETE trials, presets and failures of one study."""

    def __init__(self, storage: optuna.storages.BaseStorage, study_id: int, top: int) -> None:
        rdb = _rdb(storage)
        if rdb is not None:
            self._from_sql(rdb, study_id, top)
        else:
            self._from_trials(storage.get_all_trials(study_id, deepcopy=False), top)

    def _from_trials(self, trials: list[optuna.trial.FrozenTrial], top: int) -> None:
        self.counts = state_counts(trials)
        ranked = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
                        key=lambda t: (t.value, t.number))
        self.ranked = ranked[:top]
        self.presets = [t for t in trials if t.user_attrs.get("preset")]
        self.failed = [t for t in trials if t.state == TrialState.FAIL][:top]

    def _from_sql(self, storage: optuna.storages.RDBStorage, sid: int, top: int) -> None:
        from optuna.storages._rdb import models as m
        from sqlalchemy import func
        from sqlalchemy.orm import Session

        with Session(storage.engine) as session:
            self.counts = {s.name: 0 for s in TrialState}
            rows = (session.query(m.TrialModel.state, func.count())
                    .filter(m.TrialModel.study_id == sid).group_by(m.TrialModel.state))
            for state, n in rows:
                self.counts[state.name] = n
            ranked_ids = [r[0] for r in (
                session.query(m.TrialModel.trial_id).join(m.TrialValueModel)
                .filter(m.TrialModel.study_id == sid, m.TrialModel.state == TrialState.COMPLETE,
                        m.TrialValueModel.objective == 0,
                        m.TrialValueModel.value_type == m.TrialValueModel.TrialValueType.FINITE)
                .order_by(m.TrialValueModel.value, m.TrialModel.number).limit(top))]
            preset_ids = [r[0] for r in (
                session.query(m.TrialUserAttributeModel.trial_id).join(m.TrialModel)
                .filter(m.TrialModel.study_id == sid, m.TrialUserAttributeModel.key == "preset")
                .order_by(m.TrialModel.number))]
            failed_ids = [r[0] for r in (
                session.query(m.TrialModel.trial_id)
                .filter(m.TrialModel.study_id == sid, m.TrialModel.state == TrialState.FAIL)
                .order_by(m.TrialModel.number).limit(top))]
        self.ranked = [storage.get_trial(i) for i in ranked_ids]
        self.presets = [storage.get_trial(i) for i in preset_ids]
        self.failed = [storage.get_trial(i) for i in failed_ids]


def _rdb(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage | None:
    inner = getattr(storage, "_backend", storage)  # optuna's _CachedStorage wraps an RDBStorage
    return inner if isinstance(inner, optuna.storages.RDBStorage) else None


def list_studies(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    rows = []
    for frozen in storage.get_all_studies():
        summary = _Summary(storage, frozen._study_id, 1)
        best = summary.ranked[0] if summary.ranked else None
        attrs = {k.split(":", 1)[1]: v for k, v in frozen.user_attrs.items() if k.startswith("msatune:")}
        rows.append({
            "name": frozen.study_name,
            "counts": summary.counts,
            "best_val_mae": best.value if best else None,
            "best_trial": best.number if best else None,
            "budget": attrs.get("budget"),
            "created": attrs.get("created"),
        })
    return rows


def show_study(storage: optuna.storages.BaseStorage, name: str, top: int, ws: Workspace | None = None) -> dict[str, Any]:
    study = load_study(storage, name)
    attrs = study_attrs(study)
    summary = _Summary(storage, study._study_id, top)
    best = summary.ranked[0] if summary.ranked else None
    presets = {t.user_attrs["preset"]: trial_record(t) for t in summary.presets
               if t.state != TrialState.WAITING and not t.user_attrs.get("msatune_requeued")}
    payload: dict[str, Any] = {
        "name": name,
        "counts": summary.counts,
        "budget": attrs.get("budget"),
        "data_path": attrs.get("data_path"),
        "trials": [trial_record(t) for t in summary.ranked],
        "best": trial_record(best) if best else None,
        "presets": presets,
        "failed": [trial_record(t) for t in summary.failed],
    }
    if ws is not None:
        from studies.report import tensorboard_hint

        payload["next"] = [
            f"dashboard:   msatune --workspace {ws.root} dashboard",
            f"report:      msatune --workspace {ws.root} report {name}",
            f"ensemble:    msatune --workspace {ws.root} ensemble {name}",
            f"tensorboard: {tensorboard_hint(ws, name)}",
        ]
    return payload


__all__ = ["list_studies", "show_study", "trial_record"]
