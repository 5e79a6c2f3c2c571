"""One trial's training monitoring, read back for the report: gradient norms, spikes, attention.

What each trial recorded (:mod:`msatune.models.monitoring`) comes from its Ray directory (the
parent of its checkpoint dir): the per-epoch ``grad_norm_*`` and ``modality_weight_*`` columns of
``progress.csv``, and the best epoch's mean attention maps in ``work/monitor/attention.npz``.

A **gradient-norm spike** (:func:`first_spike`): epoch ``e`` is unstable when its largest step
norm exceeds :data:`SPIKE_FACTOR` times the median of the mean norms of the epochs before it
(at least :data:`SPIKE_MIN_EARLIER` of them). The report names the first such epoch beside the
stability criterion.
"""

from __future__ import annotations

import csv
import logging
import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial

from msatune.models.monitoring import ATTENTION_FILE, BRANCHES, MODALITY_WEIGHT_ORDER
from msatune.search.trial import MONITOR_DIR
from msatune.studies.report.curves import csv_float, trial_dir

log = logging.getLogger(__name__)

SPIKE_FACTOR = 5.0
SPIKE_MIN_EARLIER = 2
SPIKE_RULE = (f"a gradient-norm spike is an epoch whose largest step gradient norm exceeds {SPIKE_FACTOR:g}x "
              f"the median of the mean norms of the epochs before it (at least {SPIKE_MIN_EARLIER} of them)")


@dataclass
class TrialMonitoring:
    """A trial's per-epoch gradient norms and modality weights, and its best epoch's attention."""

    number: int
    epochs: list[int] = field(default_factory=list)  # 1-based
    grad_mean: list[float | None] = field(default_factory=list)
    grad_max: list[float | None] = field(default_factory=list)
    branch_mean: dict[str, list[float | None]] = field(default_factory=dict)
    modality_weights: dict[str, list[float | None]] = field(default_factory=dict)
    attention: dict[str, np.ndarray] = field(default_factory=dict)  # map tag -> (heads, Tq, Tc)
    attention_epoch: int | None = None

    @property
    def has_grads(self) -> bool:
        return any(v is not None for v in self.grad_mean)

    def weights_at(self, epoch: int | None) -> dict[str, float] | None:
        """The modality weights at ``epoch`` (the last recorded when None or missing)."""
        if not self.modality_weights or not self.epochs:
            return None
        i = self.epochs.index(epoch) if epoch in self.epochs else len(self.epochs) - 1
        out = {m: self.modality_weights[m][i] for m in MODALITY_WEIGHT_ORDER if m in self.modality_weights}
        return out if all(v is not None for v in out.values()) else None

    def summary(self, best_epoch: int | None) -> dict[str, Any]:
        """What report.json keeps of it (the maps are drawn, not stored)."""
        return {"trial": self.number, "epochs": self.epochs, "grad_norm_mean": self.grad_mean,
                "grad_norm_max": self.grad_max, "branch_mean": self.branch_mean,
                "spike": first_spike(self), "modality_weights": self.weights_at(best_epoch),
                "attention_maps": sorted(self.attention), "attention_epoch": self.attention_epoch}


def read_monitoring(trial: FrozenTrial) -> TrialMonitoring:
    """The trial's monitoring (empty lists when it recorded none, e.g. an older study)."""
    out = TrialMonitoring(trial.number)
    d = trial_dir(trial)
    if d is None:
        return out
    rows: dict[int, dict[str, str]] = {}
    path = d / "progress.csv"
    if path.is_file():
        try:
            with path.open(newline="") as fh:
                for row in csv.DictReader(fh):
                    epoch = csv_float(row.get("epoch"))
                    if epoch is not None:
                        rows[int(epoch)] = row  # a retried trial's later rows win
        except (OSError, csv.Error) as exc:
            log.warning("trial %d: cannot read %s: %s", trial.number, path, exc)
    out.epochs = sorted(rows)
    out.grad_mean = [csv_float(rows[e].get("grad_norm_mean")) for e in out.epochs]
    out.grad_max = [csv_float(rows[e].get("grad_norm_max")) for e in out.epochs]
    for b in BRANCHES:
        values = [csv_float(rows[e].get(f"grad_norm_{b}_mean")) for e in out.epochs]
        if any(v is not None for v in values):
            out.branch_mean[b] = values
    for m in MODALITY_WEIGHT_ORDER:
        values = [csv_float(rows[e].get(f"modality_weight_{m}")) for e in out.epochs]
        if any(v is not None for v in values):
            out.modality_weights[m] = values
    npz = d / "work" / MONITOR_DIR / ATTENTION_FILE
    if npz.is_file():
        try:
            with np.load(npz) as f:
                out.attention_epoch = int(f["epoch"])
                out.attention = {k: np.asarray(f[k]) for k in f.files if k != "epoch"}
        except (OSError, ValueError, KeyError) as exc:
            log.warning("trial %d: cannot read %s: %s", trial.number, npz, exc)
    return out


def first_spike(mon: TrialMonitoring) -> dict[str, Any] | None:
    """The first gradient-norm spike (see the module doc): ``{"epoch", "max", "median_mean",
    "ratio"}``, or None."""
    earlier: list[float] = []
    for epoch, mean, top in zip(mon.epochs, mon.grad_mean, mon.grad_max, strict=True):
        if len(earlier) >= SPIKE_MIN_EARLIER and top is not None:
            base = statistics.median(earlier)
            if base > 0 and top > SPIKE_FACTOR * base:
                return {"epoch": epoch, "max": top, "median_mean": base, "ratio": top / base}
        if mean is not None:
            earlier.append(mean)
    return None


def spike_text(trials: dict[str, TrialMonitoring | None]) -> str:
    """One phrase for the stability row: the first spike of each trial (``{label: monitoring}``)."""
    bits = []
    for label, mon in trials.items():
        if mon is None:
            continue
        if not mon.has_grads:
            bits.append(f"{label}: no gradient norms recorded")
            continue
        s = first_spike(mon)
        bits.append(f"{label}: no spike in {len(mon.epochs)} epochs" if s is None else
                    f"{label}: spike at epoch {s['epoch']} (max {s['max']:.3g} = {s['ratio']:.1f}x "
                    f"the median {s['median_mean']:.3g} of earlier means)")
    return "gradient norms: " + "; ".join(bits) if bits else ""
