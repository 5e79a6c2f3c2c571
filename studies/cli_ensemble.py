"""``msatune ensemble | predict``: combine a study's best trials into one model, and use models.

The work is :func:`msatune.studies.ensembles.run_study_ensemble` and
:func:`msatune.studies.predictions.predict_split`; this module parses and renders.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from msatune.ensemble.combiners import METHODS
from msatune.studies.cli_context import AppContext, console, echo_json, pass_app, storage_option

# ------------------------------------------------------------------------------------------------
# rendering


def _f(v: Any, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:+.1f}%"


COLUMNS = (("mae", "MAE"), ("corr", "Corr"), ("acc7", "Acc-7"), ("acc5", "Acc-5"),
           ("has0_acc2", "Acc-2 has0"), ("has0_f1", "F1 has0"), ("non0_acc2", "Acc-2 non0"), ("non0_f1", "F1 non0"))


def render_result(summary: dict[str, Any]) -> None:
    """Members with weights, then best single vs ensemble (+ constant, floor) on valid and test."""
    from rich.table import Table

    con = console()
    c = summary["candidates"]
    comb = summary.get("combiner", {})
    how = {
        "greedy": f"greedy forward selection, best at round {comb.get('rounds_used')} of {comb.get('rounds')}",
        "mean": f"uniform mean of the top {comb.get('top_k')}",
        "weighted": f"top {comb.get('top_k')} weighted by 1/valid MAE",
        "median": f"per-sample median of the top {comb.get('top_k')}",
    }[summary["method"]]
    con.print(f"[bold]{summary['study']}[/bold]: {c['complete']} complete trials, {c['used']} candidates "
              f"beat the constant predictor (valid MAE {c['constant_valid_mae']:.4f}); {how}")
    members = Table(title="members (chosen on valid only)")
    for col in ("trial", "weight", "valid MAE", "test MAE"):
        members.add_column(col, justify="right")
    for m in summary["members"]:
        members.add_row(str(m["trial"]), f"{m['weight']:.3f}", _f(m["valid"]["mae"]), _f(m["test"]["mae"]))
    con.print(members)

    best = summary["best_single"]
    method = summary["method"]
    table = Table(title="best single vs ensemble")
    table.add_column("metric")
    for split in ("valid", "test"):
        table.add_column(f"{split}\nbest #{best['trial']}", justify="right")
        table.add_column(f"{split}\n{method}", justify="right")
    for key, label in COLUMNS:
        table.add_row(label, *[_f(rec[split][key]) for split in ("valid", "test") for rec in (best, summary)])
    con.print(table)
    ref = summary["reference"]
    for split in ("valid", "test"):
        line = f"{split}: constant predictor MAE {_f(ref[split]['constant_mae'])}"
        if ref[split].get("floor_mae") is not None:
            line += f", noise floor MAE {_f(ref[split]['floor_mae'])}"
        con.print(line)
    ch = summary["change_vs_best_single"]
    con.print(f"MAE vs best single: valid {_pct(ch['valid'])}, test {_pct(ch['test'])}")
    cv = summary.get("cv")
    if cv:
        con.print(f"selection optimism: ensemble valid MAE {cv['in_sample_valid_mae']:.4f} in-sample, "
                  f"{cv['valid_mae']:.4f} refitted on {cv['folds']}-fold cross-validation "
                  f"(best single: {best['valid']['mae']:.4f} in-sample, {_f(cv['best_single_valid_mae'])} cross-validated)")
    if summary.get("model_path"):
        con.print(f"model:       {summary['model_path']}")
        if summary.get("saved_model_path"):
            con.print(f"SavedModel:  {summary['saved_model_path']}  (tf.saved_model.load(dir).serve(inputs); no msatune needed)")
        con.print(f"predictions: msatune predict {summary['out_dir']} --data DIR --split test --out preds.csv")


def step_printer(app: AppContext) -> Callable[[str], None] | None:
    """What a slow command (tens of seconds: TensorFlow loads models) does now, one line per step
    on stderr, when stderr is a terminal or with --verbose. Off a terminal the steps stay out of
    stderr, where a failure must be one line."""
    if not (app.verbose or sys.stderr.isatty()):
        return None

    def say(text: str) -> None:
        click.echo(f"msatune: {text} ...", err=True)

    return say


def _messages(summary: dict[str, Any]) -> None:
    for w in summary.get("warnings", []):
        click.echo(f"msatune: warning: {w}", err=True)
    for n in summary.get("notes", []):
        click.echo(f"msatune: note: {n}", err=True)


def build_and_render(app: AppContext, storage: Any, study_name: str) -> dict[str, Any]:
    """The demo's ensemble step: greedy with defaults, exported, rendered; returns the summary."""
    from msatune.ensemble.evaluate import EnsembleOptions
    from msatune.studies.ensembles import run_study_ensemble

    result = run_study_ensemble(app.ws, storage, study_name, EnsembleOptions(), on_step=step_printer(app))
    summary = result.summary()
    _messages(summary)
    render_result(summary)
    return summary


