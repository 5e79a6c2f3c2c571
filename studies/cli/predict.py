"""``msatune predict``: a dataset split predicted by a trial checkpoint, an ensemble or a .keras file."""

from __future__ import annotations

from pathlib import Path

import click

from msatune.studies.cli.context import AppContext, console, echo_json, pass_app, step_printer

PREDICT_HELP = """Predict a dataset split with a trial checkpoint, an exported ensemble or a .keras file.

\b
MODEL is one of
  a trial checkpoint directory   (msatune show NAME prints the best one)
  an ensemble directory          (msatune ensemble NAME writes WORKSPACE/studies/NAME/ensembles/greedy)
  a .keras file                  (e.g. .../ensembles/greedy/ensemble.keras)
An ensemble directory is predicted by its ensemble.keras (the whole model, members and weights);
its ensemble.json describes it and is not read here.
The CSV has one row per sample: index, id (when the data has ids), prediction, label. An existing
--out is replaced only when it is such a CSV (or with --force); a study store never is.

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
@click.option("--force", is_flag=True,
              help="Replace --out even when it is not a predictions CSV of msatune's (never a study store).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@pass_app
def predict(app: AppContext, model: Path, data_dir: Path, split: str, out_file: Path, force: bool,
            as_json: bool) -> None:
    from msatune.studies.predictions import predict_split

    payload = predict_split(model, data_dir, split, out_file, on_step=step_printer(app), force=force)
    if as_json:
        echo_json(payload)
        return
    console().print(f"wrote {payload['n']} {split} predictions of {payload['kind']} {model} to {out_file} "
                    f"(MAE vs labels {payload['mae']:.4f})")
