"""How the CLI writes a study off a terminal (a log file, CI, a pipe): every parameter value is in
the table in full, on one line where no width was set, and a path stays on one line."""

from __future__ import annotations

import pytest

from msatune.studies.cli.render import render_show, short


def test_a_trial_tables_values_survive_an_80_column_log(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    params = {"learning_rate": 0.000312, "dropout": 0.087, "model_dim": 128, "batch_size": 32, "loss": "huber"}
    trial = {"number": 9, "state": "COMPLETE", "val_mae": 0.9484, "epochs": 12, "family": "improved",
             "preset": "improved", "params": params}
    counts = {"COMPLETE": 1, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0}
    checkpoint = "/tmp/a-workspace-of-some-length/studies/demo/ray/run0/trial_488685ff/checkpoint_000005"
    best = {"number": 9, "val_mae": 0.9484, "checkpoint": checkpoint, "preset": None}
    render_show({"name": "demo", "counts": counts, "budget": 10, "trials": [trial], "best": best})
    out = capsys.readouterr().out
    assert f"best: trial 9 val MAE 0.9484; checkpoint {checkpoint}\n" in out  # one line to copy
    assert max(len(line) for line in out.splitlines() if "│" in line) <= 80
    cells = "".join(line.split("│")[-2].strip() for line in out.splitlines() if line.count("│") > 2)
    assert "learning_rate=3.12e-4" in cells and "…" not in out  # folded, never cut
    assert [c.strip() for c in cells.split(",")] == ["learning_rate=3.12e-4", "dropout=0.087", "model_dim=128",
                                                     "batch_size=32", "loss=huber"]


def test_small_rates_are_short_and_exact_to_three_digits() -> None:
    assert [short(v) for v in (0.000312, 3e-4, 1e-5, -5e-4)] == ["3.12e-4", "3e-4", "1e-5", "-5e-4"]
    assert [short(v) for v in (0.003, 0.087, 0.4, 0.0, 128, "huber")] == ["0.003", "0.087", "0.4", "0", "128", "huber"]


def test_off_a_terminal_without_columns_a_trials_parameters_fit_one_line(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    params = {"learning_rate": 0.000647, "dropout": 0.071, "model_dim": 128, "batch_size": 32, "loss": "huber"}
    trial = {"number": 2, "state": "COMPLETE", "val_mae": 1.0274, "epochs": 12, "family": "improved",
             "preset": None, "params": params}
    counts = {"COMPLETE": 1, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0}
    render_show({"name": "demo", "counts": counts, "budget": 10, "trials": [trial], "best": None})
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("│")]
    assert len(rows) == 1, rows  # one line per trial
    assert "learning_rate=6.47e-4, dropout=0.071, model_dim=128, batch_size=32, loss=huber" in rows[0]
