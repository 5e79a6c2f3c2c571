"""Launch and resume studies: the store, the dataset and the search runner put together.

``launch`` creates the study (recording what it is), enqueues the ``baseline`` and ``improved``
presets as its first two trials and runs the budget. ``resume`` reconciles the store (RUNNING →
FAIL + re-queued), checks that the data did not change, and starts a *fresh* Tuner on the same
study for the remaining budget, never ``Tuner.restore``. Both return plain data (a run record);
the CLI renders it.

Order of work, so that a mistake costs one line and changes nothing: first every check that
needs neither Ray nor a write (study name, settings, the cluster address's form, data, search
space, the budget, the study's lease), cheapest first; then Ray is started (or joined) and the
requested resources are checked against it; only then is anything written (workspace, store,
study, pid file). One driver at a time runs a study (:mod:`msatune.studies.store.lease`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna

from msatune.errors import UserError
from msatune.search.ray_session import RaySession, parse_address
from msatune.search.search_settings import SearchSettings
from msatune.studies.store.connect import check_can_create, open_existing, open_storage
from msatune.studies.store.lease import StudyLease, check_free
from msatune.studies.store.studies import (
    check_name_free,
    check_study_name,
    create_study,
    load_study,
    set_metric_name,
    set_study_attr,
    study_attrs,
)
from msatune.studies.store.workspace import Workspace, default_dataset, next_run_index

log = logging.getLogger(__name__)

Storage = optuna.storages.BaseStorage

#: Study attribute of ``launch --refit-top``: the refit (top_k, scheme, folds or repeats) that follows
#: the search (plans recorded before schemes have top_k and folds: the fold scheme).
REFIT_AFTER_ATTR = "refit_after_search"


def refit_after_search(storage: Storage | str, name: str) -> dict[str, int | str] | None:
    """The refit ``launch --refit-top`` recorded on study ``name`` (None when there is none)."""
    store = open_storage(storage, create=False) if isinstance(storage, str) else storage
    plan = study_attrs(load_study(store, name)).get(REFIT_AFTER_ATTR)
    if not isinstance(plan, dict):
        return None
    return {str(k): (str(v) if k == "scheme" else int(v)) for k, v in plan.items() if v is not None}


def enqueue_presets(study: optuna.Study, family: str = "improved") -> None:
    """The users' recipes of the searched ``family`` (``launch --family``) as the study's first
    trials (what every report compares with)."""
    from msatune.search.space import STUDY_KEYS
    from msatune.search.trial_config import PRESETS, SEARCH_FAMILIES

    for name in SEARCH_FAMILIES[family][1]:
        params = {k: v for k, v in PRESETS[name].items() if k not in STUDY_KEYS}
        study.enqueue_trial(params, user_attrs={"preset": name}, skip_if_exists=True)


def _phase(progress: Any, text: str) -> None:
    """Tell a progress sink what the run is doing (sinks without ``phase`` are skipped)."""
    say = getattr(progress, "phase", None)
    if callable(say):
        say(text)


def launch(
    ws: Workspace,
    storage: Storage | str,
    name: str,
    settings: SearchSettings,
    *,
    data_dir: Path | None = None,
    space_file: Path | None = None,
    clip_labels: bool = False,
    progress: Any = None,
    trainable: Any = None,
    sampler: optuna.samplers.BaseSampler | None = None,
    presets: bool = True,
    family: str = "improved",
    refit_after: dict[str, int | str] | None = None,
) -> dict[str, Any]:
    """Create study ``name`` and run its budget; returns the run record (see :func:`_run`).

    ``storage`` is an opened store or its URL (opened, and for SQLite created, only once every
    check passed). ``clip_labels`` clips labels outside [-3, 3] (recorded, applied on resume).
    ``trainable`` replaces the Ray Tune function trainable (tests inject faults with it),
    ``sampler`` the TPE sampler and ``presets=False`` leaves out the enqueued presets
    (benchmarks decide exactly what a study trains). ``family`` (``improved``, ``seqlevel`` or
    ``all``) chooses the model families searched and the presets the study starts with.
    ``refit_after`` (``{"top_k": K, "scheme": S, ...}``, ``launch --refit-top``) is recorded on the study
    as :data:`REFIT_AFTER_ATTR`: the refit that follows the search, here and after a resume.
    """
    from msatune.augment.dataset import load_dataset
    from msatune.search.tune_run import in_object_store

    check_study_name(name)
    settings.validate()
    if settings.address is not None:
        parse_address(settings.address)
    existing = open_existing(storage) if isinstance(storage, str) else storage
    check_name_free(existing, name)
    if existing is None and storage != ws.storage_url:
        check_can_create(storage)
    data = load_dataset(Path(data_dir), clip_labels=clip_labels) if data_dir is not None else None
    space = _space(space_file, settings, family)  # imports TensorFlow (the config's legal values)
    _phase(progress, "starting Ray")
    with _ray(ws, name, settings) as ray:
        if data is None:
            data = load_dataset(default_dataset(ws), clip_labels=clip_labels)
        store = existing if existing is not None else _create_store(ws, storage)
        study = create_search_study(store, name, settings, data, space, presets=presets,
                                    clip_labels=clip_labels, family=family)
        if refit_after:
            set_study_attr(study, REFIT_AFTER_ATTR, {k: (str(v) if k == "scheme" else int(v))
                                                     for k, v in refit_after.items() if v is not None})
        with StudyLease(study, "launch") as lease:
            ray.own()
            data = in_object_store(data)  # the trials read the store's copy; the driver's arrays go
            return _run(ws, study, space, data, settings, settings.trials, progress, trainable, sampler,
                        lease=lease)


def _space(space_file: Path | None, settings: SearchSettings, family: str = "improved") -> Any:
    from msatune.search.space import check_search_family, default_space
    from msatune.search.space_file import load_space

    check_search_family(family)
    if space_file:
        return load_space(space_file, settings.max_epochs, settings.seed, settings.first_rung, family)
    return default_space(settings.max_epochs, settings.seed, settings.first_rung, family)


def _ray(ws: Workspace, name: str, settings: SearchSettings) -> RaySession:
    return RaySession(address=settings.address, verbose=settings.verbose, work_dir=ws.ray_dir(name),
                      cpus_per_trial=settings.cpus_per_trial, gpus_per_trial=settings.gpus_per_trial)


def _create_store(ws: Workspace, url: str) -> Storage:
    if url == ws.storage_url:
        ws.ensure()
    return open_storage(url)


def create_search_study(storage: Storage, name: str, settings: SearchSettings, data: Any, space: Any,
                        *, presets: bool = True, clip_labels: bool = False,
                        family: str = "improved") -> optuna.Study:
    """Create study ``name`` recording what it is (data, its reference MAEs, space, settings), with
    the presets enqueued unless ``presets=False``; nothing runs yet (:func:`launch` = this + a run)."""
    study = create_study(
        storage,
        name,
        {
            "data_path": str(Path(data.path).resolve()),
            "data_fingerprint": data.fingerprint,
            "dims": data.dims,
            "seq_len": data.seq_len,
            "clip_labels": bool(clip_labels),
            "reference": {split: data.splits[split].reference_maes() for split in ("valid", "test")},
            "space": space.to_json(),
            "family": family,
            **settings.study_record(),
            "runs": [],
        },
    )
    if presets:
        enqueue_presets(study, family)
    return study


def resume(
    ws: Workspace,
    storage: Storage | str,
    name: str,
    *,
    more_trials: int | None = None,
    force: bool = False,
    where: dict[str, Any] | None = None,
    progress: Any = None,
    time_budget_s: float | None = None,
    budget_from: float | None = None,
) -> dict[str, Any]:
    """Reconcile study ``name`` and run what is left of its budget (or ``more_trials`` more),
    starting no trial after ``time_budget_s`` seconds (``resume --time-budget``) from
    ``budget_from`` (a ``time.monotonic()``: the command's start; None: the search's).

    ``where`` may change where it runs (cpus_per_trial, gpus_per_trial, concurrency, address,
    verbose); what the study *is* (space, epochs, ASHA, seed) stays as recorded. A study whose
    budget is used returns a record with ``trials_run == 0`` and its ``budget``, without
    starting Ray or writing anything.
    """
    from msatune.search.ray_orphans import end_orphans
    from msatune.search.reconcile import reconcile, used_budget
    from msatune.search.trainable import sweep_checkpoint_work_dirs
    from msatune.search.tune_run import in_object_store
    from msatune.studies.study_data import study_data

    store = open_storage(storage, create=False) if isinstance(storage, str) else storage
    study = load_study(store, name)
    attrs = study_attrs(study)
    if "space" not in attrs:
        raise UserError(f"study {name!r} was not created by msatune launch; it cannot be resumed here")
    if more_trials is not None and more_trials <= 0:
        raise UserError(f"--trials must be > 0 (got {more_trials})")
    settings = SearchSettings.from_study(attrs, **(where or {}), time_budget_s=time_budget_s,
                                         budget_from=budget_from).validate()
    if settings.address is not None:
        parse_address(settings.address)
    check_free(study, "resume")
    budget = settings.trials if more_trials is None else used_budget(study) + more_trials
    if more_trials is None and budget - used_budget(study) <= 0:
        return {"study": name, "trials_run": 0, "remaining": 0, "budget": budget,
                "requeued": [], "orphans_ended": []}
    from msatune.search.space import SearchSpace

    space = SearchSpace.from_json(attrs["space"], max_epochs=settings.max_epochs, seed=settings.seed)
    space.validate(f"the search space recorded on study {name!r}")
    data = study_data(attrs, name, force=force,
                      needed_for="results would not be comparable; pass --force to continue anyway")
    _phase(progress, "starting Ray")
    with _ray(ws, name, settings) as ray, StudyLease(study, "resume") as lease:
        ended = end_orphans(ws.ray_dir(name))
        sweep_checkpoint_work_dirs(ws.ray_dir(name))
        requeued = reconcile(study)
        if more_trials is not None:
            set_study_attr(study, "budget", budget)
        if not study.metric_names:
            set_metric_name(study)  # studies made before metric names were set
        remaining = budget - used_budget(study)
        ray.own()
        data = in_object_store(data)  # the trials read the store's copy; the driver's arrays go
        summary = _run(ws, study, space, data, settings, remaining, progress, lease=lease)
    summary.update(requeued_before=requeued, orphans_ended=ended)
    return summary


def _run(ws: Workspace, study: optuna.Study, space: Any, data: Any, settings: SearchSettings,
         trials: int, progress: Any, trainable: Any = None,
         sampler: optuna.samplers.BaseSampler | None = None, lease: StudyLease | None = None) -> dict[str, Any]:
    """One run of ``trials`` trials, recorded on the study (``runs``); returns that record.

    Every write of the run is fenced by ``lease``: a driver whose study was taken over while it
    stalled writes nothing more and raises :class:`~msatune.studies.store.lease.LeaseLost`.

    ``interrupted`` is true when the run ended before its trials finished (Ctrl-C: Ray Tune ends
    the run itself and returns, so fewer trials than asked have finished). A run its time budget
    ended (``settings.time_budget_s``) is not interrupted: its record says ``out_of_time`` and
    ``trials_left`` (the trials of the run it did not start; ``resume`` runs them).
    """
    from msatune.search.study_run import run_search

    attrs = study_attrs(study)
    runs = list(attrs.get("runs", []))
    run_index = next_run_index(ws.ray_dir(study.study_name), len(runs))
    run_settings = settings.for_run(trials, run_index)
    summary = run_search(
        study, space, data, run_settings, ray_dir=ws.ray_dir(study.study_name),
        run_name=f"run{run_index}", progress=progress, trainable=trainable, sampler=sampler,
        fence=lease.held if lease is not None else None,
    )
    if summary.fenced and lease is not None:
        raise lease.lost_error()
    record = {
        "run": run_index,
        "trials": summary.trials_run,
        "complete": summary.complete,
        "pruned": summary.pruned,
        "failed": summary.failed,
        "wall_seconds": round(summary.wall_seconds, 1),
        "concurrency": summary.concurrency,
        "interrupted": bool(summary.interrupted or summary.requeued
                            or (summary.trials_run < run_settings.trials and not summary.out_of_time)),
        "seed": run_settings.seed,
    }
    if summary.out_of_time and not record["interrupted"] and summary.trials_run < run_settings.trials:
        # The run's --time-budget ended it: a normal end, with the rest of the budget left to resume.
        record.update(time_budget_s=float(run_settings.time_budget_s or 0),
                      out_of_time=True, trials_left=run_settings.trials - summary.trials_run)
    set_study_attr(study, "runs", [*runs, record])
    return {"study": study.study_name, **record, "requeued": summary.requeued}
