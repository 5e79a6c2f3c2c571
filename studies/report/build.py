"""A study's report: the criteria, the figures and one self-contained HTML page.

What :func:`build_report` writes into ``out_dir``:

* ``history.png``: every trial's validation MAE by trial number, with the best-so-far line.
* ``curves.png``: train and validation MAE per epoch of the top trials and of the ``baseline``
  and ``improved`` preset trials (the overfitting story).
* ``gradients.png``: the same trials' gradient norm per epoch (global mean and max over the
  epoch's steps, each branch's mean) with the first gradient-norm spike marked
  (:mod:`msatune.studies.report.monitoring` states the rule); when the trials recorded them.
* ``attention.png``: for the shown trials whose model has attention (best first): the modality
  weights at the best epoch and the cross-attention maps of the best epoch (validation means).
* ``importance.png``: hyperparameter importance by PED-ANOVA (Optuna's evaluator) over every
  trial that reached one of ASHA's rungs, pruned ones included, at the deepest rung enough trials
  reached (:mod:`msatune.studies.importance`; with too few, a note says why not).
* ``ensemble.png``: ensemble vs best single trial, only when an ensemble is recorded on the study.
* ``report.html`` (every PNG embedded as base64, nothing else needed), ``report.json`` (every
  number shown) and ``criteria.json`` (the criteria table alone).

Where the numbers come from: :mod:`msatune.studies.report.curves` (curves, test MAE),
:mod:`msatune.studies.report.criteria` (the users' success criteria), :mod:`msatune.studies.ensembles`
(recorded ensembles), :mod:`msatune.studies.importance` (hyperparameter importance);
:mod:`msatune.studies.report.plots` draws, :mod:`msatune.studies.report.page` writes the page.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from msatune.errors import UserError
from msatune.json_values import jsonable
from msatune.studies.importance import study_importance
from msatune.studies.queries import VALUE_RULE, trial_family
from msatune.studies.refit.table import finalists_ranking, refit_table
from msatune.studies.report.criteria import compute_criteria, criteria_rows, study_reference
from msatune.studies.report.curves import select_curves, test_mae, trial_curve
from msatune.studies.report.monitoring import SPIKE_RULE, read_monitoring
from msatune.studies.report.page import note_markdown, render_html
from msatune.studies.report.plots import (
    plot_attention,
    plot_curves,
    plot_ensembles,
    plot_gradients,
    plot_history,
    plot_importance,
)
from msatune.studies.store.ensemble_records import ensemble_records
from msatune.studies.store.studies import (
    best_complete,
    load_study,
    state_counts,
    study_artifacts,
    study_attrs,
)
from msatune.studies.store.workspace import Workspace
from msatune.thirdparty.optuna_internals import study_id

log = logging.getLogger(__name__)


@dataclass
class Report:
    """What :func:`build_report` wrote and computed (``payload`` is ``report.json``)."""

    out_dir: Path
    html: Path
    figures: dict[str, Path]
    payload: dict[str, Any] = field(default_factory=dict)


def tensorboard_hint(ws: Workspace, name: str) -> str:
    """The command that opens the study's per-epoch metrics (Ray's event files) in TensorBoard."""
    return f"tensorboard --logdir {ws.ray_dir(name).resolve()}"


def build_report(storage: optuna.storages.BaseStorage, name: str, out_dir: Path, *,
                 ws: Workspace | None = None, top: int = 3) -> Report:
    """Compute the criteria, draw the plots and write the report files into ``out_dir``.

    Raises:
        UserError: unknown study, a study with no finished trial, or ``out_dir`` not writable.
    """
    study = load_study(storage, name)
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if not finished:
        raise UserError(f"study {name!r} has no finished trial yet; nothing to report "
                        f"(see msatune show {name})")
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".report-", dir=out_dir))
    except OSError as exc:
        raise UserError(f"cannot create report directory {out_dir}: {exc.strerror or exc}") from None
    # Written into a staging directory first, then moved in file by file: a failure (a full disk)
    # leaves the earlier report as it was and no half-written file.
    try:
        report = _write_report(storage, study, trials, name, staging, ws, top)
        for path in sorted(staging.iterdir()):
            os.replace(path, out_dir / path.name)
        for stale in REPORT_FILES - {p.name for p in report.figures.values()} - _ALWAYS:
            (out_dir / stale).unlink(missing_ok=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    log.info("report of %s written to %s", name, out_dir)
    figures = {k: out_dir / p.name for k, p in report.figures.items()}
    return Report(out_dir=out_dir, html=out_dir / report.html.name, figures=figures, payload=report.payload)


#: Every file a report writes (its figures only when it has them).
_ALWAYS = {"criteria.json", "report.json", "report.html"}
REPORT_FILES = {"history.png", "curves.png", "gradients.png", "attention.png", "importance.png", "ensemble.png",
                *_ALWAYS}
#: Trials whose attention the report draws (the best ones first).
ATTENTION_TRIALS = 2


def _write_report(storage: optuna.storages.BaseStorage, study: optuna.Study, trials: list[Any], name: str, out_dir: Path, ws: Workspace | None,
                  top: int) -> Report:
    """The report's files written into ``out_dir`` (see :func:`build_report`)."""
    attrs = study_attrs(study)
    reference = study_reference(attrs, trials)
    criteria = compute_criteria(trials, reference)
    figures: dict[str, Path] = {}
    notes: list[str] = []

    figures["history"] = out_dir / "history.png"
    plot_history(trials, name, figures["history"], reference.get("valid"))

    chosen, roles = select_curves(trials, top)
    curves = [trial_curve(t) for t in chosen]
    if curves:
        figures["curves"] = out_dir / "curves.png"
        plot_curves(curves, roles, name, figures["curves"], attrs.get("max_epochs"))
    missing_train = [c.number for c in curves if c.train_source is None]
    if missing_train:
        notes.append(f"no training MAE found for trials {missing_train} (Ray's progress.csv missing); "
                     "their curves show validation MAE only")
    monitoring = _monitoring_figures(chosen, curves, roles, name, out_dir, figures, notes)

    importance = study_importance(study)
    if importance.importances:
        figures["importance"] = out_dir / "importance.png"
        plot_importance(importance.importances, name, importance.caption, figures["importance"])
        notes.append(f"hyperparameter importance is {importance.basis()}")
    else:
        notes.append(f"hyperparameter importance not computed: {importance.reason}")

    ensembles = ensemble_records(study.user_attrs)
    by_number = {t.number: t for t in trials}
    for rec in ensembles.values():  # records of bagged refits written before they kept the family
        for member in rec.get("members") or []:
            if not member.get("family") and member.get("trial") in by_number:
                member["family"] = trial_family(by_number[member["trial"]])
    if ensembles:
        figures["ensemble"] = out_dir / "ensemble.png"
        plot_ensembles(ensembles, name, figures["ensemble"], reference)

    best = best_complete(trials)
    refit = refit_table(storage, name)
    best_record = {"number": best.number, "val_mae": best.value, "preset": best.user_attrs.get("preset")} if best else None
    payload: dict[str, Any] = {
        "study": name,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "data_path": attrs.get("data_path"),
        "budget": attrs.get("budget"),
        "max_epochs": attrs.get("max_epochs"),
        "created": attrs.get("created"),
        "counts": state_counts(trials),
        "value_rule": VALUE_RULE,
        "reference": reference,
        "best": {"trial": best.number, "val_mae": best.value, "params": best.params,
                 "preset": best.user_attrs.get("preset"),
                 "checkpoint": best.user_attrs.get("checkpoint"), "test_mae": test_mae(best)} if best else None,
        "criteria": criteria,
        "criteria_table": criteria_rows(criteria),
        "curves": [{**asdict(c), "role": roles.get(c.number)} for c in curves],
        "monitoring": monitoring,
        "importance": importance.importances,
        "importance_basis": {k: v for k, v in importance.as_dict().items() if k != "importances"},
        "ensembles": ensembles,
        "refit": refit,
        "ranking": finalists_ranking(refit, best_record, name),
        "figures": {k: p.name for k, p in figures.items()},
        "tensorboard": tensorboard_hint(ws, name) if ws is not None else None,
        "notes": notes,
    }
    _write_json(out_dir / "criteria.json", {"study": name, "criteria": criteria})
    _write_json(out_dir / "report.json", payload)
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(payload, figures), encoding="utf-8")
    return Report(out_dir=out_dir, html=html_path, figures=figures, payload=payload)


