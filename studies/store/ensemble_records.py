"""A study's ensembles in the store: the one owner of their records, written and read.

``msatune ensemble`` records each ensemble it builds on the study as user attr
``msatune:ensemble:<name>`` (``<name>``: its method, or ``refit-<method>`` for a bagged one): the
compact ``record()`` of :class:`msatune.ensemble.fitting.EnsembleResult` (members and weights,
the ensemble's and the best single trial's metrics, where the model was exported). The report
and the dashboard read them back.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import optuna

from msatune.studies.store.studies import ATTR_PREFIX, set_study_attr

log = logging.getLogger(__name__)

#: Study user attr ``msatune:ensemble:<name>`` holds the ensemble recorded under that name.
RECORD_PREFIX = "ensemble:"


def record_ensemble(study: optuna.Study, name: str, record: dict[str, Any]) -> None:
    """Record (or replace) the study's ensemble ``name``."""
    set_study_attr(study, RECORD_PREFIX + name, record)


def ensemble_records(user_attrs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: record}`` of the ensembles recorded on a study (``msatune:ensemble:<name>`` attrs).

    A record (``ensemble.fitting``'s ``record()``) holds ``valid``/``test`` metric dicts of the
    ensemble and ``best_single`` as ``{"trial", "valid_mae", "test_mae"}`` (full ``valid``/``test``
    metric dicts, as in ``msatune ensemble --json``, work too); a JSON string is parsed. Records
    without both sides are skipped.
    """
    out = {}
    for key, value in sorted(user_attrs.items()):
        if not key.startswith(ATTR_PREFIX + RECORD_PREFIX):
            continue
        rec = value
        if isinstance(rec, str):
            try:
                rec = json.loads(rec)
            except json.JSONDecodeError:
                log.warning("study attr %s is not JSON; skipped", key)
                continue
        if not isinstance(rec, dict):
            continue
        ens = rec.get("ensemble") if isinstance(rec.get("ensemble"), dict) else rec
        single = rec.get("best_single")
        if not isinstance(single, dict) or not any(isinstance(ens.get(s), dict) for s in ("valid", "test")):
            log.warning("study attr %s has no ensemble vs best-single metrics; skipped", key)
            continue
        single_metrics = {}
        for split in ("valid", "test"):  # full metric dicts, or the compact record's "<split>_mae"
            if isinstance(single.get(split), dict):
                single_metrics[split] = single[split]
            elif isinstance(single.get(f"{split}_mae"), (int, float)):
                single_metrics[split] = {"mae": single[f"{split}_mae"]}
        out[key[len(ATTR_PREFIX + RECORD_PREFIX):] or "ensemble"] = {
            "method": rec.get("method"),
            "members": rec.get("members"),
            "ensemble": {s: ens.get(s) for s in ("valid", "test") if isinstance(ens.get(s), dict)},
            "best_single": {"trial": single.get("trial"), **single_metrics},
            "cv_valid_mae": rec.get("cv_valid_mae"),
            "model_path": rec.get("model_path"),
            "created": rec.get("created"),
        }
    return out


def mae_of(metrics: dict[str, Any] | None) -> float | None:
    if not metrics:
        return None
    for k, v in metrics.items():
        if k.lower() == "mae" and isinstance(v, (int, float)):
            return float(v)
    return None
