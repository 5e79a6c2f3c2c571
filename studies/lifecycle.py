"""Launch and resume studies: the store, the dataset and the search runner put together.

``launch`` creates the study (recording what it is), enqueues the ``baseline`` and ``improved``
presets as its first two trials and runs the budget. ``resume`` ends what a dead driver left
running, reconciles the store (RUNNING → FAIL + re-queued), checks that the data did not change,
and starts a *fresh* Tuner on the same study for the remaining budget, never ``Tuner.restore``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import optuna

from msatune.errors import UserError
from studies.store import create_study, load_study, set_study_attr, study_attrs
from studies.workspace import Workspace, default_dataset

log = logging.getLogger(__name__)

PRESETS_FIRST = ("baseline", "improved")
# Study-level keys: never part of an enqueued preset's params.
_STUDY_KEYS = ("epochs", "seed")


@dataclass
class SearchOptions:
    trials: int
    max_epochs: int = 30
    grace_period: int = 3
    reduction_factor: int = 3
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    concurrency: int | None = None
    seed: int = 0
    address: str | None = None
    max_failures: int = 1
    verbose: bool = False

    def validate(self) -> None:
        if self.trials <= 0:
            raise UserError(f"--trials must be > 0 (got {self.trials})")
        if self.max_epochs <= 0:
            raise UserError(f"--max-epochs must be > 0 (got {self.max_epochs})")
        if not 1 <= self.grace_period <= self.max_epochs:
            raise UserError(f"--grace-period must be between 1 and --max-epochs ({self.max_epochs}), got {self.grace_period}")
        if self.reduction_factor < 2:
            raise UserError(f"--reduction-factor must be >= 2 (got {self.reduction_factor})")
        if self.cpus_per_trial <= 0:
            raise UserError(f"--cpus-per-trial must be > 0 (got {self.cpus_per_trial})")
        if self.gpus_per_trial < 0:
            raise UserError(f"--gpus-per-trial must be >= 0 (got {self.gpus_per_trial})")
        if self.gpus_per_trial > 1 and not float(self.gpus_per_trial).is_integer():
            raise UserError(f"--gpus-per-trial above 1 must be a whole number (got {self.gpus_per_trial})")
        if self.concurrency is not None and self.concurrency <= 0:
            raise UserError(f"--concurrency must be > 0 (got {self.concurrency})")


def _run_settings(opts: SearchOptions, num_trials: int, seed: int) -> Any:
    """The runner's settings: this run's trial count and sampler seed, the rest as in ``opts``."""
    from search.runner import RunSettings

    shared = {f.name for f in fields(RunSettings)} & {f.name for f in fields(SearchOptions)}
    return RunSettings(num_trials=num_trials, **{k: getattr(opts, k) for k in shared if k != "seed"}, seed=seed)


def enqueue_presets(study: optuna.Study) -> None:
    from search.config import PRESETS

    for name in PRESETS_FIRST:
        params = {k: v for k, v in PRESETS[name].items() if k not in _STUDY_KEYS}
        study.enqueue_trial(params, user_attrs={"preset": name}, skip_if_exists=True)


def launch(
    ws: Workspace,
    storage: optuna.storages.BaseStorage,
    name: str,
    opts: SearchOptions,
    *,
    data_dir: Path | None = None,
    space_file: Path | None = None,
    progress: Any = None,
    trainable: Any = None,
) -> dict[str, Any]:
    """Create study ``name`` and run its budget; returns the run summary as a dict.

    ``trainable`` replaces the Ray Tune function trainable (tests inject faults with it).
    """
    from augment.dataset import load_dataset
    from search.space import default_space, load_space

    opts.validate()
    space = load_space(space_file, opts.max_epochs) if space_file else default_space(opts.max_epochs)
    space.base["seed"] = opts.seed
    data_path = Path(data_dir) if data_dir is not None else default_dataset(ws)
    data = load_dataset(data_path)
    study = create_study(
        storage,
        name,
        {
            "data_path": str(Path(data_path).resolve()),
            "data_fingerprint": data.fingerprint,
            "dims": data.dims,
            "seq_len": data.seq_len,
            "space": space.to_json(),
            "budget": opts.trials,
            "max_epochs": opts.max_epochs,
            "asha": {"grace_period": opts.grace_period, "reduction_factor": opts.reduction_factor},
            "seed": opts.seed,
            "resources": {"cpus_per_trial": opts.cpus_per_trial, "gpus_per_trial": opts.gpus_per_trial},
            "runs": [],
        },
    )
    enqueue_presets(study)
    return _run(ws, study, space, data, opts, opts.trials, progress, trainable)


def resume(
    ws: Workspace,
    storage: optuna.storages.BaseStorage,
    name: str,
    *,
    more_trials: int | None = None,
    force: bool = False,
    overrides: dict[str, Any] | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Reconcile study ``name`` and run what is left of its budget (or ``more_trials`` more).

    ``overrides`` may change where it runs (cpus_per_trial, gpus_per_trial, concurrency, address,
    verbose); what the study *is* (space, epochs, ASHA, seed) stays as recorded.
    """
    overrides = overrides or {}
    from augment.dataset import load_dataset
    from search.reconcile import reconcile, used_budget
    from search.runner import end_orphans
    from search.space import SearchSpace

    study = load_study(storage, name)
    attrs = study_attrs(study)
    if "space" not in attrs:
        raise UserError(f"study {name!r} was not created by msatune launch; it cannot be resumed here")
    if more_trials is not None and more_trials <= 0:
        raise UserError(f"--trials must be > 0 (got {more_trials})")
    data = load_dataset(attrs["data_path"])
    if data.fingerprint != attrs["data_fingerprint"] and not force:
        raise UserError(
            f"the data of study {name!r} changed ({attrs['data_path']}: fingerprint "
            f"{data.fingerprint[:12]} != recorded {attrs['data_fingerprint'][:12]}); "
            "results would not be comparable; pass --force to continue anyway"
        )
    ended = end_orphans(ray_dir(ws, name))
    requeued = reconcile(study)
    budget = int(attrs["budget"])
    if more_trials is not None:
        budget = used_budget(study) + more_trials
        set_study_attr(study, "budget", budget)
    remaining = budget - used_budget(study)
    resources = attrs["resources"]
    run_opts = SearchOptions(
        trials=max(remaining, 1),
        max_epochs=int(attrs["max_epochs"]),
        grace_period=int(attrs["asha"]["grace_period"]),
        reduction_factor=int(attrs["asha"]["reduction_factor"]),
        seed=int(attrs["seed"]),
        cpus_per_trial=float(overrides.get("cpus_per_trial") or resources["cpus_per_trial"]),
        gpus_per_trial=float(overrides.get("gpus_per_trial") if overrides.get("gpus_per_trial") is not None
                             else resources["gpus_per_trial"]),
        concurrency=overrides.get("concurrency"),
        address=overrides.get("address"),
        verbose=bool(overrides.get("verbose", False)),
    )
    run_opts.validate()
    if remaining <= 0:
        return {"study": name, "trials_run": 0, "remaining": 0, "requeued": requeued, "orphans_ended": ended,
                "message": f"study {name!r} has used its budget of {budget} trials; run more with --trials N"}
    space = SearchSpace.from_json(attrs["space"])
    summary = _run(ws, study, space, data, run_opts, remaining, progress)
    summary.update(requeued_before=requeued, orphans_ended=ended)
    return summary


def ray_dir(ws: Workspace, name: str) -> Path:
    return ws.study_dir(name) / "ray"


def _run(ws: Workspace, study: optuna.Study, space: Any, data: Any, opts: SearchOptions,
         num_trials: int, progress: Any, trainable: Any = None) -> dict[str, Any]:
    from search.runner import run_search

    attrs = study_attrs(study)
    runs = list(attrs.get("runs", []))
    # A killed driver never recorded its run: count its Ray directory too, so that every run
    # gets a fresh experiment directory.
    previous = [p for p in ray_dir(ws, study.study_name).glob("run*") if p.is_dir()]
    run_index = max(len(runs), len(previous))
    # A new sampler seed per run: the same seed would repeat the same parameters (optuna#3255).
    seed = int(opts.seed) + 7919 * run_index
    settings = _run_settings(opts, num_trials, seed)
    summary = run_search(
        study, space, data, settings, ray_dir=ray_dir(ws, study.study_name),
        run_name=f"run{run_index}", progress=progress, trainable=trainable,
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
        "seed": seed,
    }
    set_study_attr(study, "runs", [*runs, record])
    return {"study": study.study_name, **record, "requeued": summary.requeued}
