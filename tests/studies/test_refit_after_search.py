"""``launch --refit-top K``: the search, then the refit, in one command; ``kill -9`` in its refit,
then ``resume``: the refit continues and no finished fold is trained again (real Ray, SQLite, TF).
The refit is the default one (``--refit-scheme seeds``, the study's split at other seeds).
It asks for one configuration more than its 2 trials: ``--refit-top`` refits up to K (how many
trials finish is known only after the search), where ``msatune refit --top-k`` refuses (test_refit).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from msatune.errors import UserError
from msatune.studies.store.connect import open_storage
from tests.conftest import (
    cli_env,
    file_digest,
    kill_9,
    msatune_argv,
    one_line_error,
    ray_left,
    run_in,
)

K, R = 2, 2  # configurations, seed repeats of each


def _folds(storage: str | optuna.storages.BaseStorage, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=f"{name}:refit", storage=storage).trials


def test_refit_top_killed_in_its_refit_then_resume_trains_no_finished_fold(
    tiny_data: Path, tiny_space_file: Path, tmp_path: Path
) -> None:
    from msatune.search.ray_orphans import RAY_PIDS_FILE

    ws = tmp_path / "ws"
    url = f"sqlite:///{(ws / 'studies.db').resolve()}"
    args = ["launch", "r", "--data", tiny_data, "--space", tiny_space_file, "--trials", "2",
            "--max-epochs", "2", "--grace-period", "1", "--concurrency", "1",
            "--refit-top", str(K + 1), "--refit-repeats", str(R), "--json"]
    with open(tmp_path / "driver.err", "w") as err:
        driver = subprocess.Popen(msatune_argv(*args, workspace=ws), stdout=subprocess.DEVNULL, stderr=err,
                                  env=cli_env())
    try:
        deadline, done = time.time() + 500, 0
        while time.time() < deadline and not done:
            time.sleep(0.5)
            assert driver.poll() is None, "launch ended before its refit could be killed: " + (
                tmp_path / "driver.err").read_text()[-3000:]
            if not (ws / "studies.db").exists():  # reading it first would create it
                continue
            try:  # read-only: a plain load_study would race the launch creating the store's tables
                done = sum(t.state == TrialState.COMPLETE for t in _folds(open_storage(url, read_only=True), "r"))
            except (KeyError, UserError):  # no refit study yet, or the store's tables not all made yet
                continue
        assert 0 < done < K * R, f"saw {done} finished folds"
        ray_info = kill_9(driver, ws / "studies" / "r" / "refit" / RAY_PIDS_FILE)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert ray_left(ray_info) == []
    search = optuna.load_study(study_name="r", storage=url)
    assert len(search.trials) == 2 and all(t.state.is_finished() for t in search.trials)
    before = {(t.params["trial"], t.params["repeat"], t.params["fold"]): (t.number, t.user_attrs["checkpoint"])
              for t in _folds(url, "r") if t.state == TrialState.COMPLETE}
    weights = {k: file_digest(Path(v[1]) / "model.weights.h5") for k, v in before.items()}

    proc = run_in(ws, "resume", "r", "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["trials_run"] == 0  # the search's budget was used: only the refit is left
    assert (out["refit"]["top_k_asked"], out["refit"]["top_k"]) == (K + 1, K)  # all it had, not an error
    assert any(f"asked for the top {K + 1}" in w and f"refitting those {K}" in w for w in out["refit"]["warnings"])
    run = out["refit"]["run"]
    assert out["refit"]["scheme"] == "seeds" and (out["refit"]["folds"], out["refit"]["repeats"]) == (1, R)
    assert run["already_done"] == len(before) and run["folds_run"] == K * R - len(before)
    after = [t for t in _folds(url, "r") if t.state == TrialState.COMPLETE]
    keys = [(t.params["trial"], t.params["repeat"], t.params["fold"]) for t in after]
    assert len(keys) == len(set(keys)) == K * R
    for t in after:
        key = (t.params["trial"], t.params["repeat"], t.params["fold"])
        if key in before:  # the killed run's folds, untouched
            assert (t.number, t.user_attrs["checkpoint"]) == before[key]
            assert file_digest(Path(before[key][1]) / "model.weights.h5") == weights[key]
    assert all(c["oof_mae"] is not None for c in out["refit"]["configs"])


def test_bad_refit_top_is_one_line_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    for args, needle in ((["--refit-top", "-1"], "--refit-top must be >= 0"),
                         (["--refit-top", "2", "--refit-folds", "1"], "--folds must be at least 2"),
                         (["--refit-top", "2", "--refit-scheme", "seeds", "--refit-folds", "3"],
                          "--folds 3 applies to --scheme folds"),
                         (["--refit-repeats", "2"], "give --refit-top K too")):
        ws = tmp_path / "ws"
        one_line_error(run_in(ws, "launch", "x", *args), needle)
        assert not ws.exists()
