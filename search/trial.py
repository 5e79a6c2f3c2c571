"""One trial: a trial config + a loaded dataset → a trained model, its best checkpoint and metrics.

This is where the layers meet: ``augment`` builds the input pipelines, ``models`` trains. Both
``msatune train`` and the Ray Tune trainable go through :func:`run_trial`, so a study's trial and
a hand-run training are the same computation.

The checkpoint it writes (weights, config, metadata with the best epoch and metrics, valid/test
predictions) is the format of :mod:`msatune.models.checkpoint`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msatune.augment.aug_config import validate_aug_config
from msatune.augment.dataset import MSADataset
from msatune.augment.pipeline import make_datasets, trial_splits
from msatune.label_range import clip_predictions, outside_range
from msatune.models.checkpoint import PREDICTION_SPLITS, save_checkpoint, write_predictions
from msatune.models.metrics import msa_metrics
from msatune.models.step_cache import StepCache
from msatune.models.training import EpochReport, TrainResult, predict, train_model

log = logging.getLogger(__name__)

#: Evaluation/prediction batch: large (fewer steps, one trace for MOSI's 229 validation samples),
#: small enough for MOSEI-sized splits on a GPU. Results do not depend on it.
EVAL_BATCH_SIZE = 256

#: Under a trial's ``out_dir``: the TensorBoard event file of its gradient norms and attention
#: (:mod:`msatune.models.monitoring`), and the best epoch's attention maps.
MONITOR_DIR = "monitor"


@dataclass
class TrialOutcome:
    result: TrainResult
    predictions: dict[str, np.ndarray]  # "{split}_pred" / "{split}_label" / "{split}_index"
    metrics: dict[str, dict[str, float]]  # split -> MMSA metrics of the best-epoch model
    checkpoint: Path | None


def build_pipelines(config: Mapping[str, Any], data: MSADataset) -> dict:
    """The train/valid/test ``tf.data`` pipelines of one trial config.

    TensorFlow derives a dataset's shuffle seeds from the global seed *and* the op seed: the
    trial's seed is made global first, so a trial shuffles the same whether or not another
    trial ran before it in this process (a reused Ray actor, ``msatune train`` after a study).
    """
    import keras

    keras.utils.set_random_seed(int(config["seed"]))
    splits = trial_splits(data)  # in memory, or streamed from HDF5 when too large to hold twice
    return make_datasets(
        splits,
        batch_size=int(config["batch_size"]),
        aug=validate_aug_config(config),
        seed=int(config["seed"]),
        eval_batch_size=EVAL_BATCH_SIZE,
        drop_last_partial=True,
    )


def predict_splits(
    model: Any,
    datasets: Mapping[str, Any],
    data: MSADataset,
    known: Mapping[str, np.ndarray | None] | None = None,
    splits: tuple[str, ...] = PREDICTION_SPLITS,
) -> dict[str, np.ndarray]:
    """Predictions on ``splits`` (valid and test) with their labels and sample indices (ids
    when known).

    ``known`` maps a split to predictions already made with these weights (the epoch's
    validation pass), which are used instead of predicting that split again.
    """
    out: dict[str, np.ndarray] = {}
    for split in splits:
        if split not in datasets:
            continue
        labels = data.splits[split].labels
        given = (known or {}).get(split)
        out[f"{split}_pred"] = given if given is not None else predict(model, datasets[split])
        out[f"{split}_label"] = np.asarray(labels, dtype=np.float32)
        out[f"{split}_index"] = np.arange(labels.shape[0], dtype=np.int64)
        ids = data.splits[split].ids
        if ids is not None:
            out[f"{split}_id"] = np.asarray(ids).astype(str)
    return out


def split_metrics(predictions: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """MMSA metrics per split of the predictions clipped to the label range (what msatune serves:
    :mod:`msatune.label_range`), with ``outside``: how many raw predictions lay outside it."""
    return {
        split: {**msa_metrics(clip_predictions(predictions[f"{split}_pred"]), predictions[f"{split}_label"]),
                "outside": outside_range(predictions[f"{split}_pred"])}
        for split in PREDICTION_SPLITS
        if f"{split}_pred" in predictions
    }


def write_checkpoint(
    directory: Path,
    model: Any,
    config: Mapping[str, Any],
    data: MSADataset,
    predictions: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
) -> Path:
    """Weights + config + meta + the predictions file (the :mod:`msatune.models.checkpoint` format)."""
    directory = Path(directory)
    save_checkpoint(
        directory,
        model,
        config,
        data.dims,
        {**meta, "seq_len": data.seq_len, "data_fingerprint": data.fingerprint},
    )
    write_predictions(directory, predictions)
    return directory


def run_trial(
    config: Mapping[str, Any],
    data: MSADataset,
    *,
    out_dir: str | Path | None = None,
    on_epoch: Callable[[EpochReport, dict], None] | None = None,
    checkpoint_every_improvement: bool = False,
    checkpoint_dir: str | Path | None = None,
    verbose: int = 0,
    step_cache: StepCache | None = None,
) -> TrialOutcome:
    """Train ``config`` on ``data``; write the best checkpoint (and CSV log) under ``out_dir``.

    ``on_epoch(report, extra)`` is called after every epoch; with ``checkpoint_every_improvement``
    the checkpoint is rewritten whenever val MAE improves and once more on the last epoch (before
    the hook runs), and ``extra`` carries ``checkpoint`` (the directory) on those epochs: the
    search reports it to Ray Tune. An improving epoch's checkpoint holds the weights and the
    validation predictions (which the epoch's validation made anyway); the last epoch's holds
    the best epoch's weights with the validation *and* test predictions. So a trial that runs
    to its end (COMPLETE) leaves a checkpoint with every prediction, predicting test once instead
    of on every improvement; a trial the scheduler stops leaves weights and validation
    predictions, and :func:`msatune.models.checkpoint.fill_predictions` adds test when asked.
    ``checkpoint_dir`` puts the checkpoint elsewhere than ``out_dir/checkpoint``.
    Each epoch's gradient norms and attention go to ``out_dir/monitor`` (:data:`MONITOR_DIR`).

    ``step_cache``: the trial reuses a compiled train step kept there by an earlier trial of the
    same graph, and keeps its own there once its checkpoint is written
    (:mod:`msatune.models.step_cache`): the returned outcome's model is then lent back, and the
    next trial with that cache trains it in place. For callers that are done with the model.
    """
    datasets = build_pipelines(config, data)
    out = Path(out_dir) if out_dir is not None else None
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else (out / "checkpoint" if out is not None else None)
    reporting = checkpoint_every_improvement and ckpt_dir is not None

    # The best epoch so far (its validation predictions), and the predictions of the last
    # checkpoint written: the best epoch's, which the returned model holds too.
    best: dict[str, Any] = {}
    checkpointed: dict[str, Mapping[str, np.ndarray]] = {}

    def hook(report: EpochReport) -> None:
        extra: dict[str, Any] = {}
        if report.improved:
            best.update(epoch=report.epoch, val_mae=report.metrics["val_mae"], valid=report.valid_predictions)
        if reporting and (report.improved or report.last) and best:
            # The last epoch's model holds the best weights (models.training restores them).
            splits = PREDICTION_SPLITS if report.last else ("valid",)
            preds = predict_splits(report.model, datasets, data, {"valid": best["valid"]}, splits=splits)
            write_checkpoint(ckpt_dir, report.model, config, data, preds,
                             {"best_epoch": best["epoch"], "val_mae": best["val_mae"]})
            if report.last:
                checkpointed["best"] = preds
            extra["checkpoint"] = ckpt_dir
        if on_epoch is not None:
            on_epoch(report, extra)

    result = train_model(
        config,
        datasets,
        data.dims,
        seq_len=data.seq_len,
        on_epoch=hook,
        csv_path=(out / "training_log.csv") if out is not None else None,
        verbose=verbose,
        monitor_dir=(out / MONITOR_DIR) if out is not None else None,
        step_cache=step_cache,
    )
    # The study path already predicted with the best weights when it wrote the last checkpoint.
    best_preds = checkpointed.get("best")
    known = {"valid": best.get("valid")}
    predictions = dict(best_preds) if best_preds is not None else predict_splits(result.model, datasets, data, known)
    metrics = split_metrics(predictions)
    if ckpt_dir is not None and not checkpoint_every_improvement:
        write_checkpoint(
            ckpt_dir,
            result.model,
            config,
            data,
            predictions,
            {"best_epoch": result.best_epoch, "val_mae": result.best_val_mae, "metrics": metrics},
        )
    if step_cache is not None:
        step_cache.keep(result.compiled)  # everything that needed the model is written
    return TrialOutcome(result=result, predictions=predictions, metrics=metrics, checkpoint=ckpt_dir)
