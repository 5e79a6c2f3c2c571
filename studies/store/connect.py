"""Opening a study store: the one reading of a store URL, and the store opened for reading or writing.

Default ``sqlite:///<workspace>/studies.db`` (absolute path, 60 s lock timeout so readers such as
the dashboard never make a running study fail with "database is locked"); any SQLAlchemy URL via
``--storage``. A read-only store is opened through a read-only SQLite connection, so a command
that only looks can never change it; nothing here creates a store a command was not asked to make.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import optuna

from msatune.errors import UserError, first_line

SQLITE_TIMEOUT_S = 60
#: Overrides :data:`SQLITE_TIMEOUT_S` (seconds a command waits for a store another process holds).
SQLITE_TIMEOUT_ENV = "MSATUNE_SQLITE_TIMEOUT_S"


def sqlite_timeout_s() -> float:
    """How long a SQLite store's lock is waited for: ``$MSATUNE_SQLITE_TIMEOUT_S`` or 60 s."""
    try:
        value = float(os.environ.get(SQLITE_TIMEOUT_ENV, SQLITE_TIMEOUT_S))
    except ValueError:
        raise UserError(f"${SQLITE_TIMEOUT_ENV}={os.environ[SQLITE_TIMEOUT_ENV]!r} is not a number of seconds") from None
    return value if value > 0 else float(SQLITE_TIMEOUT_S)
#: How long opening a database server's store may take before it is a one-line error (a server that
#: accepts connections but never answers would otherwise hang every command).
SERVER_CONNECT_TIMEOUT_S = 10


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
        engine_kwargs["connect_args"] = {"timeout": sqlite_timeout_s()}
    else:
        engine_kwargs["pool_pre_ping"] = True
        timeout_arg = _CONNECT_TIMEOUT_ARGS.get(parsed.get_backend_name())
        if timeout_arg:
            engine_kwargs["connect_args"] = {timeout_arg: SERVER_CONNECT_TIMEOUT_S}
    shown = parsed.render_as_string(hide_password=True)
    try:
        if read_only and path is None:
            _require_initialised(target, engine_kwargs, shown)
        for attempt in range(_CREATE_ATTEMPTS):
            try:
                storage = optuna.storages.RDBStorage(
                    target, engine_kwargs=engine_kwargs,
                    skip_compatibility_check=read_only, skip_table_creation=read_only,
                )
                break
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError,
                    sqlalchemy.exc.OperationalError) as exc:
                # Another process created the same tables at the same moment (PostgreSQL's
                # "duplicate key ... pg_type_typname_nsp_index", "relation/table ... already exists"),
                # or stamped the schema version first (SQLite's "UNIQUE constraint failed:
                # alembic_version.version_num"): they exist now, so look again.
                lost_race = any(sign in str(exc) for sign in _LOST_RACE)
                if read_only or not lost_race or attempt == _CREATE_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))  # let the winner finish its creation
        if read_only:
            storage.get_all_studies()  # fail here, in one line, rather than on the first read
        return storage
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, ImportError,
            ValueError) as exc:
        raise UserError(f"cannot open study store {shown!r}: {store_failure(exc)}") from None


#: Opens of a store that may meet another process creating its tables at the same moment.
_CREATE_ATTEMPTS = 5
#: What a database says when another process created the store's tables or stamp first.
_LOST_RACE = ("duplicate key", "already exists", "UNIQUE constraint failed: alembic_version")
#: What Optuna's RDBStorage writes when it opens a store without these: a read-only open must not.
_INITIALISED_BY = ("studies", "version_info", "alembic_version")


def _require_initialised(url: str, engine_kwargs: dict[str, Any], shown: str) -> None:
    """A UserError unless the database server's store at ``url`` has its tables and schema stamp.

    Optuna's RDBStorage, even told to skip table creation, inserts the schema version and creates
    the ``alembic_version`` table when they are missing: a reader that opened a store another
    process was creating would race that process's CREATE TABLE (and could make it fail). SQLite
    stores are opened through a read-only connection instead, so only server stores need this.
    """
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        with engine.connect() as connection:
            inspector = sqlalchemy.inspect(connection)
            missing = [table for table in _INITIALISED_BY if not inspector.has_table(table)]
            stamped = not missing and connection.execute(
                sqlalchemy.text("SELECT count(*) FROM alembic_version")).scalar()
    finally:
        engine.dispose()
    if missing or not stamped:
        raise UserError(
            f"no study store at {shown!r} yet (its tables are not all created); launch a study first "
            "(msatune launch NAME --storage URL), or wait until the launch that creates it has started"
        )


#: The connect-timeout argument of each server backend's DB-API driver (seconds).
_CONNECT_TIMEOUT_ARGS = {"postgresql": "connect_timeout", "mysql": "connect_timeout"}


def store_failure(exc: BaseException) -> str:
    """What went wrong in a store, in one line: the database's own message (Optuna wraps it in a
    generic "exception during the commit"), with a hint for the usual causes."""
    cause = exc
    while cause.__cause__ is not None and type(cause).__module__.startswith("optuna"):
        cause = cause.__cause__
    text = first_line(cause)
    text = text.split("\n")[0]
    if "file is not a database" in text or "malformed" in text:
        return f"{text} (not an intact SQLite study store: restore it from a copy, or pass another --storage)"
    if "database is locked" in text:
        return (f"{text} (another process held it for {sqlite_timeout_s():g} s: a study's driver writing, or a "
                f"program that keeps it open; retry when it is done, or wait longer with ${SQLITE_TIMEOUT_ENV})")
    if "timeout expired" in text or "Connection refused" in text or "could not connect" in text:
        return f"{text} (is the database server running and reachable?)"
    return text


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
