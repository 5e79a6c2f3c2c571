"""Launch and resume studies: the store, the dataset and the search runner put together.

``launch`` creates the study (recording what it is), enqueues the ``baseline`` and ``improved``
presets as its first two trials and runs the budget. ``resume`` ends what a dead driver left
running, reconciles the store (RUNNING → FAIL + re-queued), checks that the data did not change,
and starts a *fresh* Tuner on the same study for the remaining budget, never ``Tuner.restore``.
Both return plain data (a run record); the CLI renders it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna

from msatune.errors import UserError
from msatune.search.config import PRESET_NAMES, PRESETS
from msatune.search.settings import SearchSettings
from msatune.search.space import STUDY_KEYS
from msatune.studies.store import create_study, load_study, set_study_attr, study_attrs
from msatune.studies.workspace import Workspace, default_dataset

log = logging.getLogger(__name__)


def enqueue_presets(study: optuna.Study) -> None:
    """The users' recipes as the study's first trials (what every report compares with)."""
    for name in PRESET_NAMES:
        params = {k: v for k, v in PRESETS[name].items() if k not in STUDY_KEYS}
        study.enqueue_trial(params, user_attrs={"preset": name}, skip_if_exists=True)


def launch(
    ws: Workspace,
    storage: optuna.storages.BaseStorage,
    name: str,
    settings: SearchSettings,
    *,
    data_dir: Path | None = None,
    space_file: Path | None = None,
    progress: Any = None,
    trainable: Any = None,
    sampler: optuna.samplers.BaseSampler | None = None,
    presets: bool = True,
) -> dict[str, Any]:
    """Create study ``name`` and run its budget; returns the run record (see :func:`_run`).

    ``trainable`` replaces the Ray Tune function trainable (tests inject faults with it),
    ``sampler`` the TPE sampler and ``presets=False`` leaves out the enqueued presets
    (benchmarks decide exactly what a study trains).
    """
    from msatune.augment.dataset import load_dataset
    from msatune.search.space import default_space, load_space

    settings.validate()
    if space_file:
        space = load_space(space_file, settings.max_epochs, settings.seed, settings.first_rung)
    else:
        space = default_space(settings.max_epochs, settings.seed, settings.first_rung)
    data = load_dataset(Path(data_dir) if data_dir is not None else default_dataset(ws))
    study = create_search_study(storage, name, settings, data, space, presets=presets)
    return _run(ws, study, space, data, settings, settings.trials, progress, trainable, sampler)


def create_search_study(storage: optuna.storages.BaseStorage, name: str, settings: SearchSettings,
                        data: Any, space: Any, *, presets: bool = True) -> optuna.Study:
    """Create study ``name`` recording what it is (data, space, settings), with the presets
    enqueued unless ``presets=False``; nothing runs yet (:func:`launch` = this + a run)."""
    study = create_study(
        storage,
        name,
        {
            "data_path": str(Path(data.path).resolve()),
            "data_fingerprint": data.fingerprint,
            "dims": data.dims,
            "seq_len": data.seq_len,
            "space": space.to_json(),
            **settings.study_record(),
            "runs": [],
        },
    )
    if presets:
        enqueue_presets(study)
    return study


def resume(
    ws: Workspace,
    storage: optuna.storages.BaseStorage,
    name: str,
    *,
    more_trials: int | None = None,
    force: bool = False,
    where: dict[str, Any] | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Reconcile study ``name`` and run what is left of its budget (or ``more_trials`` more).

    ``where`` may change where it runs (cpus_per_trial, gpus_per_trial, concurrency, address,
    verbose); what the study *is* (space, epochs, ASHA, seed) stays as recorded. A study whose
    budget is used returns a record with ``trials_run == 0`` and its ``budget``.
    """
    from msatune.augment.dataset import load_dataset
    from msatune.search.ray_session import end_orphans
    from msatune.search.reconcile import reconcile, used_budget
    from msatune.search.space import SearchSpace

    study = load_study(storage, name)
    attrs = study_attrs(study)
    if "space" not in attrs:
        raise UserError(f"study {name!r} was not created by msatune launch; it cannot be resumed here")
    if more_trials is not None and more_trials <= 0:
        raise UserError(f"--trials must be > 0 (got {more_trials})")
    settings = SearchSettings.from_study(attrs, **(where or {})).validate()
    data = load_dataset(attrs["data_path"])
    if data.fingerprint != attrs["data_fingerprint"] and not force:
        raise UserError(
            f"the data of study {name!r} changed ({attrs['data_path']}: fingerprint "
            f"{data.fingerprint[:12]} != recorded {attrs['data_fingerprint'][:12]}); "
            "results would not be comparable; pass --force to continue anyway"
        )
    ended = end_orphans(ray_dir(ws, name))
    requeued = reconcile(study)
    budget = settings.trials
    if more_trials is not None:
        budget = used_budget(study) + more_trials
        set_study_attr(study, "budget", budget)
    remaining = budget - used_budget(study)
    if remaining <= 0:
        return {"study": name, "trials_run": 0, "remaining": 0, "budget": budget,
                "requeued": requeued, "orphans_ended": ended}
    space = SearchSpace.from_json(attrs["space"], max_epochs=settings.max_epochs, seed=settings.seed)
    summary = _run(ws, study, space, data, settings, remaining, progress)
    summary.update(requeued_before=requeued, orphans_ended=ended)
    return summary


def ray_dir(ws: Workspace, name: str) -> Path:
    return ws.study_dir(name) / "ray"


def _run(ws: Workspace, study: optuna.Study, space: Any, data: Any, settings: SearchSettings,
         trials: int, progress: Any, trainable: Any = None,
         sampler: optuna.samplers.BaseSampler | None = None) -> dict[str, Any]:
    """One run of ``trials`` trials, recorded on the study (``runs``); returns that record."""
    from msatune.search.runner import run_search

    attrs = study_attrs(study)
    runs = list(attrs.get("runs", []))
    # A killed driver never recorded its run: count its Ray directory too, so that every run
    # gets a fresh experiment directory.
    previous = [p for p in ray_dir(ws, study.study_name).glob("run*") if p.is_dir()]
    run_index = max(len(runs), len(previous))
    run_settings = settings.for_run(trials, run_index)
    summary = run_search(
        study, space, data, run_settings, ray_dir=ray_dir(ws, study.study_name),
        run_name=f"run{run_index}", progress=progress, trainable=trainable, sampler=sampler,
    )
    record = {
        "run": run_index,
        "trials": summary.trials_run,
        "complete": summary.complete,
        "pruned": summary.pruned,
        "failed": summary.failed,
        "wall_seconds": round(summary.wall_seconds, 1),
        "concurrency": summary.concurrency,
        "interrupted": summary.interrupted,
        "seed": run_settings.seed,
    }
    set_study_attr(study, "runs", [*runs, record])
    return {"study": study.study_name, **record, "requeued": summary.requeued}
