"""Training-log analysis: the three msa-tf2 fixture logs and bad files."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from msatune.errors import UserError
from msatune.models.log_analysis import (
    CRITERIA,
    STILL_IMPROVING_WINDOW,
    analyze_log,
    instability,
    read_training_log,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / ".." / "shared" / "fixtures" / "msa-tf2-logs"
ADAPTIVE = "training_log_20250902_adaptivefusion.csv"
NO_ADAPTIVE = "training_log_20250902_no_adaptivefusion.csv"
IMPROVED = "improved_training_log_20250917_021016.csv"

needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"fixture logs not found at {FIXTURES} (shared/ beside the repo)"
)

# Verified by hand against the CSV files: (best val MAE, best epoch, min train MAE, gap at best,
# passes val criterion, passes gap criterion).
EXPECTED = {
    ADAPTIVE: (1.6302, 4, 0.6161, 0.3272, False, False),  # 1-based: CSV epoch 3 is the 4th
    NO_ADAPTIVE: (1.5713, 21, 0.6616, 0.4784, False, False),
    IMPROVED: (1.0579, 13, 0.8762, 0.0607, True, True),
}


def _independent(path: Path) -> dict:
    """The numbers recomputed with the csv module and the standard library only."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    val = [float(r["val_mae"]) for r in rows]
    train = [float(r["mae"]) for r in rows]
    best = min(range(len(val)), key=lambda i: (val[i], i))
    diffs = [b - a for a, b in zip(val, val[1:], strict=False)]
    return {
        "best_val_mae": val[best],
        "best_epoch": int(rows[best]["epoch"]) + 1,
        "min_train_mae": min(train),
        "gap_at_best": val[best] - train[best],
        "gap_at_end": val[-1] - train[-1],
        "instability": statistics.pstdev(diffs),
        "epochs": len(rows),
        "still_improving": best > 0 and len(rows) - 1 - best < STILL_IMPROVING_WINDOW,
    }


@needs_fixtures
@pytest.mark.parametrize("name", [ADAPTIVE, NO_ADAPTIVE, IMPROVED])
def test_fixture_logs(name: str) -> None:
    path = FIXTURES / name
    result = analyze_log(path)
    ref = _independent(path)
    for key, value in ref.items():
        assert getattr(result, key) == pytest.approx(value, abs=1e-12), key

    best, epoch, min_train, gap, val_ok, gap_ok = EXPECTED[name]
    assert round(result.best_val_mae, 4) == best
    assert result.best_epoch == epoch
    assert round(result.min_train_mae, 4) == min_train
    assert round(result.gap_at_best, 4) == gap
    assert result.criteria["val_mae_below_1.2"]["pass"] is val_ok
    assert result.criteria["gap_below_0.3"]["pass"] is gap_ok
    assert result.still_improving is False


@needs_fixtures
def test_acceptance_adaptivefusion_dict() -> None:
    d = analyze_log(FIXTURES / ADAPTIVE).to_dict()
    for key in (
        "best_val_mae",
        "best_epoch",
        "min_train_mae",
        "gap_at_best",
        "gap_at_end",
        "instability",
        "criteria",
    ):
        assert key in d
    assert round(d["best_val_mae"], 4) == 1.6302
    assert d["best_epoch"] == 4
    assert round(d["min_train_mae"], 4) == 0.6161
    assert d["criteria"] == {
        "val_mae_below_1.2": {"value": d["best_val_mae"], "threshold": 1.2, "pass": False},
        "gap_below_0.3": {"value": d["gap_at_best"], "threshold": 0.3, "pass": False},
    }
    assert CRITERIA == {"val_mae": 1.2, "gap": 0.3}


def test_a_log_whose_best_is_its_first_epoch_is_not_improving(tmp_path: Path) -> None:
    """The issue's sequence: 1.516 -> 1.818 -> 1.829 never improved after the first epoch."""
    r = analyze_log(_write(tmp_path, "epoch,mae,val_mae\n0,1.6,1.516\n1,1.4,1.818\n2,1.3,1.829\n"))
    assert r.best_epoch == 1 and r.still_improving is False
    r = analyze_log(_write(tmp_path, "epoch,mae,val_mae\n0,1.6,1.818\n1,1.4,1.516\n2,1.3,1.829\n"))
    assert r.best_epoch == 2 and r.still_improving is True  # a new best at epoch 2 of 3
    r = analyze_log(_write(tmp_path, "epoch,mae,val_mae\n0,1.6,1.5\n"))
    assert r.still_improving is False  # one epoch: nothing improved yet


