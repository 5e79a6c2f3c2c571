"""Hyperparameter importance over every trial that reached an ASHA rung (``msatune.studies.importance``).

The studies here are real SQLite stores created with msatune's own ``create_study`` (so they
record the default ASHA settings: grace 3, reduction 3, 27 epochs: rungs at epochs 3 and 9) and
filled, without training, with trials shaped as the searcher writes them: the best validation MAE
so far as each epoch's intermediate value, pruned trials ending at the rung ASHA stopped them at,
complete ones at epoch 27, the two presets complete.

The values are built so that the answer tells which value was used: up to epoch 3 a trial's
validation MAE follows its ``dropout`` only; after epoch 3 it drops far lower and follows its
``learning_rate`` only. Importance at the first rung must name dropout; importance at rung 9 or
on the trials' own final values would name learning_rate.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from msatune.search.search_settings import SearchSettings
from msatune.studies.importance import (
    MIN_TRIALS,
    importance_epochs,
    importance_of,
    study_importance,
    value_at,
)
from msatune.studies.report.build import build_report
from msatune.studies.store.connect import open_storage
from msatune.studies.store.studies import create_study
from msatune.studies.store.workspace import Workspace
from tests.conftest import run_in

PNG = b"\x89PNG\r\n\x1a\n"
LR = FloatDistribution(1e-4, 3e-3, log=True)
SPACE = {"learning_rate": LR, "optimizer": CategoricalDistribution(["adam", "adamw"]),
         "dropout": FloatDistribution(0.0, 0.6), "batch_size": CategoricalDistribution([8, 16, 32, 64])}
WEIGHT_DECAY = FloatDistribution(1e-4, 1e-1, log=True)  # searched for adamw only, as in the default space


def _curve(params: dict, end: int) -> dict[int, float]:
    """Best-so-far validation MAE per epoch (what the searcher reports): by dropout up to epoch 3,
    by learning rate (and far lower) after it."""
    lr_pos = (math.log(params["learning_rate"]) - math.log(LR.low)) / (math.log(LR.high) - math.log(LR.low))
    raw = [2.0 + 2.0 * params["dropout"] + 0.05 * (3 - e) if e <= 3 else 1.0 + 0.5 * lr_pos + 0.2 / e
           for e in range(1, end + 1)]
    return dict(enumerate(np.minimum.accumulate(raw).tolist(), start=1))


def add_trials(study: optuna.Study, ends: list[int], max_epochs: int = 27, seed: int = 0) -> None:
    """One trial per entry of ``ends``: the epoch it ended at (``max_epochs``: COMPLETE, else
    PRUNED there). The first two complete ones are the presets."""
    rng = np.random.default_rng(seed)
    presets = iter(["baseline", "improved"])
    for i, end in enumerate(ends):
        params = {"learning_rate": float(10 ** rng.uniform(math.log10(LR.low), math.log10(LR.high))),
                  "optimizer": ["adam", "adamw"][i % 2], "dropout": float(rng.uniform(0.0, 0.6)),
                  "batch_size": int(rng.choice([8, 16, 32, 64]))}
        dists = dict(SPACE)
        if params["optimizer"] == "adamw":
            params["weight_decay"] = float(10 ** rng.uniform(-4, -1))
            dists["weight_decay"] = WEIGHT_DECAY
        curve = _curve(params, end)
        done = end == max_epochs
        attrs: dict = {"epochs": end, "best_val_mae": curve[end]}
        if done:
            preset = next(presets, None)
            if preset:
                attrs["preset"] = preset
        else:
            attrs["pruned_at_epoch"] = end
        study.add_trial(create_trial(
            state=TrialState.COMPLETE if done else TrialState.PRUNED, value=curve[end], params=params,
            distributions=dists, intermediate_values=curve, user_attrs=attrs))


def asha_study(storage: optuna.storages.BaseStorage, name: str, ends: list[int], seed: int = 0) -> optuna.Study:
    """A study as ``msatune launch`` creates it (default search settings), with ``ends`` trials."""
    study = create_study(storage, name, SearchSettings(trials=len(ends)).study_record())
    add_trials(study, ends, seed=seed)
    return study


#: A default 24-trial study as ASHA leaves it: 6 complete (2 of them the presets), 6 stopped at
#: epoch 9, 12 at epoch 3. Which trials survive a rung is shuffled, independent of their values.
DEFAULT_24 = [27, 27, 9, 3, 3, 27, 3, 9, 3, 27, 3, 3, 9, 3, 27, 3, 9, 3, 27, 3, 9, 3, 9, 3]


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path / "ws").ensure()
    asha_study(open_storage(ws.storage_url), "mosi24", DEFAULT_24)
    return ws


def test_a_default_asha_study_gets_importance_at_the_first_rung_over_all_its_trials(workspace: Workspace) -> None:
    storage = open_storage(workspace.storage_url)
    study = optuna.load_study(study_name="mosi24", storage=storage)
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 6 < MIN_TRIALS

    imp = importance_of(storage, "mosi24")
    assert imp.reason is None and imp.importances
    assert (imp.epoch, imp.rung, imp.trials, imp.complete, imp.pruned) == (3, "ASHA's first rung", 24, 6, 18)
    assert imp.top == 5
    # the rung value is dropout's alone: dropout carries nearly all of the importance
    assert next(iter(imp.importances)) == "dropout" and imp.importances["dropout"] > 0.5
    assert sum(imp.importances.values()) == pytest.approx(1.0)
    # the conditional hyperparameter (adamw only) is weighed too
    assert set(imp.importances) == {"learning_rate", "optimizer", "dropout", "batch_size", "weight_decay"}
    basis = imp.basis()
    for needle in ("epoch 3 (ASHA's first rung)", "24 trials", "6 complete, 18 pruned",
                   "best validation MAE up to that epoch", "PED-ANOVA (Optuna)", "best 5"):
        assert needle in basis, needle

    # the control: on each trial's own final value, the same evaluator names learning_rate, so the
    # answer above comes from the rung values and not from the trials' values
    copy = optuna.create_study()
    copy.add_trials([create_trial(state=TrialState.COMPLETE, value=t.value, params=t.params,
                                  distributions=t.distributions) for t in study.trials])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        final = optuna.importance.get_param_importances(
            copy, evaluator=optuna.importance.PedAnovaImportanceEvaluator(target_quantile=4.5 / 24))
    assert next(iter(final)) == "learning_rate"
    # and Optuna on the stored study sees the complete trials only
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 6


def test_the_deepest_rung_enough_trials_reached_is_the_one_used(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    # 40 trials: 18 reached epoch 9 (6 complete, 12 stopped there), 22 stopped at epoch 3
    asha_study(storage, "deep", [27] * 6 + [9] * 12 + [3] * 22, seed=1)
    imp = importance_of(storage, "deep")
    assert (imp.epoch, imp.rung, imp.trials, imp.complete, imp.pruned) == (9, "ASHA's second rung", 18, 6, 12)
    # at epoch 9 the best validation MAE so far follows the learning rate
    assert next(iter(imp.importances)) == "learning_rate"

    # once 15 trials completed: the last epoch, on the complete trials' own values
    asha_study(storage, "done", [27] * 16 + [3] * 8, seed=2)
    imp = importance_of(storage, "done")
    assert (imp.epoch, imp.rung, imp.trials, imp.complete, imp.pruned) == (27, "the last epoch", 16, 16, 0)
    assert "epoch 27 (the last epoch)" in imp.basis()


def test_too_few_trials_give_one_reason_and_no_numbers(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = asha_study(storage, "small", [27, 27, 9, 3, 3, 3, 3, 3, 3, 3])
    study.add_trial(create_trial(state=TrialState.FAIL, params={}, distributions={}))  # never counted
    imp = study_importance(study)
    assert imp.importances == {} and imp.epoch is None
    assert imp.reason == ("needs at least 15 trials at one epoch ASHA compares trials at (a rung, "
                          "or the last epoch); the most at any is 10 (epoch 3). PED-ANOVA contrasts "
                          "the best 5 with all of them: with fewer, the best are most of the trials")
    assert importance_of(storage, "small").as_dict()["basis"] is None

    empty = create_study(storage, "empty", SearchSettings().study_record())
    assert study_importance(empty).reason == "no finished (complete or pruned) trial yet"


def test_enough_trials_that_tell_nothing_apart_give_a_reason_not_equal_shares(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    bare = create_study(storage, "bare", SearchSettings().study_record())
    for _ in range(16):  # no searched hyperparameter at all
        bare.add_trial(create_trial(state=TrialState.PRUNED, value=1.5, params={}, distributions={},
                                    intermediate_values={1: 1.6, 2: 1.5, 3: 1.5}))
    assert study_importance(bare).reason == ("the trials have no searched hyperparameter; looked at "
                                             "epoch 3 (ASHA's first rung), 16 trials")
    flat = create_study(storage, "flat", SearchSettings().study_record())
    for i in range(16):  # every trial the same value: no best group to tell apart
        flat.add_trial(create_trial(state=TrialState.PRUNED, value=1.5, params={"dropout": i / 30},
                                    distributions={"dropout": SPACE["dropout"]},
                                    intermediate_values={1: 1.6, 2: 1.5, 3: 1.5}))
    imp = study_importance(flat)
    assert imp.importances == {}  # Optuna's normalization would have said "1.0 each"
    assert imp.reason is not None and imp.reason.startswith("PED-ANOVA found no hyperparameter that sets")


def test_a_trials_value_at_an_epoch_is_its_best_up_to_it() -> None:
    dist = {"x": FloatDistribution(0, 1)}

    def trial(state: TrialState, values: dict[int, float], value: float | None = None) -> optuna.trial.FrozenTrial:
        return create_trial(state=state, value=value, params={"x": 0.5}, distributions=dist,
                            intermediate_values=values)

    raw = {1: 2.0, 2: 1.5, 3: 1.8}  # not a running minimum: the best up to the epoch still counts
    pruned = trial(TrialState.PRUNED, raw, 1.8)
    assert value_at(pruned, 1) == 2.0 and value_at(pruned, 3) == 1.5
    assert value_at(pruned, 9) is None  # stopped before epoch 9
    early = trial(TrialState.COMPLETE, {1: 1.4, 2: 1.2, 5: 1.1}, 1.1)  # ended at epoch 5
    assert value_at(early, 2) == 1.2 and value_at(early, 9) == 1.1 and value_at(early, 27, last=True) == 1.1
    bare = trial(TrialState.COMPLETE, {}, 1.3)  # no per-epoch values: its value at the end only
    assert value_at(bare, 3) is None and value_at(bare, 27, last=True) == 1.3
    assert value_at(trial(TrialState.PRUNED, {1: math.inf, 2: math.inf}, math.inf), 2) is None
    assert value_at(create_trial(state=TrialState.FAIL, params={}, distributions={},
                                 intermediate_values={1: 1.0, 3: 0.9}), 3) is None
    assert value_at(create_trial(state=TrialState.RUNNING, params={}, distributions={},
                                 intermediate_values={1: 1.0, 3: 0.9}), 3) is None


def test_the_epochs_come_from_the_recorded_asha_settings_else_from_where_trials_ended() -> None:
    record = SearchSettings(max_epochs=30, grace_period=2, reduction_factor=3).study_record()
    assert importance_epochs(record, []) == [(2, "ASHA's first rung"), (6, "ASHA's second rung"),
                                             (18, "ASHA's third rung"), (30, "the last epoch")]
    assert importance_epochs(SearchSettings(max_epochs=3).study_record(), []) == [(3, "the last epoch")]
    dist = {"x": FloatDistribution(0, 1)}
    trials = [create_trial(state=state, value=1.0, params={"x": 0.5}, distributions=dist,
                           intermediate_values={e: 1.0 for e in range(1, end + 1)})
              for state, end in ((TrialState.PRUNED, 2), (TrialState.PRUNED, 4), (TrialState.COMPLETE, 8),
                                 (TrialState.PRUNED, 2))]
    assert importance_epochs({"max_epochs": 8}, trials) == [
        (2, "where ASHA stopped trials"), (4, "where ASHA stopped trials"), (8, "the last epoch trained")]


def test_show_importance_prints_the_table_and_what_it_rests_on(workspace: Workspace, tmp_path: Path) -> None:
    proc = run_in(workspace.root, "show", "mosi24", "--importance", "--top", "3")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    head = lines.index("hyperparameter importance at epoch 3 (ASHA's first rung):")
    rows = [[cell.strip() for cell in ln.strip("│").split("│")] for ln in lines[head:] if ln.startswith("│")]
    assert rows[0][0] == "dropout" and len(rows) == 5
    assert float(rows[0][1]) > 0.5 and sum(float(r[1]) for r in rows) == pytest.approx(1.0, abs=0.003)
    basis = [ln for ln in lines if ln.startswith("importance: ")]
    assert len(basis) == 1
    assert basis[0].startswith("importance: computed at epoch 3 (ASHA's first rung) over the 24 trials "
                               "that reached it (6 complete, 18 pruned)")
    assert "PED-ANOVA (Optuna)" in basis[0]
    assert "6 complete, 18 pruned" in proc.stdout.splitlines()[0]  # the usual show output stays

    shown = json.loads(run_in(workspace.root, "show", "mosi24", "--importance", "--json").stdout)
    imp = shown["importance"]
    assert (imp["epoch"], imp["trials"], imp["complete"], imp["pruned"]) == (3, 24, 6, 18)
    assert imp["evaluator"] == "PED-ANOVA (Optuna)" and imp["reason"] is None
    assert next(iter(imp["importances"])) == "dropout"
    assert shown["trials"] and shown["counts"]["PRUNED"] == 18

    plain = run_in(workspace.root, "show", "mosi24", "--json")
    assert "importance" not in json.loads(plain.stdout)  # only when asked: it reads every trial

    help_text = run_in(workspace.root, "show", "--help").stdout
    assert "--importance" in help_text and f"at least {MIN_TRIALS} trials" in help_text


def test_show_importance_with_too_few_trials_says_why_in_one_line(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws").ensure()
    asha_study(open_storage(ws.storage_url), "small", [27, 27, 3, 3, 3, 3])
    proc = run_in(ws.root, "show", "small", "--importance")
    assert proc.returncode == 0, proc.stderr
    why = [ln for ln in proc.stdout.splitlines() if ln.startswith("importance")]
    assert why == ["importance: not computed: needs at least 15 trials at one epoch ASHA compares "
                   "trials at (a rung, or the last epoch); the most at any is 6 (epoch 3). PED-ANOVA "
                   "contrasts the best 5 with all of them: with fewer, the best are most of the trials"]
    assert "hyperparameter importance at" not in proc.stdout


def test_the_report_of_a_default_asha_study_shows_importance(workspace: Workspace, tmp_path: Path) -> None:
    rep = build_report(open_storage(workspace.storage_url), "mosi24", tmp_path / "r", ws=workspace)
    assert "importance" in rep.figures
    assert rep.figures["importance"].read_bytes().startswith(PNG)
    assert next(iter(rep.payload["importance"])) == "dropout"
    basis = rep.payload["importance_basis"]
    assert (basis["epoch"], basis["trials"], basis["complete"], basis["pruned"]) == (3, 24, 6, 18)
    assert any(n.startswith("hyperparameter importance is computed at epoch 3 (ASHA's first rung) "
                            "over the 24 trials") for n in rep.payload["notes"])
    page = rep.html.read_text()
    section = page[page.index("<h2>Hyperparameter importance</h2>"):]
    section = section[:section.index("<img")]
    assert "epoch 3 (ASHA&#x27;s first rung)" in section and "24 trials" in section
    assert "6 complete, 18 pruned" in section and "complete trials" not in section
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert saved["importance_basis"]["epoch"] == 3 and saved["importance"] == rep.payload["importance"]
