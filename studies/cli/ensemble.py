"""``msatune ensemble``: combine a study's best trials (or its refit, bagged) into one model.

The work is :func:`msatune.studies.ensembles.run_ensemble`; this module parses and renders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from msatune.ensemble.combiners import METHODS
from msatune.studies.cli.context import (
    AppContext,
    console,
    echo_json,
    pass_app,
    print_messages,
    step_printer,
    storage_option,
)
from msatune.studies.cli.render import fmt, pct

# ------------------------------------------------------------------------------------------------
# rendering


COLUMNS = (("mae", "MAE"), ("corr", "Corr"), ("acc7", "Acc-7"), ("acc5", "Acc-5"),
           ("has0_acc2", "Acc-2 has0"), ("has0_f1", "F1 has0"), ("non0_acc2", "Acc-2 non0"), ("non0_f1", "F1 non0"))


def _members(members: list[dict[str, Any]], chosen_on: str, title: str) -> Any:
    """The members table: weight, MAE on the split they were chosen on, test MAE."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("trial", "family", "weight", f"{'OOF' if chosen_on == 'oof' else chosen_on} MAE", "test MAE"):
        table.add_column(col, justify="left" if col == "family" else "right")
    for m in members:
        table.add_row(str(m["trial"]), m.get("family") or "-", f"{m['weight']:.3f}", fmt(m[chosen_on]["mae"]),
                      fmt(m["test"]["mae"]))
    return table


def cost_line(cost: dict[str, Any] | None) -> str | None:
    """``wall time: search 12.1 min + refit 8.3 min + ensemble 21 s = 20.7 min``; None when unknown."""
    if not cost:
        return None

    def clock(s: float) -> str:
        return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"

    names = (("search_s", "search"), ("refit_s", "refit"), ("ensemble_s", "ensemble"))
    parts = [f"{label} {clock(cost[key])}" for key, label in names if cost.get(key) is not None]
    return f"wall time: {' + '.join(parts)} = {clock(cost['total_s'])}" if parts else None


def _where_written(con: Any, summary: dict[str, Any], saved_model_note: str = "") -> None:
    """What it cost in wall time; where the exported model is, and how to predict with it
    (nothing with --no-export)."""
    line = cost_line(summary.get("cost"))
    if line:
        con.print(line)
    if summary.get("model_path"):
        con.print(f"model:       {summary['model_path']}")
        if summary.get("saved_model_path"):
            con.print(f"SavedModel:  {summary['saved_model_path']}{saved_model_note}")
        con.print(f"predictions: msatune predict {summary['out_dir']} --data DIR --split test --out preds.csv")


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
    con.print(_members(summary["members"], "valid", "members (chosen on valid only)"))

    best = summary["best_single"]
    method = summary["method"]
    table = Table(title="best single vs ensemble")
    table.add_column("metric")
    for split in ("valid", "test"):
        table.add_column(f"{split}\nbest #{best['trial']}", justify="right")
        table.add_column(f"{split}\n{method}", justify="right")
    for key, label in COLUMNS:
        table.add_row(label, *[fmt(rec[split][key]) for split in ("valid", "test") for rec in (best, summary)])
    con.print(table)
    ref = summary["reference"]
    for split in ("valid", "test"):
        line = f"{split}: constant predictor MAE {fmt(ref[split]['constant_mae'])}"
        if ref[split].get("floor_mae") is not None:
            line += f", noise floor MAE {fmt(ref[split]['floor_mae'])}"
        con.print(line)
    ch = summary["change_vs_best_single"]
    con.print(f"MAE vs best single: valid {pct(ch['valid'])}, test {pct(ch['test'])}")
    cv = summary.get("cv")
    if cv:
        con.print(f"selection optimism: ensemble valid MAE {cv['in_sample_valid_mae']:.4f} in-sample, "
                  f"{cv['valid_mae']:.4f} refitted on {cv['folds']}-fold cross-validation "
                  f"(best single: {best['valid']['mae']:.4f} in-sample, {fmt(cv['best_single_valid_mae'])} cross-validated)")
    _where_written(con, summary, '  (tf.saved_model.load(dir).serve(inputs); no msatune needed)')


