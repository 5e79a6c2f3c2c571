"""Fit an ensemble on a study's candidates and score it honestly against the best single trial.

:func:`fit_ensemble` is the whole numpy side of ``msatune ensemble``: select the candidates, fit
the combiner on their **validation** predictions, refit it under k-fold cross-validation of the
validation samples (the selection's optimism), then score every member, the best single trial
and the ensemble on valid and test with the MMSA metrics (DESIGN §5), next to the constant
predictor and, where the dataset has a noise-free oracle, the error floor. The test split is read
only after the combination is fixed. :meth:`EnsembleResult.summary` is the JSON payload.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from msatune.augment.yardsticks import reference_maes
from msatune.ensemble.candidates import (
    DEFAULT_MAX_CANDIDATES,
    SPLITS,
    CandidatePool,
    TrialRef,
    select_candidates,
)
from msatune.ensemble.combiners import (
    DEFAULT_CV_FOLDS,
    DEFAULT_METHOD,
    DEFAULT_ROUNDS,
    DEFAULT_TOP_K,
    METHODS,
    Combination,
    cross_validate,
    fit,
)
from msatune.errors import UserError
from msatune.json_values import jsonable
from msatune.models.metrics import msa_metrics

log = logging.getLogger(__name__)


#: Greedy selection's round limit: each round scores every candidate on every validation sample.
MAX_ROUNDS = 10_000


@dataclass(frozen=True)
class EnsembleOptions:
    method: str = DEFAULT_METHOD
    top_k: int = DEFAULT_TOP_K
    rounds: int = DEFAULT_ROUNDS
    max_candidates: int = DEFAULT_MAX_CANDIDATES
    cv_folds: int = DEFAULT_CV_FOLDS
    seed: int = 0

    def validate(self) -> EnsembleOptions:
        if self.method not in METHODS:
            raise UserError(f"unknown ensemble method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.top_k < 1:
            raise UserError(f"--top-k must be at least 1, got {self.top_k}")
        if not 1 <= self.rounds <= MAX_ROUNDS:
            raise UserError(f"--rounds must be between 1 and {MAX_ROUNDS}, got {self.rounds} (greedy "
                            "selection settles within tens of rounds; the default is "
                            f"{DEFAULT_ROUNDS})")
        if self.max_candidates < 1:
            raise UserError(f"--max-candidates must be at least 1, got {self.max_candidates}")
        if self.cv_folds < 2:
            raise UserError(f"--cv-folds must be at least 2, got {self.cv_folds}")
        return self

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "top_k": self.top_k, "rounds": self.rounds,
                "max_candidates": self.max_candidates, "cv_folds": self.cv_folds, "seed": self.seed}


@dataclass
class EnsembleResult:
    """A fitted, evaluated ensemble (nothing exported yet)."""

    study: str
    options: EnsembleOptions
    pool: CandidatePool
    combination: Combination
    predictions: dict[str, np.ndarray]  # split -> ensemble prediction (float64)
    metrics: dict[str, dict[str, float]]  # split -> MMSA metrics of the ensemble
    member_metrics: dict[int, dict[str, dict[str, float]]]  # trial -> split -> metrics
    best_single: int  # trial number (best validation MAE)
    reference: dict[str, dict[str, float | None]]  # split -> constant_mae / floor_mae
    cv: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    export: dict[str, Any] = field(default_factory=dict)  # filled by ensemble.export
    cost: dict[str, Any] = field(default_factory=dict)  # wall seconds of what it rests on (studies.ensembles)

    @property
    def members(self) -> list[tuple[int, float]]:
        """``(trial, weight)`` of the members, heaviest first (ties: lower trial)."""
        pairs = [(self.pool.candidates[j].trial, float(self.combination.weights[j])) for j in self.combination.members]
        return sorted(pairs, key=lambda p: (-p[1], p[0]))

    def summary(self) -> dict[str, Any]:
        """The ``msatune ensemble --json`` payload (plain JSON types, NaN as null)."""
        by_trial = {c.trial: c for c in self.pool.candidates}
        best = by_trial[self.best_single]
        members = []
        for trial, weight in self.members:
            entry: dict[str, Any] = {"trial": trial, "weight": round(weight, 6),
                                     "family": by_trial[trial].config.get("family")}
            if self.combination.method == "greedy":
                entry["count"] = int(round(weight * self.combination.info["rounds_used"]))
            entry.update({"checkpoint": str(by_trial[trial].checkpoint),
                          "valid": self.member_metrics[trial]["valid"],
                          "test": self.member_metrics[trial]["test"]})
            members.append(entry)
        out: dict[str, Any] = {
            "study": self.study,
            "method": self.combination.method,
            "members": members,
            "valid": self.metrics["valid"],
            "test": self.metrics["test"],
            "best_single": {"trial": best.trial, "checkpoint": str(best.checkpoint),
                            "valid": self.member_metrics[best.trial]["valid"],
                            "test": self.member_metrics[best.trial]["test"]},
            "change_vs_best_single": {
                split: percent_change(self.metrics[split]["mae"], self.member_metrics[best.trial][split]["mae"])
                for split in SPLITS
            },
            "cv": self.cv,
            "reference": self.reference,
            "candidates": {
                "trials": self.pool.n_trials, "complete": self.pool.n_complete,
                "usable": self.pool.n_usable, "used": len(self.pool.candidates),
                "constant_valid_mae": self.pool.constant_valid_mae,
                "ranked": [{"trial": c.trial, "valid_mae": c.valid_mae} for c in self.pool.candidates],
                "skipped": self.pool.skipped,
            },
            "options": self.options.as_dict(),
            "combiner": {k: v for k, v in self.combination.info.items()},
            "model_path": self.export.get("model_path"),
            "saved_model_path": self.export.get("saved_model_path"),
            "out_dir": self.export.get("out_dir"),
            "export_check": self.export.get("check"),
            "cost": self.cost,
            "notes": self.notes,
            "warnings": self.warnings,
        }
        return jsonable(out)

    def record(self) -> dict[str, Any]:
        """The compact summary recorded on the study (``msatune:ensemble:<method>``)."""
        s = self.summary()
        return {
            "method": s["method"],
            "members": [{"trial": m["trial"], "weight": m["weight"], "family": m.get("family")}
                        for m in s["members"]],
            "valid": s["valid"],
            "test": s["test"],
            "best_single": {"trial": s["best_single"]["trial"],
                            "valid_mae": s["best_single"]["valid"]["mae"],
                            "test_mae": s["best_single"]["test"]["mae"],
                            "valid": s["best_single"]["valid"], "test": s["best_single"]["test"]},
            "cv_valid_mae": (s["cv"] or {}).get("valid_mae"),
            "reference": s["reference"],
            "options": s["options"],
            "model_path": s["model_path"],
            "saved_model_path": s["saved_model_path"],
            "cost": s["cost"],
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        }


def percent_change(new: float | None, old: float | None) -> float | None:
    """``new`` relative to ``old`` in percent (3 decimals); None when either is missing or not finite,
    or ``old`` is 0."""
    if new is None or old is None or not (math.isfinite(new) and math.isfinite(old)) or old == 0:
        return None
    return round(100.0 * (new - old) / old, 3)


def metrics_of(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {k: float(v) for k, v in msa_metrics(np.asarray(pred), np.asarray(labels)).items()}


def references(pool: CandidatePool, data: Any | None = None) -> dict[str, dict[str, float | None]]:
    """Per split: the constant predictor's MAE (median of that split's labels) and the floor
    (noise-free oracle vs labels) when ``data`` (an MSADataset) has an oracle for the split."""
    out: dict[str, dict[str, float | None]] = {}
    for split in SPLITS:
        oracle = None
        s = data.splits.get(split) if data is not None else None
        if s is not None and s.oracle is not None:
            idx = pool.index(split)
            full = np.asarray(s.oracle, dtype=np.float64).reshape(-1)
            if idx.size and idx.max() < full.shape[0]:
                oracle = full[idx]
        out[split] = reference_maes(pool.labels(split), oracle)
    return out


def fit_pool(
    pool: CandidatePool,
    options: EnsembleOptions,
    *,
    study_name: str = "",
    data: Any | None = None,
) -> EnsembleResult:
    """Fit ``options.method`` on the pool's validation predictions and evaluate it."""
    options.validate()
    keys = pool.trials
    Pv = pool.matrix("valid")
    yv = pool.labels("valid")
    notes: list[str] = []
    if options.method != "greedy" and options.top_k > len(keys):
        notes.append(f"--top-k {options.top_k} is more than the {len(keys)} candidates: using all {len(keys)}")
    comb = fit(options.method, Pv, yv, top_k=options.top_k, rounds=options.rounds, keys=keys)

    cv = cross_validate(options.method, Pv, yv, folds=options.cv_folds, seed=options.seed,
                        top_k=options.top_k, rounds=options.rounds, keys=keys)
    single_cv = cross_validate("mean", Pv, yv, folds=options.cv_folds, seed=options.seed, top_k=1, keys=keys)
    in_sample = float(np.mean(np.abs(comb.predict(Pv) - yv)))
    cv_out = None
    if cv is not None:
        cv_out = {
            "folds": cv["folds"], "seed": cv["seed"],
            "valid_mae": cv["mae"], "in_sample_valid_mae": in_sample,
            "optimism": cv["mae"] - in_sample,
            "best_single_valid_mae": single_cv["mae"] if single_cv else None,
            "fold_mae": cv["fold_mae"],
        }

    # The combination is fixed: only now look at the test split.
    predictions = {split: comb.predict(pool.matrix(split)) for split in SPLITS}
    metrics = {split: metrics_of(predictions[split], pool.labels(split)) for split in SPLITS}
    member_metrics = {
        c.trial: {split: metrics_of(c.pred(split), pool.labels(split)) for split in SPLITS}
        for j, c in enumerate(pool.candidates)
        if comb.weights[j] > 0 or j == 0
    }
    best_single = pool.candidates[0].trial  # ranked by validation MAE, ties by trial number
    result = EnsembleResult(
        study=study_name, options=options, pool=pool, combination=comb, predictions=predictions,
        metrics=metrics, member_metrics=member_metrics, best_single=best_single,
        reference=references(pool, data), cv=cv_out, notes=notes, warnings=list(pool.warnings),
    )
    log.info("ensemble %s of %s: %d members, valid MAE %.4f (best single %.4f)", options.method,
             study_name, len(comb.members), metrics["valid"]["mae"], member_metrics[best_single]["valid"]["mae"])
    return result


def fit_ensemble(
    trials: Iterable[TrialRef],
    options: EnsembleOptions | None = None,
    *,
    study_name: str = "",
    data: Any | None = None,
    expected_fingerprint: str | None = None,
    skip: Mapping[int, str] | None = None,
) -> EnsembleResult:
    """Select a study's candidates (see :func:`ensemble.candidates.select_candidates`), fit the
    combiner on validation predictions only, evaluate on valid and test.

    ``data`` (the study's MSADataset, optional) adds the error floor where it has an oracle;
    ``skip``: trial number -> reason, trials to leave out (reported as skipped).
    """
    options = (options or EnsembleOptions()).validate()
    pool = select_candidates(trials, max_candidates=options.max_candidates, study_name=study_name,
                             expected_fingerprint=expected_fingerprint, skip=skip)
    return fit_pool(pool, options, study_name=study_name, data=data)
