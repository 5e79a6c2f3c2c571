"""``msatune studies | show``: the studies in a store, and one study's trials."""

from __future__ import annotations

import click

from msatune.studies.cli.context import AppContext, console, echo_json, pass_app, storage_option
from msatune.studies.cli.render import fmt, next_steps, render_importance, render_show


@click.command("studies", help="List the studies in the store: trials by state, best val MAE, created. "
                                "Reads only: a workspace without a store lists nothing.")
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def studies(app: AppContext, storage: str | None, as_json: bool) -> None:
    from msatune.studies.queries import list_studies

    no_store = storage is None and not app.ws.store_path.is_file()
    rows = [] if no_store else list_studies(app.reader(storage))
    if as_json:
        echo_json(rows)
        return
    from rich.table import Table

    table = Table(title="studies")
    for col in ("name", "complete", "pruned", "failed", "interrupted", "running", "best val MAE",
                "best trial", "created"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], str(r["counts"]["COMPLETE"]), str(r["counts"]["PRUNED"]),
                      str(r["counts"]["FAIL"]), str(r["counts"]["INTERRUPTED"]), str(r["counts"]["RUNNING"]),
                      fmt(r["best_val_mae"]), str(r["best_trial"] if r["best_trial"] is not None else "-"),
                      r["created"] or "-")
    console().print(table if rows else "no studies yet: msatune launch NAME (or msatune demo)")


SHOW_HELP = """Show a study's trials: state, val MAE, epochs, params (failures: their reason), best checkpoint.

\b
Lists complete, pruned and failed trials by default, best first; --state picks others
(interrupted: trials a stopped driver left running, failed and run again). A trial's value is
its best validation MAE over the epochs it trained (a pruned trial's: up to the epoch ASHA
stopped it). The constant predictor's and the noise floor's validation MAE are shown beside.

\b
--importance adds how much each hyperparameter sets the best trials apart from the rest
(Optuna's PED-ANOVA; shares sum to 1). ASHA lets few trials finish, so it is computed at the
deepest epoch ASHA compares trials at (a rung, or the last epoch) that at least 15 trials
reached, pruned ones included, on each trial's best validation MAE up to that epoch. The line
under the table says which epoch, how many trials and the evaluator; with too few trials, one
line says why none is shown.

\b
Examples:
  msatune show demo1 --top 5
  msatune show demo1 --state fail            (failed trials with their reason)
  msatune show demo1 --state complete --state pruned
  msatune show demo1 --importance            (which hyperparameters matter so far)
  msatune show demo1 --json | jq .best
"""


@click.command("show", help=SHOW_HELP)
@click.argument("name")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="How many trials to list.")
@click.option("--state", "states", multiple=True,
              type=click.Choice(["complete", "pruned", "fail", "interrupted", "running", "waiting", "all"]),
              help="Which trials to list (repeatable) [default: complete, pruned, fail].")
@click.option("--importance", is_flag=True,
              help="Also show hyperparameter importance (PED-ANOVA) over every trial that reached "
                   "one of ASHA's rungs, pruned ones included; reads every trial.")
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with --importance: an \"importance\" key).")
@pass_app
def show(app: AppContext, name: str, top: int, states: tuple[str, ...], importance: bool,
         storage: str | None, as_json: bool) -> None:
    from msatune.studies.queries import DEFAULT_STATES, STATE_FILTERS, show_study

    chosen = tuple(STATE_FILTERS) if "all" in states else (tuple(dict.fromkeys(states)) or DEFAULT_STATES)
    reader = app.reader(storage)
    payload = show_study(reader, name, top, chosen)
    if importance:
        from msatune.studies.importance import importance_of

        payload["importance"] = importance_of(reader, name).as_dict()
    steps = next_steps(app.ws, name)
    if as_json:
        echo_json({**payload, "next": steps})
        return
    if not importance:
        render_show(payload, steps)
        return
    render_show(payload)
    render_importance(payload["importance"])
    for line in steps:
        console().print(line)