def test_instability_by_hand() -> None:
    # diffs 1.0, -0.5 -> mean 0.25, deviations +-0.75 -> std (ddof=0) 0.75
    assert instability([1.0, 2.0, 1.5]) == pytest.approx(0.75)
    assert instability([1.0]) == 0.0
    assert instability(np.array([2.0, 2.0, 2.0])) == 0.0


def _write(tmp_path: Path, text: str, name: str = "log.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_extra_and_missing_optional_columns(tmp_path: Path) -> None:
    # No epoch, no mae, an extra numeric and an extra text column.
    p = _write(tmp_path, "val_mae,extra,note\n2.0,1,a\n1.5,2,b\n1.0,3,c\n")
    cols = read_training_log(p)
    assert list(cols["epoch"]) == [0, 1, 2]
    assert "note" not in cols and list(cols["extra"]) == [1, 2, 3]
    r = analyze_log(p)
    assert r.best_val_mae == 1.0 and r.best_epoch == 3 and r.epochs == 3
    assert r.min_train_mae is None and r.gap_at_best is None and r.gap_at_end is None
    assert r.criteria["gap_below_0.3"]["pass"] is None
    assert r.criteria["val_mae_below_1.2"]["pass"] is True
    assert r.still_improving is True  # best in the last epoch


def test_gap_and_epoch_column(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "epoch,lr,mae,val_mae\n5,0.1,1.0,1.3\n6,0.1,0.8,1.1\n7,0.1,0.5,1.2\n8,0.1,0.4,NA\n"
        "9,0.1,0.3,1.4\n",
    )
    r = analyze_log(p)
    assert r.best_epoch == 7 and r.best_val_mae == pytest.approx(1.1)  # CSV epoch 6, 1-based
    assert r.gap_at_best == pytest.approx(0.3)
    assert r.criteria["gap_below_0.3"]["pass"] is False  # strictly below
    assert r.gap_at_end == pytest.approx(1.1)
    assert r.min_train_mae == pytest.approx(0.3)
    assert r.still_improving is False  # best at row 1 of 5, last 3 are rows 2..4
    assert r.instability == pytest.approx(instability([1.3, 1.1, 1.2, 1.4]))


def test_analyze_columns_dict() -> None:
    r = analyze_log({"val_mae": np.array([1.0, 0.9]), "mae": np.array([0.5, 0.4])})
    assert r.best_epoch == 2 and r.path is None
    assert r.gap_at_best == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("", ["empty"]),
        ("epoch,mae,loss\n0,1.0,1.0\n", ["val_mae", "column"]),
        ("epoch,mae,val_mae\n", ["no epoch rows"]),
        ("epoch,mae,val_mae\n0,1.0,1.2\n1,abc,1.1\n", ["line 3", "'mae'", "abc", "not a number"]),
        ("epoch,mae,val_mae\n0,1.0\n", ["line 2", "2 cells", "3 columns"]),
        ("epoch,val_mae\n0,NA\n", ["no finite val_mae"]),
    ],
)
def test_bad_files(tmp_path: Path, text: str, needles: list[str]) -> None:
    p = _write(tmp_path, text, "bad.csv")
    with pytest.raises(UserError) as info:
        analyze_log(p)
    msg = str(info.value)
    assert "bad.csv" in msg and "\n" not in msg
    for needle in needles:
        assert needle in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_training_log(tmp_path / "nope.csv")
    with pytest.raises(UserError, match="not a file"):
        read_training_log(tmp_path)


def test_to_dict_is_json_ready(tmp_path: Path) -> None:
    import json

    p = _write(tmp_path, "epoch,mae,val_mae\n0,1.0,1.5\n1,0.9,1.4\n")
    d = analyze_log(p).to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert not any(isinstance(v, float) and math.isnan(v) for v in d.values())
