"""The users' success criteria of a study, with the numbers behind each verdict.

From their own analysis of the training log (:data:`msatune.models.log_analysis.CRITERIA`):

* ``best_val_mae``: the best COMPLETE trial's validation MAE < 1.2;
* ``gap``: validation minus training MAE at that trial's best epoch < 0.3;
* ``stability``: std of the epoch-to-epoch changes of validation MAE (:func:`instability`), the
  ``baseline`` trial (before) vs the best trial (after); passes when after < before; needs at
  least 3 epochs on both sides; beside it, each trial's first gradient-norm spike
  (:func:`msatune.studies.report.monitoring.first_spike`), the epoch where its training became
  unstable (not part of the verdict);
* ``test_improvement``: test MAE of the reference (the better of the ``baseline`` trial and the
  constant predictor) minus that of the best trial; passes when > 0.

Honesty rule: every criterion shows the constant predictor (the median of the split's labels)
and, when known, the noise floor beside its numbers, and **no criterion passes while the best
trial is no better than the constant predictor on validation**: a small gap or a stable curve
of a model that predicts the median is no success.
"""

from __future__ import annotations

import logging
from typing import Any

from optuna.trial import FrozenTrial

from msatune.errors import UserError
from msatune.models.log_analysis import CRITERIA, instability
from msatune.studies.report.curves import preset_trial, test_mae, trial_curve
from msatune.studies.report.monitoring import first_spike, read_monitoring, spike_text
from msatune.studies.store.studies import best_complete
from msatune.studies.study_data import study_data_or_none

log = logging.getLogger(__name__)

MIN_EPOCHS_FOR_STABILITY = 3
NO_BETTER_THAN_CONSTANT = "the best trial is no better than the constant predictor on validation"


def study_reference(attrs: dict[str, Any], trials: list[FrozenTrial]) -> dict[str, dict[str, float | None]]:
    """Per split (valid, test): the constant predictor's MAE and the noise floor (None when unknown).

    From what the study recorded at launch; for older studies from its dataset (when unchanged),
    else the constant predictor from the labels stored with any trial's checkpoint predictions.
    """
    recorded = attrs.get("reference")
    if isinstance(recorded, dict) and all(isinstance(recorded.get(s), dict) for s in ("valid", "test")):
        return {s: {"constant_mae": recorded[s].get("constant_mae"), "floor_mae": recorded[s].get("floor_mae")}
                for s in ("valid", "test")}
    data = study_data_or_none(attrs, "")
    if data is not None:
        return {s: data.splits[s].reference_maes() for s in ("valid", "test")}
    return {s: {"constant_mae": _constant_from_checkpoints(trials, s), "floor_mae": None}
            for s in ("valid", "test")}


def _constant_from_checkpoints(trials: list[FrozenTrial], split: str) -> float | None:
    from msatune.augment.yardsticks import constant_mae
    from msatune.models.checkpoint import read_predictions

    for t in trials:
        ckpt = t.user_attrs.get("checkpoint")
        if not ckpt:
            continue
        try:
            return constant_mae(read_predictions(ckpt, (split,))[f"{split}_label"])
        except UserError:
            continue
    return None


def _check(value: float | None, passed: bool | None, **extra: Any) -> dict[str, Any]:
    return {"value": value, "pass": passed, **extra}


