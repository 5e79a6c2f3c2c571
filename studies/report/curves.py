"""One trial's learning curve and test score, from the store and the trial's Ray files.

* validation and training MAE per epoch (1-based): Ray's ``progress.csv`` in the trial's directory
  (the parent of its ``checkpoint`` dir), else the msa-tf2 CSV log ``work/training_log.csv``
  (0-based ``epoch``; ``val_mae``, ``mae``); the raw per-epoch values. Without those files the
  validation MAE comes from the trial's intermediate values in the store (step = epoch), which
  are the best validation MAE *so far* at each epoch (what TPE and ASHA rank on);
* the best epoch: the epoch of the lowest raw validation MAE (a trial's value is its best
  validation MAE);
* test MAE: the predictions recorded in the trial's best checkpoint.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from optuna.trial import FrozenTrial, TrialState

from msatune.errors import UserError
from msatune.models.checkpoint import prediction_mae
from msatune.search.reconcile import REQUEUED_ATTR
from msatune.search.trial_config import PRESET_NAMES
from msatune.studies.queries import trial_family

log = logging.getLogger(__name__)


@dataclass
class TrialCurve:
    """One trial's learning curve: validation and training MAE per epoch (Ray files)."""

    number: int
    state: str
    preset: str | None
    value: float | None
    epochs: list[int]
    val_mae: list[float]
    train_mae: list[float | None]
    train_source: str | None
    best_epoch: int | None
    family: str | None = None  # the model family the trial trains

    @property
    def label(self) -> str:
        return f"#{self.number}" + (f" {self.preset}" if self.preset else "")

    def gap_at(self, epoch: int) -> float | None:
        if epoch not in self.epochs:
            return None
        i = self.epochs.index(epoch)
        train = self.train_mae[i]
        return None if train is None else float(self.val_mae[i] - train)


def trial_dir(trial: FrozenTrial) -> Path | None:
    """The trial's Ray directory (the parent of its checkpoint dir), when recorded."""
    ckpt = trial.user_attrs.get("checkpoint")
    return Path(ckpt).parent if ckpt else None


def csv_float(cell: str | None) -> float | None:
    """A CSV cell as a finite float; None for an empty, non-numeric or non-finite cell."""
    try:
        value = float(cell) if cell not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def read_epochs(trial: FrozenTrial) -> tuple[dict[int, tuple[float | None, float | None]], str | None]:
    """``({epoch: (val MAE, train MAE)}, source file name)`` from the trial's Ray files ({} when
    absent); epochs 1-based. ``progress.csv`` (``epoch``, ``val_mae``, ``train_mae``) first, else
    ``work/training_log.csv`` (0-based ``epoch``, ``val_mae``, ``mae``). A retried trial's later
    rows win."""
    d = trial_dir(trial)
    if d is None:
        return {}, None
    for name, val_col, train_col, offset in (("progress.csv", "val_mae", "train_mae", 0),
                                             ("work/training_log.csv", "val_mae", "mae", 1)):
        path = d / name
        if not path.is_file():
            continue
        out: dict[int, tuple[float | None, float | None]] = {}
        try:
            with path.open(newline="") as fh:
                for row in csv.DictReader(fh):
                    epoch = csv_float(row.get("epoch"))
                    if epoch is not None:
                        out[int(epoch) + offset] = (csv_float(row.get(val_col)), csv_float(row.get(train_col)))
        except (OSError, csv.Error) as exc:
            log.warning("trial %d: cannot read %s: %s", trial.number, path, exc)
            continue
        if out:
            return out, name
    return {}, None


def best_epoch(trial: FrozenTrial, val_mae: dict[int, float] | None = None) -> int | None:
    """The epoch of the lowest validation MAE (``val_mae`` per epoch, default the store's
    intermediate values); the first on ties."""
    iv = val_mae if val_mae is not None else {
        int(k): float(v) for k, v in trial.intermediate_values.items() if math.isfinite(v)}
    iv = {e: v for e, v in iv.items() if math.isfinite(v)}
    if not iv:
        return None
    return min(sorted(iv), key=lambda s: iv[s])


def trial_curve(trial: FrozenTrial) -> TrialCurve:
    rows, source = read_epochs(trial)
    raw_val = {e: v for e, (v, _) in rows.items() if v is not None}
    if raw_val:
        val = raw_val
    else:
        val = {int(k): float(v) for k, v in trial.intermediate_values.items()}
    epochs = sorted(val)
    train = {e: tr for e, (_, tr) in rows.items() if tr is not None}
    return TrialCurve(
        number=trial.number,
        state=trial.state.name,
        preset=trial.user_attrs.get("preset"),
        value=trial.value,
        epochs=epochs,
        val_mae=[val[e] for e in epochs],
        train_mae=[train.get(e) for e in epochs],
        train_source=source if train else None,
        best_epoch=best_epoch(trial, val),
        family=trial_family(trial),
    )


def test_mae(trial: FrozenTrial) -> float | None:
    """Test MAE of the trial's best checkpoint (its recorded predictions), or None when unavailable."""
    ckpt = trial.user_attrs.get("checkpoint")
    if not ckpt:
        return None
    try:
        return prediction_mae(ckpt, "test")
    except UserError as exc:
        log.warning("trial %d: no test predictions (%s)", trial.number, exc)
        return None


def preset_trial(trials: list[FrozenTrial], preset: str) -> FrozenTrial | None:
    """The finished (COMPLETE, else PRUNED) trial of a preset; re-queued copies are skipped."""
    found = [t for t in trials if t.user_attrs.get("preset") == preset
             and t.state in (TrialState.COMPLETE, TrialState.PRUNED)
             and not t.user_attrs.get(REQUEUED_ATTR)]
    found.sort(key=lambda t: (t.state != TrialState.COMPLETE, t.number))
    return found[0] if found else None


def select_curves(trials: list[FrozenTrial], top: int) -> tuple[list[FrozenTrial], dict[int, str]]:
    """The presets' trials then the ``top`` best COMPLETE ones; ``roles`` says why each is shown."""
    chosen: list[FrozenTrial] = []
    roles: dict[int, str] = {}
    for p in PRESET_NAMES:
        t = preset_trial(trials, p)
        if t is not None:
            chosen.append(t)
            roles[t.number] = f"{p} preset"
    ranked = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
                    key=lambda t: (t.value, t.number))
    for rank, t in enumerate(ranked[:top], start=1):
        role = "best" if rank == 1 else f"top {rank}"
        if t.number in roles:
            roles[t.number] = f"{role}, {roles[t.number]}"
        else:
            chosen.append(t)
            roles[t.number] = role
    return chosen, roles