ENSEMBLE_HELP = """Combine a study's best trials into one model and score it against the best single trial.

\b
In a terminal (or with -v) it says what it does while it works: the export loads every member
with TensorFlow, checks the fused model and saves it (tens of seconds).

\b
Candidates: COMPLETE trials whose checkpoint beats the constant predictor on validation (at most
--max-candidates, best first; all must share input dims). Members and weights are chosen on the
validation predictions only; the test split only scores the result. Methods:
  greedy    forward selection with replacement (Caruana 2004), --rounds rounds, truncated to the
            best round; weights = times chosen / rounds            [default]
  mean      uniform average of the --top-k best
  weighted  the --top-k best, weights proportional to 1 / valid MAE
  median    per-sample median of the --top-k best
The valid MAE of the selection refitted under k-fold cross-validation is shown next to the
in-sample one (with 229 validation samples, selection is optimistic). The result is written to
WORKSPACE/studies/NAME/ensembles/METHOD/ (ensemble.keras, saved_model/, ensemble.json) and recorded
on the study (user attr msatune:ensemble:METHOD).

\b
--from refit builds a bagged ensemble on the study's refit (msatune refit NAME): the candidates are
the refit configurations, fitted on their out-of-fold predictions of train+valid, each member the
average of its fold models; it is scored on test next to the best single trial (refit and not) and
the ensemble without bagging, and written to .../ensembles/refit-METHOD/ (msatune:ensemble:refit-METHOD).

\b
Examples:
  msatune ensemble demo1
  msatune ensemble demo1 --method mean --top-k 3
  msatune ensemble demo1 --method greedy --rounds 50 --json | jq .test.mae
  msatune ensemble demo1 --no-export          (compare combiners quickly)
  msatune ensemble demo1 --from refit         (bagged, after msatune refit demo1 --top-k 5 --folds 5)
"""


@click.command("ensemble", help=ENSEMBLE_HELP)
@click.argument("name")
@click.option("--method", type=click.Choice(METHODS), default="greedy", show_default=True,
              help="How to combine the candidates.")
@click.option("--top-k", type=int, default=5, show_default=True, help="Members of mean/weighted/median.")
@click.option("--rounds", type=int, default=25, show_default=True, help="Selection rounds of greedy.")
@click.option("--max-candidates", type=int, default=50, show_default=True, help="Best trials considered.")
@click.option("--cv-folds", type=int, default=5, show_default=True,
              help="Folds of the validation samples for the optimism estimate.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output directory [default: WORKSPACE/studies/NAME/ensembles/METHOD].")
@click.option("--no-export", is_flag=True, help="Fit and evaluate only; write no model.")
@click.option("--from", "source", type=click.Choice(["trials", "refit"]), default="trials", show_default=True,
              help="Candidates: the study's trials, or its refit configurations (bagged).")
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def ensemble(app: AppContext, name: str, method: str, top_k: int, rounds: int, max_candidates: int,
             cv_folds: int, out_dir: Path | None, no_export: bool, source: str, storage: str | None,
             as_json: bool) -> None:
    from msatune.ensemble.evaluate import EnsembleOptions
    from msatune.studies.ensembles import run_study_ensemble

    options = EnsembleOptions(method=method, top_k=top_k, rounds=rounds, max_candidates=max_candidates,
                              cv_folds=cv_folds).validate()
    if source == "refit":
        from msatune.studies.cli_refit import render_bagged
        from msatune.studies.refit_ensemble import run_refit_ensemble

        bagged = run_refit_ensemble(app.ws, app.storage(storage, create=False), name, options, out_dir=out_dir,
                                    export=not no_export, on_step=step_printer(app)).summary()
        _messages(bagged)
        if as_json:
            echo_json(bagged)
        else:
            render_bagged(bagged)
        return
    result = run_study_ensemble(app.ws, app.storage(storage, create=False), name, options,
                                out_dir=out_dir, export=not no_export, on_step=step_printer(app))
    summary = result.summary()
    _messages(summary)
    if as_json:
        echo_json(summary)
        return
    render_result(summary)


PREDICT_HELP = """Predict a dataset split with a trial checkpoint, an exported ensemble or a .keras file.

\b
MODEL is one of
  a trial checkpoint directory   (msatune show NAME prints the best one)
  an ensemble directory          (msatune ensemble NAME writes WORKSPACE/studies/NAME/ensembles/greedy)
  a .keras file                  (e.g. .../ensembles/greedy/ensemble.keras)
The CSV has one row per sample: index, id (when the data has ids), prediction, label.

\b
Examples:
  msatune predict runs/studies/demo1/ensembles/greedy --data data/mosi --out test.csv
  msatune predict path/to/checkpoint --data data/mosi --split valid --out valid.csv
"""


@click.command("predict", help=PREDICT_HELP)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True,
              help="Dataset directory (msa-tf2 layout).")
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default="test", show_default=True,
              help="Which split to predict.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="CSV file to write.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@pass_app
def predict(app: AppContext, model: Path, data_dir: Path, split: str, out_file: Path, as_json: bool) -> None:
    from msatune.studies.predictions import predict_split

    payload = predict_split(model, data_dir, split, out_file, on_step=step_printer(app))
    if as_json:
        echo_json(payload)
        return
    console().print(f"wrote {payload['n']} {split} predictions of {payload['kind']} {model} to {out_file} "
                    f"(MAE vs labels {payload['mae']:.4f})")
