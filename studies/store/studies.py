"""Studies in the store: their names, how one is created and loaded, and what msatune records on it.

A study's user attrs (prefix ``msatune:``) say what it is: data path and fingerprint, search
space, budget, epochs, ASHA settings, seed, msatune version, and one record per run. A trial's
state as msatune counts it (:func:`trial_kind`) tells a failure of the trial from a trial that a
stopped driver left running (``INTERRUPTED``). The store is opened by :mod:`.connect`.
"""

from __future__ import annotations

import difflib
import logging
import re
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from msatune import __version__
from msatune.errors import UserError
from msatune.search.reconcile import REQUEUED_ATTR

log = logging.getLogger(__name__)

ATTR_PREFIX = "msatune:"
#: The one objective of every msatune study, as the dashboard names its axis.
METRIC_NAME = "val_mae"
#: A study name is also a directory name (``WORKSPACE/studies/NAME``).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: ``state_counts`` key of the FAIL trials a stopped driver left running (failed, then re-queued
#: and run again): they are no failures of the trial itself.
INTERRUPTED = "INTERRUPTED"


def check_study_name(name: str) -> None:
    """A UserError unless ``name`` can name a study (and its directory)."""
    if not _NAME.fullmatch(name or ""):
        raise UserError(f"study name {name!r} is not usable; use up to 100 letters, digits, '.', '-' "
                        "and '_', starting with a letter or digit")


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def free_study_name(storage: optuna.storages.BaseStorage, name: str) -> str:
    """``name``, or ``name-2``, ``name-3``, ... whichever is not taken in the store."""
    taken = set(study_names(storage))
    candidate, k = name, 2
    while candidate in taken:
        candidate, k = f"{name}-{k}", k + 1
    return candidate


def load_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    """Load ``name``; an unknown name is a UserError naming the close matches."""
    names = study_names(storage)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else (
            f"; studies here: {', '.join(names[:10])}" if names else "; the store has no studies yet (msatune launch NAME)"
        )
        raise UserError(f"no study named {name!r} in the store{hint}")
    return optuna.load_study(study_name=name, storage=storage)


def create_study(storage: optuna.storages.BaseStorage, name: str, attrs: dict[str, Any]) -> optuna.Study:
    """Create ``name``; an existing name is a UserError that suggests ``resume``."""
    check_study_name(name)
    check_name_free(storage, name)
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
    except optuna.exceptions.DuplicatedStudyError:  # another launch of the same name just now
        check_name_free(storage, name)
        raise
    set_metric_name(study)
    for key, value in {**attrs, "msatune_version": __version__, "created": time.strftime("%Y-%m-%d %H:%M:%S")}.items():
        study.set_user_attr(ATTR_PREFIX + key, value)
    return study


def check_name_free(storage: optuna.storages.BaseStorage | None, name: str) -> None:
    """A UserError suggesting ``resume`` when ``name`` exists in ``storage`` (``None``: no store yet)."""
    if storage is not None and name in study_names(storage):
        raise UserError(f"study {name!r} already exists; continue it with: msatune resume {name} "
                        f"(or pick another name, or remove it with: msatune delete {name})")


def set_metric_name(study: optuna.Study) -> None:
    """Name the objective ``val_mae`` (optuna-dashboard labels its axes with it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([METRIC_NAME])


def study_attrs(study: optuna.Study | Any) -> dict[str, Any]:
    """msatune's own user attrs of a study (prefix stripped)."""
    return {k[len(ATTR_PREFIX):]: v for k, v in study.user_attrs.items() if k.startswith(ATTR_PREFIX)}


def set_study_attr(study: optuna.Study, key: str, value: Any) -> None:
    study.set_user_attr(ATTR_PREFIX + key, value)


def trial_kind(t: optuna.trial.FrozenTrial) -> str:
    """The trial's state name, ``INTERRUPTED`` for a FAIL that was re-queued."""
    if t.state == TrialState.FAIL and t.user_attrs.get(REQUEUED_ATTR):
        return INTERRUPTED
    return t.state.name


def state_counts(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """Trials per :func:`trial_kind` (state names, and ``INTERRUPTED``)."""
    counts = {s.name: 0 for s in TrialState}
    counts[INTERRUPTED] = 0
    for t in trials:
        counts[trial_kind(t)] += 1
    return counts


def trial_refs(trials: list[optuna.trial.FrozenTrial]) -> list[Any]:
    """The store's trials as the plain records (``msatune.ensemble.candidates.TrialRef``) that
    :mod:`msatune.ensemble` reads."""
    from msatune.ensemble.candidates import TrialRef

    out = []
    for t in trials:
        ckpt = t.user_attrs.get("checkpoint")
        out.append(TrialRef(number=t.number, state=t.state.name, value=t.value,
                            checkpoint=Path(ckpt) if ckpt else None))
    return out


def best_complete(trials: list[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial | None:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return min(done, key=lambda t: (t.value, t.number)) if done else None


#: Optuna's study system-attr prefix of an uploaded artifact's record (``optuna.artifacts``).
ARTIFACT_PREFIX = "artifacts:"


def study_artifacts(storage: optuna.storages.BaseStorage, study_id: int) -> dict[str, dict[str, Any]]:
    """The study's artifact records (system-attr key -> metadata with ``artifact_id`` and
    ``filename``), skipping cleared (None) and unreadable ones: the one reader of that format."""
    import json

    out: dict[str, dict[str, Any]] = {}
    for key, value in storage.get_study_system_attrs(study_id).items():
        if not key.startswith(ARTIFACT_PREFIX) or value is None:
            continue
        try:
            meta = json.loads(value) if isinstance(value, str) else value
        except json.JSONDecodeError:
            continue
        if isinstance(meta, dict) and isinstance(meta.get("artifact_id"), str):
            out[key] = meta
    return out