def render_bagged(summary: dict[str, Any]) -> None:
    """Members, then the bagged ensemble next to the best single (refit and not) and the
    non-bagged ensemble, on test; the rank agreement with test."""
    from rich.table import Table

    con = console()
    refit = summary["refit"]
    con.print(f"[bold]{summary['study']}[/bold]: bagged {summary['method']} ensemble of "
              f"{summary['candidates']['used']} refit configurations, fitted on {refit['fitted_on']} "
              f"({refit['folds']} folds x {refit['repeats']} repeat(s)); each member averages its "
              f"{refit.get('bag') or 'fold models'}")
    con.print(_members(summary["members"], "oof", "members (chosen on out-of-fold predictions only)"))

    table = Table(title="on test (scored once, after every choice was made)")
    for col in ("model", "chosen on", "MAE there", "test MAE", "Corr", "Acc-7", "F1 non0"):
        table.add_column(col, justify="right" if col not in ("model", "chosen on") else "left")
    single, rbest, flat = summary["best_single"] or {}, summary["refit_best_single"], summary["non_bagged"] or {}
    rows = [
        (f"best single #{single.get('trial', '-')}", "valid", (single.get("valid") or {}).get("mae"), single.get("test")),
        (f"best single after refit #{rbest['trial']} (bagged)", "OOF", rbest["oof"]["mae"], rbest["test"]),
        (f"{summary['method']} ensemble (not bagged)", "valid", (flat.get("valid") or {}).get("mae"), flat.get("test")),
        (f"{summary['method']} ensemble, bagged", "OOF", summary["oof"]["mae"], summary["test"]),
    ]
    for label, on, there, test in rows:
        test = test or {}
        table.add_row(label, on, fmt(there), fmt(test.get("mae")), fmt(test.get("corr")), fmt(test.get("acc7")),
                      fmt(test.get("non0_f1")))
    con.print(table)
    ref = summary["reference"]
    con.print(f"test: constant predictor MAE {fmt(ref['test']['constant_mae'])}"
              + (f", noise floor MAE {fmt(ref['test']['floor_mae'])}" if ref["test"].get("floor_mae") is not None else ""))
    ch = summary["change_vs"]
    pct = {k: "-" if v is None else f"{v:+.1f}%" for k, v in ch.items()}
    con.print(f"bagged test MAE vs best single {pct['best_single']}, vs best single after refit "
              f"{pct['refit_best_single']}, vs the non-bagged ensemble {pct['non_bagged']}")
    ra = summary.get("rank_agreement") or {}
    if ra.get("configs"):
        con.print(f"ranking the {ra['configs']} refit configurations, Spearman with their test MAE: "
                  f"validation MAE {fmt(ra.get('val_vs_test'), 2)}, OOF MAE {fmt(ra.get('oof_vs_test'), 2)} "
                  f"(with the bagged test MAE: {fmt(ra.get('val_vs_bagged_test'), 2)} / "
                  f"{fmt(ra.get('oof_vs_bagged_test'), 2)})")
    _where_written(con, summary)


def build_and_render(app: AppContext, storage: Any, study_name: str) -> dict[str, Any]:
    """The demo's ensemble step: what ``msatune ensemble NAME`` builds (greedy, ``--from auto``: the
    trials' ensemble and the refit command, as the demo has no refit), exported, rendered; returns
    the summary."""
    from msatune.ensemble.fitting import EnsembleOptions
    from msatune.studies.ensembles import run_ensemble

    result = run_ensemble(app.ws, storage, study_name, EnsembleOptions(), source="auto", on_step=step_printer(app))
    summary = result.summary()
    print_messages(summary)
    if summary.get("source") == "refit":
        render_bagged(summary)
    else:
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
By default (--from auto) a study with a refit (msatune refit NAME, or launch --refit-top K) gets
the bagged ensemble below: in 20 of our 23 benchmark runs (benchmarks/README.md) it predicted
test better than the validation-selected best single model; on default studies (--refit-top 5,
3 folds; 3 data structures x 4 seeds) by a median 5%, from 15% better to 6% worse (on one
structure, mosi, it won only 2 of 4); the default seeds refit (msatune refit NAME) by a median
6.9% over 6 studies (not on mosi). A study without one gets the trials' ensemble, and a note
with the command for the refit. --from trials / --from refit choose.
Either way it ends with what the model cost in wall time: the study's search runs, the refit's
runs when it is bagged, and the ensemble itself (--json: "cost").

