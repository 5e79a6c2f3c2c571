"""``msatune launch | resume | studies | show``: run searches and look at their trials."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from studies.cli_context import AppContext, console, echo_json, pass_app

storage_option = click.option(
    "--storage", default=None, metavar="URL",
    help="SQLAlchemy URL of the study store [default: sqlite:///WORKSPACE/studies.db].",
)


def _storage(app: AppContext, url: str | None) -> Any:
    from studies.store import open_storage

    return open_storage(url or app.ws.storage_url)


def _resource_options(f: Any) -> Any:
    f = click.option("--address", default=None, metavar="ADDR",
                     help="Run on an existing Ray cluster (ray start --head ...); the store stays here.")(f)
    f = click.option("--concurrency", type=int, default=None,
                     help="Trials at once [default: what the cluster's CPUs/GPUs allow].")(f)
    f = click.option("--gpus-per-trial", type=float, default=None,
                     help="GPUs per trial; fractions share a GPU (0.5 = two trials per GPU). [default: 0]")(f)
    f = click.option("--cpus-per-trial", type=float, default=None,
                     help="CPUs per trial (also TensorFlow's thread count). [default: 1]")(f)
    return f


LAUNCH_HELP = """Launch a new study: Optuna TPE picks configurations, Ray Tune runs them, ASHA stops poor ones.

\b
The first two trials are the users' `baseline` and `improved` recipes, so every study shows
what the search gained over both. Trials report validation MAE every epoch; ASHA stops a trial
at a rung (grace period × reduction factor^k epochs) when it is not in the best 1/R there.
Everything is stored in the study store; Ctrl-C stops cleanly and `msatune resume NAME`
continues. The test split is never used to choose anything.

\b
Examples:
  msatune launch demo1 --trials 20 --max-epochs 30
  msatune launch mosi-a --data data/mosi --trials 100 --gpus-per-trial 0.5
  msatune launch narrow --space space.toml --trials 40      (see search/space.py for the format)
"""


@click.command("launch", help=LAUNCH_HELP)
@click.argument("name")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Dataset directory (msa-tf2 layout) [default: the synthetic mosi set in the workspace].")
@click.option("--trials", type=int, default=20, show_default=True, help="Trial budget of the study.")
@click.option("--max-epochs", type=int, default=30, show_default=True, help="Epoch budget of one trial (ASHA max_t).")
@click.option("--grace-period", type=int, default=None,
              help="Epochs before ASHA may stop a trial. [default: 3, at most --max-epochs]")
@click.option("--reduction-factor", type=int, default=3, show_default=True, help="ASHA keeps the best 1/R at each rung.")
@_resource_options
@click.option("--space", "space_file", type=click.Path(path_type=Path), default=None,
              help="TOML file narrowing or replacing the search space.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampler and of the trials.")
@click.option("--max-failures", type=int, default=1, show_default=True, help="Retries of a trial after a transient error.")
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@pass_app
def launch(app: AppContext, name: str, data_dir: Path | None, trials: int, max_epochs: int,
           grace_period: int | None, reduction_factor: int, cpus_per_trial: float | None,
           gpus_per_trial: float | None, concurrency: int | None, address: str | None,
           space_file: Path | None, seed: int, max_failures: int, storage: str | None, as_json: bool) -> None:
    from studies.lifecycle import SearchOptions
    from studies.lifecycle import launch as do_launch

    opts = SearchOptions(
        trials=trials, max_epochs=max_epochs,
        grace_period=grace_period if grace_period is not None else max(1, min(3, max_epochs)),
        reduction_factor=reduction_factor,
        cpus_per_trial=cpus_per_trial if cpus_per_trial is not None else 1.0,
        gpus_per_trial=gpus_per_trial if gpus_per_trial is not None else 0.0,
        concurrency=concurrency, seed=seed, address=address, max_failures=max_failures, verbose=app.verbose,
    )
    opts.validate()
    store = _storage(app, storage)
    with _progress(as_json, name) as progress:
        summary = do_launch(app.ws, store, name, opts, data_dir=data_dir, space_file=space_file, progress=progress)
    _finish(app, store, name, summary, as_json)


RESUME_HELP = """Continue a study after a crash, kill or Ctrl-C, losing no finished trial.

