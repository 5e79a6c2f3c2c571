"""Fencing (issue 24): a driver whose study was taken over while it stalled writes nothing more.

Driver A (host ``host-a``) launches a study and is stopped (SIGSTOP) past the lease timeout;
driver B (``host-b``: another host as the lease sees it, through ``$MSATUNE_HOST``) takes the
study over and runs it to its end; A is then continued (SIGCONT). A must end with exit status 3
and one line saying who took the study over, having written no row after the token changed,
and the study must hold every trial once, none RUNNING.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from tests.conftest import cli_env, msatune_argv, run_msatune


def _read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)


def _states(db: Path) -> list[str]:
    if not db.exists():
        return []
    try:
        with _read_only(db) as con:
            return [row[0] for row in con.execute("SELECT state FROM trials")]
    except sqlite3.OperationalError:  # tables not created yet
        return []


def _dump(db: Path) -> list[str]:
    with _read_only(db) as con:
        return list(con.iterdump())


def _lease(db: Path) -> dict:
    with _read_only(db) as con:
        row = con.execute("SELECT value_json FROM study_user_attributes WHERE key = 'msatune:lease'").fetchone()
    return json.loads(row[0]) if row and row[0] else {}


def test_a_driver_taken_over_while_stopped_writes_nothing_more_and_exits_3(
        tmp_path: Path, tiny_data: Path, tiny_space_file: Path) -> None:
    ws = tmp_path / "ws"
    db = ws / "studies.db"
    timeout = {"MSATUNE_LEASE_TIMEOUT_S": "3"}
    a = subprocess.Popen(
        msatune_argv("launch", "s", "--data", tiny_data, "--space", tiny_space_file, "--trials", "4",
                     "--max-epochs", "3", "--grace-period", "1", "--reduction-factor", "2",
                     "--cpus-per-trial", "1", "--concurrency", "1", workspace=ws),
        env=cli_env(MSATUNE_HOST="host-a", **timeout), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and a.poll() is None:
            states = _states(db)
            if "RUNNING" in states and any(s in ("COMPLETE", "PRUNED") for s in states):
                break
            time.sleep(0.5)
        assert a.poll() is None, a.communicate()
        token_a = _lease(db)["token"]
        os.kill(a.pid, signal.SIGSTOP)
        time.sleep(5)  # A's heartbeat is now older than the 3 s timeout, as host-b sees it

        b = run_msatune("resume", "s", workspace=ws, env=cli_env(MSATUNE_HOST="host-b", **timeout), timeout=900)
        assert b.returncode == 0, b.stderr[-3000:]
        lease = _lease(db)
        assert lease["host"] == "host-b" and lease["token"] == token_a + 1 and lease["released"]
        before = _dump(db)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    out, err = a.communicate(timeout=300)
    assert a.returncode == 3, (out[-2000:], err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("msatune: error: ")]
    assert len(errors) == 1, err[-3000:]
    for needle in ("was taken over by msatune resume", "host-b", "wrote nothing"):
        assert needle in errors[0], errors[0]
    assert _dump(db) == before  # not one row written by A after the token changed

    with _read_only(db) as con:
        rows = con.execute("SELECT number, state FROM trials").fetchall()
    numbers = [n for n, _ in rows]
    assert len(numbers) == len(set(numbers))
    assert "RUNNING" not in {s for _, s in rows}
    finished = [n for n, s in rows if s in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4  # the budget, each trial recorded once
