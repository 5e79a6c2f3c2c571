"""A study over several model families (``launch --family all``) end to end: real Ray, SQLite and
TensorFlow on tiny data. Its first trials are the four presets (the seqlevel one among them); every
trial records its family; ``show``, the ensemble (members across families) and a refit of the
seqlevel configuration all work on it; a checkpoint meets data of other video dims in one line."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from msatune.search.trial_config import PRESETS
from tests.conftest import TINY_SPACE, one_line_error, run_in

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: Searched trials small (the presets train their own sizes); both families searched.
MIXED_SPACE = TINY_SPACE + '\n[family]\nchoices = ["improved", "seqlevel"]\n[pooling_method]\nchoices = ["mean", "attention"]\n'


@pytest.fixture(scope="module")
def mixed_study(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, ray_session) -> dict:
    from msatune.search.search_settings import SearchSettings
    from msatune.studies.runs import launch
    from msatune.studies.store.connect import open_storage
    from msatune.studies.store.workspace import Workspace

    root = tmp_path_factory.mktemp("mixed-ws")
    space = root.parent / "mixed.toml"
    space.write_text(MIXED_SPACE)
    ws = Workspace(root).ensure()
    opts = SearchSettings(trials=7, max_epochs=2, grace_period=2, reduction_factor=2, cpus_per_trial=1.0,
                          seed=3)
    summary = launch(ws, open_storage(ws.storage_url), "mixed", opts, data_dir=tiny_data, space_file=space,
                     family="all")
    return {"workspace": root, "url": ws.storage_url, "summary": summary}


def test_a_mixed_study_runs_the_four_presets_and_records_each_trials_family(mixed_study: dict) -> None:
    study = optuna.load_study(study_name="mixed", storage=mixed_study["url"])
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.user_attrs.get("preset") for t in trials[:4]] == ["baseline", "improved", "balanced", "seqlevel"]
    assert [t.user_attrs.get("family") for t in trials[:4]] == ["baseline", "improved", "baseline", "seqlevel"]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials[:4]), [t.state for t in trials]
    for t in trials[4:]:
        assert t.user_attrs["family"] == t.params["family"]
        assert ("pooling_method" in t.params) == (t.params["family"] == "seqlevel")
    seq = trials[3]
    config = json.loads((Path(seq.user_attrs["checkpoint"]) / "config.json").read_text())
    assert {k: config[k] for k in ("family", "model_dim", "pooling_method", "learning_rate")} == {
        k: PRESETS["seqlevel"][k] for k in ("family", "model_dim", "pooling_method", "learning_rate")}

    shown = run_in(mixed_study["workspace"], "show", "mixed", "--json")
    assert shown.returncode == 0, shown.stderr
    payload = json.loads(shown.stdout)
    assert payload["family"] == "all"
    families = {t["number"]: t["family"] for t in payload["trials"]}
    assert families[3] == "seqlevel" and families[0] == "baseline"
    table = run_in(mixed_study["workspace"], "show", "mixed")
    assert "family" in table.stdout and "seqlevel" in table.stdout


def test_an_ensemble_across_families_names_each_members_family(mixed_study: dict) -> None:
    from msatune.ensemble.fitting import EnsembleOptions
    from msatune.studies.ensembles import run_ensemble
    from msatune.studies.store.workspace import Workspace

    result = run_ensemble(Workspace(mixed_study["workspace"]), mixed_study["url"], "mixed",
                          EnsembleOptions(top_k=7, method="mean"), export=True, saved_model=False)
    members = result.summary()["members"]
    study = optuna.load_study(study_name="mixed", storage=mixed_study["url"])
    by_number = {t.number: t.user_attrs.get("family") for t in study.trials}
    assert [m["family"] for m in members] == [by_number[m["trial"]] for m in members]
    assert {"seqlevel", "baseline"} <= {m["family"] for m in members}

    report = run_in(mixed_study["workspace"], "report", "mixed")
    assert report.returncode == 0, report.stderr
    html = (Path(mixed_study["workspace"]) / "studies" / "mixed" / "report" / "report.html").read_text()
    assert "<th>family</th>" in html and "<td>seqlevel</td>" in html
    listed = ", ".join(f"#{m['trial']} {m['family']}" for m in members[:1])
    assert listed in html  # the ensemble's members with their families


def test_refit_retrains_the_seqlevel_configuration(mixed_study: dict) -> None:
    from msatune.studies.refit.run import RefitOptions, run_refit
    from msatune.studies.store.connect import open_storage
    from msatune.studies.store.workspace import Workspace

    study = optuna.load_study(study_name="mixed", storage=mixed_study["url"])
    best = study.best_trial.number
    # the val-best trial and the seqlevel preset (trial 3) by number, not every trial ranked between
    chosen = (best, 3) if best != 3 else (3, 0)
    summary = run_refit(Workspace(mixed_study["workspace"]), open_storage(mixed_study["url"]), "mixed",
                        RefitOptions(trials=chosen, folds=2))
    assert [c["trial"] for c in summary["chosen"]] == list(chosen) and summary["trials_asked"] == list(chosen)
    folds = optuna.load_study(study_name="mixed:refit", storage=mixed_study["url"]).trials
    assert sorted({t.params["trial"] for t in folds}) == sorted(chosen) and len(folds) == 4
    seq_folds = [t for t in folds if t.params["trial"] == 3]
    assert len(seq_folds) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in seq_folds)
    config = json.loads((Path(seq_folds[0].user_attrs["checkpoint"]) / "config.json").read_text())
    assert config["family"] == "seqlevel"

    # The bagged ensemble keeps each member's family in its record, so the report names it.
    made = run_in(mixed_study["workspace"], "ensemble", "mixed", "--from", "refit", "--method", "mean",
                  "--top-k", "2", "--no-export")
    assert made.returncode == 0, made.stderr
    study = optuna.load_study(study_name="mixed", storage=mixed_study["url"])
    record = study.user_attrs["msatune:ensemble:refit-mean"]
    by_number = {t.number: t.user_attrs.get("family") for t in study.trials}
    assert record["members"] and all(m["family"] == by_number[m["trial"]] for m in record["members"])
    assert all(m["family"] in {"baseline", "improved", "seqlevel"} for m in record["members"])


def test_a_checkpoint_refuses_data_of_other_video_dims_in_one_line(mixed_study: dict, tmp_path: Path) -> None:
    study = optuna.load_study(study_name="mixed", storage=mixed_study["url"])
    checkpoint = Path(sorted(study.trials, key=lambda t: t.number)[3].user_attrs["checkpoint"])
    other = tmp_path / "other"
    made = run_in(tmp_path / "ws", "data", "synth", other, "--preset", "video")
    assert made.returncode == 0, made.stderr
    out = tmp_path / "preds.csv"
    one_line_error(run_in(tmp_path / "ws", "predict", checkpoint, "--data", other, "--out", out),
                   "takes text/audio/video dims 16/8/6", tf_noise=True)
    assert not out.exists()
