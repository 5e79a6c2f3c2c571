"""A study's trials exported: one row per trial, every state, with the full configuration it trained.

Keys fixed outside the search space (the baseline preset's batch size 4, say) are included: the
configuration comes from the trial's checkpoint when it has one, else it is rebuilt from the
study's recorded space. Written as CSV (a column per field and config key) or JSON.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import optuna

from msatune.errors import UserError
from msatune.json_values import jsonable
from msatune.output_files import check_output_file, header_line
from msatune.search.reconcile import FAIL_REASON_ATTR, REQUEUED_ATTR
from msatune.studies.queries import trial_value
from msatune.studies.store.studies import load_study, study_attrs, trial_kind
from msatune.thirdparty.optuna_internals import study_id

log = logging.getLogger(__name__)


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
    for t in storage.get_all_trials(study_id(study), deepcopy=False):
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


def _is_export(head: bytes) -> bool:
    """Whether a file's head is an export of msatune's (CSV header, or a JSON list of trial rows)."""
    if header_line(head).startswith(",".join(EXPORT_COLUMNS)):
        return True
    text = head.decode("utf-8", "replace").lstrip()
    return text.startswith("[") and ('"number"' in text or text.rstrip() == "[]")


def check_export_target(out: Path, force: bool = False) -> None:
    """A UserError unless ``out`` can receive an export (checked before the store is read)."""
    if out.suffix.lower() not in (".csv", ".json"):
        raise UserError(f"--out {out}: give a .csv or .json file name")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a .csv or .json file name")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: directory {out.parent} does not exist")
    check_output_file(out, _is_export, force=force, what="an export of msatune's")


def write_export(rows: list[dict[str, Any]], out: Path, *, force: bool = False) -> Path:
    """Write ``rows`` as ``.csv`` (one column per field and config key) or ``.json``; an existing
    ``out`` is replaced only when it is an export of msatune's, or with ``force``."""
    check_export_target(out, force)
    suffix = out.suffix.lower()
    tmp = Path(tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)[1])
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
