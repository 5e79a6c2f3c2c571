"""A real study (Ray Tune + the study searcher + ASHA over SQLite): the store tells the truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from msatune.models.checkpoint import missing_predictions, read_predictions


def load(tiny_study: dict) -> optuna.Study:
    return optuna.load_study(study_name=tiny_study["name"], storage=tiny_study["storage_url"])


def test_budget_is_spent_and_nothing_is_left_running(tiny_study: dict) -> None:
    study = load(tiny_study)
    states = [t.state for t in study.trials]
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == 6
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states


def test_presets_are_the_first_two_trials_and_train_as_recorded(tiny_study: dict) -> None:
    study = load(tiny_study)
    first = sorted(study.trials, key=lambda t: t.number)[:2]
    assert [t.user_attrs.get("preset") for t in first] == ["baseline", "improved"]
    assert first[0].params["learning_rate"] == 1e-3  # the baseline recipe's value
    # the references are never stopped by ASHA: they train to the study's epoch budget
    assert [t.state for t in first] == [TrialState.COMPLETE] * 2
    assert [t.user_attrs["epochs"] for t in first] == [4, 4]


def test_asha_stopped_trials_are_pruned_with_their_last_step(tiny_study: dict) -> None:
    study = load(tiny_study)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert pruned, "ASHA with grace 1 / reduction 2 over 6 trials must stop some"
    for t in pruned:
        last = max(t.intermediate_values)
        assert t.value == t.intermediate_values[last]  # Optuna's rule for a pruned trial
        assert last == t.user_attrs["pruned_at_epoch"] == t.user_attrs["epochs"] < 4
    for t in complete:
        # the value of a finished trial is its best epoch, not its last
        assert t.value == min(t.intermediate_values.values())
        assert sorted(t.intermediate_values) == list(range(1, len(t.intermediate_values) + 1))


def test_every_trial_records_its_ray_id_and_best_checkpoint(tiny_study: dict) -> None:
    study = load(tiny_study)
    for t in study.trials:
        assert t.user_attrs["ray_trial_id"]
        ckpt = Path(t.user_attrs["checkpoint"])
        assert (ckpt / "model.weights.h5").exists(), t.number
        config = json.loads((ckpt / "config.json").read_text())
        assert config["epochs"] == 4
        # One checkpoint per trial: the last report's replaced the improving epochs' ones.
        assert [p.name for p in ckpt.parent.glob("checkpoint_*")] == [ckpt.name], t.number
        if t.state == TrialState.COMPLETE:
            # test is predicted once, at the last epoch, with the best epoch's weights
            assert missing_predictions(ckpt) == (), t.number
            preds = read_predictions(ckpt)
            assert preds["valid_pred"].shape == preds["valid_label"].shape == (24,)
            assert preds["test_pred"].shape == (24,)
            # the checkpoint holds the best epoch: its valid MAE is the trial's value
            mae = float(np.mean(np.abs(preds["valid_pred"] - preds["valid_label"])))
            assert abs(mae - t.value) < 1e-4
        else:  # stopped by ASHA: weights and validation predictions; test is made when needed
            assert missing_predictions(ckpt) == ("test",), t.number
            assert read_predictions(ckpt, ("valid",))["valid_pred"].shape == (24,)


def test_a_pruned_trials_checkpoint_still_gives_an_ensemble_its_predictions(tiny_study: dict, tmp_path: Path) -> None:
    """ASHA stops a trial at a report and no end of trial runs after it: its checkpoint holds
    weights and validation predictions; an ensemble that admits it predicts test from them."""
    import shutil

    import tensorflow as tf

    from msatune.augment.dataset import load_dataset
    from msatune.ensemble.candidates import TrialRef, load_candidate
    from msatune.models.checkpoint import load_checkpoint
    from msatune.models.training import predict

    study = load(tiny_study)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned
    data = load_dataset(tiny_study["data"])
    for t in pruned:
        ckpt = tmp_path / str(t.number)  # a copy: the study fixture is read-only
        shutil.copytree(t.user_attrs["checkpoint"], ckpt)
        assert missing_predictions(ckpt) == ("test",)
        before = read_predictions(ckpt, ("valid",))
        cand = load_candidate(TrialRef(t.number, "PRUNED", t.value, ckpt), data)
        assert missing_predictions(ckpt) == ()  # written once, into the checkpoint
        model, _, _ = load_checkpoint(ckpt)
        ds = tf.data.Dataset.from_tensor_slices((data.test.inputs(), data.test.labels)).batch(7)
        np.testing.assert_allclose(cand.pred("test"), predict(model, ds), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(cand.pred("valid"), before["valid_pred"])
        np.testing.assert_array_equal(cand.predictions["test_label"], data.test.labels.reshape(-1))


def test_every_trial_dir_holds_its_own_training_log(tiny_study: dict) -> None:
    """Actor reuse must not send a trial's CSV log to another trial's (or a temp) directory."""
    study = load(tiny_study)
    trials = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(trials) == 6
    pids = set()
    for t in trials:
        trial_dir = Path(t.user_attrs["checkpoint"]).parent
        pids.add(json.loads((trial_dir / "result.json").read_text().splitlines()[-1])["pid"])
        log = trial_dir / "work" / "training_log.csv"
        assert log.exists(), f"trial {t.number}: no {log}"
        rows = log.read_text().strip().splitlines()[1:]
        assert len(rows) == t.user_attrs["epochs"], t.number
        val_mae = [float(r.split(",")[6]) for r in rows]
        # the store holds the best val MAE so far at each epoch (what TPE and ASHA rank on)
        assert np.allclose(np.minimum.accumulate(val_mae),
                           [t.intermediate_values[e] for e in range(1, len(rows) + 1)], atol=1e-6)
    assert len(pids) < len(trials), "no trial ran on a reused actor: the test proves nothing"


def test_study_records_what_it_is(tiny_study: dict) -> None:
    from msatune.studies.store.studies import study_attrs

    attrs = study_attrs(load(tiny_study))
    assert attrs["data_path"] == str(Path(tiny_study["data"]).resolve())
    assert len(attrs["data_fingerprint"]) >= 16
    assert attrs["budget"] == 6 and attrs["max_epochs"] == 4
    assert attrs["asha"] == {"grace_period": 1, "reduction_factor": 2}
    assert attrs["runs"][0]["trials"] == 6
    assert set(attrs["space"]["distributions"]) == {"learning_rate", "dropout"}
