"""Deleting a study: from the store (with its refit), and with ``files`` its directory and artifacts.

Refused while a driver of the study (launch, resume, refit) is alive; the study's lease is held
while it is deleted, so none can start on it meanwhile.
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

import optuna

from msatune.errors import UserError
from msatune.studies.store.lease import StudyLease
from msatune.studies.store.refit_records import refit_study_name
from msatune.studies.store.studies import load_study, study_artifacts
from msatune.studies.store.workspace import Workspace
from msatune.thirdparty.optuna_internals import study_id

log = logging.getLogger(__name__)


def delete_study(ws: Workspace, storage: optuna.storages.BaseStorage, name: str, *,
                 files: bool = False) -> dict[str, Any]:
    """Delete study ``name`` from the store; with ``files`` also its directory under the workspace
    and the report files it has as dashboard artifacts. Returns what was removed.

    Raises:
        UserError: unknown study, or a live driver runs it.
    """
    from msatune.search.ray_orphans import end_orphans, live_driver

    study = load_study(storage, name)
    n_trials = len(storage.get_all_trials(study_id(study), deepcopy=False))
    artifact_ids = [m["artifact_id"] for m in study_artifacts(storage, study_id(study)).values()]
    refit_name = refit_study_name(name)
    refit_live = live_driver(ws.refit_dir(name))
    if refit_live is not None:
        raise UserError(f"cannot delete study {name!r}: its refit is running (driver pid {refit_live}); "
                        f"wait for it to end or stop it (Ctrl-C, or kill {refit_live})")
    # held while deleting, so a launch/resume/refit cannot start on it meanwhile (its release then
    # finds no study: a logged warning)
    with StudyLease(study, "delete"):
        optuna.delete_study(study_name=name, storage=storage)
        try:  # its refit's fold trials (msatune refit) go with it
            n_trials += len(storage.get_all_trials(storage.get_study_id_from_name(refit_name), deepcopy=False))
            optuna.delete_study(study_name=refit_name, storage=storage)
        except KeyError:
            pass
    removed: list[str] = []
    if files:
        study_dir = ws.study_dir(name)
        if study_dir.is_dir():
            for ray_dir in (ws.ray_dir(name), ws.refit_dir(name)):  # what killed drivers left running
                end_orphans(ray_dir)
            try:
                shutil.rmtree(study_dir)
            except OSError as exc:
                raise UserError(f"study {name!r} was deleted from the store, but its directory "
                                f"{study_dir} could not be removed ({exc.strerror or exc}); remove it "
                                "by hand") from None
            removed.append(str(study_dir))
        for artifact_id in artifact_ids:
            path = ws.artifact_dir / artifact_id
            if path.is_file():
                path.unlink()
                removed.append(str(path))
    return {"study": name, "trials": n_trials, "removed": removed}
