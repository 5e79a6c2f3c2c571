"""``msatune delete | export | space``: remove a study, export its trials, write a search space."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from msatune.studies.cli_context import AppContext, console, echo_json, pass_app, storage_option

DELETE_HELP = """Delete a study from the store (asks first unless --yes).

\b
Removes the study and all its trials from the store. With --files also its directory under the
workspace (Ray results, checkpoints, ensembles, report) and its report artifacts. Refused while
a driver (launch/resume) of the study is alive; a driver that died is no obstacle.

\b
Examples:
  msatune delete demo1
  msatune delete demo1 --yes --files
"""


@click.command("delete", help=DELETE_HELP)
@click.argument("name")
@click.option("--files", is_flag=True, help="Also remove WORKSPACE/studies/NAME and the study's artifacts.")
@click.option("--yes", is_flag=True, help="Do not ask.")
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
@pass_app
def delete(app: AppContext, name: str, files: bool, yes: bool, storage: str | None, as_json: bool) -> None:
    from msatune.errors import UserError
    from msatune.studies.manage import delete_study
    from msatune.studies.store import load_study

    store = app.storage(storage, create=False)
    if not yes:
        load_study(store, name)  # an unknown name is an error before the question
        if not sys.stdin.isatty():
            raise UserError(f"delete study {name!r}: pass --yes to confirm (no terminal to ask on)")
        what = f"study {name!r}" + (f" and {app.ws.study_dir(name)}" if files else "")
        click.confirm(f"Delete {what}?", abort=True, err=True)
    payload = delete_study(app.ws, store, name, files=files)
    if as_json:
        echo_json(payload)
        return
    click.echo(f"deleted study {name!r} ({payload['trials']} trials)"
               + (f"; removed {', '.join(payload['removed'])}" if payload["removed"] else ""))


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
@storage_option
@pass_app
def export(app: AppContext, name: str, out_file: Path, storage: str | None) -> None:
    from msatune.studies.manage import export_trials, write_export

    rows = export_trials(app.reader(storage), name)
    path = write_export(rows, out_file.expanduser())
    click.echo(f"wrote {len(rows)} trials of study {name!r} to {path}")


#: The ``--space`` file format, as ``launch --help`` and ``space --help`` teach it.
SPACE_FORMAT = """\b
--space FILE is TOML, one table per trial config key (`msatune space --example` prints the
default space to start from; `msatune space --check FILE` checks one):
  replace = false        # true: search only the keys in this file
  [learning_rate]        # a range (log = true samples on a log scale; step = 0.05 a grid)
  low = 1e-4
  high = 3e-3
  log = true
  [batch_size]           # a choice
  choices = [16, 32]
  [dropout]              # a fixed value, not searched
  value = 0.3
Bounds, choices and values must lie in the key's legal range (e.g. dropout in [0, 1))."""

SPACE_HELP = f"""Print the default search space as a --space file, or check one.

{SPACE_FORMAT}

\b
Examples:
  msatune space --example > space.toml     (then edit it)
  msatune space --check space.toml
  msatune launch narrow --space space.toml
"""


@click.command("space", help=SPACE_HELP)
@click.option("--example", is_flag=True, help="Print the default search space as a TOML file.")
@click.option("--check", "check_file", type=click.Path(path_type=Path), default=None,
              help="Check a space file and show what it searches.")
def space(example: bool, check_file: Path | None) -> None:
    from msatune.errors import UserError

    if example == (check_file is not None):
        raise UserError("msatune space: give --example or --check FILE (see msatune space --help)")
    if example:
        from msatune.studies.manage import example_space_toml

        sys.stdout.write(example_space_toml())
        return
    from rich.table import Table

    from msatune.search.settings import SearchSettings
    from msatune.search.space import load_space

    defaults = SearchSettings()
    loaded = load_space(check_file, first_rung=defaults.first_rung)
    click.echo(f"{check_file}: valid; {len(loaded.distributions)} searched keys "
               f"(with the default --grace-period {defaults.grace})")
    table = Table()
    table.add_column("key")
    table.add_column("searched as")
    for key, dist in loaded.distributions.items():
        table.add_row(key, repr(dist))
    console().print(table)
