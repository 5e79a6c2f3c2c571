"""Which trials a refit retrains: the study's top-K COMPLETE trials by validation MAE, or the
COMPLETE trials named with ``--trial``, each with the config its checkpoint records
(:func:`msatune.studies.refit.run.run_refit` and the benchmarks choose with these).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from msatune.errors import UserError
from msatune.studies.store.studies import state_counts


@dataclass(frozen=True)
class Chosen:
    """A configuration picked for the refit: a COMPLETE trial and its checkpoint's config."""

    trial: int
    val_mae: float
    config: dict[str, Any]
    preset: str | None
    epochs: int | None = None  # the epochs the trial trained in the search


def _refittable(t: optuna.trial.FrozenTrial) -> bool:
    """COMPLETE with a finite value: pruned and failed trials are never refit."""
    return t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)


def _chosen(t: optuna.trial.FrozenTrial) -> Chosen:
    """Trial ``t`` as a refit configuration, its config read from its checkpoint (UserError when
    it has none or cannot be read)."""
    from msatune.models.checkpoint import read_checkpoint_meta

    ckpt = t.user_attrs.get("checkpoint")
    if not ckpt:
        raise UserError("no checkpoint recorded")
    config, _ = read_checkpoint_meta(ckpt)
    epochs = t.user_attrs.get("epochs")
    return Chosen(t.number, float(t.value), config, t.user_attrs.get("preset"),
                  int(epochs) if isinstance(epochs, int | float) and epochs > 0 else None)


def choose_trials(study: optuna.Study, numbers: tuple[int, ...]) -> list[Chosen]:
    """Trials ``numbers`` of ``study`` (in that order, duplicates once), each COMPLETE with a finite
    value and a readable checkpoint: UserError naming the first that is not."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    chosen: list[Chosen] = []
    for n in dict.fromkeys(numbers):
        t = by_number.get(n)
        if t is None:
            raise UserError(f"--trial: study {study.study_name!r} has no trial {n} (its trials are "
                            f"0-{len(by_number) - 1}; `msatune show {study.study_name}` lists them)"
                            if by_number else f"--trial: study {study.study_name!r} has no trials")
        if not _refittable(t):
            raise UserError(f"--trial: trial {n} of study {study.study_name!r} is {t.state.name}"
                            f"{'' if t.state != TrialState.COMPLETE else ' without a finite value'}; only "
                            "COMPLETE trials are refit (pruned ones stopped before their recipe ended)")
        try:
            chosen.append(_chosen(t))
        except UserError as exc:
            raise UserError(f"--trial: trial {n} of study {study.study_name!r} cannot be refit: {exc}") from None
    return chosen


def choose_configs(study: optuna.Study, top_k: int, *, up_to: bool = False) -> tuple[list[Chosen], list[str]]:
    """The ``top_k`` best COMPLETE trials by validation MAE (ties: lower number) whose checkpoint
    names their config; trials without a readable checkpoint are passed over with a warning.
    ``up_to``: fewer than ``top_k`` such trials are refit (with a warning) instead of refused."""
    trials = study.get_trials(deepcopy=False)
    complete = sorted(filter(_refittable, trials), key=lambda t: (t.value, t.number))
    counts = {k: v for k, v in state_counts(trials).items() if v}
    what = ", ".join(f"{v} {k.lower()}" for k, v in counts.items()) or "no trials"
    warnings: list[str] = []
    if up_to and 0 < len(complete) < top_k:
        warnings.append(f"the refit asked for the top {top_k} but study {study.study_name!r} has "
                        f"{len(complete)} COMPLETE trials ({what}; ASHA stopped the others): refitting "
                        f"those {len(complete)}. For more, `msatune resume {study.study_name} --trials N`, "
                        f"then `msatune refit {study.study_name} --top-k K`")
        top_k = len(complete)
    if top_k > len(complete):
        raise UserError(f"--top-k {top_k} is more than the {len(complete)} COMPLETE trials of study "
                        f"{study.study_name!r} ({what}); pruned and failed trials are never refit: use "
                        f"--top-k {len(complete)} or fewer" if complete else
                        f"study {study.study_name!r} has no COMPLETE trial to refit ({what})")
    chosen: list[Chosen] = []
    for t in complete:
        if len(chosen) == top_k:
            break
        try:
            chosen.append(_chosen(t))
        except UserError as exc:
            warnings.append(f"trial {t.number}: {exc}; passed over")
    if len(chosen) < top_k and not (up_to and chosen):
        raise UserError(f"only {len(chosen)} of the {len(complete)} COMPLETE trials of study "
                        f"{study.study_name!r} have a readable checkpoint ({'; '.join(warnings[:2])}); "
                        f"use --top-k {len(chosen)} or fewer" if chosen else
                        f"no COMPLETE trial of study {study.study_name!r} has a readable checkpoint "
                        f"({'; '.join(warnings[:2])})")
    return chosen, warnings
