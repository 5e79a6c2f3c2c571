"""A study's ensembles: one path from its trials, or from its refit, to one exported, recorded model.

:func:`run_ensemble` is what ``msatune ensemble`` (and the demo) run. The ``source`` says where the
candidates come from:

* ``trials``: the study's COMPLETE trials, fitted on their validation predictions
  (:func:`msatune.ensemble.fitting.fit_ensemble`), scored against the best single trial;
* ``refit``: the study's refit configurations, bagged, fitted on their out-of-fold predictions
  (:mod:`msatune.studies.refit.bagged`), scored against the best single trial, the best single
  after refit and the non-bagged ensemble.

Either way the test split only scores what was chosen, the result is exported as one ``.keras``
model and one SavedModel (a member whose weights cannot be rebuilt is dropped with a warning and
the combiner refitted without it), and recorded on the study
(:mod:`msatune.studies.store.ensemble_records`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import optuna

from msatune.ensemble.bagging import TRIAL_SHARE
from msatune.errors import UserError
from msatune.studies.store.connect import open_storage
from msatune.studies.store.ensemble_records import record_ensemble
from msatune.studies.store.studies import load_study, study_attrs, trial_refs
from msatune.studies.store.workspace import Workspace
from msatune.studies.study_data import study_data_or_none

if TYPE_CHECKING:
    from msatune.ensemble.fitting import EnsembleOptions, EnsembleResult

log = logging.getLogger(__name__)

#: Where ``msatune ensemble`` takes its candidates from (``auto``: :func:`resolve_source`).
SOURCES = ("auto", "trials", "refit")

#: What ``auto`` says when a study has no refit to bag (benchmarks/README.md, "Refits and bagged
#: ensembles" and "The product's own path": the bagged ensemble's test MAE was below the
#: val-selected best single's in 20 of 23 runs: 9 of 9 in refit.py (0.894-0.960 x), 11 of 14 on the
#: default path with --refit-top 5 (0.858-1.065 x; over 3 structures x 4 seeds a median 0.957 x at
#: the equal share of the trial's own model, 0.951 x at today's half: "Seeds 3" there), and the seeds
#: scheme, the default since stop 56: a median 0.931 x over 6 studies ("The seeds scheme through the product").
NO_REFIT_NOTE = ("built from the study's trials (it has no finished refit); bagged refit ensembles predicted test "
                 "better than the best single in 20 of our 23 benchmark runs (a median 5% better on default "
                 "studies, but not on every data structure), and the default seeds refit a median 6.9% better "
                 "over 6 more: msatune refit {name}, then msatune ensemble {name}")


def resolve_source(storage: optuna.storages.BaseStorage, name: str) -> tuple[str, str | None]:
    """``auto``'s choice: ``("refit", None)`` when study ``name`` has a refit with at least one
    configuration whose folds are all trained (the bagged ensemble: what predicted test best in
    the benchmarks), else ``("trials", note)`` with a note saying how to get the bagged one."""
    from msatune.studies.refit.table import bagged_configs

    try:
        bagged_configs(storage, name)
    except UserError:
        return "trials", NO_REFIT_NOTE.format(name=name)
    return "refit", None


class EnsembleSource(Protocol):
    """What an ensemble is built from: fitted (without the ``dropped`` members), then exported."""

    #: What the ensemble is recorded and exported under.
    name: str

    def fit(self, dropped: dict[int, str]) -> EnsembleResult: ...

    def export(self, result: EnsembleResult, target: Path, *, saved_model: bool,
               on_step: Callable[[str], None] | None) -> None: ...


class TrialsSource:
    """The study's trials: candidates fitted on their validation predictions."""

    def __init__(self, study: optuna.Study, attrs: dict[str, Any], options: EnsembleOptions,
                 step: Callable[[str], None]) -> None:
        self.study_name, self.options, self.step = study.study_name, options, step
        self.name = options.method
        self.fingerprint = attrs.get("data_fingerprint")
        self.warnings: list[str] = []
        step("reading the study's dataset")
        self.data = study_data_or_none(attrs, study.study_name, self.warnings,
                                       without="no error floor, export not checked")
        self.trials = trial_refs(study.get_trials(deepcopy=False))

    def fit(self, dropped: dict[int, str]) -> EnsembleResult:
        from msatune.ensemble.fitting import fit_ensemble

        self.step(f"fitting {self.options.method} on the validation predictions of up to "
                  f"{self.options.max_candidates} best trials")
        result = fit_ensemble(self.trials, self.options, study_name=self.study_name, data=self.data,
                              expected_fingerprint=self.fingerprint, skip=dropped)
        result.warnings[:0] = self.warnings
        return result

    def export(self, result: EnsembleResult, target: Path, *, saved_model: bool,
               on_step: Callable[[str], None] | None) -> None:
        from msatune.ensemble.export import export_ensemble

        export_ensemble(result, target, data=self.data, saved_model=saved_model, on_step=on_step)


