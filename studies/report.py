"""A study's report: plots (matplotlib, Agg), the users' success criteria, one self-contained HTML.

What :func:`build_report` writes into ``out_dir``:

* ``history.png``: every trial's validation MAE by trial number, with the best-so-far line.
* ``curves.png``: train and validation MAE per epoch of the top trials and of the ``baseline``
  and ``improved`` preset trials (the overfitting story).
* ``importance.png``: hyperparameter importance by PED-ANOVA (Optuna's evaluator).
* ``ensemble.png``: ensemble vs best single trial, only when an ensemble is recorded on the study
  (study user attrs ``msatune:ensemble:*``).
* ``report.html`` (every PNG embedded as base64, nothing else needed), ``report.json`` (every
  number shown) and ``criteria.json`` (the criteria table alone).

Where the numbers come from:

* validation MAE per epoch: the trial's intermediate values in the store (step = epoch, 1-based);
  a trial's value is its best validation MAE, so its best epoch is the step holding that value;
* training MAE per epoch: Ray's ``progress.csv`` in the trial's directory (the parent of its
  ``checkpoint`` dir), else the msa-tf2 CSV log ``work/training_log.csv`` (``mae`` column);
* test MAE: ``predictions.npz`` (``test_pred``, ``test_label``) of the trial's best checkpoint.

The criteria (:data:`models.log_analysis.CRITERIA` and the users' analysis of their log):

* ``best_val_mae``: the best COMPLETE trial's validation MAE < 1.2;
* ``gap``: validation minus training MAE at that trial's best epoch < 0.3;
* ``stability``: std of the epoch-to-epoch changes of validation MAE (:func:`instability`), the
  ``baseline`` trial (before) vs the best trial (after); passes when after < before; needs at
  least 3 epochs on both sides;
* ``test_improvement``: test MAE of the ``baseline`` trial minus that of the best trial; passes
  when > 0.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
import math
import struct
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from models.log_analysis import CRITERIA, instability
from msatune.errors import UserError
from studies.store import ATTR_PREFIX, best_complete, load_study, state_counts, study_attrs
from studies.workspace import Workspace

log = logging.getLogger(__name__)

ENSEMBLE_PREFIX = ATTR_PREFIX + "ensemble:"
MAE_UNITS = "MAE (sentiment score, scale -3..3)"
MIN_EPOCHS_FOR_STABILITY = 3
PRESETS = ("baseline", "improved")


# --- per-trial data -------------------------------------------------------------------------------

@dataclass
class TrialCurve:
    """One trial's learning curve: validation MAE (store) and training MAE (Ray files) per epoch."""

    number: int
    state: str
    preset: str | None
    value: float | None
    epochs: list[int]
    val_mae: list[float]
    train_mae: list[float | None]
    train_source: str | None
    best_epoch: int | None

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


def _float(cell: str | None) -> float | None:
    try:
        value = float(cell) if cell not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def read_train_mae(trial: FrozenTrial) -> tuple[dict[int, float], str | None]:
    """``({epoch: train MAE}, source file name)`` from the trial's Ray files ({} when absent).

    ``progress.csv`` (columns ``epoch``, ``train_mae``) first; else ``work/training_log.csv``
    (0-based ``epoch``, ``mae``). A retried trial's later rows win.
    """
    d = trial_dir(trial)
    if d is None:
        return {}, None
    for name, epoch_col, mae_col, offset in (("progress.csv", "epoch", "train_mae", 0),
                                             ("work/training_log.csv", "epoch", "mae", 1)):
        path = d / name
        if not path.is_file():
            continue
        out: dict[int, float] = {}
        try:
            with path.open(newline="") as fh:
                for row in csv.DictReader(fh):
                    epoch, mae = _float(row.get(epoch_col)), _float(row.get(mae_col))
                    if epoch is not None and mae is not None:
                        out[int(epoch) + offset] = mae
        except (OSError, csv.Error) as exc:
            log.warning("trial %d: cannot read %s: %s", trial.number, path, exc)
            continue
        if out:
            return out, name
    return {}, None


