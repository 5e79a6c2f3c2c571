"""``msatune space``: the default search space as a --space file, or a check of one."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from msatune.studies.cli.context import console

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
@click.option("--family", default="improved", show_default=True, metavar="improved|seqlevel|all",
              help="The families' default space that --example prints and --check narrows (as "
                   "launch --family).")
def space(example: bool, check_file: Path | None, family: str) -> None:
    from msatune.errors import UserError
    from msatune.search.space import check_search_family

    if example == (check_file is not None):
        raise UserError("msatune space: give --example or --check FILE (see msatune space --help)")
    check_search_family(family)
    if example:
        from msatune.search.space_file import example_space_toml

        sys.stdout.write(example_space_toml(family))
        return
    from rich.table import Table

    from msatune.search.search_settings import SearchSettings
    from msatune.search.space_file import load_space

    defaults = SearchSettings()
    loaded = load_space(check_file, first_rung=defaults.first_rung, family=family)
    click.echo(f"{check_file}: valid; {len(loaded.distributions)} searched keys "
               f"(with the default --grace-period {defaults.grace})")
    table = Table()
    table.add_column("key")
    table.add_column("searched as")
    for key, dist in loaded.distributions.items():
        table.add_row(key, repr(dist))
    console().print(table)
