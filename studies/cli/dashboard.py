"""``msatune dashboard``: optuna-dashboard over the study store, read-only unless asked."""

from __future__ import annotations

import signal
import sys
from typing import Any

import click

from msatune.studies.cli.context import AppContext, pass_app, storage_option

DASHBOARD_HELP = """Serve optuna-dashboard over the study store (history, learning curves, importances, trials).

\b
Read-only by default: the store is opened read-only and the dashboard's delete, rename, tell,
note and artifact-upload actions are refused; --writable allows them. Safe to keep open while a
study runs (it waits for the study's writes, never the other way round). Refreshes stay fast on
large studies (finished trials are read once). Checkpoint paths, epochs and ensemble results
show as trial and study user attributes; `msatune report NAME --attach` adds the report as a
study note and artifacts.

\b
It has NO authentication: it listens on 127.0.0.1 unless --host says otherwise. To look from
another machine, prefer an SSH tunnel:  ssh -L 8080:127.0.0.1:8080 HOST

\b
Examples:
  msatune dashboard
  msatune dashboard --port 8081
  msatune dashboard --storage postgresql://user@db/msatune
"""


@click.command("dashboard", help=DASHBOARD_HELP)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port to listen on (0 picks a free one).")
@click.option("--writable", is_flag=True, help="Allow the dashboard to change the store (delete, rename, tell, notes).")
@storage_option
@pass_app
def dashboard(app: AppContext, host: str, port: int, writable: bool, storage: str | None) -> None:
    from msatune.studies.dashboard import DashboardServer, is_loopback

    url = storage or app.ws.storage_url
    server = DashboardServer(url, host=host, port=port, artifact_dir=app.ws.artifact_dir, writable=writable)
    mode = "WRITABLE: its actions change the store" if writable else "read-only"
    click.echo(f"optuna-dashboard ({mode}) over {url}", err=True)
    if not is_loopback(host):
        click.echo(f"warning: listening on {host} with NO authentication: anyone who can reach "
                   f"port {server.port} can read every study" + (" and change it" if writable else ""),
                   err=True)
    else:
        click.echo("note: the dashboard has no authentication; it is only reachable from this machine",
                   err=True)
    click.echo(f"dashboard: {server.base_url}/dashboard")
    links = server.study_links()
    for link in links:
        click.echo(f"  {link.name} ({link.trials} trials): {link.url}")
    if not links:
        click.echo("  no studies yet: msatune launch NAME (new studies appear on refresh)")
    click.echo("Ctrl-C to stop.", err=True)
    sys.stdout.flush()

    def _stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("dashboard stopped", err=True)
