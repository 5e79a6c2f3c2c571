"""What a careless user types never breaks a study (issue 24): each case of the campaign that
found a traceback, a hang, a change made by a failing command or a silently accepted mistake is
run here through the real ``msatune`` command on a tiny real store, and must end in one line
``msatune: error: ...``, exit status 2, with nothing created or changed."""

from __future__ import annotations

import resource
import shutil
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    cli_env,
    file_digest,
    free_port,
    msatune_argv,
    one_error_line,
    one_line_error,
    run_in,
    run_msatune,
    tree_digest,
    tree_paths,
)


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers (a wrong or stuck service)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for conn in held:
        conn.close()


def _unchanged(ws: Path, before: dict[str, str], paths: list[str]) -> None:
    assert tree_digest(ws) == before
    assert tree_paths(ws) == paths


# --- stores that are not there, not SQLite, damaged, locked or behind a silent server ----------

@pytest.mark.parametrize("command", [["show", "tiny"], ["studies"], ["dashboard", "--port", "0"],
                                     ["export", "tiny", "--out", "{tmp}/e.csv"]])
def test_an_unreachable_postgresql_store_is_one_line(tmp_path: Path, command: list[str]) -> None:
    url = f"postgresql://user:secret@127.0.0.1:{free_port()}/db"
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    proc = run_in(tmp_path / "ws", *args, "--storage", url, timeout=120)
    line = one_line_error(proc, "cannot open study store", "reachable")
    assert "secret" not in line  # the password is not printed
    assert not (tmp_path / "ws").exists() and not (tmp_path / "e.csv").exists()


@pytest.mark.parametrize("command", [["show", "tiny"], ["studies"]])
def test_a_postgresql_server_that_never_answers_fails_within_the_connect_timeout(
        tmp_path: Path, silent_port: int, command: list[str]) -> None:
    url = f"postgresql://user@127.0.0.1:{silent_port}/db"
    proc = run_in(tmp_path / "ws", *command, "--storage", url, timeout=90)  # 10 s connect timeout
    one_line_error(proc, "cannot open study store", "timeout")


@pytest.mark.parametrize("command", [["show", "tiny"], ["studies"], ["delete", "tiny", "--yes"],
                                     ["launch", "x", "--data", "{data}"]])
def test_a_file_that_is_no_sqlite_database_is_one_line_and_untouched(
        tmp_path: Path, tiny_data: Path, command: list[str]) -> None:
    notes = tmp_path / "notes.db"
    notes.write_text("my notes\n" * 200)
    digest = file_digest(notes)
    args = [a.replace("{data}", str(tiny_data)) for a in command]
    proc = run_in(tmp_path / "ws", *args, "--storage", f"sqlite:///{notes}", timeout=120)
    one_error_line(proc, "not an intact SQLite study store")
    assert file_digest(notes) == digest


@pytest.mark.parametrize("command", [["show", "tiny"], ["studies"], ["export", "tiny", "--out", "{ws}/e.csv"]])
def test_a_truncated_store_is_one_line_and_left_as_it_is(study_copy: Path, command: list[str]) -> None:
    store = study_copy / "studies.db"
    store.write_bytes(store.read_bytes()[:20_000])
    before, paths = tree_digest(study_copy), tree_paths(study_copy)
    args = [a.replace("{ws}", str(study_copy)) for a in command]
    proc = run_in(study_copy, *args)
    one_line_error(proc, "malformed")
    _unchanged(study_copy, before, paths)


