"""The Ray Tune function trainable: one trial config → one report per epoch, best checkpoint.

The driver loads the dataset once and hands it over through the object store
(``tune.with_parameters``). Inside the trial: TensorFlow threads follow the trial's CPUs, memory
growth is set on visible GPUs before any op, one ``ray.tune.report`` per epoch carries
``val_mae, train_mae, gap, learning_rate, epoch, best_val_mae, rung_mae`` (and ``final`` on the last epoch), and a
checkpoint (weights, config, valid/test predictions) goes with the report only when val MAE
improved. A NaN loss ends the trial with a ``diverged`` reason (the searcher stores it as FAIL).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from msatune.augment.dataset import MSADataset

log = logging.getLogger(__name__)

#: What ASHA ranks trials on at a rung (see :func:`rung_score`).
RUNG_METRIC = "rung_mae"

_TF_CONFIGURED = False


def rung_score(best_val_mae: float, train_mae: float) -> float:
    """ASHA's rung signal: the mean of the best validation MAE so far and this epoch's training MAE.

    Measured with ``benchmarks/rung_fidelity.py`` (64 configurations of the default space trained
    to 27 epochs on synthetic mosi): in the first epochs the 229-sample validation MAE of a model
    still near the constant predictor is mostly noise (spikes to 2-10 while BatchNorm statistics
    settle), so it barely ranks configurations by their final best validation MAE (Spearman 0.12
    for the epoch-3 value, 0.40-0.47 for the best so far), while the training MAE over the whole
    training split already shows which configurations fit (0.69-0.73); the mean keeps the
    validation term that ranks by generalization at later rungs (0.72-0.84 at epoch 9).
    """
    return 0.5 * (float(best_val_mae) + float(train_mae))


def configure_tensorflow(cpus: float) -> None:
    """Threads from the trial's CPU share, memory growth on GPUs; once per worker process."""
    global _TF_CONFIGURED
    if _TF_CONFIGURED:
        return
    import tensorflow as tf

    threads = max(1, int(math.ceil(cpus)))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError as exc:  # TF already initialised in this process (actor reuse)
        log.debug("TensorFlow already initialised: %s", exc)
    _TF_CONFIGURED = True


def _assigned_cpus() -> float:
    import ray

    try:
        return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0))
    except Exception:  # noqa: BLE001 - outside Ray (tests calling the function directly)
        return 1.0


def _artifact_dir() -> Path:
    """The directory whose files Ray syncs to this trial's storage dir when the trial ends.

    Ray 2.60's ``get_trial_dir()`` names the driver's staging dir for an actor's first trial
    but the synced working dir for a reused actor's next ones; the session's storage names the
    synced one in both cases (the public call is the fallback).
    """
    import ray.tune as tune

    try:
        from ray.train._internal.session import get_session

        session = get_session()
        if session is not None:
            return Path(session.storage.trial_working_directory)
    except Exception as exc:  # noqa: BLE001 - Ray internals moved
        log.warning("cannot find the trial's synced working dir (%s); reused actors may misplace "
                    "work/training_log.csv", exc)
    try:
        return Path(tune.get_context().get_trial_dir())
    except Exception:  # noqa: BLE001 - unusual storage setups: fall back to a temp dir
        return Path(tempfile.mkdtemp(prefix="msatune-trial-"))


#: Under the study's Ray directory: the trials' working copies of their checkpoints (swept by the
#: next run of the study, so a killed trial leaves nothing behind for long).
TMP_DIR_NAME = "tmp"


def _checkpoint_work_dir() -> Path:
    """A fresh directory for the trial's working checkpoint, inside the workspace when the run's
    storage is on this node's disk (``<study>/ray/tmp``), else in the system temp dir."""
    parent: Path | None = None
    try:
        from ray.train._internal.session import get_session

        session = get_session()
        if session is not None:
            experiment = Path(session.storage.experiment_fs_path)
            if experiment.parent.is_dir():
                parent = experiment.parent / TMP_DIR_NAME
                parent.mkdir(exist_ok=True)
    except Exception as exc:  # noqa: BLE001 - Ray internals moved, or remote storage
        log.debug("checkpoint working dir in the system temp dir: %s", exc)
        parent = None
    return Path(tempfile.mkdtemp(prefix="msatune-ckpt-", dir=parent))


def train_trial(config: dict[str, Any], data: MSADataset | None = None) -> None:
    """Ray Tune function trainable (wrap with ``tune.with_parameters(train_trial, data=...)``)."""
    import ray.tune as tune

    configure_tensorflow(_assigned_cpus())
    import keras

    keras.backend.clear_session()  # actor reuse: drop the previous trial's graph state

    from msatune.models.training import TrainingDiverged
    from msatune.search.trial import run_trial

    if data is None:
        raise ValueError("train_trial needs the dataset (tune.with_parameters(train_trial, data=...))")
    trial_config = {k: v for k, v in config.items() if not k.startswith("_")}
    trial_dir = _artifact_dir()
    work = trial_dir / "work"  # Ray syncs it to the trial's storage dir (at the latest when it ends)
    # The working copy of the checkpoint lives outside the synced dir: Ray copies each reported
    # checkpoint itself, and a stopped trial deletes its copy while the final sync may be running.
    ckpt_work = _checkpoint_work_dir()
    state = {"best": math.inf}
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "")

    def on_epoch(report: Any, extra: dict) -> None:
        m = report.metrics
        state["best"] = min(state["best"], m["val_mae"])
        metrics = {
            "val_mae": m["val_mae"],
            "train_mae": m["mae"],
            "gap": m["gap"],
            "learning_rate": m["learning_rate"],
            "loss": m["loss"],
            "val_loss": m["val_loss"],
            "epoch": report.epoch + 1,
            "best_val_mae": state["best"],
            RUNG_METRIC: rung_score(state["best"], m["mae"]),
            "epoch_seconds": report.seconds,
            "final": bool(report.last),
            "cuda_visible_devices": devices,
        }
        ckpt = extra.get("checkpoint")
        if ckpt is not None:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(ckpt)))
        else:
            tune.report(metrics)

    try:
        run_trial(trial_config, data, out_dir=work, on_epoch=on_epoch, checkpoint_every_improvement=True,
                  checkpoint_dir=ckpt_work / "checkpoint")
    except TrainingDiverged as exc:
        tune.report({"val_mae": math.inf, "best_val_mae": math.inf, RUNG_METRIC: math.inf,
                     "diverged": str(exc), "final": True})
    finally:
        # The reported checkpoints were copied into Ray's storage; the working copy can go.
        shutil.rmtree(ckpt_work, ignore_errors=True)
