"""``msatune ensemble | predict``: combine a study's best trials into one model, and use models.

:func:`run_study_ensemble` is the service side (read the study, fit on validation predictions,
export, record the result on the study as ``msatune:ensemble:<method>``);
:func:`build_and_render` is what ``msatune demo`` calls.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from studies.cli_context import AppContext, console, echo_json, pass_app

if TYPE_CHECKING:
    from ensemble.evaluate import EnsembleOptions, EnsembleResult
    from studies.workspace import Workspace

METHOD_CHOICES = ("greedy", "mean", "weighted", "median")
RECORD_PREFIX = "ensemble:"  # study user attr msatune:ensemble:<method>


def default_out_dir(ws: Workspace, study: str, method: str) -> Path:
    return ws.study_dir(study) / "ensembles" / method


def _load_study_data(attrs: dict[str, Any], warnings: list[str]) -> Any | None:
    """The study's dataset for the floor and the export check; None (with a warning) if gone."""
    from augment.dataset import load_dataset
    from msatune.errors import UserError

    path = attrs.get("data_path")
    if not path:
        return None
    if not Path(path).is_dir():
        warnings.append(f"the study's dataset {path} is not there: no error floor, export not checked")
        return None
    try:
        data = load_dataset(path)
    except UserError as exc:
        warnings.append(f"cannot read the study's dataset ({exc}): no error floor, export not checked")
        return None
    want = attrs.get("data_fingerprint")
    if want and data.fingerprint != want:
        warnings.append(f"the dataset at {path} changed since the study ran (fingerprint differs): "
                        "no error floor, export not checked")
        return None
    return data


def run_study_ensemble(
    ws: Workspace,
    storage: Any,
    name: str,
    options: EnsembleOptions,
    *,
    out_dir: Path | None = None,
    export: bool = True,
    saved_model: bool = True,
) -> EnsembleResult:
    """Fit, evaluate, export (unless ``export=False``) and record ``options.method`` on study ``name``.

    ``storage`` is a store URL or an opened Optuna storage. A member whose weights cannot be
    rebuilt at export time is dropped with a warning and the combiner is refitted without it.
    """
    from ensemble.evaluate import fit_ensemble
    from ensemble.export import MemberLoadError, export_ensemble
    from studies.store import load_study, open_storage, set_study_attr, study_attrs

    options.validate()
    store = open_storage(storage) if isinstance(storage, str) else storage
    study = load_study(store, name)
    attrs = study_attrs(study)
    data_warnings: list[str] = []
    data = _load_study_data(attrs, data_warnings)
    trials = study.get_trials(deepcopy=False)
    dropped: dict[int, str] = {}  # members whose weights failed to load at export
    while True:
        result = fit_ensemble(trials, options, study_name=name, data=data,
                              expected_fingerprint=attrs.get("data_fingerprint"), skip=dropped)
        result.warnings[:0] = data_warnings
        if not export:
            break
        target = out_dir or default_out_dir(ws, name, options.method)
        try:
            export_ensemble(result, target, data=data, saved_model=saved_model)
            break
        except MemberLoadError as exc:
            dropped[exc.trial] = exc.reason
    set_study_attr(study, RECORD_PREFIX + options.method, result.record())
    return result


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


def _messages(summary: dict[str, Any]) -> None:
    for w in summary.get("warnings", []):
        click.echo(f"msatune: warning: {w}", err=True)
    for n in summary.get("notes", []):
        click.echo(f"msatune: note: {n}", err=True)


def build_and_render(app: AppContext, storage: Any, study_name: str) -> dict[str, Any]:
    """The demo's ensemble step: greedy with defaults, exported, rendered; returns the summary."""
    from ensemble.evaluate import EnsembleOptions

    result = run_study_ensemble(app.ws, storage, study_name, EnsembleOptions())
    summary = result.summary()
    _messages(summary)
    render_result(summary)
    return summary


ENSEMBLE_HELP = """Combine a study's best trials into one model and score it against the best single trial.

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
Examples:
  msatune ensemble demo1
  msatune ensemble demo1 --method mean --top-k 3
  msatune ensemble demo1 --method greedy --rounds 50 --json | jq .test.mae
  msatune ensemble demo1 --no-export          (compare combiners quickly)
"""


@click.command("ensemble", help=ENSEMBLE_HELP)
@click.argument("name")
@click.option("--method", type=click.Choice(METHOD_CHOICES), default="greedy", show_default=True,
              help="How to combine the candidates.")
@click.option("--top-k", type=int, default=5, show_default=True, help="Members of mean/weighted/median.")
@click.option("--rounds", type=int, default=25, show_default=True, help="Selection rounds of greedy.")
@click.option("--max-candidates", type=int, default=50, show_default=True, help="Best trials considered.")
@click.option("--cv-folds", type=int, default=5, show_default=True,
              help="Folds of the validation samples for the optimism estimate.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output directory [default: WORKSPACE/studies/NAME/ensembles/METHOD].")
@click.option("--no-export", is_flag=True, help="Fit and evaluate only; write no model.")
@click.option("--storage", default=None, metavar="URL",
              help="SQLAlchemy URL of the study store [default: sqlite:///WORKSPACE/studies.db].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def ensemble(app: AppContext, name: str, method: str, top_k: int, rounds: int, max_candidates: int,
             cv_folds: int, out_dir: Path | None, no_export: bool, storage: str | None, as_json: bool) -> None:
    from ensemble.evaluate import EnsembleOptions

    options = EnsembleOptions(method=method, top_k=top_k, rounds=rounds, max_candidates=max_candidates,
                              cv_folds=cv_folds).validate()
    result = run_study_ensemble(app.ws, storage or app.ws.storage_url, name, options,
                                out_dir=out_dir, export=not no_export)
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
    from augment.dataset import load_dataset
    from ensemble.export import load_predictor

    data = load_dataset(data_dir)
    t0 = time.perf_counter()
    predictor = load_predictor(model)
    predictor.check_data(data.dims, data.seq_len, f"dataset {data_dir}")
    s = data.splits[split]
    pred = predictor.predict(s.inputs())
    write_predictions_csv(out_file, pred, s.labels, s.ids)
    import numpy as np

    labels = np.asarray(s.labels, dtype=np.float64).reshape(-1)
    mae = float(np.mean(np.abs(pred.astype(np.float64) - labels)))
    payload = {"model": str(model), "kind": predictor.kind, "data": str(data_dir), "split": split,
               "n": int(pred.shape[0]), "out": str(out_file), "mae": mae,
               "seconds": round(time.perf_counter() - t0, 3)}
    if as_json:
        echo_json(payload)
        return
    console().print(f"wrote {payload['n']} {split} predictions of {predictor.kind} {model} to {out_file} "
                    f"(MAE vs labels {mae:.4f})")


def write_predictions_csv(path: Path, pred: Any, labels: Any, ids: Any | None) -> None:
    """One row per sample: ``index[,id],prediction,label``."""
    import csv

    import numpy as np

    from msatune.errors import UserError

    pred = np.asarray(pred).reshape(-1)
    labels = None if labels is None else np.asarray(labels).reshape(-1)
    header = ["index"] + (["id"] if ids is not None else []) + ["prediction"] + (["label"] if labels is not None else [])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for i, p in enumerate(pred):
                row: list[Any] = [i]
                if ids is not None:
                    row.append(str(ids[i]))
                row.append(f"{float(p):.6f}")
                if labels is not None:
                    row.append(f"{float(labels[i]):.6f}")
                w.writerow(row)
        tmp.replace(path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from exc
