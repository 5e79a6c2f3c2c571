"""``msatune refit`` and ``ensemble --from refit`` end to end: real Ray, real SQLite, real TF on tiny data.

* ``kill -9`` of a refit driver, then the same command again: no finished fold is trained again,
  the dead driver's Ray processes end, and the refit ends with exactly K x F fold models, every
  fold in the store with its checkpoint and held-out predictions; a rerun then trains nothing;
* poisoned test data (labels and features) changes nothing before the final score: fold models,
  their held-out predictions, the OOF ranking and the bagged ensemble's members and weights;
* the bagged ensemble exports one ``.keras`` model whose members average their fold models;
* ``show`` and the report gain the refit table; bad input is one line, exit 2, nothing changed.

The refits use copies of the shared ``tiny_study`` store (its trials' checkpoints are only read).
The killed and continued refit (``refit_a``, through the CLI like a user) is the refit the other
tests read.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from msatune.errors import UserError
from msatune.studies.refit import DEFAULT_FOLDS
from tests.conftest import cli_env, kill_9, msatune_argv, one_line_error, ray_left, run_in
from tests.conftest import file_digest as digest

optuna.logging.set_verbosity(optuna.logging.WARNING)
K, F = 2, 2


def copy_store(tiny_study: dict, ws: Path) -> str:
    ws.mkdir(parents=True)
    shutil.copy(Path(tiny_study["workspace"]) / "studies.db", ws / "studies.db")
    return f"sqlite:///{(ws / 'studies.db').resolve()}"


def refit(ws: Path, url: str, **options) -> dict:
    from msatune.studies.refit.run import RefitOptions, run_refit
    from msatune.studies.store.connect import open_storage
    from msatune.studies.store.workspace import Workspace

    opts = RefitOptions(**{"top_k": K, "folds": F, **options})
    return run_refit(Workspace(ws), open_storage(url), "tiny", opts)


def study_data_path(url: str) -> str:
    return optuna.load_study(study_name="tiny", storage=url).user_attrs["msatune:data_path"]


def fold_trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="tiny:refit", storage=url).trials


def held_out(summary: dict) -> dict[tuple, tuple]:
    """(trial, repeat, fold) -> (held-out index, predictions, best epoch) of every fold model."""
    from msatune.models.checkpoint import read_checkpoint_meta, read_predictions

    out = {}
    for t in fold_trials(summary["url"]):
        if t.state != TrialState.COMPLETE:
            continue
        ckpt = t.user_attrs["checkpoint"]
        p = read_predictions(ckpt, ("valid",))
        out[(t.params["trial"], t.params["repeat"], t.params["fold"])] = (
            p["valid_index"], p["valid_pred"], read_checkpoint_meta(ckpt)[1]["best_epoch"])
    return out


@pytest.fixture(scope="module")
def refit_a(tiny_study: dict, tmp_path_factory: pytest.TempPathFactory, ray_session) -> dict:
    """``msatune refit`` killed with ``kill -9`` after its first fold, then the same command again
    to its end: the rerun's summary, with what the killed driver had recorded (``killed``)."""
    from msatune.search.ray_orphans import RAY_PIDS_FILE

    tmp = tmp_path_factory.mktemp("refit-a")
    ws = tmp / "ws"
    url = copy_store(tiny_study, ws)
    args = ["refit", "tiny", "--top-k", str(K), "--folds", str(F), "--concurrency", "1", "--json"]
    with open(tmp / "driver.err", "w") as err:
        driver = subprocess.Popen(msatune_argv(*args, workspace=ws), stdout=subprocess.DEVNULL, stderr=err,
                                  env=cli_env())
    try:
        deadline, done = time.time() + 400, 0
        while time.time() < deadline and not done:
            time.sleep(0.5)
            assert driver.poll() is None, "the refit ended before it could be killed: " + (
                tmp / "driver.err").read_text()[-3000:]
            try:
                done = sum(t.state == TrialState.COMPLETE for t in fold_trials(url))
            except KeyError:  # the refit study does not exist yet
                continue
        assert 0 < done < K * F, f"saw {done} finished folds"
        ray_info = kill_9(driver, ws / "studies" / "tiny" / "refit" / RAY_PIDS_FILE)
    finally:
        if driver.poll() is None:
            driver.kill()
    before = {(t.params["trial"], t.params["fold"]): (t.number, t.value, t.user_attrs["checkpoint"])
              for t in fold_trials(url) if t.state == TrialState.COMPLETE}
    weights = {k: digest(Path(v[2]) / "model.weights.h5") for k, v in before.items()}
    ray_alive_after_kill = ray_left(ray_info)
    proc = run_in(ws, *args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    killed = {"before": before, "weights": weights, "ray_info": ray_info, "ray_alive": ray_alive_after_kill}
    return {**json.loads(proc.stdout), "url": url, "ws": ws, "killed": killed}


def test_kill_9_then_rerun_trains_no_finished_fold(refit_a: dict) -> None:
    killed = refit_a["killed"]
    before, weights, ray_info = killed["before"], killed["weights"], killed["ray_info"]
    assert 0 < len(before) < K * F
    # the dead driver's watchdog ended its Ray processes without waiting for a rerun
    assert killed["ray_alive"] == []
    assert refit_a["run"]["already_done"] == len(before)
    assert refit_a["run"]["folds_run"] == K * F - len(before)  # only the unfinished folds trained
    after = [t for t in fold_trials(refit_a["url"]) if t.state == TrialState.COMPLETE]
    keys = [(t.params["trial"], t.params["fold"]) for t in after]
    assert len(keys) == len(set(keys)) == K * F  # one fold model per (configuration, fold)
    for t in after:
        key = (t.params["trial"], t.params["fold"])
        assert Path(t.user_attrs["checkpoint"], "model.weights.h5").is_file()
        if key in before:
            assert (t.number, t.value, t.user_attrs["checkpoint"]) == before[key]
            assert digest(Path(before[key][2]) / "model.weights.h5") == weights[key]
    assert all(r["oof_mae"] is not None for r in refit_a["configs"])
    assert ray_left(ray_info) == []


def test_a_refit_records_every_fold_and_a_rerun_trains_nothing(refit_a: dict) -> None:
    from msatune.augment.dataset import load_dataset

    run = refit_a["run"]  # the continued run trained what the killed one had not (test above)
    assert run["already_done"] + run["folds_run"] == K * F and run["complete"] == run["folds_run"]
    trials = fold_trials(refit_a["url"])
    assert len(trials) == K * F and all(t.state == TrialState.COMPLETE for t in trials)
    chosen = [c["trial"] for c in refit_a["chosen"]]
    assert {(t.params["trial"], t.params["fold"]) for t in trials} == {(c, f) for c in chosen for f in range(F)}
    data = load_dataset(study_data_path(refit_a["url"]))
    n_pool = data.train.n + data.valid.n
    models = held_out(refit_a)
    for c in chosen:  # the folds of a configuration partition train+valid: OOF covers every sample
        idx = np.concatenate([models[(c, 0, f)][0] for f in range(F)])
        assert np.array_equal(np.sort(idx), np.arange(n_pool))
    for t in trials:  # the recorded fold MAE is the held-out MAE of the fold's checkpoint
        idx, pred, _ = models[(t.params["trial"], 0, t.params["fold"])]
        labels = np.concatenate([data.train.labels, data.valid.labels])[idx]
        assert t.value == pytest.approx(float(np.mean(np.abs(pred - labels))), abs=1e-5)
    rows = {r["trial"]: r for r in refit_a["configs"]}
    assert set(rows) == set(chosen) and all(r["oof_mae"] is not None for r in rows.values())
    assert sorted(r["rank_oof"] for r in rows.values()) == [1.0, 2.0]
    oof = np.load(refit_a["oof_files"][str(chosen[0])])
    assert oof["oof"].shape == (1, n_pool) and oof["fold"].shape == (1, n_pool)
    assert np.mean(np.abs(oof["oof"][0] - oof["label"])) == pytest.approx(rows[chosen[0]]["oof_mae"])

    # the same command again, folds left unset (they are the refit's own, F, not the default):
    # everything is recorded
    again = refit(refit_a["ws"], refit_a["url"], folds=None)
    assert again["folds"] == F != DEFAULT_FOLDS
    assert again["run"]["already_done"] == K * F and again["run"]["folds_run"] == 0
    assert len(fold_trials(refit_a["url"])) == K * F


def test_folds_on_a_reused_worker_reuse_the_previous_folds_compiled_step(refit_a: dict) -> None:
    """One fold at a time (--concurrency 1) on Ray's reused actor: a fold whose configuration's
    graph the previous fold on that worker traced trains without tracing (models.step_cache);
    the first fold in a new worker process must trace."""
    trials = [t for t in fold_trials(refit_a["url"]) if t.state == TrialState.COMPLETE]
    assert all(isinstance(t.user_attrs.get("traces"), int) for t in trials)
    rerun = sorted((t for t in trials if t.user_attrs["run"] == max(x.user_attrs["run"] for x in trials)),
                   key=lambda t: t.number)
    assert len(rerun) >= 2
    assert rerun[0].user_attrs["traces"] >= 1  # a fresh worker has nothing kept
    # the graph differs between the configurations only by what they sampled: a fold that
    # follows one of its own configuration on the same worker reuses the step
    follows_own = [b for a, b in zip(rerun, rerun[1:], strict=False) if a.params["trial"] == b.params["trial"]]
    assert follows_own, "no two consecutive folds of one configuration in the rerun"
    assert all(t.user_attrs["traces"] == 0 for t in follows_own), [t.user_attrs for t in rerun]


def test_ensemble_by_default_bags_the_refit_and_says_how_to_get_one_without(refit_a: dict, study_copy: Path) -> None:
    """``msatune ensemble NAME`` (--from auto): the bagged refit ensemble where the study has a
    finished refit, the trials' ensemble with a note naming the refit command where it has none."""
    from msatune.ensemble.fitting import EnsembleOptions
    from msatune.studies.ensembles import run_ensemble
    from msatune.studies.store.workspace import Workspace

    options = EnsembleOptions(method="mean", top_k=2)
    bagged = run_ensemble(Workspace(refit_a["ws"]), refit_a["url"], "tiny", options, export=False,
                          source="auto").summary()
    assert bagged["source"] == "refit" and "oof" in bagged
    assert not any("msatune refit" in n for n in bagged.get("notes", []))
    url = f"sqlite:///{(study_copy / 'studies.db').resolve()}"
    plain = run_ensemble(Workspace(study_copy), url, "tiny", options, export=False, source="auto").summary()
    assert plain.get("source") != "refit" and "valid" in plain
    assert any("msatune refit tiny" in n for n in plain["notes"]), plain["notes"]

    # each says what it cost in wall time: the recorded search runs, the refit's when it bags it
    from msatune.studies.cli.ensemble import cost_line
    from msatune.studies.store.refit_records import refit_runs

    study = optuna.load_study(study_name="tiny", storage=refit_a["url"])
    search_s = round(sum(r["wall_seconds"] for r in study.user_attrs["msatune:runs"]), 1)
    refit_study = optuna.load_study(study_name="tiny:refit", storage=refit_a["url"])
    refit_s = round(sum(r["wall_seconds"] for r in refit_runs(refit_study)), 1)
    cost = bagged["cost"]
    assert (cost["search_s"], cost["refit_s"]) == (search_s, refit_s) and search_s > 0 and refit_s > 0
    assert cost["ensemble_s"] > 0
    assert cost["total_s"] == pytest.approx(search_s + refit_s + cost["ensemble_s"], abs=0.2)
    assert cost_line(cost).startswith("wall time: search ") and " + refit " in cost_line(cost)
    assert plain["cost"]["refit_s"] is None and plain["cost"]["search_s"] == search_s
    assert "refit" not in cost_line(plain["cost"])


def poisoned_copy(source: Path, dest: Path) -> Path:
    """``source`` with the test split's labels and features replaced by garbage."""
    import h5py

    shutil.copytree(source, dest)
    rng = np.random.default_rng(99)
    for name in ("y_test.h5", "text_test_emb.h5", "audio_test.h5", "video_test.h5"):
        with h5py.File(dest / name, "r+") as f:
            old = f["d1"][()]
            new = rng.uniform(-3, 3, old.shape) if name.startswith("y_") else rng.normal(0, 50, old.shape)
            f["d1"][...] = new.astype(old.dtype)
    return dest


@pytest.mark.slow
def test_poisoned_test_data_changes_nothing_before_the_final_score(
    refit_a: dict, tiny_study: dict, tmp_path: Path
) -> None:
    from msatune.augment.dataset import load_dataset
    from msatune.ensemble.fitting import EnsembleOptions
    from msatune.studies.ensembles import run_ensemble
    from msatune.studies.store.workspace import Workspace

    ws = tmp_path / "ws"
    url = copy_store(tiny_study, ws)
    bad = load_dataset(poisoned_copy(tiny_study["data"], tmp_path / "poisoned"))
    study = optuna.load_study(study_name="tiny", storage=url)
    assert bad.fingerprint != study.user_attrs["msatune:data_fingerprint"]
    study.set_user_attr("msatune:data_path", str(bad.path))
    study.set_user_attr("msatune:data_fingerprint", bad.fingerprint)
    poisoned = {**refit(ws, url), "url": url}

    # fold training, early stopping (best epoch) and held-out predictions: identical
    clean, dirty = held_out(refit_a), held_out(poisoned)
    assert clean.keys() == dirty.keys()
    for key in clean:
        assert np.array_equal(clean[key][0], dirty[key][0])
        np.testing.assert_allclose(dirty[key][1], clean[key][1], atol=1e-5)
        assert dirty[key][2] == clean[key][2]
    # the OOF scores and ranking: identical
    def ranking(summary: dict) -> list[tuple]:
        return [(r["trial"], r["rank_oof"], r["oof_mae"], r["fold_mae_mean"]) for r in summary["configs"]]

    assert [r[:2] for r in ranking(poisoned)] == [r[:2] for r in ranking(refit_a)]
    np.testing.assert_allclose([r[2:] for r in ranking(poisoned)], [r[2:] for r in ranking(refit_a)], atol=1e-6)

    # the bagged ensemble's selection (members, weights, OOF fit): identical; only test differs
    options = EnsembleOptions(method="greedy", rounds=10)
    a = run_ensemble(Workspace(refit_a["ws"]), refit_a["url"], "tiny", options, export=False, source="refit").summary()
    b = run_ensemble(Workspace(ws), url, "tiny", options, export=False, source="refit").summary()
    assert [(m["trial"], m["weight"]) for m in a["members"]] == [(m["trial"], m["weight"]) for m in b["members"]]
    assert a["oof"] == pytest.approx(b["oof"])
    np.testing.assert_allclose([a["cv"]["valid_mae"], *a["cv"]["fold_mae"]],
                               [b["cv"]["valid_mae"], *b["cv"]["fold_mae"]], atol=1e-6)
    assert a["refit_best_single"]["trial"] == b["refit_best_single"]["trial"]
    assert a["test"]["mae"] != pytest.approx(b["test"]["mae"], abs=1e-3)  # the final score saw the poison


@pytest.mark.slow
def test_the_bagged_ensemble_exports_one_model_that_averages_the_fold_models_and_the_trials_own(
        refit_a: dict) -> None:
    """The default bag gives the trial's own model half of it (``TRIAL_SHARE``), the fold models
    the other half; ``trial_share=None`` an equal share; ``--folds-only`` the fold models alone."""
    import keras

    from msatune.augment.dataset import load_dataset
    from msatune.ensemble.bagging import TRIAL_SHARE
    from msatune.ensemble.fitting import EnsembleOptions
    from msatune.studies.ensembles import run_ensemble
    from msatune.studies.store.ensemble_records import ensemble_records
    from msatune.studies.store.workspace import Workspace

    # --folds-only first: every run is recorded on the study, the default's last
    only = run_ensemble(Workspace(refit_a["ws"]), refit_a["url"], "tiny", EnsembleOptions(method="mean", top_k=2),
                        source="refit", export=False, bag_trial=False)
    equal = run_ensemble(Workspace(refit_a["ws"]), refit_a["url"], "tiny", EnsembleOptions(method="mean", top_k=2),
                         source="refit", export=False, trial_share=None)
    result = run_ensemble(Workspace(refit_a["ws"]), refit_a["url"], "tiny",
                          EnsembleOptions(method="mean", top_k=2), source="refit")
    s = result.summary()
    # members: the configurations whose OOF MAE beats the constant predictor (tiny data: 1 or 2)
    assert s["source"] == "refit" and 1 <= len(s["members"]) == s["candidates"]["used"] <= K
    assert s["export_check"]["split"] == "test" and s["export_check"]["max_abs_diff_vs_recorded"] < 1e-4
    model = keras.saving.load_model(s["model_path"], safe_mode=True)
    data = load_dataset(study_data_path(refit_a["url"]))
    x = {m: getattr(data.test, m) for m in ("text", "audio", "video")}
    fused = np.asarray(model.predict(x, verbose=0)).reshape(-1)
    np.testing.assert_allclose(fused, result.predictions["test"], atol=1e-4)
    # the mean of the members, each half the mean of its F fold models' and half its study
    # trial's own model's test predictions (the default bag); --folds-only: the fold models alone
    study = optuna.load_study(study_name="tiny", storage=refit_a["url"])
    own = {t.number: Path(t.user_attrs["checkpoint"]) for t in study.trials if t.user_attrs.get("checkpoint")}

    def test_pred(ckpt: Path) -> np.ndarray:
        with np.load(ckpt / "predictions.npz") as f:
            return f["test_pred"].reshape(-1)[np.argsort(f["test_index"].reshape(-1))]

    def folds(trial: int) -> list[np.ndarray]:
        ckpts = next(x for x in refit_a["configs"] if x["trial"] == trial)["checkpoints"]
        assert len(ckpts) == F
        return [test_pred(Path(c)) for c in ckpts]

    assert s["refit"]["trials_in_bags"] == sorted(x["trial"] for x in refit_a["configs"])
    assert TRIAL_SHARE == 0.5 and s["refit"]["trial_share"] == 0.5
    members = [0.5 * np.mean(folds(m["trial"]), axis=0) + 0.5 * test_pred(own[m["trial"]]) for m in s["members"]]
    np.testing.assert_allclose(fused, np.mean(np.clip(members, -3, 3), axis=0), atol=1e-4)
    e = equal.summary()
    assert [m["trial"] for m in e["members"]] == [m["trial"] for m in s["members"]]  # the same OOF fit
    assert e["refit"]["trial_share"] == pytest.approx(1 / (F + 1))
    bags = [np.clip(np.mean([*folds(m["trial"]), test_pred(own[m["trial"]])], axis=0), -3, 3) for m in e["members"]]
    np.testing.assert_allclose(equal.predictions["test"], np.mean(bags, axis=0), atol=1e-4)
    assert np.abs(equal.predictions["test"] - result.predictions["test"]).max() > 1e-4  # the share counts
    o = only.summary()
    assert [m["trial"] for m in o["members"]] == [m["trial"] for m in s["members"]]  # the same OOF fit
    assert o["oof"] == pytest.approx(s["oof"]) and o["refit"]["trials_in_bags"] == []
    bags = [np.clip(np.mean(folds(m["trial"]), axis=0), -3, 3) for m in o["members"]]
    np.testing.assert_allclose(only.predictions["test"], np.mean(bags, axis=0), atol=1e-4)
    assert np.abs(only.predictions["test"] - result.predictions["test"]).max() > 1e-3  # the trial's model counts
    assert Path(s["saved_model_path"], "saved_model.pb").is_file()
    for key in ("best_single", "refit_best_single", "non_bagged"):
        assert s[key]["test"]["mae"] > 0
    record = ensemble_records(optuna.load_study(study_name="tiny", storage=refit_a["url"]).user_attrs)["refit-mean"]
    assert record["ensemble"]["test"]["mae"] == pytest.approx(s["test"]["mae"])


def test_the_bagged_source_holds_no_training_features(refit_a: dict) -> None:
    """`ensemble --from refit` reads the pool's labels and the test split's features (valid's for
    a trial checkpoint lacking its predictions): the training split's features are let go before
    any model is loaded (on MOSEI ~1.4 GB of the 1.95 GB loaded), and the comparison with the
    trials' own ensemble still runs."""
    from msatune.augment.dataset import load_dataset
    from msatune.ensemble.fitting import EnsembleOptions
    from msatune.studies.refit.bagged import RefitSource
    from msatune.studies.store.connect import open_storage
    from msatune.studies.store.studies import study_attrs

    store = open_storage(refit_a["url"])
    study = optuna.load_study(study_name="tiny", storage=store)
    src = RefitSource(store, study, study_attrs(study), EnsembleOptions(method="mean", top_k=2))
    assert set(src.data.splits) == {"valid", "test"}
    full = load_dataset(study_data_path(refit_a["url"]))
    assert src.pool.n == full.train.n + full.valid.n and src.data.fingerprint == full.fingerprint
    result = src.fit({})
    assert result.comparison["non_bagged"]["test"]["mae"] > 0
    assert result.comparison["best_single"]["test"]["mae"] > 0


def test_show_and_the_report_gain_the_refit_table(refit_a: dict, tmp_path: Path, capsys) -> None:
    from msatune.studies.cli.render import render_show
    from msatune.studies.queries import list_studies, show_study
    from msatune.studies.report.build import build_report
    from msatune.studies.store.connect import open_storage

    store = open_storage(refit_a["url"])
    payload = show_study(store, "tiny", 5)
    rows = payload["refit"]["configs"]
    assert {r["trial"] for r in rows} == {c["trial"] for c in refit_a["chosen"]}
    assert all({"val_mae", "oof_mae", "rank_val", "rank_oof", "rank_change"} <= set(r) for r in rows)
    # the finalists are ranked by OOF MAE once a refit has them, and show and the report say so
    lead = min(rows, key=lambda r: r["oof_mae"])
    ranking = payload["ranking"]
    assert (ranking["measure"], ranking["trial"], ranking["value"]) == ("oof_mae", lead["trial"], lead["oof_mae"])
    assert ranking["agrees_with_val"] == (lead["trial"] == payload["best"]["number"])
    render_show(payload)
    out = capsys.readouterr().out
    assert "out-of-fold MAE" in out
    assert f"finalists ranked by out-of-fold MAE: trial {lead['trial']}" in " ".join(out.split())
    assert f"best by validation MAE: trial {payload['best']['number']}" in out
    assert "tiny:refit" not in [s["name"] for s in list_studies(store)]
    report = build_report(store, "tiny", tmp_path / "report")
    page = report.html.read_text()
    assert "Refit: validation MAE vs out-of-fold MAE" in page
    assert f"finalists ranked by out-of-fold MAE: trial {lead['trial']}" in page
    assert report.payload["refit"]["configs"][0]["oof_mae"] is not None
    assert report.payload["ranking"] == ranking


def test_deleting_a_study_deletes_its_refit(refit_a: dict, tmp_path: Path) -> None:
    """`msatune delete NAME` takes the refit's fold trials with it: a new study of the same name
    starts without a stale refit (whose folds would belong to other trials)."""
    from msatune.studies.delete import delete_study
    from msatune.studies.store.connect import open_storage
    from msatune.studies.store.workspace import Workspace

    shutil.copy(refit_a["ws"] / "studies.db", tmp_path / "studies.db")
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    names = {s.study_name for s in optuna.get_all_study_summaries(url)}
    assert {"tiny", "tiny:refit"} <= names
    out = delete_study(Workspace(tmp_path), open_storage(url), "tiny")
    names = {s.study_name for s in optuna.get_all_study_summaries(url)}
    assert "tiny" not in names and "tiny:refit" not in names
    assert out["trials"] >= K * F


@pytest.mark.parametrize("args, needle", [
    (["refit", "tinny"], "no study named 'tinny'"),
    (["refit", "tiny", "--top-k", "40"], "--top-k 40 is more than the"),
    (["refit", "tiny", "--folds", "1"], "--folds must be at least 2"),
    (["refit", "tiny", "--top-k", "1", "--folds", "6"], "smallest label bin"),
    (["refit", "tiny", "--repeats", "0"], "--repeats must be between 1 and 100"),
    (["refit", "tiny", "--trial", "99"], "study 'tiny' has no trial 99"),
    (["refit", "tiny", "--trial", "-1"], "--trial takes a trial number >= 0"),
    (["refit", "tiny", "--top-k", "2", "--trial", "0"], "--top-k K (the K best trials) or --trial N"),
    (["ensemble", "tiny", "--from", "refit"], "has no refit yet"),
    (["refit", "tiny", "--top-k", "2", "--gpus-per-trial", "64"], "asks for more GPUs than Ray sees"),
])
def test_bad_refit_input_is_one_line_exit_2_and_changes_nothing(
    tiny_study: dict, tmp_path: Path, args: list[str], needle: str
) -> None:
    ws = tmp_path / "ws"
    copy_store(tiny_study, ws)
    before = digest(ws / "studies.db")
    one_line_error(run_in(ws, *args), needle)
    assert digest(ws / "studies.db") == before
    assert sorted(p.name for p in ws.iterdir()) == ["studies.db"]


def test_refit_refuses_a_pruned_trial_by_number_and_changes_nothing(tiny_study: dict, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    url = copy_store(tiny_study, ws)
    pruned = [t.number for t in optuna.load_study(study_name="tiny", storage=url).trials
              if t.state == TrialState.PRUNED]
    assert pruned, "tiny_study is meant to hold PRUNED trials"
    before = digest(ws / "studies.db")
    with pytest.raises(UserError, match=f"trial {pruned[0]} of study 'tiny' is PRUNED; only COMPLETE"):
        refit(ws, url, trials=(pruned[0],))
    assert digest(ws / "studies.db") == before


def test_a_trial_without_its_checkpoint_is_passed_over_by_top_k_and_refused_by_number(tiny_study: dict) -> None:
    from optuna.trial import create_trial

    from msatune.studies.refit.choice import choose_configs, choose_trials

    source = optuna.load_study(study_name="tiny", storage=f"sqlite:///{Path(tiny_study['workspace']) / 'studies.db'}")
    ckpt = next(t.user_attrs["checkpoint"] for t in source.trials if t.state == TrialState.COMPLETE)
    study = optuna.create_study()
    for value, attrs in ((0.5, {}), (0.6, {"checkpoint": ckpt, "epochs": 3}), (0.7, {"checkpoint": ckpt})):
        study.add_trial(create_trial(value=value, user_attrs=attrs))
    chosen, warnings = choose_configs(study, 2)
    assert [c.trial for c in chosen] == [1, 2] and [c.epochs for c in chosen] == [3, None]
    assert warnings == ["trial 0: no checkpoint recorded; passed over"]
    assert [c.trial for c in choose_trials(study, (2, 1, 2))] == [2, 1]  # as given, once each
    with pytest.raises(UserError, match="--trial: trial 0 of study .* cannot be refit: no checkpoint recorded"):
        choose_trials(study, (1, 0))


def test_unset_folds_repeats_and_seed_are_the_earlier_refits_else_the_defaults() -> None:
    from msatune.studies.refit.run import RefitOptions

    earlier = {"folds": 5, "repeats": 2, "seed": 7}  # a fold refit (recorded before schemes had a key)
    folds = {"scheme": "folds"}
    assert RefitOptions(**folds).settled(None) == RefitOptions(**folds, folds=DEFAULT_FOLDS, repeats=1, seed=0)
    assert RefitOptions(top_k=3).settled(earlier) == RefitOptions(top_k=3, **folds, folds=5, repeats=2, seed=7)
    assert RefitOptions(folds=4).settled(earlier) == RefitOptions(**folds, folds=4, repeats=2, seed=7)
    # --replace starts over: nothing is taken from the refit it discards (the scheme neither)
    assert RefitOptions(folds=3, replace=True).settled(earlier) == RefitOptions(**folds, folds=3, repeats=1, seed=0,
                                                                                  replace=True)
    assert RefitOptions(replace=True).settled(earlier).scheme == "seeds"


def test_a_rerun_with_other_folds_is_refused_unless_replace(refit_a: dict) -> None:
    before = digest(refit_a["ws"] / "studies.db")
    with pytest.raises(UserError, match="already has a refit.*--folds 2 --repeats 1 --seed 0.*--replace"):
        refit(refit_a["ws"], refit_a["url"], folds=3)
    assert digest(refit_a["ws"] / "studies.db") == before


def test_a_refit_whose_folds_stopped_early_is_replaced_not_continued(refit_a: dict, tmp_path: Path) -> None:
    """A refit an earlier msatune made (its folds stopped early on the held-out fold; its record has
    no ``fold_stopping``) is not continued with folds trained another way: one line naming
    --replace, the store unchanged."""
    from msatune.studies.store.connect import open_storage
    from msatune.studies.store.refit_records import existing_spec, refit_study_name, write_spec

    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(refit_a["ws"] / "studies.db", ws / "studies.db")
    url = f"sqlite:///{ws / 'studies.db'}"
    spec = dict(existing_spec(open_storage(url), "tiny"))
    assert spec.pop("fold_stopping") == "the trial's epochs"  # what this msatune records
    write_spec(optuna.load_study(study_name=refit_study_name("tiny"), storage=url), spec)
    before = digest(ws / "studies.db")
    with pytest.raises(UserError, match="an earlier msatune refit it.*stopped early.*--replace"):
        refit(ws, url)
    assert digest(ws / "studies.db") == before


def test_the_ranking_names_the_oof_leader_and_the_val_pick_it_overrules() -> None:
    """Configurations with unfinished folds do not rank; a lead that validation MAE would not pick
    is said; a study without a finished refit configuration ranks by validation MAE."""
    from msatune.studies.refit.table import finalists_ranking, ranking_line

    best = {"number": 4, "val_mae": 0.80, "preset": None}
    table = {"configs": [
        {"trial": 4, "val_mae": 0.80, "oof_mae": 0.95, "preset": None},
        {"trial": 9, "val_mae": 0.83, "oof_mae": 0.91, "preset": "improved"},
        {"trial": 2, "val_mae": 0.85, "oof_mae": None, "preset": None},  # folds still training
    ]}
    ranking = finalists_ranking(table, best, "s")
    assert (ranking["measure"], ranking["trial"], ranking["configs"], ranking["agrees_with_val"]) == (
        "oof_mae", 9, 2, False)
    line = ranking_line(ranking)
    assert "trial 9 (the improved preset) leads (out-of-fold MAE 0.9100, val MAE 0.8300" in line
    assert "validation MAE alone would pick trial 4" in line
    unfinished = {"configs": [{**table["configs"][2]}]}
    for refit in (None, unfinished):
        ranking = finalists_ranking(refit, best, "s")
        assert (ranking["measure"], ranking["trial"]) == ("val_mae", 4)
        assert "msatune refit s" in ranking_line(ranking)
    assert finalists_ranking(None, None, "s") is None
