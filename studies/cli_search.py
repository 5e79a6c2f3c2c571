"""``msatune launch | resume | studies | show``: run searches and look at their trials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from msatune.search.settings import SearchSettings
from msatune.studies.cli_context import AppContext, console, echo_json, pass_app, storage_option
from msatune.studies.cli_render import (
    Progress,
    budget_used_message,
    fmt,
    next_steps,
    render_run,
    render_show,
)

DEFAULTS = SearchSettings()

def _resource_options(f: Any) -> Any:
    f = click.option("--address", default=None, metavar="ADDR",
                     help="Run on an existing Ray cluster (ray start --head ...); the store stays here.")(f)
    f = click.option("--concurrency", type=int, default=None,
                     help="Trials at once [default: what the cluster's CPUs/GPUs allow].")(f)
    f = click.option("--gpus-per-trial", type=float, default=None,
                     help="GPUs per trial; fractions share a GPU (0.5 = two trials per GPU). "
                          f"[default: {DEFAULTS.gpus_per_trial:g}]")(f)
    f = click.option("--cpus-per-trial", type=float, default=None,
                     help=f"CPUs per trial (also TensorFlow's thread count). [default: {DEFAULTS.cpus_per_trial:g}]")(f)
    return f


LAUNCH_HELP = """Launch a new study: Optuna TPE picks configurations, Ray Tune runs them, ASHA stops poor ones.

\b
The first two trials are the users' `baseline` and `improved` recipes, so every study shows
what the search gained over both. Trials report validation MAE every epoch; a trial's value is
its best validation MAE. ASHA stops a trial at a rung (grace period × reduction factor^k epochs:
3, 9, 27 by default) when it is not in the best 1/R there, ranked on the mean of its best
validation MAE so far and its training MAE (measured to rank configurations by their final
result far better than the epoch's validation MAE alone; benchmarks/README.md). Searched trials
warm up before the first rung and anneal over --max-epochs. Everything is stored in the study
store; Ctrl-C stops cleanly and `msatune resume NAME` continues. The test split is never used
to choose anything.

\b
Examples:
  msatune launch demo1 --trials 20 --max-epochs 27
  msatune launch mosi-a --data data/mosi --trials 100 --gpus-per-trial 0.5
  msatune launch narrow --space space.toml --trials 40      (see search/space.py for the format)
"""


@click.command("launch", help=LAUNCH_HELP)
@click.argument("name")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Dataset directory (msa-tf2 layout) [default: the synthetic mosi set in the workspace].")
@click.option("--trials", type=int, default=DEFAULTS.trials, show_default=True, help="Trial budget of the study.")
@click.option("--max-epochs", type=int, default=DEFAULTS.max_epochs, show_default=True,
              help="Epoch budget of one trial (ASHA max_t).")
@click.option("--grace-period", type=int, default=None,
              help=f"Epochs before ASHA may stop a trial. [default: {DEFAULTS.grace}, at most --max-epochs]")
@click.option("--reduction-factor", type=int, default=DEFAULTS.reduction_factor, show_default=True,
              help="ASHA keeps the best 1/R at each rung.")
@_resource_options
@click.option("--space", "space_file", type=click.Path(path_type=Path), default=None,
              help="TOML file narrowing or replacing the search space.")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True, help="Seed of the sampler and of the trials.")
@click.option("--max-failures", type=int, default=DEFAULTS.max_failures, show_default=True,
              help="Retries of a trial after a transient error.")
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@pass_app
def launch(app: AppContext, name: str, data_dir: Path | None, trials: int, max_epochs: int,
           grace_period: int | None, reduction_factor: int, cpus_per_trial: float | None,
           gpus_per_trial: float | None, concurrency: int | None, address: str | None,
           space_file: Path | None, seed: int, max_failures: int, storage: str | None, as_json: bool) -> None:
    from msatune.studies.lifecycle import launch as do_launch

    settings = SearchSettings(
        trials=trials, max_epochs=max_epochs, grace_period=grace_period, reduction_factor=reduction_factor,
        cpus_per_trial=cpus_per_trial if cpus_per_trial is not None else DEFAULTS.cpus_per_trial,
        gpus_per_trial=gpus_per_trial if gpus_per_trial is not None else DEFAULTS.gpus_per_trial,
        concurrency=concurrency, seed=seed, address=address, max_failures=max_failures, verbose=app.verbose,
    ).validate()
    store = app.storage(storage)
    with Progress(as_json, name) as progress:
        summary = do_launch(app.ws, store, name, settings, data_dir=data_dir, space_file=space_file,
                            progress=progress)
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
    from msatune.studies.lifecycle import resume as do_resume

    store = app.storage(storage)
    where = {"cpus_per_trial": cpus_per_trial, "gpus_per_trial": gpus_per_trial,
             "concurrency": concurrency, "address": address, "verbose": app.verbose}
    with Progress(as_json, name) as progress:
        summary = do_resume(app.ws, store, name, more_trials=trials, force=force, where=where,
                            progress=progress)
    _finish(app, store, name, summary, as_json)


@click.command("studies", help="List the studies in the store: trials by state, best val MAE, created.")
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def studies_cmd(app: AppContext, storage: str | None, as_json: bool) -> None:
    from msatune.studies.queries import list_studies

    rows = list_studies(app.storage(storage))
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
                      fmt(r["best_val_mae"]), str(r["best_trial"] if r["best_trial"] is not None else "-"),
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
    from msatune.studies.queries import show_study

    payload = show_study(app.storage(storage), name, top)
    steps = next_steps(app.ws, name)
    if as_json:
        echo_json({**payload, "next": steps})
        return
    render_show(payload, steps)


def _finish(app: AppContext, store: Any, name: str, summary: dict, as_json: bool) -> None:
    from msatune.studies.queries import show_study

    shown = show_study(store, name, 5)
    if as_json:
        message = budget_used_message(summary, name)
        echo_json({**summary, **({"message": message} if message else {}),
                   "best": shown["best"], "counts": shown["counts"]})
        return
    render_run(summary, name)
    render_show(shown, next_steps(app.ws, name))
