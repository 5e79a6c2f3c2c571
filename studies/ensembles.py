"""A study's ensembles: built from its trials, recorded on it, read back for reports.

:func:`run_study_ensemble` is what ``msatune ensemble`` (and the demo) run: read the study's
trials as plain records, fit on validation predictions (:mod:`msatune.ensemble`), export, and
record the result on the study as user attr ``msatune:ensemble:<method>``;
:func:`ensemble_records` reads those records back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from msatune.ensemble.candidates import TrialRef
from msatune.errors import UserError
from msatune.studies.store import ATTR_PREFIX, load_study, open_storage, set_study_attr, study_attrs
from msatune.studies.workspace import Workspace

if TYPE_CHECKING:
    from msatune.augment.dataset import MSADataset
    from msatune.ensemble.evaluate import EnsembleOptions, EnsembleResult

log = logging.getLogger(__name__)

#: Study user attr ``msatune:ensemble:<method>`` holds the ensemble built with that method.
RECORD_PREFIX = "ensemble:"


def trial_refs(trials: list[optuna.trial.FrozenTrial]) -> list[TrialRef]:
    """The store's trials as the plain records :mod:`msatune.ensemble` reads."""
    out = []
    for t in trials:
        ckpt = t.user_attrs.get("checkpoint")
        out.append(TrialRef(number=t.number, state=t.state.name, value=t.value,
                            checkpoint=Path(ckpt) if ckpt else None))
    return out


def default_out_dir(ws: Workspace, study: str, method: str) -> Path:
    return ws.study_dir(study) / "ensembles" / method


def load_study_data(attrs: dict[str, Any], warnings: list[str]) -> MSADataset | None:
    """The study's dataset for the floor and the export check; None (with a warning) if gone."""
    from msatune.augment.dataset import load_dataset

    path = attrs.get("data_path")
    if not path:
        return None
    if not Path(path).is_dir():
        warnings.append(f"the study's dataset {path} is not there: no error floor, export not checked")
        return None
    try:
        data = load_dataset(path)
    except UserError as exc:
        warnings.append(f"cannot read the study's dataset ({exc}): no error floor, export not checked")
        return None
    want = attrs.get("data_fingerprint")
    if want and data.fingerprint != want:
        warnings.append(f"the dataset at {path} changed since the study ran (fingerprint differs): "
                        "no error floor, export not checked")
        return None
    return data


def run_study_ensemble(
    ws: Workspace,
    storage: str | optuna.storages.BaseStorage,
    name: str,
    options: EnsembleOptions,
    *,
    out_dir: Path | None = None,
    export: bool = True,
    saved_model: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> EnsembleResult:
    """Fit, evaluate, export (unless ``export=False``) and record ``options.method`` on study ``name``.

    ``storage`` is a store URL or an opened Optuna storage. A member whose weights cannot be
    rebuilt at export time is dropped with a warning and the combiner is refitted without it.
    ``on_step(text)`` is told each step before it starts (the CLI shows them).
    """
    step = on_step or (lambda text: None)
    from msatune.ensemble.evaluate import fit_ensemble
    from msatune.ensemble.export import MemberLoadError, export_ensemble

    options.validate()
    store = open_storage(storage) if isinstance(storage, str) else storage
    study = load_study(store, name)
    attrs = study_attrs(study)
    data_warnings: list[str] = []
    step("reading the study's dataset")
    data = load_study_data(attrs, data_warnings)
    trials = trial_refs(study.get_trials(deepcopy=False))
    dropped: dict[int, str] = {}  # members whose weights failed to load at export
    while True:
        step(f"fitting {options.method} on the validation predictions of up to "
             f"{options.max_candidates} best trials")
        result = fit_ensemble(trials, options, study_name=name, data=data,
                              expected_fingerprint=attrs.get("data_fingerprint"), skip=dropped)
        result.warnings[:0] = data_warnings
        if not export:
            break
        target = out_dir or default_out_dir(ws, name, options.method)
        try:
            export_ensemble(result, target, data=data, saved_model=saved_model, on_step=on_step)
            break
        except MemberLoadError as exc:
            dropped[exc.trial] = exc.reason
    set_study_attr(study, RECORD_PREFIX + options.method, result.record())
    return result


def ensemble_records(user_attrs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: record}`` of the ensembles recorded on a study (``msatune:ensemble:<name>`` attrs).

    A record (``ensemble.evaluate``'s ``record()``) holds ``valid``/``test`` metric dicts of the
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
