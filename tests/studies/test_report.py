"""``msatune report``: files written, criteria numbers checked against the store, TensorBoard files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from msatune.studies.cli import main
from msatune.studies.report.build import attach_report, build_report, tensorboard_hint
from msatune.studies.store.connect import open_storage
from msatune.studies.store.ensemble_records import ensemble_records
from msatune.studies.store.workspace import Workspace
from tests.studies.tensorboard_events import read_event_scalars

PNG = b"\x89PNG\r\n\x1a\n"


def _steps(trial: optuna.trial.FrozenTrial) -> list[tuple[int, float]]:
    """The trial's validation MAE per epoch, from its Ray progress.csv (the store holds the best
    so far at each epoch, which must be the running minimum of these)."""
    path = Path(trial.user_attrs["checkpoint"]).parent / "progress.csv"
    with path.open(newline="") as fh:
        steps = sorted((int(float(r["epoch"])), float(r["val_mae"])) for r in csv.DictReader(fh))
    running = np.minimum.accumulate([v for _, v in steps]).tolist()
    assert running == pytest.approx([trial.intermediate_values[e] for e, _ in steps])
    return steps


def _progress_train_mae(trial: optuna.trial.FrozenTrial) -> dict[int, float]:
    path = Path(trial.user_attrs["checkpoint"]).parent / "progress.csv"
    with path.open(newline="") as fh:
        return {int(float(r["epoch"])): float(r["train_mae"]) for r in csv.DictReader(fh)}


def _test_mae(trial: optuna.trial.FrozenTrial) -> float:
    with np.load(Path(trial.user_attrs["checkpoint"]) / "predictions.npz") as f:
        return float(np.mean(np.abs(f["test_pred"].ravel().astype(np.float64)
                                    - f["test_label"].ravel().astype(np.float64))))


def test_report_on_the_tiny_study_matches_the_store(tiny_study: dict, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    rc = main(["--workspace", str(tiny_study["workspace"]), "report", tiny_study["name"],
               "--out", str(out), "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)

    # gradients.png: every trial records its gradient norms; attention.png: the presets' models
    # have adaptive fusion, whose modality weights are recorded (tests/studies/test_report_monitoring.py)
    for name in ("history.png", "curves.png", "gradients.png", "attention.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
    # 6 trials: too few for a meaningful importance, and the report says so instead of a chart
    assert not (out / "importance.png").exists()
    assert any("importance not computed: needs at least 15 trials at one epoch ASHA compares" in n
               for n in printed["notes"])
    # the shared study may hold an ensemble record (other tests build one): the report follows it
    study = optuna.load_study(study_name=tiny_study["name"], storage=tiny_study["storage_url"])
    has_ensemble = any(k.startswith("msatune:ensemble:") for k in study.user_attrs)
    assert (out / "ensemble.png").exists() == has_ensemble
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 + has_ensemble
    assert "src=\"http" not in page and "<link" not in page  # self-contained
    assert "best validation MAE &lt; 1.2" in page

    criteria = json.loads((out / "criteria.json").read_text())["criteria"]
    report = json.loads((out / "report.json").read_text())
    assert report["criteria"] == criteria == printed["criteria"]

    # recompute every number from the store (and the trial files the store points to)
    study = optuna.load_study(study_name=tiny_study["name"], storage=open_storage(tiny_study["storage_url"]))
    trials = study.get_trials()
    assert report["counts"]["COMPLETE"] == sum(t.state == TrialState.COMPLETE for t in trials)
    assert report["counts"]["PRUNED"] == sum(t.state == TrialState.PRUNED for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: (t.value, t.number))
    base = next(t for t in trials if t.user_attrs.get("preset") == "baseline")

    c = criteria["best_val_mae"]
    assert c["trial"] == best.number and c["value"] == pytest.approx(best.value)
    assert c["pass"] == (best.value < 1.2)

    best_epoch = next(step for step, v in _steps(best) if v == best.value)
    c = criteria["gap"]
    train = _progress_train_mae(best)[best_epoch]
    assert c["epoch"] == best_epoch and c["train_mae"] == pytest.approx(train)
    assert c["value"] == pytest.approx(best.value - train) and c["pass"] == (best.value - train < 0.3)

    c = criteria["stability"]
    before = float(np.std(np.diff([v for _, v in _steps(base)])))
    after = float(np.std(np.diff([v for _, v in _steps(best)])))
    assert c["baseline_trial"] == base.number and c["best_trial"] == best.number
    assert c["before"] == pytest.approx(before) and c["after"] == pytest.approx(after)
    if len(_steps(base)) >= 3 and base.number != best.number:
        assert c["pass"] == (after < before)

    c = criteria["test_improvement"]
    assert c["before"] == pytest.approx(_test_mae(base)) and c["after"] == pytest.approx(_test_mae(best))
    assert c["value"] == pytest.approx(_test_mae(base) - _test_mae(best))
    assert c["pass"] == (c["value"] > 0)

    # the curves shown: presets and top trials, validation MAE from the store
    shown = {cv["number"]: cv for cv in report["curves"]}
    assert base.number in shown and best.number in shown
    for t in trials:
        if t.number in shown:
            steps = _steps(t)
            assert shown[t.number]["epochs"] == [e for e, _ in steps]
            assert shown[t.number]["val_mae"] == pytest.approx([v for _, v in steps])
            assert shown[t.number]["train_source"] == "progress.csv"
    assert report["importance"] == {}
    assert report["reference"]["valid"]["constant_mae"] > 0  # recorded at launch


def test_tensorboard_event_files_hold_val_mae_per_epoch(tiny_study: dict) -> None:
    ws = Workspace(Path(tiny_study["workspace"]))
    hint = tensorboard_hint(ws, tiny_study["name"])
    logdir = ws.study_dir(tiny_study["name"]).resolve() / "ray"
    assert hint == f"tensorboard --logdir {logdir}" and logdir.is_dir()
    study = optuna.load_study(study_name=tiny_study["name"], storage=open_storage(tiny_study["storage_url"]))
    for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
        trial_dir = Path(t.user_attrs["checkpoint"]).parent
        assert logdir in trial_dir.parents
        events = sorted(trial_dir.glob("events.out.tfevents.*"))
        assert events, f"no event file for trial {t.number} in {trial_dir}"
        scalars = read_event_scalars(events[-1])
        val = dict(scalars["ray/tune/val_mae"])
        assert val == pytest.approx(dict(_steps(t))), t.number
        assert set(dict(scalars["ray/tune/train_mae"])) == set(val)


# --- a synthetic study (no training): every criterion computable, ensemble recorded ----------------

def _fake_trial_dir(root: Path, number: int, val: list[float], train: list[float],
                    test_pred: np.ndarray, test_label: np.ndarray) -> Path:
    trial_dir = root / f"trial_{number}"
    ckpt = trial_dir / "checkpoint_000000"
    ckpt.mkdir(parents=True)
    with (trial_dir / "progress.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["val_mae", "train_mae", "epoch", "training_iteration"])
        for e, (v, tr) in enumerate(zip(val, train, strict=True), start=1):
            w.writerow([v, tr, e, e])
    np.savez(ckpt / "predictions.npz", test_pred=test_pred, test_label=test_label)
    return ckpt


def _toward_zero(labels: np.ndarray, err: float) -> np.ndarray:
    """Predictions off by exactly `err` that stay on the sentiment scale (what msatune scores is
    clipped to [-3, 3], so labels + err would score less than err at the scale's ends)."""
    return (labels - np.sign(labels) * err).astype(np.float32)


ENSEMBLE = {
    "method": "greedy",
    "members": [{"trial": 1, "weight": 0.6}, {"trial": 2, "weight": 0.4}],
    "valid": {"mae": 1.00, "corr": 0.41},
    "test": {"mae": 1.02, "corr": 0.40},
    "best_single": {"trial": 1, "valid_mae": 1.05, "test_mae": 1.10},  # ensemble.fitting's record()
    "cv_valid_mae": 1.03,
    "model_path": "/x/ensemble.keras",
}


@pytest.fixture
def synthetic_study(tmp_path: Path) -> dict:
    ws = Workspace(tmp_path / "ws").ensure()
    storage = open_storage(ws.storage_url)
    study = optuna.create_study(study_name="syn", storage=storage)
    study.set_user_attr("msatune:max_epochs", 4)
    study.set_user_attr("msatune:ensemble:greedy", json.dumps(ENSEMBLE))
    labels = np.linspace(-3, 3, 10).astype(np.float32)
    runs = ws.study_dir("syn") / "ray" / "run0"
    dist = {"learning_rate": FloatDistribution(1e-4, 1e-2, log=True), "dropout": FloatDistribution(0, 0.5)}
    specs = [  # number, preset, val per epoch, train per epoch, test error, state
        (0, "baseline", [1.60, 1.30, 1.55, 1.35], [1.40, 1.00, 0.80, 0.60], 0.9, TrialState.COMPLETE),
        (1, None, [1.40, 1.10, 1.05, 1.07], [1.30, 1.00, 0.90, 0.85], 0.5, TrialState.COMPLETE),
        (2, "improved", [1.50, 1.45], [1.40, 1.30], 0.7, TrialState.PRUNED),
        (3, None, [1.45, 1.20, 1.15, 1.16], [1.40, 1.10, 1.00, 0.95], 0.6, TrialState.COMPLETE),
    ]
    for number, preset, val, train, err, state in specs:
        ckpt = _fake_trial_dir(runs, number, val, train, _toward_zero(labels, err), labels)
        attrs = {"checkpoint": str(ckpt), "epochs": len(val)}
        if preset:
            attrs["preset"] = preset
        study.add_trial(create_trial(
            state=state, value=min(val), params={"learning_rate": 1e-3 * (number + 1), "dropout": 0.1 * number},
            distributions=dist, user_attrs=attrs,
            intermediate_values=dict(enumerate(val, start=1))))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "boom"}))
    return {"ws": ws, "storage": storage, "name": "syn"}


