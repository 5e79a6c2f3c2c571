"""The study store: Optuna RDB storage over SQLAlchemy, and what msatune records on each study.

Default ``sqlite:///<workspace>/studies.db`` (absolute path, 60 s lock timeout so readers such as
the dashboard never make a running study fail with "database is locked"); any SQLAlchemy URL via
``--storage``. A study's user attrs say what it is: data path and fingerprint, search space,
budget, epochs, ASHA settings, seed, msatune version, and one record per run.
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
from msatune.errors import UserError, first_line
from msatune.search.reconcile import REQUEUED_ATTR

log = logging.getLogger(__name__)

SQLITE_TIMEOUT_S = 60
ATTR_PREFIX = "msatune:"
#: The one objective of every msatune study, as the dashboard names its axis.
METRIC_NAME = "val_mae"
#: A study name is also a directory name (``WORKSPACE/studies/NAME``).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: ``state_counts`` key of the FAIL trials a stopped driver left running (failed, then re-queued
#: and run again): they are no failures of the trial itself.
INTERRUPTED = "INTERRUPTED"


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names (``~`` expanded; a ``file:`` URI's path), ``None`` for other
    databases: the one reading of a SQLite URL every check and open here uses.

    Raises:
        UserError: the URL is not a database URL, or names an in-memory SQLite store.
    """
    parsed = _parse_url(url)
    if not parsed.drivername.startswith("sqlite"):
        return None
    path = (parsed.database or "").removeprefix("file:")
    if not path or path == ":memory:":
        raise UserError(f"--storage {url!r}: an in-memory SQLite store cannot hold a study; give a file path")
    return Path(path).expanduser()


def read_only_sqlite_url(url: str) -> str | None:
    """The read-only URI form of a SQLite URL (``None`` for other databases).

    Raises:
        UserError: the URL is not a database URL, or names a SQLite file that does not exist.
    """
    path = sqlite_file(url)
    if path is None:
        return None
    abs_path = path.resolve()
    if not abs_path.is_file():
        raise UserError(
            f"no study store at {abs_path} (the file does not exist); launch a study first "
            "(msatune launch NAME) or pass the right --workspace / --storage"
        )
    return f"{_parse_url(url).drivername}:///file:{abs_path}?mode=ro&uri=true"


def _parse_url(url: str) -> Any:
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UserError(
            f"--storage {url!r} is not a database URL; use e.g. sqlite:////abs/path/studies.db "
            "or postgresql://user@host/db"
        ) from None


def open_storage(url: str, *, read_only: bool = False, create: bool = True) -> optuna.storages.RDBStorage:
    """An RDBStorage for ``url``; a bad URL or unreachable database is a UserError.

    ``read_only``: a SQLite store is opened through a read-only connection (writes fail in the
    database itself) and must exist; tables are never created. ``create=False``: a SQLite file
    that does not exist is a UserError instead of a new empty store.
    """
    import sqlalchemy

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parsed = _parse_url(url)
    target = url
    engine_kwargs: dict[str, Any] = {}
    path = sqlite_file(url)
    if path is not None:
        if not (parsed.database or "").startswith("file:"):  # SQLite opens the path as written: expand ~
            target = parsed.set(database=str(path)).render_as_string(hide_password=False)
        if read_only or not create:
            ro_url = read_only_sqlite_url(url)  # also: the file must exist
            target = ro_url if read_only and ro_url else target
        elif not path.parent.is_dir():
            raise UserError(f"--storage {url!r}: directory {path.parent} does not exist")
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    else:
        engine_kwargs["pool_pre_ping"] = True
    try:
        storage = optuna.storages.RDBStorage(
            target, engine_kwargs=engine_kwargs,
            skip_compatibility_check=read_only, skip_table_creation=read_only,
        )
        if read_only:
            storage.get_all_studies()  # fail here, in one line, rather than on the first read
        return storage
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
        raise UserError(f"cannot open study store {url!r}: {first_line(exc)}") from None


def is_sqlite_url(url: str) -> bool:
    return _parse_url(url).drivername.startswith("sqlite")


def check_can_create(url: str) -> None:
    """A UserError when the store at ``url`` could not be created (a SQLite file's directory is
    missing), checked before anything else is written."""
    path = sqlite_file(url)
    if path is not None and not path.parent.is_dir():
        raise UserError(f"--storage {url!r}: directory {path.parent} does not exist")


def open_existing(url: str) -> optuna.storages.RDBStorage | None:
    """The store at ``url`` if there is one; ``None`` for a SQLite file that does not exist
    (nothing is created: a command may still fail before it writes)."""
    path = sqlite_file(url)
    if path is None:
        return open_storage(url)
    return open_storage(url, create=False) if path.is_file() else None


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
