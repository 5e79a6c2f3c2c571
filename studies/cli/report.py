"""``msatune report``: a study's report (criteria, curves, importance) as HTML, PNGs and JSON."""

from __future__ import annotations

from pathlib import Path

import click

from msatune.studies.cli.context import AppContext, console, echo_json, pass_app, storage_option
from msatune.studies.cli.render import reference_line

REPORT_HELP = """Write a study's report: report.html (self-contained) and its PNGs and JSON.

\b
Contents: optimization history (best-so-far line), learning curves (train and validation MAE
per epoch) of the top trials and of the baseline/improved presets, hyperparameter importance
(PED-ANOVA), ensemble vs best single (when `msatune ensemble` recorded one), and the success
criteria with numbers: best val MAE < 1.2, train/val gap < 0.3 at the best epoch, stability
(std of epoch-to-epoch val MAE changes, baseline vs best), test MAE improvement over the better
of the baseline trial and the constant predictor. Every criterion shows the constant predictor
(median of the labels) and the noise floor (when known) beside its numbers, and none passes while
the best trial is no better than the constant predictor. Importance needs 15 trials at one of
ASHA's rungs (pruned trials count; show NAME --importance says which rung).
Gradient norms per epoch of the trials shown (gradients.png; the criteria name each trial's first
gradient-norm spike beside stability: an epoch whose max step norm exceeds 5x the median of the
earlier epochs' mean norms) and, for models with attention, the modality weights and attention
maps of the best trials' best epoch (attention.png).
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
    from msatune.studies.report.build import attach_report, build_report

    store = app.storage(storage, create=False) if attach else app.reader(storage)
    out = (out_dir or app.ws.report_dir(name)).expanduser().resolve()
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