def best_epoch(trial: FrozenTrial) -> int | None:
    """The epoch (step) holding the trial's value, else the step of its lowest validation MAE."""
    iv = {int(k): float(v) for k, v in trial.intermediate_values.items() if math.isfinite(v)}
    if not iv:
        return None
    if trial.value is not None:
        for step in sorted(iv):
            if iv[step] == trial.value:
                return step
    return min(sorted(iv), key=lambda s: iv[s])


def trial_curve(trial: FrozenTrial) -> TrialCurve:
    iv = {int(k): float(v) for k, v in trial.intermediate_values.items()}
    epochs = sorted(iv)
    train, source = read_train_mae(trial)
    return TrialCurve(
        number=trial.number,
        state=trial.state.name,
        preset=trial.user_attrs.get("preset"),
        value=trial.value,
        epochs=epochs,
        val_mae=[iv[e] for e in epochs],
        train_mae=[train.get(e) for e in epochs],
        train_source=source if train else None,
        best_epoch=best_epoch(trial),
    )


def test_mae(trial: FrozenTrial) -> float | None:
    """Test MAE of the trial's best checkpoint (``predictions.npz``), or None when unavailable."""
    ckpt = trial.user_attrs.get("checkpoint")
    if not ckpt:
        return None
    path = Path(ckpt) / "predictions.npz"
    try:
        with np.load(path, allow_pickle=False) as f:
            pred, label = f["test_pred"], f["test_label"]
    except (OSError, KeyError, ValueError) as exc:
        log.warning("trial %d: no test predictions in %s (%s)", trial.number, path, exc)
        return None
    return float(np.mean(np.abs(np.asarray(pred, np.float64).ravel() - np.asarray(label, np.float64).ravel())))


def preset_trial(trials: list[FrozenTrial], preset: str) -> FrozenTrial | None:
    """The finished (COMPLETE, else PRUNED) trial of a preset; re-queued copies are skipped."""
    found = [t for t in trials if t.user_attrs.get("preset") == preset
             and t.state in (TrialState.COMPLETE, TrialState.PRUNED)
             and not t.user_attrs.get("msatune_requeued")]
    found.sort(key=lambda t: (t.state != TrialState.COMPLETE, t.number))
    return found[0] if found else None


# --- criteria ------------------------------------------------------------------------------------

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


# --- ensembles recorded on the study --------------------------------------------------------------

