"""The default refit scheme, ``seeds``: the study's own split trained again at other seeds, then
``msatune ensemble NAME`` builds the bagged ensemble of it (real Ray, SQLite, TF on tiny data).

* every repeat trains on the study's train rows only and predicts its valid rows, at a seed of
  its own; the refit records its scheme, and another scheme is refused without ``--replace``;
* ``show``'s ranking measure is the valid MAE of each configuration's seeds averaged with its
  trial's own model, recomputed here from the checkpoints;
* ``msatune ensemble NAME`` (no --from) builds the refit's bagged ensemble: each bag the plain
  mean of its seed repeats and its trial's model on test, the combination fitted on valid only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from msatune.errors import UserError
from tests.conftest import one_line_error, run_in

optuna.logging.set_verbosity(optuna.logging.WARNING)
K, R = 2, 2


@pytest.fixture(scope="module")
def seeds_refit(tiny_study: dict, tmp_path_factory: pytest.TempPathFactory, ray_session) -> dict:
    """``msatune refit tiny --top-k K --repeats R`` (the default scheme) on a copy of the tiny study."""
    ws = tmp_path_factory.mktemp("refit-seeds") / "ws"
    ws.mkdir()
    shutil.copy(Path(tiny_study["workspace"]) / "studies.db", ws / "studies.db")
    proc = run_in(ws, "refit", "tiny", "--top-k", str(K), "--repeats", str(R), "--concurrency", "1", "--json",
                  timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**json.loads(proc.stdout), "ws": ws, "url": f"sqlite:///{(ws / 'studies.db').resolve()}"}


def _records(url: str) -> list[optuna.trial.FrozenTrial]:
    return [t for t in optuna.load_study(study_name="tiny:refit", storage=url).trials
            if t.state == TrialState.COMPLETE]


def test_seed_repeats_train_on_train_and_predict_valid_at_their_own_seeds(seeds_refit: dict) -> None:
    from msatune.models.checkpoint import read_checkpoint_meta, read_predictions

    s = seeds_refit
    assert (s["scheme"], s["folds"], s["repeats"]) == ("seeds", 1, R)
    n_train, n_valid = s["pool"]["train"], s["pool"]["valid"]
    study = optuna.load_study(study_name="tiny", storage=s["url"])
    seeds_of = {t.number: read_checkpoint_meta(t.user_attrs["checkpoint"])[0]["seed"] for t in study.trials
                if t.user_attrs.get("checkpoint")}
    records = _records(s["url"])
    assert sorted((t.params["trial"], t.params["repeat"], t.params["fold"]) for t in records) == sorted(
        (c["trial"], r, 0) for c in s["chosen"] for r in range(R))
    for t in records:
        assert (t.user_attrs["n_train"], t.user_attrs["n_held_out"]) == (n_train, n_valid)
        p = read_predictions(t.user_attrs["checkpoint"], ("valid",))
        assert np.array_equal(np.sort(p["valid_index"]), np.arange(n_train, n_train + n_valid))  # valid's rows
        assert t.user_attrs["seed"] != seeds_of[t.params["trial"]]
    assert len({(t.params["trial"], t.user_attrs["seed"]) for t in records}) == K * R  # a seed per repeat


def test_show_ranks_by_the_seeds_average_with_the_trials_own_model(seeds_refit: dict) -> None:
    from msatune.models.checkpoint import read_predictions

    s = seeds_refit
    n_train = s["pool"]["train"]
    study = optuna.load_study(study_name="tiny", storage=s["url"])
    by_number = {t.number: t for t in study.trials}
    records = _records(s["url"])

    def in_valid_order(ckpt: str, offset: int) -> tuple[np.ndarray, np.ndarray]:
        p = read_predictions(ckpt, ("valid",), clip=False)
        pred, label = np.full(s["pool"]["valid"], np.nan), np.full(s["pool"]["valid"], np.nan)
        pred[p["valid_index"] - offset], label[p["valid_index"] - offset] = p["valid_pred"], p["valid_label"]
        return pred, label

    for row in s["configs"]:
        preds = [in_valid_order(t.user_attrs["checkpoint"], n_train) for t in records
                 if t.params["trial"] == row["trial"]]  # fold records index the pool: valid starts at n_train
        preds.append(in_valid_order(by_number[row["trial"]].user_attrs["checkpoint"], 0))
        mean, labels = np.mean([x for x, _ in preds], axis=0), preds[0][1]
        assert len(preds) == R + 1 and not np.isnan(mean).any()
        assert row["oof_mae"] == pytest.approx(float(np.mean(np.abs(mean - labels))), rel=1e-6)
        assert row["with_trial_model"] is True and row["folds_done"] == row["folds_total"] == R
    shown = run_in(s["ws"], "show", "tiny")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "seed-averaged valid MAE" in shown.stdout and "seed repeats on train" in shown.stdout


def test_ensemble_name_builds_the_seeds_bag_fitted_on_valid(seeds_refit: dict) -> None:
    from msatune.augment.dataset import load_dataset
    from msatune.ensemble.bagging import fold_test_predictions, trial_test_predictions
    from msatune.label_range import clip_predictions

    s = seeds_refit
    proc = run_in(s["ws"], "ensemble", "tiny", "--method", "mean", "--top-k", "2", "--no-export", "--json",
                  timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    e = json.loads(proc.stdout)
    assert e["source"] == "refit" and e["refit"]["scheme"] == "seeds"  # no --from: the default kind
    assert e["refit"]["trial_share"] == pytest.approx(1 / (R + 1))
    assert e["refit"]["trials_in_bags"] == sorted(c["trial"] for c in s["configs"])
    assert "valid samples" in e["refit"]["fitted_on"]
    study = optuna.load_study(study_name="tiny", storage=s["url"])
    data = load_dataset(study.user_attrs["msatune:data_path"])
    records = _records(s["url"])
    yt = np.asarray(data.test.labels, dtype=np.float64)
    for row in e["configs"]:  # each bag: its repeats and its trial's model, equal shares, clipped
        folds = [fold_test_predictions(Path(t.user_attrs["checkpoint"]), data.test) for t in records
                 if t.params["trial"] == row["trial"]]
        own = trial_test_predictions(Path(study.trials[row["trial"]].user_attrs["checkpoint"]), data.test)
        bag = clip_predictions(np.mean([*folds, own], axis=0))
        assert row["test_mae_bagged"] == pytest.approx(float(np.mean(np.abs(bag - yt))), rel=1e-6)
    assert e["oof"]["mae"] is not None and e["test"]["mae"] is not None


def test_another_scheme_is_refused_without_replace_and_settles_as_recorded(seeds_refit: dict) -> None:
    from msatune.studies.refit import DEFAULT_FOLDS, DEFAULT_SEED_REPEATS
    from msatune.studies.refit.run import RefitOptions

    before = len(_records(seeds_refit["url"]))
    one_line_error(run_in(seeds_refit["ws"], "refit", "tiny", "--top-k", "2", "--folds", "2"),
                   "already has a refit and it was refit with --scheme seeds --repeats 2")
    assert len(_records(seeds_refit["url"])) == before
    seeds = {"scheme": "seeds", "folds": 1, "repeats": 2, "seed": 0}
    folds = {"folds": 5, "repeats": 2, "seed": 7}  # recorded before schemes: the fold scheme
    assert RefitOptions().settled(None) == RefitOptions(scheme="seeds", folds=1, repeats=DEFAULT_SEED_REPEATS, seed=0)
    assert RefitOptions().settled(seeds) == RefitOptions(scheme="seeds", folds=1, repeats=2, seed=0)
    assert RefitOptions().settled(folds) == RefitOptions(scheme="folds", folds=5, repeats=2, seed=7)
    assert RefitOptions(folds=3).settled(seeds) == RefitOptions(scheme="folds", folds=3, repeats=1, seed=0)
    assert RefitOptions(scheme="folds").settled(None) == RefitOptions(scheme="folds", folds=DEFAULT_FOLDS,
                                                                      repeats=1, seed=0)
    for bad, needle in ((RefitOptions(scheme="seeds", folds=3), "--folds 3 applies to --scheme folds"),
                        (RefitOptions(scheme="seeds", seed=4), "--seed 4 sets the fold assignment"),
                        (RefitOptions(scheme="bags"), "--scheme must be one of folds, seeds")):
        with pytest.raises(UserError, match=needle):
            bad.validate()
