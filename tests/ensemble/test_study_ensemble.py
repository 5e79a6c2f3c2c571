"""Ensembles of real study trials: selection, honesty (test never used), export round trips.

The real study is the shared ``tiny_study`` fixture (read only; its trials are never changed).
Edge cases use small SQLite stores made here with ``optuna.create_study`` + ``add_trial`` over
fabricated or copied checkpoint directories (no Ray).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from msatune.ensemble.candidates import select_candidates
from msatune.ensemble.fitting import EnsembleOptions, fit_ensemble
from msatune.errors import UserError
from msatune.models.checkpoint import PREDICTIONS_FILE
from msatune.studies.store.studies import trial_refs

optuna.logging.set_verbosity(optuna.logging.WARNING)
MSATUNE_PACKAGES = {"augment", "models", "search", "ensemble", "studies", "msatune"}


# ---------------------------------------------------------------------------------------------
# helpers: stores and checkpoints made by hand


def make_store(root: Path, name: str, entries: list[dict[str, Any]], attrs: dict | None = None) -> tuple[str, optuna.Study]:
    """A SQLite store under ``root`` holding study ``name`` with one trial per entry
    (``state``, ``value``, ``checkpoint``)."""
    root.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{(root / 'studies.db').resolve()}"
    study = optuna.create_study(storage=url, study_name=name, direction="minimize")
    for key, value in (attrs or {}).items():
        study.set_user_attr("msatune:" + key, value)
    for e in entries:
        state = e.get("state", TrialState.COMPLETE)
        user_attrs = {"checkpoint": str(e["checkpoint"])} if e.get("checkpoint") else {}
        study.add_trial(create_trial(state=state, value=e.get("value") if state == TrialState.COMPLETE else None,
                                     user_attrs=user_attrs))
    return url, study


def fake_checkpoint(directory: Path, preds: dict[str, np.ndarray], dims: dict[str, int] | None = None,
                    fingerprint: str = "fp") -> Path:
    """checkpoint.json + config.json + a placeholder weights file + predictions.npz."""
    import h5py

    directory.mkdir(parents=True, exist_ok=True)
    meta = {"dims": dims or {"text": 4, "audio": 3, "video": 2}, "seq_len": 5, "format": 1,
            "msatune_version": "0.1.0", "data_fingerprint": fingerprint}
    (directory / "checkpoint.json").write_text(json.dumps(meta))
    (directory / "config.json").write_text(json.dumps({"family": "baseline"}))
    with h5py.File(directory / "model.weights.h5", "w") as f:
        f.create_dataset("w", data=np.zeros(3))
    np.savez(directory / PREDICTIONS_FILE, **preds)
    return directory


def synthetic_preds(seed: int, noise: float, n: int = 40) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100)  # the same labels for every trial
    yv, yt = rng.uniform(-3, 3, n), rng.uniform(-3, 3, n)
    r = np.random.default_rng(seed)
    return {"valid_pred": yv + r.normal(0, noise, n), "valid_label": yv, "valid_index": np.arange(n),
            "test_pred": yt + r.normal(0, noise, n), "test_label": yt, "test_index": np.arange(n)}


def real_trials(tiny_study: dict) -> list:
    from msatune.studies.store.connect import open_storage
    from msatune.studies.store.studies import load_study

    return load_study(open_storage(tiny_study["storage_url"]), tiny_study["name"]).get_trials()


def tiny_result(tiny_study: dict, **opts: Any):
    from msatune.augment.dataset import load_dataset

    return fit_ensemble(trial_refs(real_trials(tiny_study)), EnsembleOptions(**opts), study_name="tiny",
                        data=load_dataset(tiny_study["data"]))


# ---------------------------------------------------------------------------------------------
# a real study


def test_greedy_on_a_real_study_is_never_worse_on_valid_than_its_best_member(tiny_study: dict) -> None:
    res = tiny_result(tiny_study)
    complete = {t.number for t in real_trials(tiny_study) if t.state == TrialState.COMPLETE}
    s = res.summary()
    assert s["members"], "the tiny study has no candidate beating the constant predictor"
    assert {m["trial"] for m in s["members"]} <= complete
    assert abs(sum(w for _, w in res.members) - 1.0) < 1e-9  # exact weights
    # the JSON rounds each weight to 6 decimals (three members of 1/3 sum to 0.999999)
    assert abs(sum(m["weight"] for m in s["members"]) - 1.0) <= 5e-7 * len(s["members"]) + 1e-12
    if s["method"] == "greedy":
        assert sum(m["count"] for m in s["members"]) == res.combination.info["rounds_used"]
    best_member = min(m["valid"]["mae"] for m in s["members"])
    assert s["valid"]["mae"] <= best_member + 1e-9
    assert s["valid"]["mae"] <= s["best_single"]["valid"]["mae"] + 1e-9
    assert s["best_single"]["trial"] == res.pool.candidates[0].trial
    for split in ("valid", "test"):
        assert set(s[split]) >= {"mae", "corr", "acc7", "acc5", "has0_acc2", "has0_f1", "non0_acc2", "non0_f1"}
        assert s["reference"][split]["constant_mae"] > 0
        assert s["reference"][split]["floor_mae"] is not None  # the synthetic set has an oracle
    assert s["cv"]["folds"] == 5 and s["cv"]["in_sample_valid_mae"] == pytest.approx(s["valid"]["mae"])
    json.dumps(s, allow_nan=False)  # strict JSON


def test_the_test_split_never_influences_selection(tiny_study: dict, tmp_path: Path) -> None:
    """Copy the study's complete trials with scrambled test predictions and labels: every
    combiner picks the same members with the same weights; only the test scores move."""
    rng = np.random.default_rng(0)
    perm = None
    entries = []
    for t in real_trials(tiny_study):
        if t.state != TrialState.COMPLETE or not t.user_attrs.get("checkpoint"):
            entries.append({"state": t.state})  # keep the trial numbers aligned
            continue
        dst = tmp_path / "ckpt" / str(t.number)
        shutil.copytree(t.user_attrs["checkpoint"], dst)
        with np.load(dst / PREDICTIONS_FILE) as f:
            preds = {k: f[k] for k in f.files}
        perm = rng.permutation(len(preds["test_label"])) if perm is None else perm  # one test set for all
        preds["test_label"] = preds["test_label"][perm]
        preds["test_pred"] = rng.uniform(-3, 3, preds["test_pred"].shape).astype(np.float32)
        np.savez(dst / PREDICTIONS_FILE, **preds)
        entries.append({"value": t.value, "checkpoint": dst})
    _, copy = make_store(tmp_path / "store", "tiny", entries)
    for method in ("greedy", "mean", "weighted", "median"):
        a = fit_ensemble(trial_refs(real_trials(tiny_study)), EnsembleOptions(method=method, top_k=3))
        b = fit_ensemble(trial_refs(copy.get_trials()), EnsembleOptions(method=method, top_k=3))
        assert a.members == b.members, method
        assert a.cv == b.cv and a.metrics["valid"] == b.metrics["valid"]
        assert a.metrics["test"]["mae"] != b.metrics["test"]["mae"]


def test_export_round_trips_in_fresh_processes(tiny_study: dict, tmp_path: Path) -> None:
    """.keras with safe_mode=True after ``import msatune``, and the SavedModel served with
    plain TensorFlow (no msatune module imported) both equal the in-memory ensemble."""
    from msatune.augment.dataset import load_dataset
    from msatune.ensemble.export import combine_numpy, export_ensemble, load_member_models

    data = load_dataset(tiny_study["data"])
    res = tiny_result(tiny_study, method="weighted", top_k=3)
    out = tmp_path / "ens"
    info = export_ensemble(res, out, data=data)
    assert info["check"]["max_abs_diff_vs_members"] <= 1e-5
    assert info["check"]["max_abs_diff_vs_recorded"] <= 1e-4
    assert (out / "ensemble.keras").is_file() and (out / "saved_model" / "saved_model.pb").is_file()
    written = json.loads((out / "ensemble.json").read_text())
    assert written["members"] == res.summary()["members"]

    x = {k: v for k, v in data.splits["test"].inputs().items()}
    np.savez(tmp_path / "x.npz", **x)
    keras_script = (
        "import sys, numpy as np, msatune, keras\n"
        "m = keras.saving.load_model(sys.argv[1], safe_mode=True)\n"
        "x = dict(np.load(sys.argv[2]))\n"
        "np.save(sys.argv[3], m.predict(x, verbose=0))\n"
    )
    serve_script = (
        "import json, sys, numpy as np, tensorflow as tf\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "x = {k: tf.constant(v) for k, v in np.load(sys.argv[2]).items()}\n"
        "a = m.serve(x).numpy()\n"
        "b = m.signatures['serving_default'](**x)['output_0'].numpy()\n"
        "np.save(sys.argv[3], np.concatenate([a, b], axis=1))\n"
        f"print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in {sorted(MSATUNE_PACKAGES)!r})))\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    procs = [
        subprocess.Popen([sys.executable, "-c", keras_script, str(out / "ensemble.keras"), str(tmp_path / "x.npz"),
                          str(tmp_path / "keras.npy")], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True),
        subprocess.Popen([sys.executable, "-c", serve_script, str(out / "saved_model"), str(tmp_path / "x.npz"),
                          str(tmp_path / "served.npy")], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True),
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, stderr) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, stderr[-3000:]
    assert json.loads(outputs[1][0].strip().splitlines()[-1]) == []  # served without msatune

    members = load_member_models(res)
    each = np.stack([m.predict(x, verbose=0).reshape(-1) for _, _, m in members], axis=1)
    in_memory = combine_numpy("weighted", each, [w for _, w, _ in members])
    from_keras = np.load(tmp_path / "keras.npy").reshape(-1)
    served = np.load(tmp_path / "served.npy")
    assert np.max(np.abs(from_keras - in_memory)) <= 1e-5
    assert np.max(np.abs(served[:, 0] - in_memory)) <= 1e-5
    assert np.max(np.abs(served[:, 1] - in_memory)) <= 1e-5
    assert np.max(np.abs(in_memory - res.predictions["test"])) <= 1e-4  # = what the table scored


def test_median_ensemble_exports_as_a_model_computing_the_median(tiny_study: dict, tmp_path: Path) -> None:
    import keras

    from msatune.augment.dataset import load_dataset
    from msatune.ensemble.export import build_fused_model, load_member_models

    res = tiny_result(tiny_study, method="median", top_k=3)
    members = load_member_models(res)
    x = load_dataset(tiny_study["data"]).splits["valid"].inputs()
    models = [m for _, _, m in members]
    fused = build_fused_model(models, [1 / len(models)] * len(models), method="median",
                              dims=res.pool.dims, seq_len=res.pool.seq_len)
    path = tmp_path / "median.keras"
    fused.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    each = np.stack([m.predict(x, verbose=0).reshape(-1) for m in models], axis=1)
    assert np.max(np.abs(loaded.predict(x, verbose=0).reshape(-1) - np.median(each, axis=1))) <= 1e-5
    from msatune.ensemble.layers import MemberMedian

    v = np.array([[1.0, 5.0, 2.0, 9.0], [4.0, 3.0, 2.0, 1.0]], dtype=np.float32)
    assert np.allclose(np.asarray(MemberMedian()(v)).reshape(-1), np.median(v, axis=1))
    assert np.allclose(np.asarray(MemberMedian()(v[:, :3])).reshape(-1), np.median(v[:, :3], axis=1))


# ---------------------------------------------------------------------------------------------
# candidates: edge cases on hand-made stores


def test_candidates_rank_filter_and_cap(tmp_path: Path) -> None:
    entries = []
    for t, noise in enumerate((0.5, 0.9, 0.7, 3.5, 0.6)):  # trial 3 is worse than the constant
        entries.append({"value": noise, "checkpoint": fake_checkpoint(tmp_path / f"c{t}", synthetic_preds(t, noise))})
    entries.append({"state": TrialState.PRUNED, "checkpoint": fake_checkpoint(tmp_path / "p", synthetic_preds(9, 0.1))})
    entries.append({"state": TrialState.FAIL})
    _, study = make_store(tmp_path / "s", "s", entries)
    pool = select_candidates(trial_refs(study.get_trials()), max_candidates=3, study_name="s")
    assert pool.n_complete == 5 and pool.n_usable == 5
    assert len(pool.trials) == 3 and 3 not in pool.trials and 5 not in pool.trials  # pruned never joins
    maes = [c.valid_mae for c in pool.candidates]
    assert maes == sorted(maes)
    assert all(m < pool.constant_valid_mae for m in maes)


def test_candidates_with_different_dims_name_the_trials(tmp_path: Path) -> None:
    entries = [
        {"value": 0.5, "checkpoint": fake_checkpoint(tmp_path / "a", synthetic_preds(0, 0.5))},
        {"value": 0.6, "checkpoint": fake_checkpoint(tmp_path / "b", synthetic_preds(1, 0.6))},
        {"value": 0.7, "checkpoint": fake_checkpoint(tmp_path / "c", synthetic_preds(2, 0.7),
                                                     dims={"text": 300, "audio": 74, "video": 47})},
    ]
    _, study = make_store(tmp_path / "s", "s", entries)
    with pytest.raises(UserError, match=r"differ in input dims .*trials 0, 1 take .*4/3/2.*trials 2 take .*300/74/47"):
        select_candidates(trial_refs(study.get_trials()), study_name="s")
    assert select_candidates(trial_refs(study.get_trials()), max_candidates=2).trials == [0, 1]


def test_missing_and_corrupt_checkpoints_are_skipped_with_warnings(tmp_path: Path) -> None:
    good = fake_checkpoint(tmp_path / "good", synthetic_preds(0, 0.5))
    no_preds = fake_checkpoint(tmp_path / "nopreds", synthetic_preds(1, 0.4))
    (no_preds / PREDICTIONS_FILE).unlink()
    bad_json = fake_checkpoint(tmp_path / "badjson", synthetic_preds(2, 0.4))
    (bad_json / "checkpoint.json").write_text("{not json")
    bad_weights = fake_checkpoint(tmp_path / "badweights", synthetic_preds(3, 0.4))
    (bad_weights / "model.weights.h5").write_bytes(b"truncated")
    bad_npz = fake_checkpoint(tmp_path / "badnpz", synthetic_preds(4, 0.4))
    (bad_npz / PREDICTIONS_FILE).write_bytes(b"PK\x03\x04 garbage")
    entries = [{"value": 0.4, "checkpoint": d} for d in (no_preds, bad_json, bad_weights, bad_npz)]
    entries += [{"value": 0.5, "checkpoint": good}, {"value": 0.3, "checkpoint": tmp_path / "gone"},
                {"value": 0.3}]
    _, study = make_store(tmp_path / "s", "s", entries)
    pool = select_candidates(trial_refs(study.get_trials()), study_name="s")
    assert pool.trials == [4]
    assert sorted(s["trial"] for s in pool.skipped) == [0, 1, 2, 3, 5, 6]
    text = " | ".join(pool.warnings)
    for needle in ("trial 0:", "predictions.npz are missing", "trial 1:", "checkpoint.json", "trial 2:",
                   "model.weights.h5 are corrupt", "trial 3:", "trial 5:", "does not exist",
                   "trial 6: no checkpoint recorded"):
        assert needle in text, needle

    _, broken = make_store(tmp_path / "s2", "s2", entries[:4])
    with pytest.raises(UserError, match="none of the 4 complete trials of study 's2' has a usable checkpoint"):
        select_candidates(trial_refs(broken.get_trials()), study_name="s2")


def test_no_eligible_candidates_say_why(tmp_path: Path) -> None:
    _, empty = make_store(tmp_path / "a", "a", [{"state": TrialState.PRUNED}, {"state": TrialState.FAIL}])
    with pytest.raises(UserError, match=r"no COMPLETE trial .*1 fail, 1 pruned"):
        select_candidates(trial_refs(empty.get_trials()), study_name="a")
    bad = [{"value": 2.0, "checkpoint": fake_checkpoint(tmp_path / f"w{i}", synthetic_preds(i, 4.0))} for i in range(2)]
    _, worse = make_store(tmp_path / "b", "b", bad)
    with pytest.raises(UserError, match=r"none of the 2 usable complete trials .* beats the constant predictor"):
        select_candidates(trial_refs(worse.get_trials()), study_name="b")


def test_trials_on_other_data(tmp_path: Path) -> None:
    other = synthetic_preds(1, 0.5)
    other["valid_label"] = other["valid_label"][::-1].copy()
    entries = [{"value": 0.5, "checkpoint": fake_checkpoint(tmp_path / "a", synthetic_preds(0, 0.5))},
               {"value": 0.6, "checkpoint": fake_checkpoint(tmp_path / "b", other)},
               {"value": 0.7, "checkpoint": fake_checkpoint(tmp_path / "c", synthetic_preds(2, 0.5), fingerprint="old")}]
    _, study = make_store(tmp_path / "s", "s", entries)
    with pytest.raises(UserError, match="evaluated on different data: trials 0, 2 .* trials 1 another"):
        select_candidates(trial_refs(study.get_trials()))
    # with the study's fingerprint known, trials on older data are skipped with a warning
    _, study2 = make_store(tmp_path / "s2", "s2", [entries[0], entries[2]])
    pool = select_candidates(trial_refs(study2.get_trials()), expected_fingerprint="fp")
    assert pool.trials == [0] and "other data" in pool.warnings[0]
