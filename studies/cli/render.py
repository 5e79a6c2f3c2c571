"""How the CLI shows a study: its trial table, its refit table, the live progress line, a run's
summary, and the one way it writes a number.

Shared by ``launch``, ``resume``, ``show``, ``refit``, ``ensemble``, ``report`` and ``demo``;
library functions return data and these functions turn it into text.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from msatune.studies.cli.context import console
from msatune.studies.refit.table import ranking_line
from msatune.studies.store.workspace import Workspace


def fmt(v: Any, digits: int = 4, missing: str = "-") -> str:
    """A number as the CLI writes it (``digits`` decimals), ``missing`` for None."""
    return missing if v is None else f"{v:.{digits}f}"


def pct(v: Any) -> str:
    """A relative change in percent with its sign (``-3.2%``), ``-`` for None."""
    return "-" if v is None else f"{v:+.1f}%"


def short(v: Any) -> str:
    """A parameter's value in a table cell: 3 significant digits, small rates as ``3.12e-4``
    (``0.000312`` would be cut in an 80-column log)."""
    if not isinstance(v, float):
        return str(v)
    if v != 0 and abs(v) < 1e-3:
        mantissa, exponent = f"{v:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{v:.3g}"


def next_steps(ws: Workspace, name: str) -> list[str]:
    """The commands that look further at study ``name``."""
    return [
        f"dashboard:   msatune --workspace {ws.root} dashboard",
        f"report:      msatune --workspace {ws.root} report {name}",
        f"ensemble:    msatune --workspace {ws.root} ensemble {name}",
        f"tensorboard: tensorboard --logdir {ws.ray_dir(name).resolve()}",
    ]


def reference_line(reference: dict | None, split: str = "valid") -> str | None:
    """``constant predictor valid MAE 1.2778, floor 0.5101`` from a study's recorded references."""
    ref = (reference or {}).get(split) or {}
    if ref.get("constant_mae") is None:
        return None
    line = f"constant predictor {split} MAE {ref['constant_mae']:.4f}"
    if ref.get("floor_mae") is not None:
        line += f", noise floor {ref['floor_mae']:.4f}"
    return line


def counts_line(c: dict) -> str:
    """``3 complete, 2 pruned, 0 failed, 1 interrupted (re-run), 0 running, 0 queued``."""
    return (f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed, "
            f"{c.get('INTERRUPTED', 0)} interrupted (re-run), {c['RUNNING']} running, "
            f"{c['WAITING']} queued")


def render_show(payload: dict, steps: list[str] | None = None) -> None:
    """A study's counts, its trials as a table (failures with their reason), the best
    checkpoint, the constant predictor and the value rule, then ``steps``."""
    from rich.table import Table

    con = console()
    con.print(f"[bold]{payload['name']}[/bold]: {counts_line(payload['counts'])} "
              f"(budget {payload.get('budget', '?')}; family {payload.get('family', 'improved')})")
    driver = payload.get("driver")
    if driver:
        last = driver["describe"] or "a driver"
        con.print(f"running under {last}" if driver["alive"] else
                  f"the {payload['counts']['RUNNING']} running trial(s) have no live driver (last: {last}: "
                  f"killed, crashed or stopped with Ray): msatune resume {payload['name']} runs them again",
                  soft_wrap=True)
    table = Table(title=f"trials: {', '.join(payload.get('states') or ['complete'])}, best validation MAE first")
    for col in ("#", "state", "val MAE", "epochs", "family", "preset"):
        table.add_column(col)
    table.add_column("key params / reason", overflow="fold")  # wrapped, never cut with an ellipsis
    for t in payload["trials"]:
        p = t["params"]
        key = ", ".join(f"{k}={short(p[k])}" for k in ("learning_rate", "dropout", "model_dim", "batch_size", "loss") if k in p)
        if t.get("fail_reason") and t["state"] in ("FAIL", "INTERRUPTED"):
            key = t["fail_reason"][:160]
        table.add_row(str(t["number"]), t["state"], fmt(t["val_mae"]), str(t["epochs"] or "-"),
                      t.get("family") or "-", t.get("preset") or "", key,
                      style="dim" if t["state"] != "COMPLETE" else None)
    con.print(table)
    if payload.get("refit"):
        render_refit_table(payload["refit"])
    best = payload["best"]
    ranking = payload.get("ranking")
    if ranking:
        con.print(ranking_line(ranking), soft_wrap=True)
    if best:
        preset = f" (the {best['preset']} preset)" if best.get("preset") else ""
        by = " by validation MAE" if ranking and ranking["measure"] != "val_mae" else ""
        con.print(f"best{by}: trial {best['number']}{preset} val MAE {best['val_mae']:.4f}; "
                  f"checkpoint {best['checkpoint']}")
        preset_note = best_is_preset_line(payload)
        if preset_note:
            con.print(preset_note)
    ref = reference_line(payload.get("reference"))
    if ref:
        con.print(f"reference: {ref}" + (
            "  [bold red]the best trial is no better than the constant predictor[/bold red]"
            if best and best["val_mae"] >= payload["reference"]["valid"]["constant_mae"] else ""))
    if payload.get("value_rule"):
        con.print(f"note: {payload['value_rule']}")
    for line in steps or []:
        con.print(line)


