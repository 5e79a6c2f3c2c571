"""Opening a study store on a real PostgreSQL server while other processes open it too.

A launch creates the store's tables; a poller (``show``, a test's loop, a dashboard) may open the
same fresh database in that moment. Optuna's RDBStorage writes when it opens a store that lacks its
schema stamp, even when told to skip table creation, so a reader raced the launch's CREATE TABLE
and the launch failed with ``duplicate key ... pg_type_typname_nsp_index`` (seen in CI). The same
race on a SQLite file (last test) ends in ``UNIQUE constraint failed: alembic_version.version_num``
or ``table ... already exists``.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import sqlalchemy

from msatune.errors import UserError
from msatune.studies.store.connect import open_storage


@pytest.fixture(scope="module")
def server_url():
    from tests.studies.postgres_server import postgres_url

    with postgres_url() as url:
        yield url


def _fresh_database(server_url: str, name: str) -> str:
    engine = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return server_url.rsplit("/", 1)[0] + "/" + name


def _tables(url: str) -> list[str]:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            return sqlalchemy.inspect(connection).get_table_names()
    finally:
        engine.dispose()


def test_a_read_only_open_of_a_store_not_yet_created_says_so_and_writes_nothing(server_url: str) -> None:
    url = _fresh_database(server_url, "empty_store")
    with pytest.raises(UserError, match="no study store at .* yet") as raised:
        open_storage(url, read_only=True)
    assert "\n" not in str(raised.value)
    assert _tables(url) == []
    open_storage(url)  # a creating open makes it
    open_storage(url, read_only=True).get_all_studies()


def _open_at_once(url: str, barrier, read_only: bool, rounds: int, errors) -> None:  # noqa: ANN001
    for _ in range(rounds):
        barrier.wait()
        try:
            open_storage(url, read_only=read_only).get_all_studies()
        except UserError as exc:
            if not (read_only and "not all created" in str(exc)):
                errors.put(str(exc))
        except Exception as exc:  # noqa: BLE001 - reported to the test
            errors.put(f"{type(exc).__name__}: {exc}")


def _all_open_at_once(url: str, read_only: list[bool], errors) -> None:  # noqa: ANN001
    """One process per entry of ``read_only``, all opening ``url`` at the same instant."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(read_only))
    procs = [ctx.Process(target=_open_at_once, args=(url, barrier, ro, 1, errors)) for ro in read_only]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0


def _drained(errors) -> list[str]:  # noqa: ANN001
    found = []
    while not errors.empty():
        found.append(errors.get())
    return found


def test_processes_creating_and_reading_one_fresh_store_at_once_all_open_it(server_url: str) -> None:
    """Three creators and three readers open each of several fresh databases at the same instant:
    every creator gets the store, a reader either gets it or is told it is not created yet."""
    errors = multiprocessing.get_context("spawn").Queue()
    for round_ in range(4):
        url = _fresh_database(server_url, f"race_{round_}")
        _all_open_at_once(url, [False] * 3 + [True] * 3, errors)
        assert {"studies", "version_info", "alembic_version"} <= set(_tables(url))
    assert _drained(errors) == []


def test_launches_creating_one_fresh_sqlite_store_at_once_all_open_it(tmp_path: Path) -> None:
    """The same race on a SQLite file (two launches in one workspace, or a launch and a script's
    ``optuna.load_study``): the loser of the schema stamp sees ``UNIQUE constraint failed:
    alembic_version.version_num`` (seen in CI) and must open the store the winner made."""
    errors = multiprocessing.get_context("spawn").Queue()
    for round_ in range(4):
        _all_open_at_once(f"sqlite:///{tmp_path / f'race_{round_}.db'}", [False] * 4, errors)
    assert _drained(errors) == []
