"""``msatune ensemble | predict`` end to end, in a subprocess like a user runs them.

Bad input exits 2 with one stderr line ``msatune: error: ...`` and no traceback. Error paths run
on small SQLite stores made here (fabricated checkpoints, no Ray, no TensorFlow); the working
path runs on the shared real ``tiny_study``.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from msatune.studies.cli import main
from tests.conftest import cli_env, run_in
from tests.conftest import one_line_error as assert_user_error

optuna.logging.set_verbosity(optuna.logging.WARNING)


def run_cli(ws: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_in(ws, *args, env=cli_env(CUDA_VISIBLE_DEVICES=""))


def fake_checkpoint(directory: Path, seed: int, noise: float, n: int = 40) -> Path:
    """A checkpoint directory with plausible metadata and predictions (weights are a placeholder:
    enough for selection with --no-export)."""
    import h5py

    rng = np.random.default_rng(100)
    yv, yt = rng.uniform(-3, 3, n), rng.uniform(-3, 3, n)
    r = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "checkpoint.json").write_text(json.dumps(
        {"dims": {"text": 4, "audio": 3, "video": 2}, "seq_len": 5, "format": 1, "data_fingerprint": "fp"}))
    (directory / "config.json").write_text("{}")
    with h5py.File(directory / "model.weights.h5", "w") as f:
        f.create_dataset("w", data=np.zeros(3))
    np.savez(directory / "predictions.npz", valid_pred=yv + r.normal(0, noise, n), valid_label=yv,
             valid_index=np.arange(n), test_pred=yt + r.normal(0, noise, n), test_label=yt,
             test_index=np.arange(n))
    return directory


def make_workspace(ws: Path, name: str, entries: list[dict[str, Any]]) -> Path:
    """``ws/studies.db`` with study ``name``: one trial per entry (state, value, checkpoint)."""
    ws.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=f"sqlite:///{(ws / 'studies.db').resolve()}", study_name=name)
    for e in entries:
        state = e.get("state", TrialState.COMPLETE)
        attrs = {"checkpoint": str(e["checkpoint"])} if e.get("checkpoint") else {}
        study.add_trial(create_trial(state=state, value=e.get("value") if state == TrialState.COMPLETE else None,
                                     user_attrs=attrs))
    return ws


@pytest.fixture
def three_good(tmp_path: Path) -> Path:
    entries = [{"value": n, "checkpoint": fake_checkpoint(tmp_path / f"c{i}", i, n)}
               for i, n in enumerate((0.5, 0.6, 0.7))]
    return make_workspace(tmp_path / "ws", "s", entries)


# ---------------------------------------------------------------------------------------------
# bad input


def test_unknown_study(three_good: Path) -> None:
    assert_user_error(run_cli(three_good, "ensemble", "z"), "no study named 'z'")
    assert_user_error(run_cli(three_good, "ensemble", "ss"), "no study named 'ss'", "did you mean s")


def test_no_complete_trial(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", "s", [{"state": TrialState.PRUNED}, {"state": TrialState.FAIL}])
    assert_user_error(run_cli(ws, "ensemble", "s"), "no COMPLETE trial", "1 pruned", "msatune resume s")


def test_none_beats_the_constant_predictor(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", "s", [{"value": 3.0, "checkpoint": fake_checkpoint(tmp_path / "c", 0, 4.0)}])
    assert_user_error(run_cli(ws, "ensemble", "s"), "beats the constant predictor", "best is trial 0")


@pytest.mark.parametrize("args, needle", [
    (["--top-k", "0"], "--top-k must be at least 1, got 0"),
    (["--method", "mean", "--top-k", "-2"], "--top-k must be at least 1, got -2"),
    (["--rounds", "0"], "--rounds must be between 1 and"),
    (["--max-candidates", "0"], "--max-candidates must be at least 1"),
    (["--method", "stacking"], "'stacking' is not one of"),
    (["--trial-share", "1.5"], "'1.5' is not a share: give a number in [0, 1]"),
    (["--trial-share", "half"], "'half' is not a share: give a number in [0, 1] (0.5: half the bag) or 'equal'"),
])
def test_bad_options(three_good: Path, args: list[str], needle: str) -> None:
    assert_user_error(run_cli(three_good, "ensemble", "s", *args), needle)


def test_top_k_larger_than_the_candidates_uses_all_and_says_so(three_good: Path) -> None:
    proc = run_cli(three_good, "ensemble", "s", "--method", "mean", "--top-k", "10", "--no-export", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "msatune: note: --top-k 10 is more than the 3 candidates: using all 3" in proc.stderr
    out = json.loads(proc.stdout)
    assert [m["trial"] for m in out["members"]] == [0, 1, 2]
    assert all(abs(m["weight"] - 1 / 3) < 1e-6 for m in out["members"])
    assert out["model_path"] is None and out["method"] == "mean"
    assert set(out) >= {"method", "members", "valid", "test", "best_single", "model_path", "cv", "reference"}


def test_missing_and_corrupt_checkpoints_are_skipped_with_a_warning(tmp_path: Path) -> None:
    good = fake_checkpoint(tmp_path / "good", 0, 0.6)
    missing = fake_checkpoint(tmp_path / "missing", 1, 0.5)
    (missing / "predictions.npz").unlink()
    corrupt = fake_checkpoint(tmp_path / "corrupt", 2, 0.5)
    (corrupt / "checkpoint.json").write_text("{")
    ws = make_workspace(tmp_path / "ws", "s", [{"value": 0.5, "checkpoint": missing},
                                               {"value": 0.5, "checkpoint": corrupt},
                                               {"value": 0.6, "checkpoint": good}])
    proc = run_cli(ws, "ensemble", "s", "--no-export")
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("msatune: warning: ")]
    assert len(warnings) == 2 and "trial 0:" in warnings[0] and "trial 1:" in warnings[1]
    assert "predictions.npz are missing" in warnings[0] and "corrupt" in warnings[1]
    assert "best single vs ensemble" in proc.stdout

    ws2 = make_workspace(tmp_path / "ws2", "s", [{"value": 0.5, "checkpoint": missing},
                                                {"value": 0.5, "checkpoint": corrupt},
                                                {"value": 0.4, "checkpoint": tmp_path / "nowhere"}])
    assert_user_error(run_cli(ws2, "ensemble", "s"), "none of the 3 complete trials", "usable checkpoint")


def test_weights_that_fail_to_load_at_export_drop_the_member(three_good: Path) -> None:
    """Placeholder weights pass the cheap check but cannot rebuild a model: each member is dropped
    and the combiner refitted; with none left, one error line names the reason."""
    proc = run_cli(three_good, "ensemble", "s")
    assert_user_error(proc, "none of the 3 complete trials of study 's' has a usable checkpoint", "trial 0:",
                      "model.weights.h5", tf_noise=True)


def test_predict_bad_model(tmp_path: Path, tiny_data: Path) -> None:
    assert_user_error(run_cli(tmp_path, "predict", tmp_path / "nope", "--data", tiny_data, "--out", tmp_path / "p.csv"),
                      "does not exist")
    (tmp_path / "empty").mkdir()
    assert_user_error(run_cli(tmp_path, "predict", tmp_path / "empty", "--data", tiny_data, "--out", tmp_path / "p.csv"),
                      "is not a model msatune can load")


def test_predict_checks_the_dims(tmp_path: Path) -> None:
    from msatune.ensemble.export import Predictor
    from msatune.errors import UserError

    p = Predictor("keras", tmp_path / "m.keras", None, {"text": 16, "audio": 8, "video": 6}, 8)
    p.check_data({"text": 16, "audio": 8, "video": 6}, 8, "dataset d")
    with pytest.raises(UserError, match="takes text/audio/video dims 16/8/6 but dataset d has 300/74/47"):
        p.check_data({"text": 300, "audio": 74, "video": 47}, 8, "dataset d")
    with pytest.raises(UserError, match="sequences of length 8 but dataset d has 20"):
        p.check_data({"text": 16, "audio": 8, "video": 6}, 20, "dataset d")


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in ("ensemble", "predict"):
        assert main([cmd, "--help"]) == 0
        text = capsys.readouterr().out
        assert "Examples:" in text and "msatune " + cmd in text


# ---------------------------------------------------------------------------------------------
# a real study


def test_ensemble_then_predict_on_a_real_study(tiny_study: dict, tmp_path: Path) -> None:
    ws = tiny_study["workspace"]
    out_dir = tmp_path / "ens"
    proc = run_cli(ws, "ensemble", tiny_study["name"], "--json", "--out", out_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert res["method"] == "greedy" and res["members"]
    assert abs(sum(m["weight"] for m in res["members"]) - 1) <= 5e-7 * len(res["members"]) + 1e-12  # 6-decimal JSON
    assert res["valid"]["mae"] <= res["best_single"]["valid"]["mae"] + 1e-9
    assert res["model_path"] == str(out_dir / "ensemble.keras") and Path(res["model_path"]).is_file()
    assert Path(res["saved_model_path"], "saved_model.pb").is_file()
    assert res["export_check"]["max_abs_diff_vs_members"] <= 1e-5

    from msatune.studies.store.connect import open_storage
    from msatune.studies.store.studies import load_study, study_attrs

    recorded = study_attrs(load_study(open_storage(tiny_study["storage_url"]), tiny_study["name"]))
    assert recorded["ensemble:greedy"]["members"] == [
        {"trial": m["trial"], "weight": m["weight"], "family": m["family"]} for m in res["members"]]
    assert {m["family"] for m in res["members"]} <= {"baseline", "improved"}
    assert recorded["ensemble:greedy"]["test"]["mae"] == pytest.approx(res["test"]["mae"])
    # the report's table shows every best-single metric, so the record holds them all
    assert recorded["ensemble:greedy"]["best_single"]["test"] == pytest.approx(res["best_single"]["test"])

    csv_path = tmp_path / "preds.csv"
    proc = run_cli(ws, "predict", out_dir, "--data", tiny_study["data"], "--out", csv_path, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    rows = list(csv.DictReader(csv_path.open()))
    assert summary["n"] == len(rows) and list(rows[0]) == ["index", "prediction", "label"]
    pred = np.array([float(r["prediction"]) for r in rows])
    label = np.array([float(r["label"]) for r in rows])
    assert np.mean(np.abs(pred - label)) == pytest.approx(res["test"]["mae"], abs=1e-4)

    # the .keras file itself (the documented one-liner is tested on the installed wheel)
    proc = run_cli(ws, "predict", out_dir / "ensemble.keras", "--data", tiny_study["data"],
                   "--out", tmp_path / "k.csv", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["mae"] == pytest.approx(res["test"]["mae"], abs=1e-4)


def test_build_and_render_for_the_demo(tiny_study: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from msatune.studies.cli.context import AppContext
    from msatune.studies.cli.ensemble import build_and_render
    from msatune.studies.store.connect import open_storage

    app = AppContext(workspace=Path(tiny_study["workspace"]))
    summary = build_and_render(app, open_storage(tiny_study["storage_url"]), tiny_study["name"])
    captured = capsys.readouterr()
    out = captured.out
    assert "best single vs ensemble" in out and "members" in out and "selection optimism" in out
    assert summary["method"] == "greedy"
    # what `msatune ensemble NAME` builds: no refit here, so the trials', and how to get the bagged one
    assert "note: built from the study's trials (it has no finished refit)" in captured.err
    assert f"msatune refit {tiny_study['name']}" in captured.err
    assert "wall time: search " in out and summary["cost"]["refit_s"] is None
    assert Path(summary["model_path"]).parent == app.ws.study_dir(tiny_study["name"]) / "ensembles" / "greedy"


def test_out_must_be_a_directory_for_the_ensemble(three_good: Path, tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("mine")
    assert_user_error(run_cli(three_good, "ensemble", "s", "--out", tmp_path / "file.txt"), "is a file")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert_user_error(run_cli(three_good, "ensemble", "s", "--out", tmp_path / "full"), "holds no ensemble")
    assert (tmp_path / "file.txt").read_text() == "mine" and (tmp_path / "full" / "keep.txt").exists()