def compute_criteria(trials: list[FrozenTrial],
                     reference: dict[str, dict[str, float | None]] | None = None) -> dict[str, dict[str, Any]]:
    """The users' success criteria, each ``{"value", "pass", ...numbers, "note"}``.

    ``pass`` is None when a criterion cannot be computed (the ``note`` says why). ``reference``
    (:func:`study_reference`) puts the constant predictor and the floor beside every number.
    """
    reference = reference or {}
    ref_valid = reference.get("valid") or {}
    ref_test = reference.get("test") or {}
    best = best_complete(trials)
    base = preset_trial(trials, "baseline")
    out: dict[str, dict[str, Any]] = {}
    if best is None:
        note = "no COMPLETE trial yet"
        for key in ("best_val_mae", "gap", "stability", "test_improvement"):
            out[key] = _check(None, None, note=note)
        out["best_val_mae"]["threshold"] = CRITERIA["val_mae"]
        out["gap"]["threshold"] = CRITERIA["gap"]
        _attach_reference(out, ref_valid, ref_test)
        return out
    best_curve = trial_curve(best)
    epoch = best_curve.best_epoch
    constant = ref_valid.get("constant_mae")
    beats = constant is None or float(best.value) < constant
    out["best_val_mae"] = _check(float(best.value), bool(best.value < CRITERIA["val_mae"] and beats),
                                 threshold=CRITERIA["val_mae"], trial=best.number, epoch=epoch,
                                 preset=best.user_attrs.get("preset"), beats_constant=beats)
    gap = best_curve.gap_at(epoch) if epoch is not None else None
    train_at = best_curve.train_mae[best_curve.epochs.index(epoch)] if gap is not None else None
    out["gap"] = _check(gap, None if gap is None else bool(gap < CRITERIA["gap"] and beats),
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
            out["stability"] = _check(after - before, bool(after < before and beats), **stab)
    _gradient_spikes(out["stability"], best, base)
    out["test_improvement"] = _test_improvement(best, base, ref_test.get("constant_mae"), beats)
    if not beats:
        for key in ("best_val_mae", "gap", "stability", "test_improvement"):
            if out[key]["pass"] is not None:
                out[key]["note"] = "; ".join(filter(None, [out[key].get("note"), NO_BETTER_THAN_CONSTANT]))
    _attach_reference(out, ref_valid, ref_test)
    return out


def _gradient_spikes(stab: dict[str, Any], best: FrozenTrial, base: FrozenTrial | None) -> None:
    """The first gradient-norm spike of the best and the baseline trial, beside the stability."""
    mons = {"best": read_monitoring(best)}
    if base is not None and base.number != best.number:
        mons["baseline"] = read_monitoring(base)
    stab["spikes"] = {k: first_spike(m) if m.has_grads else None for k, m in mons.items()}
    stab["gradients"] = spike_text({f"{k} #{m.number}": m for k, m in mons.items()})


def _test_improvement(best: FrozenTrial, base: FrozenTrial | None, constant: float | None,
                      beats: bool) -> dict[str, Any]:
    """Test MAE of the reference (the better of the baseline trial and the constant predictor)
    minus the best trial's; passes when > 0 and the best trial beats the constant on validation."""
    best_test = test_mae(best)
    base_test = test_mae(base) if base is not None else None
    candidates = [(v, kind) for v, kind in ((base_test, "baseline"), (constant, "constant predictor"))
                  if v is not None]
    ref_value, ref_kind = min(candidates) if candidates else (None, None)
    imp: dict[str, Any] = {"after": best_test, "best_trial": best.number,
                           "baseline_trial": base.number if base else None, "baseline": base_test,
                           "constant": constant, "before": ref_value, "reference": ref_kind}
    if best_test is None or ref_value is None:
        return _check(None, None, **imp, relative=None,
                      note="test predictions missing in a checkpoint" if best_test is None
                      else "no baseline trial and no constant predictor")
    diff = ref_value - best_test
    out = _check(diff, bool(diff > 0 and beats), **imp, relative=diff / ref_value if ref_value else None)
    if base is not None and base.number == best.number:
        out["note"] = "the baseline is the best trial"
    return out


def _attach_reference(out: dict[str, dict[str, Any]], valid: dict[str, Any], test: dict[str, Any]) -> None:
    for key in ("best_val_mae", "gap", "stability"):
        out[key]["constant_mae"], out[key]["floor_mae"] = valid.get("constant_mae"), valid.get("floor_mae")
        out[key]["reference_split"] = "valid"
    out["test_improvement"]["constant_mae"] = test.get("constant_mae")
    out["test_improvement"]["floor_mae"] = test.get("floor_mae")
    out["test_improvement"]["reference_split"] = "test"


CRITERIA_LABELS = {
    "best_val_mae": f"best validation MAE < {CRITERIA['val_mae']} (and below the constant predictor)",
    "gap": f"train/val gap at the best epoch < {CRITERIA['gap']}",
    "stability": "stability: std of epoch-to-epoch val MAE changes, baseline (before) vs best (after); lower is better",
    "test_improvement": "test MAE improvement over the better of the baseline trial and the constant predictor (> 0)",
}


def criteria_rows(criteria: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """The criteria table as display strings: criterion, numbers (with the constant predictor and
    the floor beside them), result."""

    def f(v: Any, digits: int = 4) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    rows = []
    for key, label in CRITERIA_LABELS.items():
        c = criteria.get(key, {})
        if key == "best_val_mae":
            who = f"trial #{c.get('trial')}" + (f" = the {c['preset']} preset" if c.get("preset") else "")
            numbers = f"{f(c.get('value'))} ({who}, epoch {c.get('epoch')})" if c.get("value") is not None else "-"
        elif key == "gap":
            numbers = (f"{f(c.get('value'))} = val {f(c.get('val_mae'))} - train {f(c.get('train_mae'))} "
                       f"(trial #{c.get('trial')}, epoch {c.get('epoch')})") if c.get("value") is not None else "-"
        elif key == "stability":
            numbers = (f"before {f(c.get('before'))} (#{c.get('baseline_trial')}, {c.get('baseline_epochs', '-')} epochs) "
                       f"-> after {f(c.get('after'))} (#{c.get('best_trial')}, {c.get('best_epochs', '-')} epochs)")
            if c.get("gradients"):
                numbers += f"; {c['gradients']}"
        else:
            rel = c.get("relative")
            ref = c.get("reference") or "reference"
            who = f"baseline #{c.get('baseline_trial')}" if ref == "baseline" else ref
            numbers = (f"{who} {f(c.get('before'))} -> best #{c.get('best_trial')} {f(c.get('after'))}: "
                       f"{f(c.get('value'))}" + (f" ({rel * 100:.1f}%)" if rel is not None else ""))
            if ref != "baseline" and c.get("baseline") is not None:
                numbers += f"; baseline #{c.get('baseline_trial')} {f(c.get('baseline'))}"
        split = c.get("reference_split", "valid")
        if c.get("constant_mae") is not None:
            numbers += f"; constant predictor {split} MAE {f(c['constant_mae'])}"
            if c.get("floor_mae") is not None:
                numbers += f", noise floor {f(c['floor_mae'])}"
        p = c.get("pass")
        result = "n/a" if p is None else ("PASS" if p else "FAIL")
        if c.get("note"):
            numbers += f" [{c['note']}]"
        rows.append({"key": key, "criterion": label, "numbers": numbers, "result": result})
    return rows