@pytest.mark.parametrize("command", [["show", "tiny"], ["delete", "tiny", "--yes"], ["studies"]])
def test_a_store_another_process_holds_is_one_line_and_unchanged(study_copy: Path, command: list[str]) -> None:
    before, paths = tree_digest(study_copy), tree_paths(study_copy)
    holder = sqlite3.connect(study_copy / "studies.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        proc = run_in(study_copy, *command, env=cli_env(MSATUNE_SQLITE_TIMEOUT_S="2"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    one_line_error(proc, "database is locked", "MSATUNE_SQLITE_TIMEOUT_S")
    _unchanged(study_copy, before, paths)


# --- options out of range, and workspaces that cannot be --------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["refit", "tiny", "--top-k", "1", "--folds", "2", "--repeats", "1000000000"], "--repeats must be between"),
    (["ensemble", "tiny", "--rounds", "1000000000"], "--rounds must be between"),
])
def test_huge_counts_are_refused_at_once(study_copy: Path, args: list[str], needle: str) -> None:
    before, paths = tree_digest(study_copy), tree_paths(study_copy)
    proc = run_in(study_copy, *args, timeout=120)
    one_line_error(proc, needle)
    _unchanged(study_copy, before, paths)


@pytest.mark.parametrize("args, needle", [
    (["--seed", "-1"], "'--seed'"),
    (["--name", "../x"], "study name '../x'"),
    (["--name", ""], "study name ''"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial must be > 0"),
    (["--cpus-per-trial", "-1"], "--cpus-per-trial must be > 0"),
    (["--cpus-per-trial", "64"], "more CPUs than this machine has"),
])
def test_a_refused_demo_writes_nothing(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = run_in(tmp_path / "ws", "demo", *args)
    one_line_error(proc, needle)
    assert not (tmp_path / "ws").exists()  # not even the synthetic dataset


@pytest.mark.parametrize("workspace, needle", [("", "is empty"), ("{file}/sub", "is a file, not a directory")])
@pytest.mark.parametrize("command", [["studies"], ["launch", "x", "--data", "{data}"]])
def test_a_workspace_that_cannot_be_is_refused(tmp_path: Path, tiny_data: Path, workspace: str, needle: str,
                                               command: list[str]) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    argv = [a.replace("{data}", str(tiny_data)) for a in command]
    proc = run_msatune("--workspace", workspace.replace("{file}", str(a_file)), *argv, cwd=tmp_path)
    one_line_error(proc, "--workspace", needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing in the current directory


# --- Ray addresses that are empty or never answer ------------------------------------------------

def test_an_empty_address_is_refused(tmp_path: Path, tiny_data: Path) -> None:
    proc = run_in(tmp_path / "ws", "launch", "x", "--data", tiny_data, "--address", "")
    one_line_error(proc, "--address is empty")
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("command", [["launch", "x", "--data", "{data}"], ["resume", "tiny", "--trials", "1"],
                                     ["refit", "tiny", "--top-k", "1", "--folds", "2"]])
def test_an_address_that_accepts_but_never_answers_fails_in_one_line(
        study_copy: Path, tiny_data: Path, silent_port: int, command: list[str]) -> None:
    before, paths = tree_digest(study_copy), tree_paths(study_copy)
    argv = [a.replace("{data}", str(tiny_data)) for a in command]
    proc = run_in(study_copy, *argv, "--address", f"127.0.0.1:{silent_port}",
                  env=cli_env(MSATUNE_CONNECT_TIMEOUT_S="3"), timeout=150)
    one_error_line(proc, "does not answer as a Ray head")
    _unchanged(study_copy, before, paths)


# --- outputs over files that are not the command's ------------------------------------------------

def test_predict_never_writes_over_a_study_store(study_copy: Path, tiny_data: Path) -> None:
    store = study_copy / "studies.db"
    digest = file_digest(store)
    proc = run_in(study_copy, "predict", study_copy / "no-model", "--data", tiny_data, "--out", store, "--force")
    one_line_error(proc, "SQLite database", "never overwritten")
    assert file_digest(store) == digest
    proc = run_in(study_copy, "studies")
    assert proc.returncode == 0 and "tiny" in proc.stdout


@pytest.mark.parametrize("command", [["predict", "{ws}/no-model", "--data", "{data}", "--out", "{out}"],
                                     ["export", "tiny", "--out", "{out}"]])
def test_an_output_that_is_a_users_file_is_refused_without_force(study_copy: Path, tiny_data: Path,
                                                                  command: list[str]) -> None:
    mine = study_copy / "mine.csv"
    mine.write_text("my,own,table\n1,2,3\n")
    argv = [a.replace("{ws}", str(study_copy)).replace("{data}", str(tiny_data)).replace("{out}", str(mine))
            for a in command]
    proc = run_in(study_copy, *argv)
    one_line_error(proc, "--out", "--force")
    assert mine.read_text() == "my,own,table\n1,2,3\n"


def test_export_replaces_its_own_export_and_with_force_a_users_file(study_copy: Path) -> None:
    out = study_copy / "trials.csv"
    assert run_in(study_copy, "export", "tiny", "--out", out).returncode == 0
    assert run_in(study_copy, "export", "tiny", "--out", out).returncode == 0  # its own: replaced
    mine = study_copy / "mine.csv"
    mine.write_text("x\n")
    assert run_in(study_copy, "export", "tiny", "--out", mine, "--force").returncode == 0
    assert mine.read_text().startswith("number,state,")


def test_data_synth_overwrite_in_a_workspace_keeps_the_store_and_notes(study_copy: Path) -> None:
    (study_copy / "notes.txt").write_text("mine")
    store = file_digest(study_copy / "studies.db")
    proc = run_msatune("data", "synth", study_copy, "--preset", "tiny", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert file_digest(study_copy / "studies.db") == store
    assert (study_copy / "notes.txt").read_text() == "mine"
    assert (study_copy / "text_train_emb.h5").is_file()


def test_predict_refuses_a_keras_model_that_is_not_msatunes(tmp_path: Path, tiny_data: Path) -> None:
    import keras

    foreign = keras.Sequential([keras.Input((8, 16)), keras.layers.Flatten(), keras.layers.Dense(1)])
    foreign.save(tmp_path / "foreign.keras")
    (tmp_path / "broken.keras").write_bytes(b"PK\x03\x04 not a zip")
    for name, needle in (("foreign.keras", "not one of msatune's"), ("broken.keras", "not a .keras file")):
        proc = run_in(tmp_path / "ws", "predict", tmp_path / name, "--data", tiny_data, "--out", tmp_path / "p.csv")
        one_line_error(proc, needle, tf_noise=True)
    assert not (tmp_path / "p.csv").exists()


# --- a full disk ----------------------------------------------------------------------------------

def _file_size_limit(kib: int):
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (kib * 1024, kib * 1024))
    return limit


def test_data_synth_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "data"
    proc = subprocess.run(msatune_argv("data", "synth", out, "--preset", "mosi"), capture_output=True, text=True,
                          env=cli_env(), timeout=300, preexec_fn=_file_size_limit(64))
    one_line_error(proc, "File too large", "free space")
    assert list(tmp_path.iterdir()) == []


def test_a_report_on_a_full_disk_keeps_the_earlier_report(study_copy: Path, tiny_study: dict) -> None:
    shutil.copytree(Path(tiny_study["workspace"]) / "studies", study_copy / "studies")
    assert run_in(study_copy, "report", "tiny").returncode == 0
    report_dir = study_copy / "studies" / "tiny" / "report"
    before = tree_digest(report_dir)
    proc = subprocess.run(msatune_argv("report", "tiny", workspace=study_copy), capture_output=True, text=True,
                          env=cli_env(), timeout=300, preexec_fn=_file_size_limit(30))
    one_error_line(proc, "file too large")
    assert tree_digest(report_dir) == before  # no half-written file, no staging directory
    shutil.rmtree(report_dir)
    proc = subprocess.run(msatune_argv("report", "tiny", workspace=study_copy), capture_output=True, text=True,
                          env=cli_env(), timeout=300, preexec_fn=_file_size_limit(30))
    one_error_line(proc, "file too large")
    assert not report_dir.exists()
