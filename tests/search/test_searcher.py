"""What the searcher stores for each trial: the values TPE learns from."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from msatune.search.searcher import StudySearcher
from msatune.search.space import SearchSpace


def _epoch(step: int, val: float, best: float, final: bool = False) -> dict:
    return {"training_iteration": step, "val_mae": val, "best_val_mae": best, "final": final}


def _dropout_searcher(tmp_path: Path, fence: Callable[[], bool] | None = None,
                      ) -> tuple[optuna.storages.RDBStorage, optuna.Study, StudySearcher]:
    """A real SQLite study ``s`` and a random-sampling searcher on a one-parameter space."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    searcher = StudySearcher(SearchSpace({"dropout": FloatDistribution(0.0, 0.5)}), study,
                             optuna.samplers.RandomSampler(seed=0), fence=fence)
    return storage, study, searcher


def test_a_pruned_trial_is_stored_and_ranked_by_its_best_val_mae(tmp_path: Path) -> None:
    """Two trials stopped by ASHA at the same rung: ``a`` was best at epoch 2 (0.50) and noisy at the
    rung (0.90); ``b`` is steady (0.70). Optuna's TPE ranks pruned trials by the value stored at
    their deepest step (optuna 5.0 ``_get_pruned_trial_score``), so that value must be the best so
    far: ``a`` ranks ahead of ``b``, and both keep their best as their value."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    space = SearchSpace({"dropout": FloatDistribution(0.0, 0.5)})
    searcher = StudySearcher(space, study, optuna.samplers.RandomSampler(seed=0))
    for trial_id, curve in (("a", [1.00, 0.50, 0.90]), ("b", [0.80, 0.75, 0.70])):
        searcher.suggest(trial_id)
        best = float("inf")
        for step, val in enumerate(curve, start=1):
            best = min(best, val)
            searcher.on_trial_result(trial_id, _epoch(step, val, best))
        searcher.on_trial_complete(trial_id, _epoch(3, curve[-1], best))  # not final: stopped by ASHA
    a, b = study.get_trials()
    assert a.state == b.state == TrialState.PRUNED
    assert (a.value, b.value) == (0.50, 0.70)
    assert a.intermediate_values == {1: 1.00, 2: 0.50, 3: 0.50}
    from optuna.samplers._tpe.sampler import _get_pruned_trial_score

    assert _get_pruned_trial_score(a, study) < _get_pruned_trial_score(b, study)


def test_a_complete_trial_keeps_its_best_val_mae(tmp_path: Path) -> None:
    storage, study, searcher = _dropout_searcher(tmp_path)
    searcher.suggest("c")
    searcher.on_trial_result("c", _epoch(1, 0.9, 0.9))
    searcher.on_trial_result("c", _epoch(2, 0.6, 0.6))
    searcher.on_trial_complete("c", _epoch(3, 0.8, 0.6, final=True))
    (c,) = study.get_trials()
    assert c.state == TrialState.COMPLETE and c.value == 0.6
    assert c.intermediate_values == {1: 0.9, 2: 0.6, 3: 0.6}


def test_a_driver_that_stalls_between_its_fence_check_and_a_write_is_fenced_not_crashed(tmp_path: Path) -> None:
    """The fence (the study's lease) said yes, then the driver stalled (SIGSTOP, a long GC) while
    another driver took the study over and ended its running trial: the late epoch is dropped, the
    fence is asked again and the searcher is fenced (its run stops, exit 3), with no
    UpdateFinishedTrialError escaping into Tune's loop (seen in CI: the driver died with exit 1)."""
    answers = iter([True, True])  # suggest's and on_trial_result's checks; then the lease is gone
    storage, study, searcher = _dropout_searcher(tmp_path, fence=lambda: next(answers, False))
    searcher.suggest("t")
    (running,) = study.get_trials()
    storage.set_trial_state_values(running._trial_id, TrialState.FAIL)  # the other driver's doing
    searcher.on_trial_result("t", _epoch(1, 0.9, 0.9))
    assert searcher.fenced
    searcher.on_trial_complete("t", _epoch(2, 0.8, 0.8, final=True))  # fenced: writes nothing
    (t,) = study.get_trials()
    assert t.state == TrialState.FAIL and t.intermediate_values == {} and "epochs" not in t.user_attrs


def test_a_trial_ended_by_the_driver_that_took_over_is_not_counted_by_the_fenced_one(tmp_path: Path) -> None:
    """The stall lands between the fence check of a trial's end and its write: the new driver
    failed the trial, so the fenced run's summary must not count it as its own complete trial
    (it did, one too many, in the "n complete" line of a fenced run)."""
    answers = iter([True, True, True])  # suggest, the epoch and the end's check; then it is gone
    storage, study, searcher = _dropout_searcher(tmp_path, fence=lambda: next(answers, False))
    searcher.suggest("t")
    searcher.on_trial_result("t", _epoch(1, 0.9, 0.9))
    (running,) = study.get_trials()
    storage.set_trial_state_values(running._trial_id, TrialState.FAIL)  # the other driver's doing
    searcher.on_trial_complete("t", _epoch(2, 0.8, 0.8, final=True))
    assert searcher.fenced
    assert (searcher.counters.complete, searcher.counters.failed, searcher.counters.running) == (0, 0, set())
    (t,) = study.get_trials()
    assert t.state == TrialState.FAIL and t.intermediate_values == {1: 0.9}


def test_a_final_nan_value_fails_the_trial_with_the_driver_still_writing(tmp_path: Path) -> None:
    """The other refusal `tell` gives (an infeasible value, not a finished trial): the trial is
    marked FAIL and counted as failed, and the driver is not fenced."""
    storage, study, searcher = _dropout_searcher(tmp_path, fence=lambda: True)
    searcher.suggest("t")
    searcher.on_trial_complete("t", _epoch(1, float("nan"), float("nan"), final=True))
    assert not searcher.fenced
    assert (searcher.counters.complete, searcher.counters.failed) == (0, 1)
    (t,) = study.get_trials()
    assert t.state == TrialState.FAIL