def _monitoring_figures(chosen: list[Any], curves: list[Any], roles: dict[int, str], name: str, out_dir: Path,
                        figures: dict[str, Path], notes: list[str]) -> list[dict[str, Any]]:
    """``gradients.png`` and ``attention.png`` of the shown trials; their summaries for report.json."""
    monitors = [read_monitoring(t) for t in chosen]
    best_epoch = {c.number: c.best_epoch for c in curves}
    with_grads = [m for m in monitors if m.has_grads]
    if with_grads:
        figures["gradients"] = out_dir / "gradients.png"
        plot_gradients(with_grads, roles, name, figures["gradients"], SPIKE_RULE)
        notes.append(SPIKE_RULE)
    elif monitors:
        notes.append("no gradient norms recorded for the trials shown (progress.csv has no grad_norm_* "
                     "columns: trained before msatune recorded them)")
    ranked = sorted((m for m in monitors if m.attention or m.modality_weights),
                    key=lambda m: "preset" in roles.get(m.number, "").split(",")[0])  # best/top first
    entries = [(m, m.weights_at(best_epoch.get(m.number)), roles.get(m.number, ""))
               for m in ranked[:ATTENTION_TRIALS]]
    if entries:
        figures["attention"] = out_dir / "attention.png"
        plot_attention(entries, name, figures["attention"])
    return [m.summary(best_epoch.get(m.number)) for m in monitors]


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def attach_report(storage: optuna.storages.BaseStorage, name: str, report: Report, artifact_dir: Path) -> list[str]:
    """Write the criteria as the study's dashboard note and upload the report files as study
    artifacts (replacing those of an earlier report). Returns the artifact ids. Writes to the store.
    """
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact
    from optuna_dashboard import save_note

    study = load_study(storage, name)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(artifact_dir))
    files = [report.html, *report.figures.values()]
    names = {p.name for p in files}
    for key, meta in study_artifacts(storage, study_id(study)).items():  # drop the previous report's files
        if meta.get("filename") in names:
            try:
                store.remove(meta["artifact_id"])
            except Exception:  # noqa: BLE001 - already gone: only the metadata is left to clear
                log.debug("artifact %s already removed", meta.get("artifact_id"))
            storage.set_study_system_attr(study_id(study), key, json.dumps(None))
    ids = [upload_artifact(artifact_store=store, file_path=str(p), study_or_trial=study) for p in files]
    save_note(study, note_markdown(report.payload))
    return ids
