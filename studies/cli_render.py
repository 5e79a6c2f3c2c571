"""How the CLI shows a study: its trial table, the live progress line, a run's summary.

Shared by ``launch``, ``resume``, ``show`` and ``demo``; library functions return data and these
functions turn it into text.
"""

from __future__ import annotations

import time
from typing import Any

from msatune.studies.cli_context import console
from msatune.studies.workspace import Workspace


def fmt(v: Any, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def next_steps(ws: Workspace, name: str) -> list[str]:
    """The commands that look further at study ``name``."""
    return [
        f"dashboard:   msatune --workspace {ws.root} dashboard",
        f"report:      msatune --workspace {ws.root} report {name}",
        f"ensemble:    msatune --workspace {ws.root} ensemble {name}",
        f"tensorboard: tensorboard --logdir {ws.study_dir(name).resolve() / 'ray'}",
    ]


def render_show(payload: dict, steps: list[str] | None = None) -> None:
    """A study's counts, its best trials as a table, the best checkpoint, then ``steps``."""
    from rich.table import Table

    con = console()
    c = payload["counts"]
    con.print(f"[bold]{payload['name']}[/bold]: {c['COMPLETE']} complete, {c['PRUNED']} pruned, "
              f"{c['FAIL']} failed, {c['RUNNING']} running, {c['WAITING']} queued "
              f"(budget {payload.get('budget', '?')})")
    table = Table()
    for col in ("#", "state", "val MAE", "epochs", "preset", "key params"):
        table.add_column(col)
    for t in payload["trials"]:
        p = t["params"]
        key = ", ".join(f"{k}={short(p[k])}" for k in ("learning_rate", "dropout", "model_dim", "batch_size", "loss") if k in p)
        table.add_row(str(t["number"]), t["state"], fmt(t["val_mae"]), str(t["epochs"] or "-"),
                      t.get("preset") or "", key)
    con.print(table)
    if payload.get("refit"):
        from msatune.studies.cli_refit import render_refit_table

        render_refit_table(payload["refit"])
    if payload["best"]:
        con.print(f"best: trial {payload['best']['number']} val MAE {payload['best']['val_mae']:.4f}; "
                  f"checkpoint {payload['best']['checkpoint']}")
    for line in steps or []:
        con.print(line)


class Progress:
    """A one-line live status while a study runs (nothing when ``quiet``)."""

    def __init__(self, quiet: bool, name: str) -> None:
        self.quiet, self.name = quiet, name
        self.live = None

    def __enter__(self) -> Any:
        if self.quiet:
            return None
        from rich.live import Live
        from rich.text import Text

        self.live = Live(Text(f"{self.name}: starting Ray ..."), console=console(), refresh_per_second=4, transient=False)
        self.live.__enter__()
        return self.update

    def update(self, state: Any) -> None:
        from rich.text import Text

        c = state.counters
        best = f"{c.best_val_mae:.4f} (#{c.best_trial})" if c.best_trial is not None else "-"
        eta = time.strftime("%M:%S", time.gmtime(state.eta)) if state.eta is not None else "?"
        line = (f"{self.name}: {state.done}/{state.budget} done ({c.complete} complete, {c.pruned} pruned, "
                f"{c.failed} failed), {state.running} running | best val MAE {best} | "
                f"elapsed {time.strftime('%M:%S', time.gmtime(state.elapsed))} ETA {eta}")
        if self.live is not None:
            self.live.update(Text(line))

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            if not self.live.console.is_terminal:
                self.live.console.print()  # the last status line ends without a newline


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
    if summary.get("interrupted") or summary.get("requeued"):
        con.print(f"interrupted: {len(summary.get('requeued', []))} running trial(s) re-queued; "
                  f"continue with: msatune resume {name}")