def test_report_criteria_and_ensemble_on_a_synthetic_study(synthetic_study: dict, tmp_path: Path) -> None:
    rep = build_report(synthetic_study["storage"], "syn", tmp_path / "r", ws=synthetic_study["ws"], top=2)
    cr = rep.payload["criteria"]
    assert {k: cr["best_val_mae"][k] for k in ("value", "pass", "threshold", "trial", "epoch", "beats_constant")} == {
        "value": 1.05, "pass": True, "threshold": 1.2, "trial": 1, "epoch": 3, "beats_constant": True}
    assert cr["gap"]["value"] == pytest.approx(1.05 - 0.90) and cr["gap"]["pass"] is True
    before = float(np.std(np.diff([1.60, 1.30, 1.55, 1.35])))
    after = float(np.std(np.diff([1.40, 1.10, 1.05, 1.07])))
    assert cr["stability"]["before"] == pytest.approx(before)
    assert cr["stability"]["after"] == pytest.approx(after) and cr["stability"]["pass"] is True
    assert cr["test_improvement"]["before"] == pytest.approx(0.9, abs=1e-6)
    assert cr["test_improvement"]["after"] == pytest.approx(0.5, abs=1e-6)
    assert cr["test_improvement"]["value"] == pytest.approx(0.4, abs=1e-6) and cr["test_improvement"]["pass"]
    assert [r["result"] for r in rep.payload["criteria_table"]] == ["PASS"] * 4

    assert set(rep.figures) == {"history", "curves", "ensemble"}  # 3 complete trials: no importance
    assert all(p.read_bytes().startswith(PNG) for p in rep.figures.values())
    ens = rep.payload["ensembles"]["greedy"]
    assert ens["ensemble"]["test"]["mae"] == 1.02 and ens["best_single"]["trial"] == 1
    assert ens["best_single"]["test"]["mae"] == 1.10
    page = rep.html.read_text()
    assert "Ensemble vs best single trial" in page and page.count("data:image/png;base64,") == 3
    # curves: baseline, improved, then the 2 best complete (#1 and #3)
    assert [c["number"] for c in rep.payload["curves"]] == [0, 2, 1, 3]
    assert rep.payload["counts"]["FAIL"] == 1


