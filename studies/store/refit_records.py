"""A study's refit in the store: the one owner of its format, written and read.

The refit of study ``NAME`` is a second Optuna study, ``NAME:refit``:

* study user attr ``msatune:refit`` (the spec): what the refit is (its scheme: ``folds`` of
  train+valid or ``seeds``, the study's split trained at other seeds; folds, repeats, seed, binning,
  the data fingerprint, a digest of the fold assignment, the configurations refit so far with
  their validation MAE and preset, the pool sizes, bins and fold sizes), and
  ``msatune:refit_runs``: one record per run;
* one Optuna trial per finished fold, written by the driver the moment the fold ends: params
  ``trial`` (the source trial), ``repeat``, ``fold``; value = the held-out fold's MAE; user attrs
  ``checkpoint`` (the fold model, its held-out predictions indexed by position in train+valid),
  ``best_epoch``, ``epochs``, ``seconds``, ``n_train``, ``n_held_out``, ``seed``, ``run``,
  ``traces`` (0: the fold reused the train step a previous fold traced, models.step_cache). A fold
  that failed is a FAIL trial with ``fail_reason``.

:mod:`msatune.studies.refit.run` writes it, :mod:`msatune.studies.refit.table` reads it into the
``show``/report table and the bagged configurations.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from msatune.ensemble.bagging import FoldModel
from msatune.json_values import jsonable
from msatune.search.reconcile import FAIL_REASON_ATTR
from msatune.studies.store.studies import ATTR_PREFIX, study_attrs, study_names

REFIT_SUFFIX = ":refit"
SPEC_KEY = "refit"
RUNS_KEY = "refit_runs"
FOLD_PARAMS = {"trial": IntDistribution(0, 2**31 - 1), "repeat": IntDistribution(0, 10_000),
               "fold": IntDistribution(0, 10_000)}
#: What must match between a refit and a rerun of it (else the folds would differ).
SCHEME_KEYS = ("scheme", "folds", "repeats", "seed", "binning", "data_fingerprint", "assignment", "fold_stopping")

#: How a refit's folds stop (``search.fold_run.fold_training_config``): a refit recorded under another
#: rule (earlier msatune: early stopping on the held-out fold, no such key) is replaced, not continued.
FOLD_STOPPING = "the trial's epochs"
#: How the seeds scheme's repeats stop: the trial's own recipe, early stopping on valid included.
SEED_STOPPING = "the trial's recipe"


def spec_scheme(spec: dict[str, Any]) -> str:
    """The refit's scheme (``folds`` or ``seeds``); refits recorded before schemes were folds."""
    return str(spec.get("scheme", "folds"))


def same_scheme(spec: dict[str, Any], scheme: dict[str, Any]) -> list[str]:
    """The :data:`SCHEME_KEYS` in which the recorded ``spec`` and a rerun's ``scheme`` differ."""
    recorded = {**spec, "scheme": spec_scheme(spec)}
    return [k for k in SCHEME_KEYS if recorded.get(k) != scheme[k]]


def covered_rows(spec: dict[str, Any]) -> np.ndarray | None:
    """The pool rows (train+valid positions) a refit's repeats hold out and predict: the valid
    rows for the seeds scheme, ``None`` (every row) for folds."""
    if spec_scheme(spec) != "seeds":
        return None
    pool = spec.get("pool") or {}
    return np.arange(int(pool["train"]), int(pool["total"]), dtype=np.int64)


def refit_study_name(name: str) -> str:
    return name + REFIT_SUFFIX


# ------------------------------------------------------------------------------------------------
# written by ``msatune refit`` (msatune.studies.refit.run), the moment each thing happens


def existing_spec(storage: optuna.storages.BaseStorage, name: str) -> dict[str, Any] | None:
    """What the refit of study ``name`` is (its spec), ``None`` when it has none."""
    rname = refit_study_name(name)
    if rname not in study_names(storage):
        return None
    return study_attrs(optuna.load_study(study_name=rname, storage=storage)).get(SPEC_KEY) or {}


