"""Bad input to launch / resume / show / studies: exit 2, one line, no traceback, store unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest

from tests.conftest import file_digest as digest
from tests.conftest import one_error_line
from tests.conftest import run_in as run


def test_unknown_study_names_close_matches(study_copy: Path) -> None:
    before = digest(study_copy / "studies.db")
    one_error_line(run(study_copy, "show", "tinny"), "no study named 'tinny'", "did you mean tiny")
    one_error_line(run(study_copy, "resume", "tinny"), "no study named 'tinny'")
    assert digest(study_copy / "studies.db") == before


def test_launching_an_existing_name_suggests_resume(study_copy: Path, tiny_data: Path) -> None:
    before = digest(study_copy / "studies.db")
    one_error_line(run(study_copy, "launch", "tiny", "--data", str(tiny_data), "--trials", "2"),
                   "already exists", "msatune resume tiny")
    assert digest(study_copy / "studies.db") == before


@pytest.mark.parametrize("args, needles", [
    (["--trials", "0"], ["--trials must be > 0"]),
    (["--trials", "-3"], ["--trials must be > 0"]),
    (["--max-epochs", "0"], ["--max-epochs must be > 0"]),
    (["--reduction-factor", "1"], ["--reduction-factor must be >= 2"]),
    (["--cpus-per-trial", "0"], ["--cpus-per-trial must be > 0"]),
])
def test_bad_numbers_are_refused_before_anything_is_written(tmp_path: Path, tiny_data: Path,
                                                            args: list[str], needles: list[str]) -> None:
    ws = tmp_path / "ws"
    one_error_line(run(ws, "launch", "s", "--data", str(tiny_data), *args), *needles)
    assert not (ws / "studies.db").exists() or not optuna.get_all_study_names(f"sqlite:///{ws / 'studies.db'}")


def test_bad_space_file_names_the_key_and_creates_no_study(tmp_path: Path, tiny_data: Path) -> None:
    ws = tmp_path / "ws"
    space = tmp_path / "bad.toml"
    space.write_text("[dropout]\nlow = 0.9\nhigh = 0.1\n")
    one_error_line(run(ws, "launch", "s", "--data", str(tiny_data), "--space", str(space)),
                   str(space), "'dropout'", "low (0.9) > high (0.1)")
    missing = tmp_path / "nope.toml"
    one_error_line(run(ws, "launch", "s", "--data", str(tiny_data), "--space", str(missing)), "does not exist")
    assert not ws.exists()  # no workspace, no store: the space is checked before anything is written


@pytest.mark.parametrize("url, needle", [
    ("not a url", "is not a database URL"),
    ("sqlite:////no/such/dir/x.db", "does not exist"),
    ("sqlite://", "in-memory"),
])
def test_bad_storage_url(tmp_path: Path, url: str, needle: str) -> None:
    one_error_line(run(tmp_path / "ws", "studies", "--storage", url), needle)


def test_a_sqlite_url_with_a_tilde_names_one_file_for_every_check_and_open(tmp_path: Path, monkeypatch) -> None:
    """`sqlite:///~/x.db` is the home directory's x.db for the existence checks and for SQLite
    itself (which would otherwise open a literal './~/x.db'); a `file:` URI names the same file."""
    from msatune.studies.store.connect import (
        check_can_create,
        open_existing,
        open_storage,
        sqlite_file,
    )

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///~/x.db"
    assert sqlite_file(url) == tmp_path / "x.db"
    check_can_create(url)
    assert open_existing(url) is None  # nothing there yet, nothing created
    optuna.create_study(study_name="s", storage=open_storage(url))
    assert (tmp_path / "x.db").is_file() and not (tmp_path / "~").exists()
    assert [s.study_name for s in optuna.get_all_study_summaries(open_existing(url))] == ["s"]
    assert sqlite_file(f"sqlite:///file:{tmp_path / 'x.db'}?mode=ro&uri=true") == tmp_path / "x.db"
    assert [s.study_name for s in optuna.get_all_study_summaries(open_storage(url, read_only=True))] == ["s"]


def test_changed_data_fingerprint_refuses_resume_unless_forced(tiny_study: dict, tmp_path: Path) -> None:
    """Point a copy of the study at a copy of its data, change the data, try to resume."""
    from msatune.studies.store.studies import set_study_attr

    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(Path(tiny_study["workspace"]) / "studies.db", ws / "studies.db")
    data = tmp_path / "data"
    shutil.copytree(tiny_study["data"], data)
    url = f"sqlite:///{ws / 'studies.db'}"
    set_study_attr(optuna.load_study(study_name="tiny", storage=url), "data_path", str(data))
    from msatune.augment.synth import synthesize

    synthesize(data, preset="tiny", seed=1, overwrite=True)  # same layout, different content
    before = digest(ws / "studies.db")
    line = one_error_line(run(ws, "resume", "tiny", "--trials", "1"), "data of study 'tiny' changed",
                          "--force")
    assert str(data) in line
    assert digest(ws / "studies.db") == before


def test_resume_of_a_finished_study_says_what_to_do(study_copy: Path) -> None:
    proc = run(study_copy, "resume", "tiny", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "used its budget of 6 trials" in proc.stdout and "--trials N" in proc.stdout