def test_report_without_training_files_says_what_is_missing(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="bare", storage=storage)
    for i, vals in enumerate(([1.5, 1.4, 1.3], [1.6, 1.2])):
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=min(vals), params={},
                                     distributions={}, intermediate_values=dict(enumerate(vals, 1)),
                                     user_attrs={"preset": "baseline"} if i == 0 else {}))
    rep = build_report(storage, "bare", tmp_path / "r")
    cr = rep.payload["criteria"]
    assert cr["best_val_mae"]["value"] == 1.2 and cr["gap"]["pass"] is None and "note" in cr["gap"]
    assert cr["stability"]["pass"] is None  # the best trial has only 2 epochs
    assert cr["test_improvement"]["pass"] is None
    assert "importance" not in rep.figures and rep.payload["notes"]
    assert json.loads((tmp_path / "r" / "criteria.json").read_text())["criteria"]["gap"]["value"] is None


def test_report_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ws = Workspace(tmp_path / "ws").ensure()
    storage = open_storage(ws.storage_url)
    optuna.create_study(study_name="empty", storage=storage)
    assert main(["--workspace", str(ws.root), "report", "emty"]) == 2
    assert "did you mean empty" in capsys.readouterr().err
    assert main(["--workspace", str(ws.root), "report", "empty"]) == 2
    assert "no finished trial" in capsys.readouterr().err