\b
--from refit builds a bagged ensemble on the study's refit (msatune refit NAME): the candidates are
the refit configurations. A seeds refit (the default): each member is the plain average of its
configuration's seed repeats and its trial's own model, fitted on those averages' valid
predictions. A fold refit: fitted on their out-of-fold predictions of train+valid, each member the
average of its fold models and of the study trial's own model (the one the search trained on
train; it joins the average only, never the out-of-fold fit), which takes --trial-share of it
(half by default: it trained on more data than any fold model; --folds-only leaves it out); it is
scored on test next to the best single trial (refit and not) and the ensemble without bagging, and
written to .../ensembles/refit-METHOD/ (msatune:ensemble:refit-METHOD).

\b
Examples:
  msatune ensemble demo1
  msatune ensemble demo1 --method mean --top-k 3
  msatune ensemble demo1 --method greedy --rounds 50 --json | jq .test.mae
  msatune ensemble demo1 --no-export          (compare combiners quickly)
  msatune ensemble demo1 --from trials       (the trials' ensemble even when a refit exists)
  msatune ensemble demo1 --from refit         (bagged, after msatune refit demo1 --top-k 3)
"""


def _default_share() -> str:
    from msatune.ensemble.bagging import TRIAL_SHARE

    return "equal" if TRIAL_SHARE is None else f"{TRIAL_SHARE:g}"


def _parse_share(ctx: click.Context, param: click.Parameter, value: str) -> float | None:
    """``--trial-share``: a number in [0, 1], or ``equal`` (None)."""
    if value.strip().lower() == "equal":
        return None
    try:
        share = float(value)
    except ValueError:
        share = float("nan")
    if not 0.0 <= share <= 1.0:
        raise click.BadParameter(f"{value!r} is not a share: give a number in [0, 1] (0.5: half the bag) or 'equal'")
    return share


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
@click.option("--from", "source", type=click.Choice(["auto", "trials", "refit"]), default="auto", show_default=True,
              help="Candidates: the study's refit configurations, bagged, when it has a finished one (auto), "
                   "else its trials; or either one explicitly.")
@click.option("--bag-trial/--folds-only", default=True, show_default=True,
              help="Bagged members: average the study trial's own model with its fold models, or the fold "
                   "models only.")
@click.option("--trial-share", default=_default_share(), show_default=True, metavar="SHARE|equal",
              callback=_parse_share,
              help="A fold refit's bags: the study trial's own model's share; its fold models split the rest "
                   "('equal': one share as one more fold model, 1/(folds x repeats + 1)). 0.5 was measured "
                   "at 3 folds (launch --refit-folds' default); at 5 folds it beat the equal share in 2 of 4 "
                   "runs. In a seeds refit's bags it is one seed, at an equal share.")
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def ensemble(app: AppContext, name: str, method: str, top_k: int, rounds: int, max_candidates: int,
             cv_folds: int, out_dir: Path | None, no_export: bool, source: str, bag_trial: bool,
             trial_share: float | None, storage: str | None, as_json: bool) -> None:
    from msatune.ensemble.fitting import EnsembleOptions
    from msatune.studies.ensembles import run_ensemble

    options = EnsembleOptions(method=method, top_k=top_k, rounds=rounds, max_candidates=max_candidates,
                              cv_folds=cv_folds).validate()
    result = run_ensemble(app.ws, app.storage(storage, create=False), name, options, source=source,
                          out_dir=out_dir, export=not no_export, on_step=step_printer(app), bag_trial=bag_trial,
                          trial_share=trial_share)
    summary = result.summary()
    print_messages(summary)
    if as_json:
        echo_json(summary)
    elif summary.get("source") == "refit":
        render_bagged(summary)
    else:
        render_result(summary)
