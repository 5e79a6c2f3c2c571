"""A study's hyperparameter importance, over every trial that reached one epoch ASHA compares at.

Optuna's importance evaluators read COMPLETE trials only, and an ASHA study completes few of its
trials (a default 24-trial study on MOSI-sized data completed 6, 2 of them the presets), so an
importance over complete trials never shows with the default settings. Every trial that ASHA
stopped still has a value at each rung it reached, so the importance is computed there:

* **Epochs considered**: ASHA's rungs as the study records them (grace period x reduction
  factor^k, below ``max_epochs``) and the last epoch (``max_epochs``). A study without that record
  uses the epochs its finished trials ended at (where ASHA stopped them, and the last).
* **Which trials**: the finished ones (COMPLETE, PRUNED) that trained to the epoch; a COMPLETE
  trial counts at every epoch, with its final value past its last one. Failed trials (also those
  a stopped driver left running, which are run again) and running trials are left out.
* **Their value there**: the best validation MAE up to that epoch, i.e. the smallest
  intermediate value up to it (the searcher reports the best so far as each epoch's value, and
  ranks pruned trials by it; ASHA's own rung signal also weighs in the training MAE and lives
  only in Ray's progress.csv). At the last epoch that is each complete trial's value.
* **Which epoch**: the deepest one that at least :data:`MIN_TRIALS` trials reached: a later epoch
  ranks trials closer to their final value, more trials make the estimate steadier. Once
  :data:`MIN_TRIALS` trials completed it is the last epoch, the complete trials' own values.
* **Evaluator**: Optuna's PED-ANOVA, which asks how differently each hyperparameter is
  distributed in the best trials than in all of them (conditional hyperparameters, such as
  ``weight_decay`` for adamw only, count in the trials that have them). Its best group is the
  best 10% or the best :data:`MIN_TOP`, whichever is more (Optuna advises at least 5 there).

Optuna's ``target=`` argument re-values trials but only after the evaluator has kept the
COMPLETE ones, so it cannot bring pruned trials in; instead the counted trials are copied into an
in-memory study as COMPLETE trials whose value is their value at the chosen epoch (public API
only: ``create_trial`` and ``add_trials``). The stored study is never written.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from msatune.studies.store.studies import load_study, study_attrs

#: Optuna advises at least 5 trials in PED-ANOVA's best group; the group is never smaller.
MIN_TOP = 5
#: The share of the trials in PED-ANOVA's best group (Optuna's default), when that is more.
TOP_SHARE = 0.1
#: The fewest trials at one epoch that importance is computed from: the best group of 5 is then
#: at most a third of them (with fewer, "the best" is most of the trials and contrasts nothing).
MIN_TRIALS = 3 * MIN_TOP
#: The evaluator, as the outputs name it.
EVALUATOR = "PED-ANOVA (Optuna)"
#: What each trial's value at the chosen epoch is.
VALUE_AT_EPOCH = "each trial's best validation MAE up to that epoch"

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class Importance:
    """A study's importance and what it rests on; ``importances`` is empty when it could not be
    computed, and ``reason`` says why."""

    importances: dict[str, float] = field(default_factory=dict)  # name -> share, largest first
    epoch: int | None = None  # the epoch the trials' values are taken at
    rung: str | None = None  # what that epoch is: "ASHA's first rung", "the last epoch", ...
    complete: int = 0  # of the trials it rests on
    pruned: int = 0
    top: int = 0  # trials in PED-ANOVA's best group
    reason: str | None = None

    @property
    def trials(self) -> int:
        return self.complete + self.pruned

    @property
    def where(self) -> str:
        """``epoch 3 (ASHA's first rung)``."""
        return f"epoch {self.epoch} ({self.rung})" if self.rung else f"epoch {self.epoch}"

    @property
    def caption(self) -> str:
        """What a figure says under its title: epoch, trials, the best group."""
        return (f"at {self.where}; {self.trials} trials ({self.complete} complete, {self.pruned} "
                f"pruned); best {self.top} vs all")

    def basis(self) -> str:
        """One sentence: the epoch, the trials, the value and the evaluator (empty when not computed)."""
        if not self.importances:
            return ""
        return (f"computed at {self.where} over the {self.trials} trials that reached it "
                f"({self.complete} complete, {self.pruned} pruned), on {VALUE_AT_EPOCH}, by "
                f"{EVALUATOR}: how much each hyperparameter sets the best {self.top} of them apart "
                f"from all {self.trials} (shares sum to 1)")

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON and the renderers."""
        return {"importances": dict(self.importances), "epoch": self.epoch, "rung": self.rung,
                "trials": self.trials, "complete": self.complete, "pruned": self.pruned,
                "top": self.top, "evaluator": EVALUATOR, "value": VALUE_AT_EPOCH,
                "where": self.where if self.epoch is not None else None,
                "basis": self.basis() or None, "reason": self.reason}


def _ordinal(k: int) -> str:
    words = ("first", "second", "third", "fourth", "fifth", "sixth")
    return words[k - 1] if k <= len(words) else f"{k}th"


def importance_epochs(attrs: dict[str, Any], trials: list[FrozenTrial]) -> list[tuple[int, str]]:
    """The epochs importance may be computed at, shallowest first, each with what it is: ASHA's
    rungs and the last epoch from the study's record, else the epochs its finished trials ended
    at."""
    asha = attrs.get("asha") if isinstance(attrs.get("asha"), dict) else {}
    try:
        grace, factor = int(asha["grace_period"]), int(asha["reduction_factor"])
        last = int(attrs["max_epochs"])
    except (KeyError, TypeError, ValueError):
        grace = factor = last = 0
    if grace >= 1 and factor >= 2 and last >= 1:
        epochs, rung = [], grace
        while rung < last:
            epochs.append((rung, f"ASHA's {_ordinal(len(epochs) + 1)} rung"))
            rung *= factor
        return [*epochs, (last, "the last epoch")]
    ends = sorted({max(t.intermediate_values) for t in trials
                   if t.state in _FINISHED and t.intermediate_values})
    return [(e, "the last epoch trained" if e == ends[-1] else "where ASHA stopped trials")
            for e in ends]


def value_at(trial: FrozenTrial, epoch: int, *, last: bool = False) -> float | None:
    """``trial``'s best validation MAE up to ``epoch`` (None: it did not reach it, or no finite
    value). A COMPLETE trial that ended by then has its final value; one without intermediate
    values has it at the ``last`` epoch only."""
    steps = trial.intermediate_values
    end = max(steps) if steps else None
    if trial.state == TrialState.COMPLETE and (end is None or end <= epoch):
        value = trial.value if (end is not None or last) else None
    elif trial.state in _FINISHED and end is not None and end >= epoch:
        seen = [v for step, v in steps.items() if step <= epoch]
        value = min(seen) if seen else None
    else:
        value = None
    return float(value) if value is not None and math.isfinite(value) else None


def study_importance(study: optuna.Study) -> Importance:
    """The study's hyperparameter importance at the deepest epoch :data:`MIN_TRIALS` trials
    reached (see the module's doc), or an :class:`Importance` whose ``reason`` says why not."""
    trials = study.get_trials(deepcopy=False, states=_FINISHED)
    if not trials:
        return Importance(reason="no finished (complete or pruned) trial yet")
    epochs = importance_epochs(study_attrs(study), trials)
    counted: list[tuple[int, str, list[tuple[FrozenTrial, FrozenTrial]]]] = []
    for i, (epoch, rung) in enumerate(epochs):
        last = i == len(epochs) - 1
        at = [(t, c) for t in trials if (c := _copy(t, value_at(t, epoch, last=last))) is not None]
        counted.append((epoch, rung, at))
    enough = [c for c in counted if len(c[2]) >= MIN_TRIALS]
    if not enough:
        most = max(counted, key=lambda c: (len(c[2]), c[0]), default=None)
        has = f"the most at any is {len(most[2])} (epoch {most[0]})" if most else "it has none"
        return Importance(reason=(
            f"needs at least {MIN_TRIALS} trials at one epoch ASHA compares trials at (a rung, or "
            f"the last epoch); {has}. PED-ANOVA contrasts the best {MIN_TOP} with all of them: with "
            "fewer, the best are most of the trials"))
    epoch, rung, at = enough[-1]
    top = max(MIN_TOP, math.ceil(TOP_SHARE * len(at)))
    n_complete = sum(t.state == TrialState.COMPLETE for t, _ in at)
    base = Importance(epoch=epoch, rung=rung, complete=n_complete, pruned=len(at) - n_complete, top=top)
    shares, why = _ped_anova([c for _, c in at], top)
    if why:
        return replace(base, reason=f"{why}; looked at {base.where}, {len(at)} trials")
    return replace(base, importances=shares)


def _copy(trial: FrozenTrial, value: float | None) -> FrozenTrial | None:
    """``trial`` as a COMPLETE trial of value ``value`` (what the evaluators read), None without
    a value."""
    if value is None:
        return None
    try:
        return optuna.trial.create_trial(state=TrialState.COMPLETE, value=value, params=trial.params,
                                         distributions=trial.distributions)
    except ValueError:  # a param outside its own distribution: not a trial Optuna can weigh
        return None


def _ped_anova(copies: list[FrozenTrial], top: int) -> tuple[dict[str, float], str | None]:
    """PED-ANOVA shares (sum 1, largest first) over ``copies``, or ``({}, why not)``."""
    if not any(t.distributions for t in copies):
        return {}, "the trials have no searched hyperparameter"
    # (top - 0.5) / n: exactly ``top`` trials below the cut, whatever the float rounding
    evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=(top - 0.5) / len(copies))
    try:
        study = optuna.create_study(direction="minimize")  # in memory
        study.add_trials(copies)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # few-trials and experimental-argument warnings
            raw = optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=False)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return {}, f"PED-ANOVA failed: {exc}"
    total = sum(raw.values())
    if not raw or not total > 0:
        return {}, (f"PED-ANOVA found no hyperparameter that sets the best {top} trials apart from "
                    "the rest (each is spread alike in both)")
    shares = {k: float(v) / total for k, v in raw.items()}
    return dict(sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))), None


def importance_of(storage: optuna.storages.BaseStorage, name: str) -> Importance:
    """:func:`study_importance` of study ``name`` (an unknown name is a UserError). Reads only."""
    return study_importance(load_study(storage, name))


__all__ = ["EVALUATOR", "MIN_TOP", "MIN_TRIALS", "Importance", "importance_epochs", "importance_of",
           "study_importance", "value_at"]
