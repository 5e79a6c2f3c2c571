"""A study's refit: its best configurations retrained at other seeds or on k folds of train+valid,
recorded in the store.

:func:`run_refit` is ``msatune refit``: take the study's top-K COMPLETE trials by validation MAE
(or the COMPLETE trials named with ``--trial``) and train each again, by its scheme
(:data:`msatune.augment.folds.SCHEMES`; the test split is not loaded into the run at all):

* ``seeds`` (the default, :data:`msatune.studies.refit.DEFAULT_SCHEME`): ``repeats`` more trainings
  of the trial's own recipe on the study's train split, each at a seed of its own, early-stopped on
  and predicting valid (:func:`msatune.augment.folds.seed_assignment`: one "fold", valid's rows);
* ``folds``: stratified folds of train+valid, ``repeats`` times, each fold trained for its trial's
  epochs (:func:`msatune.search.fold_run.fold_training_config`).

Every (configuration, repeat, fold) is one Ray Tune trial (:mod:`msatune.search.fold_run`). The
refit lives in the store as a second Optuna study, ``<name>:refit``:

what the refit is, one record per run and one trial per finished fold, written by the driver the
moment each fold ends (the format: :mod:`msatune.studies.store.refit_records`).

Resume: a rerun of the same command (after Ctrl-C or ``kill -9``) ends the dead driver's Ray
processes, then trains only the tasks without a COMPLETE record whose checkpoint still exists:
a finished fold is never trained again; scheme, folds, repeats and seed left unset are the
recorded ones. Others than the recorded ones are refused unless ``replace`` (which discards the
old refit).

:mod:`msatune.studies.refit.table` reads a refit back (the ``show``/report table, the fold models
for ``ensemble --from refit``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import replace as with_fields
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from msatune.augment.folds import (
    BINNING,
    SCHEMES,
    assignment_digest,
    bin_counts,
    pooled,
    seed_assignment,
    stratified_folds,
)
from msatune.ensemble.bagging import FoldModel, assemble_oof
from msatune.errors import UserError
from msatune.json_values import jsonable
from msatune.search.ray_orphans import live_driver
from msatune.studies.refit import DEFAULT_FOLDS, DEFAULT_SCHEME, DEFAULT_SEED_REPEATS, DEFAULT_TOP_K
from msatune.studies.refit.choice import Chosen, choose_configs, choose_trials
from msatune.studies.refit.table import refit_table
from msatune.studies.store.refit_records import (
    FOLD_STOPPING,
    SEED_STOPPING,
    covered_rows,
    existing_spec,
    fold_models,
    fold_records,
    open_refit_study,
    record_fold,
    record_run,
    refit_runs,
    same_scheme,
    spec_scheme,
    write_spec,
)
from msatune.studies.store.studies import load_study, state_counts, study_attrs
from msatune.studies.store.workspace import Workspace, next_run_index

log = logging.getLogger(__name__)


#: More repeats than this is no refit but a typo (each one trains top-k x folds models).
MAX_REPEATS = 100


@dataclass(frozen=True)
class RefitOptions:
    top_k: int = DEFAULT_TOP_K
    #: ``folds`` or ``seeds`` (:data:`msatune.augment.folds.SCHEMES`); ``None``: ``folds`` when
    #: ``folds`` is given, else the study's earlier refit's, else :data:`DEFAULT_SCHEME`.
    scheme: str | None = None
    #: ``None``: as the study's earlier refit of the same scheme (so a rerun continues it), else
    #: :data:`DEFAULT_FOLDS`, 1 repeat, seed 0 for folds and 1 fold (valid),
    #: :data:`DEFAULT_SEED_REPEATS` repeats, seed 0 for seeds (:meth:`settled`).
    folds: int | None = None
    repeats: int | None = None
    seed: int | None = None
    replace: bool = False
    #: Refit the best ``min(top_k, COMPLETE trials)`` instead of refusing fewer than ``top_k``:
    #: ``launch --refit-top K``'s plan, made before the search knew how many trials ASHA would let
    #: finish (a default 24-trial study completes 3-6). ``msatune refit --top-k K`` stays exact.
    up_to: bool = False
    #: Refit exactly these trial numbers (e.g. the presets, or the ones a report names) instead of
    #: the ``top_k`` best; each must be COMPLETE with a readable checkpoint.
    trials: tuple[int, ...] | None = None

    def settled(self, spec: dict[str, Any] | None) -> RefitOptions:
        """Scheme, folds, repeats and seed left unset taken from ``spec`` (the study's earlier
        refit; not with ``replace``; folds, repeats and seed only from a refit of the same scheme),
        else the scheme's defaults (see the fields)."""
        old = spec if spec is not None and not self.replace else None
        scheme = self.scheme or ("folds" if self.folds is not None else
                                 spec_scheme(old) if old is not None else DEFAULT_SCHEME)
        same = old if old is not None and spec_scheme(old) == scheme else {}
        seeds = scheme == "seeds"
        return with_fields(
            self, scheme=scheme,
            folds=self.folds if self.folds is not None else 1 if seeds else int(same.get("folds", DEFAULT_FOLDS)),
            repeats=self.repeats if self.repeats is not None else int(same.get(
                "repeats", DEFAULT_SEED_REPEATS if seeds else 1)),
            seed=self.seed if self.seed is not None else int(same.get("seed", 0)),
        )

    def validate(self) -> RefitOptions:
        """UserError for a value no refit can take; unset ones are checked once :meth:`settled`."""
        if self.top_k < 1:
            raise UserError(f"--top-k must be at least 1 (got {self.top_k})")
        if self.trials is not None and (not self.trials or min(self.trials) < 0):
            raise UserError(f"--trial takes a trial number >= 0, e.g. --trial 0 --trial 3 (got "
                            f"{', '.join(map(str, self.trials)) or 'none'})")
        if self.scheme is not None and self.scheme not in SCHEMES:
            raise UserError(f"--scheme must be one of {', '.join(SCHEMES)} (got {self.scheme!r})")
        if self.scheme == "seeds" and self.folds not in (None, 1):
            raise UserError(f"--folds {self.folds} applies to --scheme folds; the seeds scheme trains on the "
                            "study's train split and scores on its valid split: drop --folds, or use --scheme folds")
        if self.scheme == "seeds" and self.seed not in (None, 0):
            raise UserError(f"--seed {self.seed} sets the fold assignment of --scheme folds; the seeds scheme has "
                            "none (each repeat trains at its own seed): drop --seed, or use --scheme folds")
        if self.scheme != "seeds" and self.folds is not None and self.folds < 2:
            raise UserError(f"--folds must be at least 2 (got {self.folds}): a refit holds out one fold "
                            "at a time and trains on the others")
        if self.repeats is not None and not 1 <= self.repeats <= MAX_REPEATS:
            raise UserError(f"--repeats must be between 1 and {MAX_REPEATS} (got {self.repeats}): each repeat "
                            "trains --top-k x --folds more models")
        if self.seed is not None and self.seed < 0:
            raise UserError(f"--seed must be >= 0 (got {self.seed})")
        return self


