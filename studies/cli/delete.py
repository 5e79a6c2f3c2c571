"""``msatune delete``: remove a study from the store (and, with --files, its directory)."""

from __future__ import annotations

import sys

import click

from msatune.studies.cli.context import AppContext, echo_json, pass_app, storage_option

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
    from msatune.studies.delete import delete_study
    from msatune.studies.store.studies import load_study

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