def ensemble_records(user_attrs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: record}`` of the ensembles recorded on a study (``msatune:ensemble:<name>`` attrs).

    A record (``ensemble.evaluate``'s ``record()``) holds ``valid``/``test`` metric dicts of the
    ensemble and ``best_single`` as ``{"trial", "valid_mae", "test_mae"}`` (full ``valid``/``test``
    metric dicts, as in ``msatune ensemble --json``, work too); a JSON string is parsed. Records
    without both sides are skipped.
    """
    out = {}
    for key, value in sorted(user_attrs.items()):
        if not key.startswith(ENSEMBLE_PREFIX):
            continue
        rec = value
        if isinstance(rec, str):
            try:
                rec = json.loads(rec)
            except json.JSONDecodeError:
                log.warning("study attr %s is not JSON; skipped", key)
                continue
        if not isinstance(rec, dict):
            continue
        ens = rec.get("ensemble") if isinstance(rec.get("ensemble"), dict) else rec
        single = rec.get("best_single")
        if not isinstance(single, dict) or not any(isinstance(ens.get(s), dict) for s in ("valid", "test")):
            log.warning("study attr %s has no ensemble vs best-single metrics; skipped", key)
            continue
        single_metrics = {}
        for split in ("valid", "test"):  # full metric dicts, or the compact record's "<split>_mae"
            if isinstance(single.get(split), dict):
                single_metrics[split] = single[split]
            elif isinstance(single.get(f"{split}_mae"), (int, float)):
                single_metrics[split] = {"mae": single[f"{split}_mae"]}
        out[key[len(ENSEMBLE_PREFIX):] or "ensemble"] = {
            "method": rec.get("method"),
            "members": rec.get("members"),
            "ensemble": {s: ens.get(s) for s in ("valid", "test") if isinstance(ens.get(s), dict)},
            "best_single": {"trial": single.get("trial"), **single_metrics},
            "cv_valid_mae": rec.get("cv_valid_mae"),
            "model_path": rec.get("model_path"),
            "created": rec.get("created"),
        }
    return out


def _mae_of(metrics: dict[str, Any] | None) -> float | None:
    if not metrics:
        return None
    for k, v in metrics.items():
        if k.lower() == "mae" and isinstance(v, (int, float)):
            return float(v)
    return None


# --- plots ---------------------------------------------------------------------------------------

def _figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg via savefig

    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def plot_history(trials: list[FrozenTrial], name: str, path: Path) -> None:
    fig = _figure(9, 5)
    ax = fig.add_subplot()
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.value is not None]
    failed = sum(t.state == TrialState.FAIL for t in trials)
    if pruned:
        ax.scatter([t.number for t in pruned], [t.value for t in pruned], marker="x", color="0.55",
                   s=22, label=f"stopped early by ASHA ({len(pruned)}; value at the stop epoch)")
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
    for t in trials:
        p = t.user_attrs.get("preset")
        if p in PRESETS and t.value is not None and not t.user_attrs.get("msatune_requeued"):
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


def plot_importance(importance: dict[str, float], name: str, n_trials: int, path: Path) -> None:
    items = sorted(importance.items(), key=lambda kv: kv[1])
    fig = _figure(8, 1.2 + 0.45 * max(len(items), 1))
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=9)
    ax.set_xlim(0, max([v for _, v in items] + [0.01]) * 1.2)
    ax.set_xlabel("importance (PED-ANOVA, share of the total; unitless)")
    ax.set_ylabel("hyperparameter")
    ax.set_title(f"Hyperparameter importance for validation MAE, study '{name}' ({n_trials} complete trials)")
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path)


def plot_ensembles(records: dict[str, dict[str, Any]], name: str, path: Path) -> None:
    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    splits = ("valid", "test")
    first = next(iter(records.values()))
    bars: list[tuple[str, list[float | None]]] = [
        (f"best single (#{first['best_single'].get('trial')})",
         [_mae_of(first["best_single"].get(s)) for s in splits])]
    for key, rec in records.items():
        label = f"ensemble {key}" + (f" ({rec['method']})" if rec.get("method") and rec["method"] != key else "")
        bars.append((label, [_mae_of(rec["ensemble"].get(s)) for s in splits]))
    width = 0.8 / len(bars)
    for i, (label, values) in enumerate(bars):
        xs = [j + (i - (len(bars) - 1) / 2) * width for j in range(len(splits))]
        ys = [np.nan if v is None else v for v in values]
        ax.bar(xs, ys, width, label=label)
        for x, v in zip(xs, values, strict=True):
            if v is not None:
                ax.text(x, v, f"{v:.3f}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(splits)), ["validation", "test"])
    ax.set_ylabel(MAE_UNITS)
    ax.set_title(f"Ensemble vs best single trial, study '{name}' (lower is better)")
    ax.margins(y=0.1)
    fig.legend(fontsize=9, loc="outside lower center", ncols=len(bars))
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path)


# --- the report ----------------------------------------------------------------------------------

@dataclass
class Report:
    """What :func:`build_report` wrote and computed (``payload`` is ``report.json``)."""

    out_dir: Path
    html: Path
    figures: dict[str, Path]
    payload: dict[str, Any] = field(default_factory=dict)


def param_importance(study: optuna.Study) -> tuple[dict[str, float], str | None]:
    """PED-ANOVA importances over COMPLETE trials, or ``({}, why not)``."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if len(done) < 2:
        return {}, f"needs at least 2 complete trials (has {len(done)})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return {}, f"PED-ANOVA failed: {exc}"
    if not imp:
        return {}, "no hyperparameter varies across the complete trials"
    return {k: float(v) for k, v in imp.items()}, None


def select_curves(trials: list[FrozenTrial], top: int) -> tuple[list[FrozenTrial], dict[int, str]]:
    """The presets' trials then the ``top`` best COMPLETE ones; ``roles`` says why each is shown."""
    chosen: list[FrozenTrial] = []
    roles: dict[int, str] = {}
    for p in PRESETS:
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


def tensorboard_hint(ws: Workspace, name: str) -> str:
    """The command that opens the study's per-epoch metrics (Ray's event files) in TensorBoard."""
    return f"tensorboard --logdir {ws.study_dir(name).resolve() / 'ray'}"


def build_report(storage: optuna.storages.BaseStorage, name: str, out_dir: Path, *,
                 ws: Workspace | None = None, top: int = 3) -> Report:
    """Compute the criteria, draw the plots and write the report files into ``out_dir``.

    Raises:
        UserError: unknown study, a study with no finished trial, or ``out_dir`` not writable.
    """
    study = load_study(storage, name)
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if not finished:
        raise UserError(f"study {name!r} has no finished trial yet; nothing to report "
                        f"(see msatune show {name})")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create report directory {out_dir}: {exc.strerror or exc}") from None

    attrs = study_attrs(study)
    criteria = compute_criteria(trials)
    figures: dict[str, Path] = {}
    notes: list[str] = []

    figures["history"] = out_dir / "history.png"
    plot_history(trials, name, figures["history"])

    chosen, roles = select_curves(trials, top)
    curves = [trial_curve(t) for t in chosen]
    if curves:
        figures["curves"] = out_dir / "curves.png"
        plot_curves(curves, roles, name, figures["curves"], attrs.get("max_epochs"))
    missing_train = [c.number for c in curves if c.train_source is None]
    if missing_train:
        notes.append(f"no training MAE found for trials {missing_train} (Ray's progress.csv missing); "
                     "their curves show validation MAE only")

    importance, why = param_importance(study)
    n_complete = sum(t.state == TrialState.COMPLETE for t in trials)
    if importance:
        figures["importance"] = out_dir / "importance.png"
        plot_importance(importance, name, n_complete, figures["importance"])
    else:
        notes.append(f"hyperparameter importance not computed: {why}")

    ensembles = ensemble_records(study.user_attrs)
    if ensembles:
        figures["ensemble"] = out_dir / "ensemble.png"
        plot_ensembles(ensembles, name, figures["ensemble"])

    best = best_complete(trials)
    payload: dict[str, Any] = {
        "study": name,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "data_path": attrs.get("data_path"),
        "budget": attrs.get("budget"),
        "max_epochs": attrs.get("max_epochs"),
        "created": attrs.get("created"),
        "counts": state_counts(trials),
        "best": {"trial": best.number, "val_mae": best.value, "params": best.params,
                 "checkpoint": best.user_attrs.get("checkpoint"), "test_mae": test_mae(best)} if best else None,
        "criteria": criteria,
        "criteria_table": criteria_rows(criteria),
        "curves": [{**asdict(c), "role": roles.get(c.number)} for c in curves],
        "importance": importance,
        "ensembles": ensembles,
        "figures": {k: p.name for k, p in figures.items()},
        "tensorboard": tensorboard_hint(ws, name) if ws is not None else None,
        "notes": notes,
    }
    _write_json(out_dir / "criteria.json", {"study": name, "criteria": criteria})
    _write_json(out_dir / "report.json", payload)
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(payload, figures), encoding="utf-8")
    log.info("report of %s written to %s", name, out_dir)
    return Report(out_dir=out_dir, html=html_path, figures=figures, payload=payload)