def open_refit_study(storage: optuna.storages.BaseStorage, name: str, scheme: dict[str, Any],
                      directory: Path) -> tuple[optuna.Study, dict[str, Any]]:
    """The refit study: continued when its scheme is ``scheme``, else (``--replace``) deleted with
    its files and created anew."""
    rname = refit_study_name(name)
    spec = existing_spec(storage, name)
    if spec is not None and not same_scheme(spec, scheme):
        return optuna.load_study(study_name=rname, storage=storage), spec
    if spec is not None:
        optuna.delete_study(study_name=rname, storage=storage)
        shutil.rmtree(directory, ignore_errors=True)
    study = optuna.create_study(study_name=rname, storage=storage, direction="minimize")
    spec = {**scheme, "source": name, "trials": [], "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    study.set_user_attr(ATTR_PREFIX + SPEC_KEY, spec)
    study.set_user_attr(ATTR_PREFIX + RUNS_KEY, [])
    return study, spec


def write_spec(study: optuna.Study, spec: dict[str, Any]) -> None:
    """Record what the refit is (its spec: scheme, configurations, pool, bins, fold sizes)."""
    study.set_user_attr(ATTR_PREFIX + SPEC_KEY, jsonable(spec))


def refit_runs(study: optuna.Study) -> list[dict[str, Any]]:
    """The refit's run records, oldest first."""
    return list(study_attrs(study).get(RUNS_KEY, []))


def record_run(study: optuna.Study, record: dict[str, Any]) -> None:
    """Append one run's record to the refit's runs."""
    study.set_user_attr(ATTR_PREFIX + RUNS_KEY, [*refit_runs(study), record])


def record_fold(study: optuna.Study, outcome: Any, run_index: int) -> None:
    """One ended fold (a :class:`msatune.search.fold_run.FoldOutcome`) as a trial of the refit study."""
    task = outcome.task
    params = {"trial": task.trial, "repeat": task.repeat, "fold": task.fold}
    attrs: dict[str, Any] = {"seed": int(task.config.get("seed", 0)), "run": run_index}
    if outcome.state == "COMPLETE":
        attrs.update(checkpoint=str(outcome.checkpoint), best_epoch=outcome.best_epoch,
                     epochs=outcome.epochs, seconds=round(float(outcome.seconds or 0.0), 2),
                     n_train=outcome.n_train, n_held_out=outcome.n_held_out)
        if getattr(outcome, "traces", None) is not None:
            attrs["traces"] = int(outcome.traces)
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=float(outcome.held_out_mae),
                                     params=params, distributions=FOLD_PARAMS, user_attrs=attrs))
    else:
        attrs[FAIL_REASON_ATTR] = str(outcome.reason or "failed")[:2000]
        study.add_trial(create_trial(state=TrialState.FAIL, params=params, distributions=FOLD_PARAMS,
                                     user_attrs=attrs))


# ------------------------------------------------------------------------------------------------
# read back (show, the report, ensemble --from refit, and a rerun of the refit)


def fold_records(refit_study: optuna.Study) -> dict[tuple[int, int, int], optuna.trial.FrozenTrial]:
    """(trial, repeat, fold) -> the latest COMPLETE fold record whose checkpoint still exists."""
    out: dict[tuple[int, int, int], optuna.trial.FrozenTrial] = {}
    for t in refit_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        ckpt = t.user_attrs.get("checkpoint")
        if not ckpt or not Path(ckpt).is_dir():
            continue
        out[(int(t.params["trial"]), int(t.params["repeat"]), int(t.params["fold"]))] = t
    return out


def fold_key(t: optuna.trial.FrozenTrial) -> tuple[int, int, int] | None:
    try:
        return int(t.params["trial"]), int(t.params["repeat"]), int(t.params["fold"])
    except (KeyError, TypeError, ValueError):
        return None


def fold_models(records: dict, trial: int, folds: int, repeats: int) -> list[FoldModel]:
    return [FoldModel(r, f, Path(records[(trial, r, f)].user_attrs["checkpoint"]), records[(trial, r, f)].value)
            for r in range(repeats) for f in range(folds) if (trial, r, f) in records]


def load_refit(storage: optuna.storages.BaseStorage, name: str) -> tuple[optuna.Study, dict] | None:
    rname = refit_study_name(name)
    if rname not in study_names(storage):
        return None
    rstudy = optuna.load_study(study_name=rname, storage=storage)
    spec = study_attrs(rstudy).get(SPEC_KEY)
    return (rstudy, spec) if isinstance(spec, dict) and spec.get("folds") else None


def failed_folds(refit_study: optuna.Study) -> int:
    """Folds whose latest record is a failure (a failed fold retrained since is no failure)."""
    trained = fold_records(refit_study)
    return len({fold_key(t) for t in refit_study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                if fold_key(t) is not None} - set(trained))
