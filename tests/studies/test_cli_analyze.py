"""``msatune analyze``: JSON and table output, and the one-line error contract."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import one_line_error, run_msatune

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / ".." / "shared" / "fixtures" / "msa-tf2-logs"
ADAPTIVE = FIXTURES / "training_log_20250902_adaptivefusion.csv"

needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"fixture logs not found at {FIXTURES} (shared/ beside the repo)"
)


def _run(*args: str) -> subprocess.CompletedProcess:
    return run_msatune("analyze", *args, env=os.environ, timeout=60)


@needs_fixtures
def test_json_for_fixture() -> None:
    proc = _run(str(ADAPTIVE), "--json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert round(d["best_val_mae"], 4) == 1.6302
    assert d["best_epoch"] == 4  # 1-based: the CSV's epoch 3
    assert round(d["min_train_mae"], 4) == 0.6161
    for key in ("gap_at_best", "gap_at_end", "instability"):
        assert isinstance(d[key], float)
    assert d["criteria"]["val_mae_below_1.2"]["pass"] is False
    assert d["criteria"]["gap_below_0.3"]["pass"] is False


def test_bad_file_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("epoch,mae\n0,1.0\n")
    one_line_error(_run(str(bad)), "val_mae")
    one_line_error(_run(str(tmp_path / "missing.csv"), "--json"), "does not exist")


@needs_fixtures
def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    from msatune.studies.cli import main

    assert main(["analyze", str(ADAPTIVE)]) == 0
    out = capsys.readouterr().out
    assert "1.6302" in out and "0.6161" in out and "FAIL" in out


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    from msatune.studies.cli import main

    assert main(["analyze", "--help"]) == 0
    out = capsys.readouterr().out
    assert "val_mae" in out and "1.2" in out and "0.3" in out and "--json" in out
