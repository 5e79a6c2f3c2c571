"""The report's four figures (matplotlib, Agg, no pyplot state): history, curves, importance,
ensemble vs best single."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from msatune.models.log_analysis import CRITERIA
from msatune.search.reconcile import REQUEUED_ATTR
from msatune.search.trial_config import PRESET_NAMES
from msatune.studies.report.curves import TrialCurve
from msatune.studies.store.ensemble_records import mae_of

MAE_UNITS = "MAE (sentiment score, scale -3..3)"


def _figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg via savefig

    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def _reference_lines(ax: Any, reference: dict[str, Any] | None, split: str) -> None:
    """The constant predictor and the noise floor of ``split`` as horizontal lines."""
    ref = reference or {}
    if ref.get("constant_mae") is not None:
        ax.axhline(ref["constant_mae"], color="tab:purple", ls="-.", lw=1.2,
                   label=f"constant predictor ({split} {ref['constant_mae']:.3f})")
    if ref.get("floor_mae") is not None:
        ax.axhline(ref["floor_mae"], color="0.3", ls=":", lw=1.2,
                   label=f"noise floor ({split} {ref['floor_mae']:.3f})")


def plot_history(trials: list[FrozenTrial], name: str, path: Path,
                 reference: dict[str, Any] | None = None) -> None:
    fig = _figure(9, 5)
    ax = fig.add_subplot()
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.value is not None]
    failed = sum(t.state == TrialState.FAIL for t in trials)
    if pruned:
        ax.scatter([t.number for t in pruned], [t.value for t in pruned], marker="x", color="0.55",
                   s=22, label=f"stopped early by ASHA ({len(pruned)}; best val MAE up to the stop)")
    if done:
        ax.scatter([t.number for t in done], [t.value for t in done], color="tab:blue", s=22,
                   label=f"complete ({len(done)})", zorder=3)
        xs, ys, best = [], [], math.inf
        for t in sorted(done, key=lambda t: t.number):
            best = min(best, t.value)
            xs.append(t.number)
            ys.append(best)
        last = max(t.number for t in trials)
        ax.step([*xs, last], [*ys, ys[-1]], where="post", color="tab:red", lw=2, label="best so far", zorder=4)
    ax.axhline(CRITERIA["val_mae"], color="tab:green", ls="--", lw=1,
               label=f"goal: val MAE < {CRITERIA['val_mae']}")
    _reference_lines(ax, reference, "valid")
    for t in trials:
        p = t.user_attrs.get("preset")
        if p in PRESET_NAMES and t.value is not None and not t.user_attrs.get(REQUEUED_ATTR):
            ax.annotate(p, (t.number, t.value), textcoords="offset points", xytext=(6, 6), fontsize=9)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(y=0.12)
    ax.set_xlabel("trial number")
    ax.set_ylabel(f"validation {MAE_UNITS}")
    ax.set_title(f"Optimization history of study '{name}'"
                 + (f" ({failed} failed trial{'s' if failed > 1 else ''} not shown)" if failed else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.savefig(path)


def plot_curves(curves: list[TrialCurve], roles: dict[int, str], name: str, path: Path,
                max_epochs: int | None = None) -> None:
    n = len(curves)
    ncols = 2 if n in (2, 4) else min(3, n)
    nrows = math.ceil(n / ncols)
    fig = _figure(4.6 * ncols, 3.3 * nrows + 0.8)
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    last = max([max_epochs or 0] + [max(c.epochs) for c in curves if c.epochs])
    for ax, c in zip(axes.flat, curves, strict=False):
        ax.plot(c.epochs, c.val_mae, marker="o", ms=3, color="tab:blue", label="validation MAE")
        if any(v is not None for v in c.train_mae):
            ax.plot(c.epochs, [np.nan if v is None else v for v in c.train_mae], marker="o", ms=3,
                    ls="--", color="tab:orange", label="training MAE")
        if c.best_epoch is not None:
            ax.axvline(c.best_epoch, color="0.5", ls=":", lw=1, label="best epoch")
        ax.axhline(CRITERIA["val_mae"], color="tab:green", ls="--", lw=0.8,
                   label=f"goal: val MAE < {CRITERIA['val_mae']}")
        best = min(c.val_mae) if c.val_mae else None
        title = f"trial {c.label} [{roles.get(c.number, '')}]"
        second = []
        if c.state == "PRUNED" and c.epochs:
            second.append(f"stopped by ASHA at epoch {max(c.epochs)}")
        elif c.state != "COMPLETE":
            second.append(c.state)
        if best is not None:
            second.append(f"best val MAE {best:.3f} at epoch {c.best_epoch}")
        title += "\n" + "; ".join(second)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if last:
            ax.set_xlim(0.5, last + 0.5)
            ax.set_xticks(range(1, last + 1, max(1, math.ceil(last / 10))))
    for ax in axes[:, 0]:
        ax.set_ylabel(MAE_UNITS, fontsize=9)
    handles, labels = {}, []
    for ax in axes.flat[:n]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[lab] for lab in labels], labels, loc="outside lower center", ncols=len(labels), fontsize=9)
    fig.suptitle(f"Learning curves of study '{name}': top trials and the presets")
    fig.savefig(path)


def plot_importance(importance: dict[str, float], name: str, caption: str, path: Path) -> None:
    """Importance bars; ``caption`` (under the title) says what it rests on: epoch and trials
    (:attr:`msatune.studies.importance.Importance.caption`)."""
    items = sorted(importance.items(), key=lambda kv: kv[1])
    fig = _figure(8, 1.2 + 0.45 * max(len(items), 1))
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=9)
    ax.set_xlim(0, max([v for _, v in items] + [0.01]) * 1.2)
    ax.set_xlabel("importance (PED-ANOVA, share of the total; unitless)")
    ax.set_ylabel("hyperparameter")
    ax.set_title(f"Hyperparameter importance for validation MAE, study '{name}'\n{caption}", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path)


def plot_ensembles(records: dict[str, dict[str, Any]], name: str, path: Path,
                   reference: dict[str, dict[str, Any]] | None = None) -> tuple[float, float]:
    """Best single vs each ensemble on valid and test; the y-axis spans the data (not from 0), so
    a 0.02 gain is visible, and each ensemble bar is labelled with its change vs the best single.
    Returns the y-axis limits."""
    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    splits = ("valid", "test")
    first = next(iter(records.values()))
    single = [mae_of(first["best_single"].get(s)) for s in splits]
    bars: list[tuple[str, list[float | None]]] = [
        (f"best single (#{first['best_single'].get('trial')})", single)]
    for key, rec in records.items():
        label = f"ensemble {key}" + (f" ({rec['method']})" if rec.get("method") and rec["method"] != key else "")
        bars.append((label, [mae_of(rec["ensemble"].get(s)) for s in splits]))
    width = 0.8 / len(bars)
    shown: list[float] = []
    for i, (label, values) in enumerate(bars):
        xs = [j + (i - (len(bars) - 1) / 2) * width for j in range(len(splits))]
        ys = [np.nan if v is None else v for v in values]
        ax.bar(xs, ys, width, label=label)
        for j, (x, v) in enumerate(zip(xs, values, strict=True)):
            if v is None:
                continue
            shown.append(v)
            text = f"{v:.3f}"
            if i > 0 and single[j]:
                text += f"\n{100.0 * (v - single[j]) / single[j]:+.1f}%"
            ax.text(x, v, text, ha="center", va="bottom", fontsize=9)
    for j, split in enumerate(splits):
        ref = (reference or {}).get(split) or {}
        for key, style, what in (("constant_mae", "-.", "constant"), ("floor_mae", ":", "floor")):
            if ref.get(key) is not None:
                ax.hlines(ref[key], j - 0.45, j + 0.45, colors="0.3", linestyles=style, lw=1.2)
                ax.text(j + 0.45, ref[key], f" {what} {ref[key]:.3f}", va="center", fontsize=8)
                shown.append(ref[key])
    if shown:
        lo, hi = min(shown), max(shown)
        pad = max(0.02, 0.25 * (hi - lo))
        ax.set_ylim(max(0.0, lo - pad), hi + 1.6 * pad)
    ax.set_xticks(range(len(splits)), ["validation", "test"])
    ax.set_ylabel(MAE_UNITS + " (axis zoomed to the values)")
    ax.set_title(f"Ensemble vs best single trial, study '{name}' (lower is better; % = change vs best single)")
    fig.legend(fontsize=9, loc="outside lower center", ncols=len(bars))
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path)
    return ax.get_ylim()


def plot_gradients(monitors: list[Any], roles: dict[int, str], name: str, path: Path, rule: str) -> None:
    """Per trial: the global gradient norm per epoch (mean and max over the epoch's steps) and
    each branch's mean, log scale; the first spike (``first_spike``) marked. ``monitors`` are
    :class:`msatune.studies.report.monitoring.TrialMonitoring` with gradient norms."""
    from msatune.studies.report.monitoring import first_spike

    n = len(monitors)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = _figure(4.6 * ncols, 3.3 * nrows + 0.9)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, mon in zip(axes.flat, monitors, strict=False):
        nan = [np.nan if v is None else v for v in mon.grad_mean]
        ax.plot(mon.epochs, nan, marker="o", ms=3, color="black", lw=1.8, label="global, mean over steps")
        ax.plot(mon.epochs, [np.nan if v is None else v for v in mon.grad_max], marker="^", ms=3,
                color="black", ls="--", lw=1, label="global, max over steps")
        for branch, values in mon.branch_mean.items():
            ax.plot(mon.epochs, [np.nan if v is None else v for v in values], lw=1, alpha=0.8,
                    label=f"{branch} branch, mean")
        spike = first_spike(mon)
        title = f"trial #{mon.number} [{roles.get(mon.number, '')}]"
        if spike is not None:
            ax.axvline(spike["epoch"], color="tab:red", ls=":", lw=1.5, label="first spike")
            title += f"\nspike at epoch {spike['epoch']} ({spike['ratio']:.1f}x)"
        else:
            title += "\nno gradient-norm spike"
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, which="both")
    for ax in axes[:, 0]:
        ax.set_ylabel("gradient L2 norm (before clipping)", fontsize=9)
    handles: dict[str, Any] = {}
    for ax in axes.flat[:n]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(4, len(handles)),
               fontsize=8)
    # ~12 characters per inch at 10 pt: the rule wraps inside the figure instead of running off it
    fig.suptitle(f"Gradient norms per epoch, study '{name}'\n" + textwrap.fill(rule, width=int(12 * 4.6 * ncols)),
                 fontsize=10)
    fig.savefig(path)


def plot_attention(entries: list[tuple[Any, dict[str, float] | None, str]], name: str, path: Path) -> None:
    """One row per trial ``(monitoring, modality weights, role)``: the modality weights (mean
    over validation samples) as bars, then each cross-attention map averaged over samples and
    heads (query step down, context step across)."""
    ncols = 1 + max(len(mon.attention) for mon, _, _ in entries)
    fig = _figure(3.4 * ncols, 3.2 * len(entries) + 0.6)
    axes = fig.subplots(len(entries), ncols, squeeze=False)
    for row, (mon, weights, role) in zip(axes, entries, strict=True):
        ax = row[0]
        if weights:
            ax.bar(list(weights), list(weights.values()), color=["tab:blue", "tab:orange", "tab:green"])
            for i, v in enumerate(weights.values()):
                ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=9)
            ax.set_ylim(0, 1)
        else:
            ax.text(0.5, 0.5, "no modality weights", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"trial #{mon.number} [{role}]\nmodality weights", fontsize=10)
        for ax, (tag, heads) in zip(row[1:], sorted(mon.attention.items()), strict=False):
            picture = heads.mean(axis=0) if heads.ndim == 3 else heads
            im = ax.imshow(picture, cmap="viridis", aspect="auto", vmin=0)
            fig.colorbar(im, ax=ax, shrink=0.8)
            ax.set_title(f"{tag.replace('_from_', ' <- ')} (epoch {mon.attention_epoch})", fontsize=10)
            ax.set_xlabel("context step")
            ax.set_ylabel("query step")
        for ax in row[1 + len(mon.attention):]:
            ax.set_visible(False)
    fig.suptitle(f"Attention on validation at the best epoch, study '{name}' (mean over samples and heads)",
                 fontsize=11)
    fig.savefig(path)
