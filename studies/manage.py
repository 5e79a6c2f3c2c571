"""A study's lifecycle beyond running it: delete it, export its trials, write a space file.

* :func:`delete_study`: remove a study from the store (and, with ``files``, its directory and
  its report artifacts); refused while a driver of the study is alive.
* :func:`export_trials` / :func:`write_export`: one row per trial, every state, with the full
  configuration it trained (keys fixed outside the search space included).
* :func:`example_space_toml`: the default search space as a TOML file to edit for ``--space``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from msatune.errors import UserError
from msatune.json_values import jsonable
from msatune.search.reconcile import FAIL_REASON_ATTR, REQUEUED_ATTR
from msatune.studies.lease import StudyLease
from msatune.studies.queries import trial_value
from msatune.studies.refit_records import refit_study_name
from msatune.studies.store import load_study, study_artifacts, study_attrs, trial_kind
from msatune.studies.workspace import Workspace

log = logging.getLogger(__name__)


def delete_study(ws: Workspace, storage: optuna.storages.BaseStorage, name: str, *,
                 files: bool = False) -> dict[str, Any]:
    """Delete study ``name`` from the store; with ``files`` also its directory under the workspace
    and the report files it has as dashboard artifacts. Returns what was removed.

    Raises:
        UserError: unknown study, or a live driver runs it.
    """
    from msatune.search.ray_session import end_orphans

    study = load_study(storage, name)
    n_trials = len(storage.get_all_trials(study._study_id, deepcopy=False))
    artifact_ids = [m["artifact_id"] for m in study_artifacts(storage, study._study_id).values()]
    refit_name = refit_study_name(name)
    refit_live = _live_refit_driver(ws, name)
    if refit_live is not None:
        raise UserError(f"cannot delete study {name!r}: its refit is running (driver pid {refit_live}); "
                        "wait for it to end or stop it (Ctrl-C)")
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
            for ray_dir in (study_dir / "ray", study_dir / "refit"):  # what killed drivers left running
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


def _live_refit_driver(ws: Workspace, name: str) -> int | None:
    from msatune.studies.refits import live_driver, refit_dir

    return live_driver(refit_dir(ws, name))


#: The columns every export row starts with (then the trial's config keys, sorted).
EXPORT_COLUMNS = ("number", "state", "value", "best_val_mae", "epochs", "duration_s", "preset",
                  "fail_reason", "requeued", "checkpoint", "started", "completed")


def export_trials(storage: optuna.storages.BaseStorage, name: str) -> list[dict[str, Any]]:
    """One record per trial of study ``name`` (every state), each with ``config``: the complete
    configuration the trial trained, from its checkpoint's ``config.json`` when it has one, else
    rebuilt from the study's recorded space (base config + enqueued values + sampled params)."""
    study = load_study(storage, name)
    attrs = study_attrs(study)
    base = _base_config(attrs)
    rows = []
    for t in storage.get_all_trials(study._study_id, deepcopy=False):
        rows.append({
            "number": t.number,
            "state": trial_kind(t),
            "value": t.value,
            "best_val_mae": trial_value(t),
            "epochs": t.user_attrs.get("epochs"),
            "duration_s": round(t.duration.total_seconds(), 3) if t.duration is not None else None,
            "preset": t.user_attrs.get("preset"),
            "fail_reason": t.user_attrs.get(FAIL_REASON_ATTR),
            "requeued": bool(t.user_attrs.get(REQUEUED_ATTR, False)),
            "checkpoint": t.user_attrs.get("checkpoint"),
            "started": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
            "completed": t.datetime_complete.isoformat(timespec="seconds") if t.datetime_complete else None,
            "config": _trial_config(t, base, attrs),
        })
    return rows


def _base_config(attrs: dict[str, Any]) -> dict[str, Any]:
    space = attrs.get("space") or {}
    base = dict(space.get("base") or {})
    if "max_epochs" in attrs:
        base["epochs"] = int(attrs["max_epochs"])
    return base


def _trial_config(t: optuna.trial.FrozenTrial, base: dict[str, Any], attrs: dict[str, Any]) -> dict[str, Any]:
    from msatune.models.checkpoint import read_checkpoint_meta

    ckpt = t.user_attrs.get("checkpoint")
    if ckpt:
        try:
            config, _ = read_checkpoint_meta(ckpt)
            return dict(config)
        except UserError as exc:
            log.info("trial %d: config rebuilt from the study (%s)", t.number, exc)
    fixed = t.system_attrs.get("fixed_params") or {}
    config = {**base, **fixed, **t.params}
    if "seed" in attrs:
        config["seed"] = int(attrs["seed"]) + t.number
    return config


def write_export(rows: list[dict[str, Any]], out: Path) -> Path:
    """Write ``rows`` as ``.csv`` (one column per field and config key) or ``.json``."""
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise UserError(f"--out {out}: give a .csv or .json file name")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a .csv or .json file name")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: directory {out.parent} does not exist")
    tmp = out.with_name(out.name + ".tmp")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            if suffix == ".json":
                json.dump(jsonable(rows), fh, indent=2, allow_nan=False)
                fh.write("\n")
            else:
                keys = sorted({k for r in rows for k in r["config"]} - set(EXPORT_COLUMNS))
                writer = csv.writer(fh)
                writer.writerow([*EXPORT_COLUMNS, *keys])
                for r in rows:
                    writer.writerow([_cell(r[c]) for c in EXPORT_COLUMNS]
                                    + [_cell(r["config"].get(k)) for k in keys])
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(jsonable(value))
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def example_space_toml() -> str:
    """The default search space as a ``--space`` file: every searched key with its range or
    choices, in the format :func:`msatune.search.space.load_space` reads (it reads back equal)."""
    from msatune.search.settings import DEFAULT_GRACE_PERIOD, SearchSettings
    from msatune.search.space import CONDITIONS, default_distributions

    first_rung = SearchSettings().first_rung
    lines = [
        "# msatune search space (msatune launch NAME --space FILE). Edit, remove or add tables:",
        "#   [key] low = .. / high = .. (log = true: log scale; step = ..: a grid)  a range",
        "#   [key] choices = [..]                                                  a choice",
        "#   [key] value = ..                                                      fixed, not searched",
        "# Keys not listed keep the default space's distribution, or with replace = true the",
        "# 'improved' preset's value. Any trial config key works (msatune train --set lists them).",
        f"# Warm-ups must end before ASHA's first rung: at most {DEFAULT_GRACE_PERIOD - 1} epochs with the",
        f"# default --grace-period {DEFAULT_GRACE_PERIOD} (longer with a larger --grace-period).",
        "replace = false",
    ]
    for key, dist in default_distributions(first_rung).items():
        lines.append("")
        cond = CONDITIONS.get(key)
        if cond is not None:
            lines.append(f"# sampled only when {cond[0]} = {_toml_value(cond[1])}")
        lines.append(f"[{key}]")
        if isinstance(dist, CategoricalDistribution):
            lines.append(f"choices = {_toml_value(list(dist.choices))}")
            continue
        if isinstance(dist, (FloatDistribution, IntDistribution)):
            lines.append(f"low = {_toml_value(dist.low)}")
            lines.append(f"high = {_toml_value(dist.high)}")
            if dist.log:
                lines.append("log = true")
            if dist.step is not None and not (isinstance(dist, IntDistribution) and dist.step == 1):
                lines.append(f"step = {_toml_value(dist.step)}")
    return "\n".join(lines) + "\n"
