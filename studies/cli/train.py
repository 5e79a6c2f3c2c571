"""``msatune train``: train one configuration, write its checkpoint, log and metrics."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import click

from msatune.studies.cli.context import AppContext, console, echo_json, pass_app

TRAIN_HELP = """Train one configuration and keep its best epoch.

\b
Prints one line per epoch (train and validation MAE, learning rate, seconds; epochs count
from 1). Starts from a preset (the users' msa-tf2 recipes: model, optimizer, schedule and early stopping
as their train.py / improved_train.py), changes keys with --set, keeps the epoch of the best
validation MAE, and writes under --out (default WORKSPACE/train/<preset>-<time>/):
  checkpoint/           model.weights.h5, config.json, checkpoint.json, predictions.npz
  training_log.csv      msa-tf2 columns: epoch,learning_rate,loss,mae,mse,val_loss,val_mae,val_mse
  metrics.json          MMSA metrics on valid and test (predictions clipped to [-3, 3]; `outside`
                        counts the raw ones beyond it), constant predictor, floor
  monitor/              TensorBoard events: gradient norms per epoch (global and per branch),
                        modality weights and attention maps (models with attention), and
                        attention.npz (the best epoch's maps)
Ctrl-C stops it and removes the run directory it created (nothing half-written is kept).

\b
Examples:
  msatune train --preset improved --epochs 3
  msatune train --data data/mosi --preset baseline --set dropout=0.3 --set batch_size=16
  msatune train --data data/mosei --preset seqlevel --set pooling_method=attention
  msatune analyze WORKSPACE/train/improved-*/training_log.csv
"""


@click.command("train", help=TRAIN_HELP)
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Dataset directory in the msa-tf2 layout [default: the synthetic mosi set in the workspace].")
@click.option("--preset", default="improved", show_default=True,
              help="Starting recipe: baseline | improved | seqlevel | balanced (msa-tf2's train.py, "
                   "improved_train.py, train_seqlevel.py, balanced_train.py).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Change one config key (repeatable), e.g. --set dropout=0.3.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Maximum epochs (overrides the preset).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory [default: WORKSPACE/train/<preset>-<time>].")
@click.option("--clip-labels", is_flag=True, help="Clip labels outside [-3, 3] instead of refusing the dataset.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@pass_app
def train(app: AppContext, data_dir: Path | None, preset: str, overrides: tuple[str, ...],
          epochs: int | None, out_dir: Path | None, clip_labels: bool, as_json: bool) -> None:
    from msatune.studies.train_one import TrainingInterrupted, train_one

    try:
        payload = train_one(app.ws, preset=preset, overrides=overrides, epochs=epochs, data_dir=data_dir,
                            out_dir=out_dir, clip_labels=clip_labels, verbose=2 if app.verbose else 0,
                            on_epoch=epoch_printer(sys.stderr if as_json else sys.stdout))
    except TrainingInterrupted as stop:
        what = (f"removed the unfinished run directory {stop.out}" if stop.removed
                else f"{stop.out} existed before and keeps what the run wrote so far")
        click.echo(f"msatune: interrupted: {what}", err=True)
        raise click.exceptions.Exit(130) from None
    if as_json:
        echo_json(payload)
        return
    _render(payload)


def epoch_printer(stream: TextIO) -> Callable[[Any, dict], None]:
    """One flushed line per epoch (1-based): train and val MAE, learning rate, gradient norm (mean
    and max over the epoch's steps), time."""

    def on_epoch(report: Any, extra: dict) -> None:
        m = report.metrics
        best = "  (best so far)" if report.improved else ""
        mon = getattr(report, "monitor", None) or {}
        grads = (f", grad norm {mon['grad_norm_mean']:.3g} (max {mon['grad_norm_max']:.3g})"
                 if "grad_norm_mean" in mon else "")
        stream.write(f"epoch {report.epoch + 1}: train MAE {m['mae']:.4f}, val MAE {m['val_mae']:.4f}, "
                     f"lr {m['learning_rate']:.2e}{grads}, {report.seconds:.1f} s{best}\n")
        stream.flush()

    return on_epoch


def _render(payload: dict) -> None:
    from rich.table import Table

    con = console()
    table = Table(title=f"{payload['preset']}: best epoch {payload['best_epoch']} of "
                        f"{payload['epochs_trained']} (train MAE {payload['train_mae_at_best']:.3f}, "
                        f"gap {payload['gap_at_best']:.3f}; {payload['params']:,} parameters)")
    table.add_column("metric")
    for split in ("valid", "test"):
        table.add_column(split, justify="right")
    for key in payload["metrics"]["valid"]:
        if key == "outside":  # a count, shown below the metrics
            continue
        table.add_row(key, *(f"{payload['metrics'][s][key]:.4f}" for s in ("valid", "test")))
    if "outside" in payload["metrics"]["valid"]:
        table.add_row("outside [-3, 3]", *(f"{payload['metrics'][s]['outside']:d} clipped" for s in ("valid", "test")))
    table.add_row("constant MAE", *(f"{payload['reference'][s]['constant_mae']:.4f}" for s in ("valid", "test")))
    floors = [payload["reference"][s]["floor_mae"] for s in ("valid", "test")]
    if all(f is not None for f in floors):
        table.add_row("floor MAE", *(f"{f:.4f}" for f in floors))
    con.print(table)
    con.print(f"wrote {payload['out']} (checkpoint, training_log.csv, metrics.json) "
              f"in {payload['wall_seconds']:.1f} s")
    from msatune.search.trial import MONITOR_DIR  # loaded by the training already

    monitor = Path(payload["out"]) / MONITOR_DIR
    if monitor.is_dir():
        con.print(f"gradient norms and attention per epoch: tensorboard --logdir {monitor}")