def render_importance(importance: dict) -> None:
    """A study's hyperparameter importance (``Importance.as_dict()``): a table of the shares and
    one line saying what they rest on (epoch, trials, evaluator), or one line saying why none."""
    con = console()
    if not importance.get("importances"):
        con.print(f"importance: not computed: {importance.get('reason')}", soft_wrap=True)
        return
    from rich.table import Table

    con.print(f"hyperparameter importance at {importance['where']}:")
    table = Table()
    table.add_column("parameter")
    table.add_column("importance", justify="right")
    for param, share in importance["importances"].items():
        table.add_row(param, f"{share:.3f}")
    con.print(table)
    con.print(f"importance: {importance['basis']}", soft_wrap=True)


def _clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S" if seconds >= 3600 else "%M:%S", time.gmtime(seconds))
def best_is_preset_line(payload: dict) -> str | None:
    """The plain line a study whose best trial is one of the users' own recipes deserves."""
    best = payload.get("best") or {}
    if not best.get("preset"):
        return None
    return (f"no searched configuration beat your {best['preset']} recipe yet: run more trials with "
            f"`msatune resume {payload['name']} --trials N`")


class Progress:
    """What a running study shows. In a terminal: one live status line (rich). Off a terminal
    (output to a log file or a pipe), and always with ``--json`` (then on stderr): a plain line
    per finished trial, flushed at once, so a log shows the study while it runs."""

    def __init__(self, name: str, *, json_mode: bool = False) -> None:
        self.name = name
        self.stream = sys.stderr if json_mode else sys.stdout
        self.live: Any = None
        self.use_live = not json_mode and console().is_terminal
        self.seen = {"complete": 0, "pruned": 0, "failed": 0}

    def __enter__(self) -> Progress:
        if self.use_live:
            from rich.live import Live
            from rich.text import Text

            self.live = Live(Text(f"{self.name}: checking ..."), console=console(),
                             refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def _plain(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def phase(self, text: str) -> None:
        """What the run does before its first trial (e.g. ``starting Ray``)."""
        if self.live is not None:
            from rich.text import Text

            self.live.update(Text(f"{self.name}: {text} ..."))
        else:
            self._plain(f"{self.name}: {text} ...")

    def __call__(self, state: Any) -> None:
        c = state.counters
        best = f"{c.best_val_mae:.4f} (#{c.best_trial})" if c.best_trial is not None else "-"
        eta = _clock(state.eta) if state.eta is not None else "?"
        status = (f"{c.complete} complete, {c.pruned} pruned, {c.failed} failed, {state.running} running "
                  f"| best val MAE {best} | elapsed {_clock(state.elapsed)} ETA {eta}")
        if self.live is not None:
            from rich.text import Text

            self.live.update(Text(f"{self.name}: {state.done}/{state.budget} done ({status})"))
            return
        now = {"complete": c.complete, "pruned": c.pruned, "failed": c.failed}
        done = sum(self.seen.values())
        for kind in ("complete", "pruned", "failed"):
            for _ in range(now[kind] - self.seen[kind]):
                done += 1
                self._plain(f"{self.name}: trial {done}/{state.budget} finished ({kind}) | {status}")
        self.seen = now

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)


def budget_used_message(summary: dict, name: str) -> str | None:
    """What to say when a resume found the study's budget used (``None`` otherwise)."""
    if summary.get("trials_run") == 0 and summary.get("remaining") == 0:
        return f"study {name!r} has used its budget of {summary['budget']} trials; run more with --trials N"
    return None


def render_run(summary: dict, name: str) -> None:
    """One line about a finished (or interrupted) run of a study."""
    con = console()
    message = budget_used_message(summary, name)
    if message:
        con.print(message)
        return
    con.print(f"run {summary['run']}: {summary['trials']} trials ({summary['complete']} complete, "
              f"{summary['pruned']} pruned, {summary['failed']} failed) in {summary['wall_seconds']:.0f} s "
              f"with {summary['concurrency']} at once")
    if summary.get("interrupted"):
        con.print(f"interrupted: {len(summary.get('requeued', []))} running trial(s) re-queued; "
                  f"continue with: msatune resume {name}")
    elif summary.get("out_of_time"):
        con.print(f"time budget of {summary['time_budget_s']:.0f} s reached: no trial started after it; "
                  f"{summary['trials_left']} trial(s) of this run left; continue with: msatune resume {name}")


def _mean_std(mean: Any, std: Any) -> str:
    return fmt(mean) if std is None else f"{fmt(mean)} ± {fmt(std)}"


def _rank_change(v: Any) -> str:
    if v is None:
        return "-"
    return "=" if v == 0 else (f"▲{v:g}" if v > 0 else f"▼{-v:g}")


def render_refit_table(table: dict[str, Any] | None, title: str | None = None) -> None:
    """Validation MAE vs out-of-fold MAE per refit configuration, with both ranks."""
    if not table:
        return
    from rich.table import Table

    if table.get("scheme") == "seeds":
        t = Table(title=title or (f"refit ({table['repeats']} seed repeats on train, scored on valid, with the "
                                  "trial's own model): one trial's validation MAE vs its seeds' averaged"))
        cols = ("trial", "preset", "val MAE", "val rank", "seeds' val MAE", "per seed", "seeds rank", "change",
                "repeats")
    else:
        t = Table(title=title or (f"refit ({table['folds']} folds x {table['repeats']} repeat(s) of train+valid): "
                                  "validation MAE vs out-of-fold MAE"))
        cols = ("trial", "preset", "val MAE", "val rank", "OOF MAE", "fold MAE", "OOF rank", "change", "folds")
    for col in cols:
        t.add_column(col, justify="right")
    for r in table["configs"]:
        folds = f"{r['folds_done']}/{r['folds_total']}" + (" !" if r.get("problem") else "")
        if table.get("scheme") == "seeds":
            oof, spread = fmt(r.get("oof_mae")), _mean_std(r.get("seed_mae_mean"), r.get("oof_mae_std_repeats"))
        else:
            oof = _mean_std(r.get("oof_mae"), r.get("oof_mae_std_repeats"))
            spread = _mean_std(r.get("fold_mae_mean"), r.get("fold_mae_std"))
        t.add_row(str(r["trial"]), r.get("preset") or "", fmt(r.get("val_mae")), fmt(r.get("rank_val"), 1),
                  oof, spread, fmt(r.get("rank_oof"), 1), _rank_change(r.get("rank_change")), folds)
    con = console()
    con.print(t)
    for r in table["configs"]:
        if r.get("problem"):
            con.print(f"trial {r['trial']}: {r['problem']}")
    if table.get("failed_folds"):
        con.print(f"{table['failed_folds']} fold(s) failed (see msatune show {table['refit_study']})")
