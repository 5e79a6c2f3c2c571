"""``msatune dashboard | report``: look at studies in optuna-dashboard, or as a shareable report."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click

from msatune.studies.cli_context import AppContext, console, echo_json, pass_app, storage_option

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


REPORT_HELP = """Write a study's report: report.html (self-contained) and its PNGs and JSON.

\b
Contents: optimization history (best-so-far line), learning curves (train and validation MAE
per epoch) of the top trials and of the baseline/improved presets, hyperparameter importance
(PED-ANOVA), ensemble vs best single (when `msatune ensemble` recorded one), and the success
criteria with numbers: best val MAE < 1.2, train/val gap < 0.3 at the best epoch, stability
(std of epoch-to-epoch val MAE changes, baseline vs best), test MAE improvement over the better
of the baseline trial and the constant predictor. Every criterion shows the constant predictor
(median of the labels) and the noise floor (when known) beside its numbers, and none passes while
the best trial is no better than the constant predictor. Importance needs 20 complete trials.
criteria.json and report.json hold the same numbers.

\b
Examples:
  msatune report demo1
  msatune report demo1 --out /tmp/demo1-report --top 5
  msatune report demo1 --attach      (also show it in msatune dashboard: note + artifacts)
"""


@click.command("report", help=REPORT_HELP)
@click.argument("name")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory [default: WORKSPACE/studies/NAME/report].")
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True,
              help="Learning curves of this many best trials (plus the presets).")
@click.option("--attach", is_flag=True,
              help="Also write the criteria as the study's dashboard note and upload the files as study artifacts (writes to the store).")
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print report.json instead of the table.")
@pass_app
def report(app: AppContext, name: str, out_dir: Path | None, top: int, attach: bool,
           storage: str | None, as_json: bool) -> None:
    from msatune.studies.report import attach_report, build_report

    store = app.storage(storage, create=False) if attach else app.reader(storage)
    out = (out_dir or app.ws.study_dir(name) / "report").expanduser().resolve()
    rep = build_report(store, name, out, ws=app.ws, top=top)
    if attach:
        attach_report(store, name, rep, app.ws.artifact_dir)
    if as_json:
        echo_json({**rep.payload, "html": str(rep.html),
                   "files": {k: str(p) for k, p in rep.figures.items()}})
        return
    from rich.table import Table

    con = console()
    table = Table(title=f"success criteria of study {name}")
    for col in ("criterion", "numbers", "result"):
        table.add_column(col)
    colors = {"PASS": "green", "FAIL": "red"}
    for row in rep.payload["criteria_table"]:
        color = colors.get(row["result"], "dim")
        table.add_row(row["criterion"], row["numbers"], f"[{color}]{row['result']}[/{color}]")
    con.print(table)
    from msatune.studies.cli_render import reference_line

    for split in ("valid", "test"):
        line = reference_line(rep.payload.get("reference"), split)
        if line:
            con.print(f"yardstick: {line}")
    for note in rep.payload["notes"]:
        con.print(f"note: {note}")
    con.print(f"report: {rep.html}")
    for key, path in rep.figures.items():
        con.print(f"  {key}: {path}")
    if attach:
        con.print("attached to the study: note + artifacts (msatune dashboard shows them)")
    if rep.payload.get("tensorboard"):
        con.print(f"per-epoch metrics: {rep.payload['tensorboard']}")