\b
First ends Ray processes a dead driver left behind, then reconciles the store (trials left
RUNNING become FAIL, tagged, and their configurations are queued again), then runs a fresh
search on the same study for the rest of its budget (or --trials N more).

\b
Examples:
  msatune resume demo1
  msatune resume demo1 --trials 10
"""


@click.command("resume", help=RESUME_HELP)
@click.argument("name")
@click.option("--trials", type=int, default=None, help="Run N more trials instead of the rest of the budget.")
@click.option("--force", is_flag=True, help="Continue even if the dataset's fingerprint changed.")
@_resource_options
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@pass_app
def resume(app: AppContext, name: str, trials: int | None, force: bool, cpus_per_trial: float | None,
           gpus_per_trial: float | None, concurrency: int | None, address: str | None,
           storage: str | None, as_json: bool) -> None:
    from studies.lifecycle import resume as do_resume

    store = _storage(app, storage)
    overrides = {"cpus_per_trial": cpus_per_trial, "gpus_per_trial": gpus_per_trial,
                 "concurrency": concurrency, "address": address, "verbose": app.verbose}
    with _progress(as_json, name) as progress:
        summary = do_resume(app.ws, store, name, more_trials=trials, force=force,
                            overrides=overrides, progress=progress)
    _finish(app, store, name, summary, as_json)


@click.command("studies", help="List the studies in the store: trials by state, best val MAE, created.")
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def studies_cmd(app: AppContext, storage: str | None, as_json: bool) -> None:
    from studies.queries import list_studies

    rows = list_studies(_storage(app, storage))
    if as_json:
        echo_json(rows)
        return
    from rich.table import Table

    table = Table(title="studies")
    for col in ("name", "complete", "pruned", "failed", "running", "best val MAE", "best trial", "created"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], str(r["counts"]["COMPLETE"]), str(r["counts"]["PRUNED"]),
                      str(r["counts"]["FAIL"]), str(r["counts"]["RUNNING"]),
                      _fmt(r["best_val_mae"]), str(r["best_trial"] if r["best_trial"] is not None else "-"),
                      r["created"] or "-")
    console().print(table if rows else "no studies yet: msatune launch NAME (or msatune demo)")


SHOW_HELP = """Show a study's best trials: val MAE, epochs, state, params, checkpoint.

\b
Examples:
  msatune show demo1 --top 5
  msatune show demo1 --json | jq .best
"""


@click.command("show", help=SHOW_HELP)
@click.argument("name")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="How many trials to list.")
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def show(app: AppContext, name: str, top: int, storage: str | None, as_json: bool) -> None:
    from studies.queries import show_study

    payload = show_study(_storage(app, storage), name, top, app.ws)
    if as_json:
        echo_json(payload)
        return
    _render_show(payload)


def _fmt(v: Any, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _render_show(payload: dict) -> None:
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
        key = ", ".join(f"{k}={_short(p[k])}" for k in ("learning_rate", "dropout", "model_dim", "batch_size", "loss") if k in p)
        table.add_row(str(t["number"]), t["state"], _fmt(t["val_mae"]), str(t["epochs"] or "-"),
                      t.get("preset") or "", key)
    con.print(table)
    if payload["best"]:
        con.print(f"best: trial {payload['best']['number']} val MAE {payload['best']['val_mae']:.4f}; "
                  f"checkpoint {payload['best']['checkpoint']}")
    for line in payload.get("next", []):
        con.print(line)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


class _progress:
    """A one-line live status while a study runs (nothing with --json)."""

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


def _finish(app: AppContext, store: Any, name: str, summary: dict, as_json: bool) -> None:
    from studies.queries import show_study

    shown = show_study(store, name, 5, app.ws)
    if as_json:
        echo_json({**summary, "best": shown["best"], "counts": shown["counts"]})
        return
    con = console()
    if summary.get("message"):
        con.print(summary["message"])
    else:
        con.print(f"run {summary['run']}: {summary['trials']} trials ({summary['complete']} complete, "
                  f"{summary['pruned']} pruned, {summary['failed']} failed) in {summary['wall_seconds']:.0f} s "
                  f"with {summary['concurrency']} at once")
        if summary.get("interrupted") or summary.get("requeued"):
            con.print(f"interrupted: {len(summary.get('requeued', []))} running trial(s) re-queued; "
                      f"continue with: msatune resume {name}")
    _render_show(shown)
