"""``msatune export``: every trial of a study, every state, with its full config, as CSV or JSON."""

from __future__ import annotations

from pathlib import Path

import click

from msatune.studies.cli.context import AppContext, pass_app, storage_option

EXPORT_HELP = """Export every trial of a study (all states) to a CSV or JSON file.

\b
One row per trial: number, state (COMPLETE, PRUNED, FAIL, INTERRUPTED, RUNNING, WAITING), value,
best_val_mae, epochs, duration_s, preset, fail_reason, requeued, checkpoint, start and end, then
every key of the configuration the trial trained, including keys fixed outside the search space
(the baseline preset's batch size 4 and l2 0). A trial's value is its best validation MAE over
the epochs it trained (a pruned trial's: up to the epoch ASHA stopped it).

\b
Examples:
  msatune export demo1 --out demo1.csv
  msatune export demo1 --out demo1.json
"""


@click.command("export", help=EXPORT_HELP)
@click.argument("name")
@click.option("--out", "out_file", type=click.Path(path_type=Path), required=True,
              help="File to write: .csv or .json.")
@click.option("--force", is_flag=True,
              help="Replace --out even when it is not an export of msatune's (never a study store).")
@storage_option
@pass_app
def export(app: AppContext, name: str, out_file: Path, force: bool, storage: str | None) -> None:
    from msatune.studies.export import check_export_target, export_trials, write_export

    check_export_target(out_file.expanduser(), force)
    rows = export_trials(app.reader(storage), name)
    path = write_export(rows, out_file.expanduser(), force=force)
    click.echo(f"wrote {len(rows)} trials of study {name!r} to {path}")
