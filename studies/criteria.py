"""The users' success criteria of a study, with the numbers behind each verdict.

From their own analysis of the training log (:data:`msatune.models.log_analysis.CRITERIA`):

* ``best_val_mae``: the best COMPLETE trial's validation MAE < 1.2;
* ``gap``: validation minus training MAE at that trial's best epoch < 0.3;
* ``stability``: std of the epoch-to-epoch changes of validation MAE (:func:`instability`), the
  ``baseline`` trial (before) vs the best trial (after); passes when after < before; needs at
  least 3 epochs on both sides;
* ``test_improvement``: test MAE of the ``baseline`` trial minus that of the best trial; passes
  when > 0.
"""

from __future__ import annotations

from typing import Any

from optuna.trial import FrozenTrial

from msatune.models.log_analysis import CRITERIA, instability
from msatune.studies.store import best_complete
from msatune.studies.trial_curves import preset_trial, test_mae, trial_curve

MIN_EPOCHS_FOR_STABILITY = 3


def _check(value: float | None, passed: bool | None, **extra: Any) -> dict[str, Any]:
    return {"value": value, "pass": passed, **extra}


def compute_criteria(trials: list[FrozenTrial]) -> dict[str, dict[str, Any]]:
    """The users' success criteria, each ``{"value", "pass", ...numbers, "note"}``.

    ``pass`` is None when a criterion cannot be computed (the ``note`` says why).
    """
    best = best_complete(trials)
    base = preset_trial(trials, "baseline")
    out: dict[str, dict[str, Any]] = {}
    if best is None:
        note = "no COMPLETE trial yet"
        for key in ("best_val_mae", "gap", "stability", "test_improvement"):
            out[key] = _check(None, None, note=note)
        out["best_val_mae"]["threshold"] = CRITERIA["val_mae"]
        out["gap"]["threshold"] = CRITERIA["gap"]
        return out
    best_curve = trial_curve(best)
    epoch = best_curve.best_epoch
    out["best_val_mae"] = _check(float(best.value), bool(best.value < CRITERIA["val_mae"]),
                                 threshold=CRITERIA["val_mae"], trial=best.number, epoch=epoch)
    gap = best_curve.gap_at(epoch) if epoch is not None else None
    train_at = best_curve.train_mae[best_curve.epochs.index(epoch)] if gap is not None else None
    out["gap"] = _check(gap, None if gap is None else bool(gap < CRITERIA["gap"]),
                        threshold=CRITERIA["gap"], trial=best.number, epoch=epoch,
                        train_mae=train_at, val_mae=float(best.value))
    if gap is None:
        out["gap"]["note"] = "no training MAE for the best epoch (progress.csv / training_log.csv missing)"

    after = instability(best_curve.val_mae)
    stab: dict[str, Any] = {"after": after, "best_trial": best.number, "best_epochs": len(best_curve.epochs)}
    if base is None:
        out["stability"] = _check(None, None, **stab, before=None, baseline_trial=None,
                                  note="no finished baseline trial")
    else:
        base_curve = trial_curve(base)
        before = instability(base_curve.val_mae)
        stab.update(before=before, baseline_trial=base.number, baseline_epochs=len(base_curve.epochs))
        short = min(len(base_curve.epochs), len(best_curve.epochs)) < MIN_EPOCHS_FOR_STABILITY
        if short:
            out["stability"] = _check(after - before, None, **stab,
                                      note=f"needs >= {MIN_EPOCHS_FOR_STABILITY} epochs on both trials")
        elif base.number == best.number:
            out["stability"] = _check(0.0, False, **stab, note="the baseline is the best trial")
        else:
            out["stability"] = _check(after - before, bool(after < before), **stab)

    best_test = test_mae(best)
    imp: dict[str, Any] = {"after": best_test, "best_trial": best.number,
                           "baseline_trial": base.number if base else None}
    base_test = test_mae(base) if base is not None else None
    imp["before"] = base_test
    if best_test is None or base_test is None:
        out["test_improvement"] = _check(None, None, **imp, relative=None,
                                         note="no baseline trial" if base is None
                                         else "test predictions missing in a checkpoint")
    else:
        diff = base_test - best_test
        out["test_improvement"] = _check(diff, bool(diff > 0), **imp,
                                         relative=diff / base_test if base_test else None)
        if base.number == best.number:
            out["test_improvement"]["note"] = "the baseline is the best trial"
    return out


CRITERIA_LABELS = {
    "best_val_mae": f"best validation MAE < {CRITERIA['val_mae']}",
    "gap": f"train/val gap at the best epoch < {CRITERIA['gap']}",
    "stability": "stability: std of epoch-to-epoch val MAE changes, baseline (before) vs best (after); lower is better",
    "test_improvement": "test MAE improvement over the baseline trial (> 0)",
}


def criteria_rows(criteria: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """The criteria table as display strings: criterion, numbers, result."""

    def f(v: Any, digits: int = 4) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    rows = []
    for key, label in CRITERIA_LABELS.items():
        c = criteria.get(key, {})
        if key == "best_val_mae":
            numbers = f"{f(c.get('value'))} (trial #{c.get('trial')}, epoch {c.get('epoch')})" if c.get("value") is not None else "-"
        elif key == "gap":
            numbers = (f"{f(c.get('value'))} = val {f(c.get('val_mae'))} - train {f(c.get('train_mae'))} "
                       f"(trial #{c.get('trial')}, epoch {c.get('epoch')})") if c.get("value") is not None else "-"
        elif key == "stability":
            numbers = (f"before {f(c.get('before'))} (#{c.get('baseline_trial')}, {c.get('baseline_epochs', '-')} epochs) "
                       f"-> after {f(c.get('after'))} (#{c.get('best_trial')}, {c.get('best_epochs', '-')} epochs)")
        else:
            rel = c.get("relative")
            numbers = (f"baseline #{c.get('baseline_trial')} {f(c.get('before'))} -> best #{c.get('best_trial')} "
                       f"{f(c.get('after'))}: {f(c.get('value'))}"
                       + (f" ({rel * 100:.1f}%)" if rel is not None else ""))
        p = c.get("pass")
        result = "n/a" if p is None else ("PASS" if p else "FAIL")
        if c.get("note"):
            numbers += f" [{c['note']}]"
        rows.append({"key": key, "criterion": label, "numbers": numbers, "result": result})
    return rows
