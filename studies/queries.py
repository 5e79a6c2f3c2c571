"""Read-only questions to the store: the study list, a study's best trials."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from studies.store import best_complete, load_study, state_counts, study_attrs
from studies.workspace import Workspace


def list_studies(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    rows = []
    for frozen in storage.get_all_studies():
        trials = storage.get_all_trials(frozen._study_id, deepcopy=False)
        best = best_complete(trials)
        attrs = {k.split(":", 1)[1]: v for k, v in frozen.user_attrs.items() if k.startswith("msatune:")}
        rows.append({
            "name": frozen.study_name,
            "counts": state_counts(trials),
            "best_val_mae": best.value if best else None,
            "best_trial": best.number if best else None,
            "budget": attrs.get("budget"),
            "created": attrs.get("created"),
        })
    return rows


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
        "duration_s": t.duration.total_seconds() if t.duration else None,
    }


def show_study(storage: optuna.storages.BaseStorage, name: str, top: int, ws: Workspace | None = None) -> dict[str, Any]:
    study = load_study(storage, name)
    trials = study.get_trials(deepcopy=False)
    attrs = study_attrs(study)
    ranked = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
        key=lambda t: (t.value, t.number),
    )
    best = best_complete(trials)
    presets = {t.user_attrs.get("preset"): trial_record(t) for t in trials
               if t.user_attrs.get("preset") and t.state != TrialState.WAITING
               and not t.user_attrs.get("msatune_requeued")}
    payload: dict[str, Any] = {
        "name": name,
        "counts": state_counts(trials),
        "budget": attrs.get("budget"),
        "data_path": attrs.get("data_path"),
        "trials": [trial_record(t) for t in ranked[:top]],
        "best": trial_record(best) if best else None,
        "presets": presets,
        "failed": [trial_record(t) for t in trials if t.state == TrialState.FAIL][:top],
    }
    if ws is not None:
        payload["next"] = [
            f"dashboard: msatune dashboard   (or optuna-dashboard {ws.storage_url})",
            f"ensemble:  msatune ensemble {name}",
        ]
    return payload