def _check_scheme(spec: dict[str, Any] | None, name: str, scheme: dict[str, Any], replace: bool) -> None:
    """UserError when study ``name`` has a refit of another scheme and ``replace`` is not given."""
    if spec is None or replace:
        return
    differs = same_scheme(spec, scheme)
    if not differs:
        return
    if "scheme" in differs:
        why = (f"it was refit with --scheme {spec_scheme(spec)}" + (f" --folds {spec.get('folds')}" if
                                                                     spec_scheme(spec) == "folds" else "")
               + f" --repeats {spec.get('repeats')}")
        raise UserError(f"study {name!r} already has a refit and {why}; rerun with the same scheme to continue "
                        f"it, or pass --replace to discard it for --scheme {scheme['scheme']}")
    if "data_fingerprint" in differs:
        why = "the study's data changed since it was refit"
    elif differs == ["fold_stopping"]:
        why = ("an earlier msatune refit it, whose folds stopped early on their held-out fold (folds now "
               "train as many epochs as their trial did)")
    else:
        why = f"it was refit with --folds {spec.get('folds')} --repeats {spec.get('repeats')} --seed {spec.get('seed')}"
    raise UserError(f"study {name!r} already has a refit and {why}; rerun with the same folds, repeats and "
                    "seed to continue it, or pass --replace to discard it")