def _clean(o: Any) -> Any:
    """JSON-ready: numpy scalars to Python, paths to str, nan/inf to None."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, Path):
        return str(o)
    return o


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(_clean(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} .meta{color:#555} table{border-collapse:collapse;margin:1em 0;width:100%}
th,td{border:1px solid #ccc;padding:.35em .6em;text-align:left;vertical-align:top;font-size:14px}
th{background:#f3f3f3} .PASS{background:#d9f2d9;font-weight:bold} .FAIL{background:#f8d7d7;font-weight:bold}
.na{background:#eee} img{max-width:100%;border:1px solid #ddd;margin:.5em 0} code{background:#f3f3f3;padding:.1em .3em}
.note{color:#8a5a00}
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.{digits}f}"
    return str(v)


def render_html(payload: dict[str, Any], figures: dict[str, Path]) -> str:
    """The self-contained report page (figures embedded as base64 PNG)."""
    e = html.escape
    name = payload["study"]
    c = payload["counts"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>msatune report: {e(name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>msatune report: study <code>{e(name)}</code></h1>",
        f"<p class='meta'>generated {e(payload['generated'])}; created {e(str(payload.get('created') or '-'))}; "
        f"data {e(str(payload.get('data_path') or '-'))}; budget {e(str(payload.get('budget') or '-'))} trials "
        f"x up to {e(str(payload.get('max_epochs') or '-'))} epochs</p>",
        f"<p>{c['COMPLETE']} complete, {c['PRUNED']} stopped early by ASHA (PRUNED), {c['FAIL']} failed, "
        f"{c['RUNNING']} running, {c['WAITING']} queued.</p>",
        "<h2>Success criteria</h2><table><tr><th>criterion</th><th>numbers</th><th>result</th></tr>",
    ]
    for row in payload["criteria_table"]:
        cls = {"PASS": "PASS", "FAIL": "FAIL"}.get(row["result"], "na")
        parts.append(f"<tr><td>{e(row['criterion'])}</td><td>{e(row['numbers'])}</td>"
                     f"<td class='{cls}'>{e(row['result'])}</td></tr>")
    parts.append("</table>")
    best = payload.get("best")
    if best:
        params = ", ".join(f"{k}={_fmt(v, 3)}" for k, v in sorted(best["params"].items()))
        parts.append(f"<p>Best trial <b>#{best['trial']}</b>: validation MAE {_fmt(best['val_mae'])}, "
                     f"test MAE {_fmt(best['test_mae'])}; {e(params)}<br>checkpoint <code>{e(str(best['checkpoint']))}</code></p>")
    sections = [
        ("history", "Optimization history", "Each trial's best validation MAE; the red line is the best so far. "
         "Trials stopped early by ASHA show their value at the epoch they were stopped."),
        ("curves", "Learning curves", "Training and validation MAE per epoch. A validation curve far above the "
         "training curve is overfitting (the criterion is a gap < 0.3 at the best epoch)."),
        ("importance", "Hyperparameter importance", "PED-ANOVA (Optuna) over the complete trials: how much each "
         "hyperparameter explains of reaching the best validation MAEs."),
        ("ensemble", "Ensemble vs best single trial", "Recorded by msatune ensemble; members were chosen on "
         "validation predictions only, test is reported, never used to choose."),
    ]
    for key, title, blurb in sections:
        if key in figures:
            parts.append(f"<h2>{e(title)}</h2><p>{e(blurb)}</p>{_img(figures[key], title)}")
    if payload.get("ensembles"):
        parts.append("<table><tr><th>ensemble</th><th>split</th><th>metric</th><th>best single</th>"
                     "<th>ensemble</th></tr>")
        for key, rec in payload["ensembles"].items():
            for split in ("valid", "test"):
                ens, single = rec["ensemble"].get(split) or {}, rec["best_single"].get(split) or {}
                for metric in [m for m in ens if isinstance(ens[m], (int, float))]:
                    parts.append(f"<tr><td>{e(key)}</td><td>{split}</td><td>{e(metric)}</td>"
                                 f"<td>{_fmt(single.get(metric))}</td><td>{_fmt(ens[metric])}</td></tr>")
        parts.append("</table>")
        for key, rec in payload["ensembles"].items():
            if rec.get("cv_valid_mae") is not None:
                parts.append(f"<p>{e(key)}: validation MAE of the selection under cross-validated refit "
                             f"{_fmt(rec['cv_valid_mae'])} (in-sample {_fmt(_mae_of(rec['ensemble'].get('valid')))}); "
                             "the gap is the selection's optimism.</p>")
    if payload.get("curves"):
        parts.append("<h2>Trials shown</h2><table><tr><th>trial</th><th>role</th><th>state</th><th>epochs</th>"
                     "<th>best val MAE</th><th>best epoch</th><th>train MAE source</th></tr>")
        for cv in payload["curves"]:
            parts.append(f"<tr><td>#{cv['number']}</td><td>{e(str(cv['role']))}</td><td>{cv['state']}</td>"
                         f"<td>{len(cv['epochs'])}</td><td>{_fmt(min(cv['val_mae']) if cv['val_mae'] else None)}</td>"
                         f"<td>{_fmt(cv['best_epoch'])}</td><td>{e(str(cv['train_source'] or '-'))}</td></tr>")
        parts.append("</table>")
    for note in payload.get("notes", []):
        parts.append(f"<p class='note'>Note: {e(note)}</p>")
    if payload.get("tensorboard"):
        parts.append(f"<p>Per-epoch metrics of every trial in TensorBoard: <code>{e(payload['tensorboard'])}</code></p>")
    parts.append("<p class='meta'>MAE is in sentiment score units (labels in [-3, 3]). Validation MAE per epoch "
                 "comes from the study store; training MAE from each trial's Ray progress.csv; test MAE from the "
                 "best checkpoint's predictions.</p></body></html>")
    return "\n".join(parts)


# --- attaching the report to the study (note + artifacts in optuna-dashboard) --------------------

def note_markdown(payload: dict[str, Any]) -> str:
    lines = [f"### msatune report ({payload['generated']})", "", "| criterion | numbers | result |", "|---|---|---|"]
    for row in payload["criteria_table"]:
        lines.append(f"| {row['criterion']} | {row['numbers'].replace('|', '/')} | **{row['result']}** |")
    for key, rec in payload.get("ensembles", {}).items():
        s, en = rec["best_single"], rec["ensemble"]
        lines.append("")
        lines.append(f"Ensemble **{key}**: test MAE {_fmt(_mae_of(en.get('test')))} vs best single "
                     f"#{s.get('trial')} {_fmt(_mae_of(s.get('test')))}")
    lines += ["", "Figures and report.html are attached as study artifacts."]
    return "\n".join(lines)


def attach_report(storage: optuna.storages.BaseStorage, name: str, report: Report, artifact_dir: Path) -> list[str]:
    """Write the criteria as the study's dashboard note and upload the report files as study
    artifacts (replacing those of an earlier report). Returns the artifact ids. Writes to the store.
    """
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact
    from optuna_dashboard import save_note

    study = load_study(storage, name)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(artifact_dir))
    files = [report.html, *report.figures.values()]
    names = {p.name for p in files}
    prefix = "artifacts:"
    for key, value in storage.get_study_system_attrs(study._study_id).items():  # drop the previous report's files
        if not key.startswith(prefix) or value is None:
            continue
        try:
            meta = json.loads(value)
        except (TypeError, json.JSONDecodeError):
            continue
        if isinstance(meta, dict) and meta.get("filename") in names:
            try:
                store.remove(meta["artifact_id"])
            except Exception:  # noqa: BLE001 - already gone: only the metadata is left to clear
                log.debug("artifact %s already removed", meta.get("artifact_id"))
            storage.set_study_system_attr(study._study_id, key, json.dumps(None))
    ids = [upload_artifact(artifact_store=store, file_path=str(p), study_or_trial=study) for p in files]
    save_note(study, note_markdown(report.payload))
    return ids


# --- TensorBoard event files (what Ray's TBX logger wrote) -----------------------------------------

def read_event_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of a TensorBoard event file (TFRecord framing, no TF needed)."""
    from tensorboardX.proto import event_pb2

    data = Path(path).read_bytes()
    out: dict[str, list[tuple[int, float]]] = {}
    i = 0
    while i + 12 <= len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        i += 12  # length + its CRC
        event = event_pb2.Event()
        event.ParseFromString(data[i:i + n])
        i += n + 4  # payload + its CRC
        for v in event.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, []).append((int(event.step), float(v.simple_value)))
    return out
