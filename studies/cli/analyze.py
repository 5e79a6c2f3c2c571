"""``msatune analyze LOG.csv``: the overfitting story of a Keras CSV training log."""

from __future__ import annotations

from pathlib import Path

import click

from msatune.studies.cli.context import console, echo_json
from msatune.studies.cli.render import fmt

HELP = """Analyze a Keras CSVLogger training log (msa-tf2 columns).

\b
LOG is a CSV with the columns epoch,learning_rate,loss,mae,mse,val_loss,val_mae,val_mse
(only val_mae is required; extra columns are ignored). Reported:
  best val MAE and its epoch (1-based: the n-th epoch, as Keras prints "Epoch n/N";
  the CSV's epoch column counts from 0), min train MAE,
  the train/val gap (val_mae - mae) at the best epoch and at the end,
  instability (std of the epoch-to-epoch val MAE changes),
  still improving (a new best val MAE within the last 3 epochs; the first epoch is no
  improvement),
  and the success criteria as pass/fail: best val MAE < 1.2, gap at best epoch < 0.3.

\b
Examples:
  msatune analyze training_log_20250902_adaptivefusion.csv
  msatune analyze run/training_log.csv --json | jq .best_val_mae
"""


def _verdict(passed: bool | None) -> str:
    if passed is None:
        return "[yellow]n/a[/yellow]"
    return "[green]PASS[/green]" if passed else "[red]FAIL[/red]"


@click.command("analyze", help=HELP, short_help="The overfitting story of a Keras CSV log.")
@click.argument("log", metavar="LOG.csv", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def analyze(log: Path, as_json: bool) -> None:
    from msatune.models.log_analysis import STILL_IMPROVING_WINDOW, analyze_log

    result = analyze_log(log)
    if as_json:
        echo_json(result.to_dict())
        return

    from rich.table import Table

    table = Table(title=f"{log.name}: {result.epochs} epochs")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("criterion")
    crit = result.criteria
    val_key, gap_key = list(crit)
    table.add_row(
        "best val MAE",
        fmt(result.best_val_mae, missing="n/a"),
        f"< {crit[val_key]['threshold']}: {_verdict(crit[val_key]['pass'])}",
    )
    table.add_row("best epoch (1-based)", f"{result.best_epoch} of {result.epochs}", "")
    table.add_row("min train MAE", fmt(result.min_train_mae, missing="n/a"), "")
    table.add_row(
        "gap at best (val - train)",
        fmt(result.gap_at_best, missing="n/a"),
        f"< {crit[gap_key]['threshold']}: {_verdict(crit[gap_key]['pass'])}",
    )
    table.add_row("gap at end", fmt(result.gap_at_end, missing="n/a"), "")
    table.add_row("instability (std of val MAE changes)", fmt(result.instability, missing="n/a"), "")
    table.add_row(
        f"still improving (new best in last {STILL_IMPROVING_WINDOW})",
        "yes" if result.still_improving else "no",
        "",
    )
    console().print(table)