def run_refit(
    ws: Workspace,
    storage: optuna.storages.BaseStorage,
    name: str,
    options: RefitOptions,
    *,
    where: dict[str, Any] | None = None,
    progress: Callable[[Any], None] | None = None,
    trainable: Callable[..., None] | None = None,
    deadline: float | None = None,
    after_search: bool = False,
) -> dict[str, Any]:
    """Refit study ``name``'s top-K configurations on stratified folds; returns the refit summary.

    Every check (study, K, folds, data, a live refit driver, the recorded scheme) runs before
    anything is written. ``where`` overrides where it runs (cpus_per_trial, gpus_per_trial,
    concurrency, address, verbose); ``trainable`` replaces the fold trainable (tests).
    ``deadline`` (a ``time.monotonic()`` value, ``--time-budget``): no fold starts after it but
    the run's first (not even that one ``after_search``: the refit ``launch --refit-top`` runs in
    the same command as the search); the run's record then says ``out_of_time`` and
    ``folds_left``, and the same command continues the refit.
    """
    from msatune.search.ray_session import RaySession, parse_address
    from msatune.search.search_settings import SearchSettings
    from msatune.studies.store.lease import StudyLease, check_free
    from msatune.studies.study_data import study_data

    options.validate()
    study = load_study(storage, name)
    spec = existing_spec(storage, name)
    options = options.settled(spec).validate()
    attrs = study_attrs(study)
    if not {"data_path", "data_fingerprint", "space"} <= set(attrs):
        raise UserError(f"study {name!r} was not created by msatune launch; it cannot be refit")
    if options.trials is not None:
        chosen, warnings = choose_trials(study, options.trials), []
    else:
        chosen, warnings = choose_configs(study, options.top_k, up_to=options.up_to)
    # from here on the driver holds the pool, and train and valid as rows of it: the loaded arrays go
    pool, data = pooled(study_data(attrs, name,
                                   needed_for="a refit must train on the data the study was searched on"))
    seeds = options.scheme == "seeds"
    assignment = (seed_assignment(data.train.n, data.valid.n, options.repeats) if seeds else
                  stratified_folds(pool.labels, options.folds, repeats=options.repeats, seed=options.seed))
    settings = SearchSettings.from_study(attrs, **(where or {})).validate()
    directory = ws.refit_dir(name)
    live = live_driver(directory)
    if live is not None:
        raise UserError(f"a refit of study {name!r} is running (driver pid {live}); wait for it to end")
    scheme = {"scheme": options.scheme, "folds": options.folds, "repeats": options.repeats, "seed": options.seed,
              "binning": BINNING, "data_fingerprint": data.fingerprint,
              "assignment": assignment_digest(assignment), "fold_stopping": SEED_STOPPING if seeds else FOLD_STOPPING}
    _check_scheme(spec, name, scheme, options.replace)
    if settings.address is not None:
        parse_address(settings.address)
    check_free(study, "refit")  # one driver per study: a launch, resume, refit or delete

    # Ray reached and a fold fits on a node (RaySession); then, holding the study's lease, the
    # store and the workspace change; a killed driver's Ray ends by its watchdog (own()).
    with RaySession(address=settings.address, verbose=settings.verbose, work_dir=directory,
                    cpus_per_trial=settings.cpus_per_trial, gpus_per_trial=settings.gpus_per_trial) as ray, \
            StudyLease(study, "refit"):
        return _run_refit_held(ws, storage, study, name, options, chosen, warnings, data, pool, assignment,
                               settings, directory, scheme, ray, progress, trainable, deadline, after_search)