def run_ensemble(
    ws: Workspace,
    storage: str | optuna.storages.BaseStorage,
    name: str,
    options: EnsembleOptions,
    *,
    source: str = "trials",
    out_dir: Path | None = None,
    export: bool = True,
    saved_model: bool = True,
    on_step: Callable[[str], None] | None = None,
    bag_trial: bool = True,
    trial_share: float | None = TRIAL_SHARE,
) -> EnsembleResult:
    """Fit ``options.method`` on study ``name``'s ``source`` (``trials``, ``refit``, or ``auto``: the
    refit when it has one, :func:`resolve_source`), export it
    (unless ``export=False``; to ``out_dir`` or the workspace's place for it) and record it on the
    study. ``storage`` is a store URL or an opened Optuna storage; ``on_step(text)`` is told each
    step before it starts (the CLI shows them). ``bag_trial``: a bagged member also averages the
    study trial's own model with its fold models (refit source only), at ``trial_share`` of its bag
    (``None``: an equal share)."""
    from msatune.ensemble.export import MemberLoadError

    t0 = time.perf_counter()
    step = on_step or (lambda text: None)
    options.validate()
    if source not in SOURCES:
        raise UserError(f"unknown ensemble source {source!r}; choose one of {', '.join(SOURCES)}")
    store = open_storage(storage) if isinstance(storage, str) else storage
    study = load_study(store, name)
    attrs = study_attrs(study)
    note = None
    if source == "auto":
        source, note = resolve_source(store, name)
    src: EnsembleSource
    if source == "refit":
        from msatune.studies.refit.bagged import RefitSource

        src = RefitSource(store, study, attrs, options, bag_trial=bag_trial, trial_share=trial_share)
    else:
        src = TrialsSource(study, attrs, options, step)
    dropped: dict[int, str] = {}  # members whose weights failed to load at export
    while True:
        result = src.fit(dropped)
        if not export:
            break
        try:
            src.export(result, out_dir or ws.ensemble_dir(name, src.name), saved_model=saved_model,
                       on_step=on_step)
            break
        except MemberLoadError as exc:
            dropped[exc.trial] = exc.reason
    if note:
        result.notes.append(note)
    result.cost = wall_cost(store, study, source, time.perf_counter() - t0)
    record_ensemble(study, src.name, result.record())
    return result


def wall_cost(storage: optuna.storages.BaseStorage, study: optuna.Study, source: str,
              ensemble_s: float) -> dict[str, Any]:
    """What an ensemble of ``source`` cost in wall seconds: the study's search runs (their
    recorded walls), the refit's runs when it bags the refit, and the ensemble itself; ``total_s``
    sums them (``None`` parts: not recorded, e.g. a study written by another tool)."""
    from msatune.studies.store.refit_records import load_refit, refit_runs

    runs = study_attrs(study).get("runs") or []
    search_s = sum(float(r.get("wall_seconds") or 0.0) for r in runs) if runs else None
    refit_s = None
    if source == "refit":
        loaded = load_refit(storage, study.study_name)
        refit_s = sum(float(r.get("wall_seconds") or 0.0) for r in refit_runs(loaded[0])) if loaded else None
    parts = {"search_s": search_s, "refit_s": refit_s, "ensemble_s": round(ensemble_s, 1)}
    total = sum(v for v in parts.values() if v is not None)
    return {**{k: None if v is None else round(v, 1) for k, v in parts.items()}, "total_s": round(total, 1)}