def test_attach_puts_note_and_artifacts_on_the_study(synthetic_study: dict, tmp_path: Path) -> None:
    storage, ws = synthetic_study["storage"], synthetic_study["ws"]
    rep = build_report(storage, "syn", tmp_path / "r", ws=ws)
    sid = storage.get_study_id_from_name("syn")
    attach_report(storage, "syn", rep, ws.artifact_dir)
    attach_report(storage, "syn", rep, ws.artifact_dir)  # again: replaces, does not pile up
    attrs = storage.get_study_system_attrs(sid)
    live = [json.loads(v) for k, v in attrs.items() if k.startswith("artifacts:") and json.loads(v)]
    assert sorted(a["filename"] for a in live) == sorted(
        ["report.html", "history.png", "curves.png", "ensemble.png"])
    assert len(list(ws.artifact_dir.iterdir())) == 4
    note = "".join(v for k, v in sorted(attrs.items()) if k.startswith("dashboard:note_str:"))
    assert "msatune report" in note and "PASS" in note and "Ensemble **greedy**" in note


def test_ensemble_records_tolerates_shapes() -> None:
    recs = ensemble_records({
        "msatune:ensemble:greedy": ENSEMBLE,  # a dict
        "msatune:ensemble:mean": json.dumps({**ENSEMBLE, "method": "mean",  # JSON, full metric dicts
                                             "best_single": {"trial": 1, "valid": {"mae": 1.05, "corr": 0.3},
                                                             "test": {"mae": 1.1, "corr": 0.3}}}),
        "msatune:ensemble:broken": "{not json",
        "msatune:ensemble:partial": {"valid": {"mae": 1.0}},  # no best single: skipped
        "msatune:budget": 6,
    })
    assert sorted(recs) == ["greedy", "mean"]
    assert recs["mean"]["method"] == "mean" and not math.isnan(recs["greedy"]["ensemble"]["valid"]["mae"])
    assert recs["greedy"]["best_single"] == {"trial": 1, "valid": {"mae": 1.05}, "test": {"mae": 1.10}}
    assert recs["mean"]["best_single"]["test"] == {"mae": 1.1, "corr": 0.3}


# --- honesty: the constant predictor beside every number ------------------------------------------

def _worse_than_constant(tmp_path: Path) -> dict:
    """The study of the issue: its best trial (the improved preset, val MAE 1.3628) loses to the
    constant predictor (1.2778) yet beats the baseline on test by 16%."""
    ws = Workspace(tmp_path / "ws").ensure()
    storage = open_storage(ws.storage_url)
    study = optuna.create_study(study_name="t1", storage=storage)
    study.set_user_attr("msatune:max_epochs", 4)
    study.set_user_attr("msatune:reference", {"valid": {"constant_mae": 1.2778, "floor_mae": 0.61},
                                              "test": {"constant_mae": 1.30, "floor_mae": 0.62}})
    labels = np.linspace(-3, 3, 10).astype(np.float32)
    runs = ws.study_dir("t1") / "ray" / "run0"
    specs = [  # number, preset, val per epoch, train per epoch, test error
        (0, "baseline", [1.60, 1.55, 1.50, 1.45], [1.50, 1.45, 1.44, 1.40], 1.90),
        (1, "improved", [1.50, 1.40, 1.3628, 1.37], [1.30, 1.25, 1.20, 1.18], 1.59),
    ]
    for number, preset, val, train, err in specs:
        ckpt = _fake_trial_dir(runs, number, val, train, _toward_zero(labels, err), labels)
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, value=min(val), params={}, distributions={},
            user_attrs={"checkpoint": str(ckpt), "epochs": len(val), "preset": preset},
            intermediate_values=dict(enumerate(val, start=1))))
    return {"ws": ws, "storage": storage}