def _run_refit_held(ws: Workspace, storage: optuna.storages.BaseStorage, study: optuna.Study, name: str,
                    options: RefitOptions, chosen: list[Chosen], warnings: list[str], data: Any, pool: Any,
                    assignment: np.ndarray, settings: Any, directory: Path, scheme: dict[str, Any],
                    ray: Any, progress: Callable[[Any], None] | None,
                    trainable: Callable[..., None] | None, deadline: float | None,
                    after_search: bool) -> dict[str, Any]:
    """:func:`run_refit` after its checks, inside its Ray session and the study's lease."""
    from msatune.search.fold_run import (
        fold_training_config,
        run_folds,
        seed_training_config,
        task_configs,
    )
    from msatune.search.ray_orphans import end_orphans
    from msatune.search.trainable import sweep_checkpoint_work_dirs

    ended = end_orphans(directory)
    sweep_checkpoint_work_dirs(directory)
    rstudy, spec = open_refit_study(storage, name, scheme, directory)
    known = {int(e["trial"]) for e in spec.get("trials", [])}
    spec["trials"] = [*spec.get("trials", []), *({"trial": c.trial, "val_mae": c.val_mae, "preset": c.preset}
                                                for c in chosen if c.trial not in known)]
    spec["pool"] = {"train": data.train.n, "valid": data.valid.n, "total": pool.n}
    spec["bins"] = {str(k): v for k, v in bin_counts(pool.labels).items()}
    spec["fold_sizes"] = [np.bincount(row[row >= 0], minlength=options.folds).tolist() for row in assignment]
    write_spec(rstudy, spec)

    done = fold_records(rstudy)
    seeds = options.scheme == "seeds"
    tasks = task_configs({c.trial: seed_training_config(c.config) if seeds else fold_training_config(c.config, c.epochs)
                          for c in chosen}, options.folds, options.repeats)
    todo = [t for t in tasks if t.key not in done]
    run_index = next_run_index(directory, len(refit_runs(rstudy)))
    record: dict[str, Any] = {"run": run_index, "folds_total": len(tasks), "already_done": len(tasks) - len(todo),
                              "folds_run": 0, "complete": 0, "failed": 0, "wall_seconds": 0.0,
                              "concurrency": 0, "interrupted": False, "trials": [c.trial for c in chosen]}
    if todo:
        directory.mkdir(parents=True, exist_ok=True)
        ray.own()
        summary = run_folds(todo, pool, assignment, settings, fingerprint=data.fingerprint,
                            ray_dir=directory, run_name=f"run{run_index}",
                            on_fold=lambda o: record_fold(rstudy, o, run_index),
                            progress=progress, trainable=trainable, deadline=deadline,
                            first_always=not after_search)
        record.update(folds_run=summary.folds_run, complete=summary.complete, failed=summary.failed,
                      wall_seconds=round(summary.wall_seconds, 1), concurrency=summary.concurrency,
                      interrupted=summary.interrupted)
        if summary.out_of_time and not summary.interrupted:
            record.update(out_of_time=True, folds_left=summary.folds_left)
        record_run(rstudy, record)
    table = refit_table(storage, name, trials=[c.trial for c in chosen])
    records = fold_records(rstudy)
    finished = {c.trial: fold_models(records, c.trial, options.folds, options.repeats) for c in chosen}
    finished = {t: m for t, m in finished.items() if len(m) == options.folds * options.repeats}
    try:
        oof_files = write_oof_files(directory / "oof", finished, options.repeats, assignment, data,
                                    covered_rows(spec))
    except UserError as exc:
        oof_files = {}
        warnings.append(f"out-of-fold files not written: {exc}")
    not_considered = {k: v for k, v in state_counts(study.get_trials(deepcopy=False)).items()
                      if v and k != "COMPLETE"}
    return jsonable({
        "study": name, "refit_study": rstudy.study_name, "top_k": len(chosen),
        "top_k_asked": None if options.trials is not None else options.top_k,
        "trials_asked": None if options.trials is None else list(options.trials),
        "scheme": options.scheme, "folds": options.folds, "repeats": options.repeats, "seed": options.seed,
        "binning": BINNING,
        "pool": spec["pool"], "bins": spec["bins"], "fold_sizes": spec["fold_sizes"],
        "chosen": [{"trial": c.trial, "state": "COMPLETE", "val_mae": c.val_mae, "preset": c.preset}
                   for c in chosen],
        "not_considered": not_considered,
        "run": {**record, "orphans_ended": ended},
        "configs": (table or {}).get("configs", []),
        "oof_files": oof_files, "directory": str(directory), "warnings": warnings,
    })


def write_oof_files(out: Path, models: dict[int, list[FoldModel]], repeats: int, assignment: np.ndarray,
                    data: Any, covered: np.ndarray | None = None) -> dict[str, str]:
    """One ``trial_<n>.npz`` per configuration in ``models`` (all folds trained): ``oof``
    (repeats, n), ``oof_mean``, ``label``, ``fold`` (repeats, n: the fold that held each sample
    out; -1: never held out), ``pool_split`` and ``pool_position`` (where each train+valid sample
    comes from), and ``id`` when the data has ids. ``covered`` (the seeds scheme: valid's rows):
    only those rows have predictions, the others are NaN."""
    split = np.array(["train"] * data.train.n + ["valid"] * data.valid.n)
    position = np.concatenate([np.arange(data.train.n), np.arange(data.valid.n)])
    ids = [s.ids for s in (data.train, data.valid)]
    files = {}
    for trial, trained in models.items():
        oof, labels = assemble_oof(trained, split.size, repeats, covered)
        arrays = {"oof": oof, "oof_mean": oof.mean(axis=0), "label": labels, "fold": assignment,
                  "pool_split": split, "pool_position": position}
        if all(i is not None for i in ids):
            arrays["id"] = np.concatenate(ids).astype(str)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"trial_{trial}.npz"
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        files[str(trial)] = str(path)
    return files