def test_a_model_no_better_than_the_constant_predictor_never_passes(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # rich would wrap the table's cells at 80 columns
    s = _worse_than_constant(tmp_path)
    rep = build_report(s["storage"], "t1", tmp_path / "r", ws=s["ws"])
    cr = rep.payload["criteria"]
    assert cr["best_val_mae"]["value"] == pytest.approx(1.3628) and cr["best_val_mae"]["pass"] is False
    assert cr["gap"]["value"] == pytest.approx(1.3628 - 1.20) and cr["gap"]["pass"] is False  # < 0.3, still FAIL
    ti = cr["test_improvement"]
    assert ti["reference"] == "constant predictor" and ti["before"] == pytest.approx(1.30)
    assert ti["baseline"] == pytest.approx(1.90, abs=1e-6) and ti["pass"] is False
    assert "PASS" not in [r["result"] for r in rep.payload["criteria_table"]]
    for row in rep.payload["criteria_table"]:
        assert "constant predictor" in row["numbers"], row
    assert "noise floor 0.6100" in rep.payload["criteria_table"][0]["numbers"]
    assert "noise floor 0.6200" in rep.payload["criteria_table"][3]["numbers"]
    assert "= the improved preset" in rep.payload["criteria_table"][0]["numbers"]
    page = rep.html.read_text()
    assert "constant predictor MAE 1.2778" in page and "the improved preset" in page

    assert main(["--workspace", str(s["ws"].root), "report", "t1", "--out", str(tmp_path / "r2")]) == 0
    out = capsys.readouterr().out
    assert "PASS" not in out and "the improved preset" in out
    assert "constant predictor valid MAE 1.2778" in out


def test_importance_needs_enough_complete_trials_and_says_which_it_uses(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="many", storage=storage)
    rng = np.random.default_rng(0)
    dist = {"dropout": FloatDistribution(0, 0.5), "learning_rate": FloatDistribution(1e-4, 1e-2, log=True)}
    for i in range(24):
        d, lr = float(rng.uniform(0, 0.5)), float(10 ** rng.uniform(-4, -2))
        value = 1.0 + 2 * abs(d - 0.2) + 0.01 * rng.standard_normal()
        state = TrialState.COMPLETE if i < 21 else TrialState.PRUNED
        study.add_trial(create_trial(state=state, value=value, params={"dropout": d, "learning_rate": lr},
                                     distributions=dist, intermediate_values={1: value}))
    few = build_report(storage, "many", tmp_path / "r0")  # 21 complete: enough
    assert "importance" in few.figures
    assert set(few.payload["importance"]) == {"dropout", "learning_rate"}
    assert any("over the 24 trials that reached it (21 complete, 3 pruned)" in n for n in few.payload["notes"])
    assert max(few.payload["importance"], key=few.payload["importance"].get) == "dropout"


def test_the_ensemble_chart_is_zoomed_to_its_values(tmp_path: Path) -> None:
    from msatune.studies.report.plots import plot_ensembles

    rec = {"greedy": {"method": "greedy", "ensemble": {"valid": {"mae": 1.146}, "test": {"mae": 1.150}},
                      "best_single": {"trial": 3, "valid": {"mae": 1.168}, "test": {"mae": 1.171}}}}
    low, high = plot_ensembles(rec, "z", tmp_path / "e.png",
                               {"valid": {"constant_mae": 1.28}, "test": {"constant_mae": 1.30}})
    assert 1.0 < low < 1.146 and 1.30 < high < 1.5


def test_the_report_table_shows_every_best_single_metric(synthetic_study: dict, tmp_path: Path) -> None:
    study = optuna.load_study(study_name="syn", storage=synthetic_study["storage"])
    full = {**ENSEMBLE, "best_single": {"trial": 1, "valid_mae": 1.05, "test_mae": 1.10,
                                        "valid": {"mae": 1.05, "corr": 0.31}, "test": {"mae": 1.10, "corr": 0.29}}}
    study.set_user_attr("msatune:ensemble:greedy", json.dumps(full))
    rep = build_report(synthetic_study["storage"], "syn", tmp_path / "r", ws=synthetic_study["ws"])
    page = rep.html.read_text()
    assert "<td>corr</td><td>0.3100</td><td>0.4100</td>" in page
    assert "<td>corr</td><td>0.2900</td><td>0.4000</td>" in page
