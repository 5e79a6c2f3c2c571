"""The Ray Tune side of a trial: what every msatune trainable does, and a study's trial trainable.

The driver loads the dataset once and hands it over through the object store
(``tune.with_parameters``). Inside a trial (:func:`tune_trial`): TensorFlow threads follow the
trial's CPUs, memory growth is set on visible GPUs before any op, the previous trial's Keras
state is dropped (Ray reuses actors), the trial keeps its working checkpoint in a directory that
is removed when it ends, and a NaN loss ends it with a ``diverged`` report (stored as FAIL).
Every epoch reports the same metrics (:class:`EpochReports`): ``val_mae, train_mae, gap,
learning_rate, loss, val_loss, epoch, best_val_mae, rung_mae``, the epoch's timings and its
monitoring (``grad_norm_*`` and, for a model with attention, ``modality_weight_*``: see
:mod:`msatune.models.monitoring`), which Ray writes to the trial's ``progress.csv`` and TensorBoard
files.

:func:`train_trial` is a study's trainable: a checkpoint goes with an epoch's report when val
MAE improved (weights, config, valid predictions) and with the last epoch's report (the best
weights again, with valid and test predictions; see ``search.trial.run_trial``). The refit's
fold trainable is :func:`msatune.search.fold_run.train_fold`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from msatune.augment.dataset import MSADataset

log = logging.getLogger(__name__)

#: What ASHA ranks trials on at a rung (see :func:`rung_score`).
RUNG_METRIC = "rung_mae"
#: Under a run's Ray directory: the trials' working copies of their checkpoints (swept by the
#: next run, so a killed trial leaves nothing behind for long).
TMP_DIR_NAME = "tmp"
#: The prefix of one trial's working checkpoint directory.
CHECKPOINT_WORK_PREFIX = "msatune-ckpt-"

_TF_CONFIGURED = False


#: The rung signal's validation share: none through epoch RUNG_VAL_FROM, rising linearly to
#: RUNG_VAL_SHARE at epoch RUNG_VAL_FULL, constant after (:func:`rung_score`).
RUNG_VAL_FROM, RUNG_VAL_FULL, RUNG_VAL_SHARE = 3, 9, 0.5


def rung_val_share(epoch: int) -> float:
    """The weight of the best validation MAE so far in the rung signal at 1-based ``epoch``."""
    ramp = (int(epoch) - RUNG_VAL_FROM) / (RUNG_VAL_FULL - RUNG_VAL_FROM)
    return RUNG_VAL_SHARE * min(1.0, max(0.0, ramp))


def rung_score(best_val_mae: float, train_mae: float, epoch: int) -> float:
    """ASHA's rung signal at 1-based ``epoch``: the epoch's training MAE through epoch 3, then
    more and more of the best validation MAE so far, up to their mean from epoch 9.

    Measured with ``benchmarks/rung_fidelity.py`` (32 configurations of the default space trained
    to 27 epochs, Spearman with the final best validation MAE; benchmarks/README.md): in the
    first epochs the small validation split's MAE of a model still near the constant predictor is
    mostly noise (spikes to 2-10 while BatchNorm statistics settle), so it barely ranks
    configurations (the best so far at epoch 3: 0.40 / 0.47 on synthetic mosi, 0.16 on
    ``lexicon``), while the training MAE over the whole training split already shows which
    configurations fit (0.73 / 0.69 / 0.71). Adding the validation term there cost rank
    (the mean of both: 0.71 / 0.64 / 0.56, and it cut 4 of ``lexicon``'s 5 best configurations
    at the first rung); from epoch 9 the mean ranks best (0.84 / 0.72 / 0.88 at 9, 0.92 / 0.90 /
    0.91 at 15, against 0.82 / 0.71 / 0.84 and 0.85 / 0.80 / 0.82 for training MAE alone).
    """
    share = rung_val_share(epoch)
    return share * float(best_val_mae) + (1.0 - share) * float(train_mae)


def configure_tensorflow(cpus: float, gpus: float | None = None) -> None:
    """Threads from the trial's CPU share; once per worker process.

    ``gpus``: the GPUs Ray gave the trial (``None``: not known, outside Ray). A trial given none
    (``--gpus-per-trial 0``, the default) sees no GPU: Ray (2.60 here) leaves
    ``CUDA_VISIBLE_DEVICES`` as it was when it assigns no GPU (ray#54868), so on a GPU machine
    TensorFlow would put every CPU trial on GPU 0, beside each other and outside Ray's accounting.
    A trial given GPUs gets memory growth on them (fractional GPUs share one: without it the
    first trial's TensorFlow takes all of its memory).
    """
    global _TF_CONFIGURED
    if _TF_CONFIGURED:
        return
    if gpus is not None and gpus <= 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before TensorFlow first asks CUDA for devices
    import tensorflow as tf

    threads = max(1, int(math.ceil(cpus)))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    except RuntimeError as exc:  # TF already initialised in this process (actor reuse)
        log.debug("TensorFlow already initialised: %s", exc)
    try:
        physical = tf.config.list_physical_devices("GPU")
        if gpus is not None and gpus <= 0:
            if physical:  # CUDA was initialised before the variable was set
                tf.config.set_visible_devices([], "GPU")
        else:
            for gpu in physical:
                tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError as exc:
        log.warning("could not set this trial's GPUs (%s): TensorFlow was initialised before the trial", exc)
    _TF_CONFIGURED = True


def assigned_cpus() -> float:
    """The CPUs Ray gave this trial (1 outside Ray)."""
    import ray

    try:
        return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0))
    except Exception:  # noqa: BLE001 - outside Ray (tests calling the function directly)
        return 1.0


def assigned_gpus() -> float | None:
    """The GPUs Ray gave this trial (0.0 when none), ``None`` outside Ray."""
    import ray

    try:
        if not ray.is_initialized():
            return None
        return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    except Exception:  # noqa: BLE001 - outside a Ray worker
        return None


def _session_dirs() -> tuple[Path, Path] | None:
    from msatune.thirdparty.ray_internals import trial_session_dirs

    try:
        return trial_session_dirs()
    except Exception as exc:  # noqa: BLE001 - Ray internals moved
        log.warning("cannot find the trial's directories in Ray's session (%s)", exc)
        return None


def trial_artifact_dir() -> Path:
    """The directory whose files Ray syncs to this trial's storage dir when the trial ends.

    Ray 2.60's ``get_trial_dir()`` names the driver's staging dir for an actor's first trial
    but the synced working dir for a reused actor's next ones; the session's storage names the
    synced one in both cases (the public call is the fallback).
    """
    import ray.tune as tune

    dirs = _session_dirs()
    if dirs is not None:
        return dirs[0]
    try:
        return Path(tune.get_context().get_trial_dir())
    except Exception:  # noqa: BLE001 - unusual storage setups: fall back to a temp dir
        return Path(tempfile.mkdtemp(prefix="msatune-trial-"))


def checkpoint_work_dir() -> Path:
    """A fresh directory for the trial's working checkpoint, inside the run's Ray directory when
    its storage is on this node's disk (``<ray dir>/tmp``), else in the system temp dir."""
    parent: Path | None = None
    dirs = _session_dirs()
    if dirs is not None and dirs[1].parent.is_dir():
        parent = dirs[1].parent / TMP_DIR_NAME
        parent.mkdir(exist_ok=True)
    owner = f"{CHECKPOINT_WORK_PREFIX}{socket.gethostname()}-{os.getpid()}-"
    return Path(tempfile.mkdtemp(prefix=owner, dir=parent))


def checkpoint_work_owner(path: Path) -> tuple[str, int] | None:
    """The (host, pid) of the trial process that made a working checkpoint directory
    (``msatune-ckpt-<host>-<pid>-<random>``); ``None`` for a name in another form."""
    rest = Path(path).name.removeprefix(CHECKPOINT_WORK_PREFIX)
    parts = rest.rsplit("-", 2)  # mkdtemp's random part holds no "-"; a host name may
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def sweep_checkpoint_work_dirs(ray_dir: Path, wait_s: float = 0.0) -> int:
    """Remove the working checkpoints killed trials left under ``ray_dir``: at the start of a
    resume or refit (the lease's holder), and when a driver stops the Ray it started (whose
    worker processes end with it; a trial stopped by the scheduler mid-epoch, its process ended
    with the run, never reached its own clean-up). A directory whose trial process still lives
    on this host is kept: a driver taken over while it stalled (stopped, not dead) still has
    trials that write there until it sees it lost the lease, and deleting under them failed
    those trials with a traceback. ``wait_s``: how long to wait for such processes to end
    first (Ray's workers exit a moment after its shutdown). So is one made on another host (its
    process cannot be checked from here; the trial removes its own directory when it ends).
    Returns how many were removed."""
    import time

    from msatune.processes import alive

    tmp = Path(ray_dir) / TMP_DIR_NAME
    left = {path: checkpoint_work_owner(path)
            for path in (tmp.glob(f"{CHECKPOINT_WORK_PREFIX}*") if tmp.is_dir() else [])}
    host = socket.gethostname()
    here = {owner[1] for owner in left.values() if owner is not None and owner[0] == host}
    deadline = time.monotonic() + wait_s
    while any(alive(pid) for pid in here) and time.monotonic() < deadline:
        time.sleep(0.1)
    removed = 0
    for path, owner in left.items():
        if owner is not None and (owner[0] != host or alive(owner[1])):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


@contextmanager
def tune_trial() -> Iterator[Path]:
    """Around a trainable's training: TensorFlow set up for the trial, Keras' previous state
    dropped, a working checkpoint directory (yielded; removed at the end: Ray copied what was
    reported), and a diverged training reported as the trial's last result."""
    import ray.tune as tune

    configure_tensorflow(assigned_cpus(), assigned_gpus())
    import keras

    keras.backend.clear_session()  # actor reuse: drop the previous trial's graph state

    from msatune.models.training import TrainingDiverged

    ckpt_work = checkpoint_work_dir()
    try:
        yield ckpt_work
    except TrainingDiverged as exc:
        tune.report({"val_mae": math.inf, "best_val_mae": math.inf, RUNG_METRIC: math.inf,
                     "diverged": str(exc), "final": True})
    finally:
        shutil.rmtree(ckpt_work, ignore_errors=True)


class EpochReports:
    """The metrics every epoch reports, with the best validation MAE so far."""

    def __init__(self) -> None:
        self.best = math.inf

    def metrics(self, report: Any) -> dict[str, Any]:
        m = report.metrics
        self.best = min(self.best, m["val_mae"])
        return {
            "val_mae": m["val_mae"],
            "train_mae": m["mae"],
            "gap": m["gap"],
            "learning_rate": m["learning_rate"],
            "loss": m["loss"],
            "val_loss": m["val_loss"],
            "epoch": report.epoch + 1,
            "best_val_mae": self.best,
            RUNG_METRIC: rung_score(self.best, m["mae"], report.epoch + 1),
            "epoch_seconds": report.seconds,
            "validation_seconds": report.validation_seconds,
            **getattr(report, "monitor", {}),  # grad_norm_*, modality_weight_* (models.monitoring)
        }


def train_trial(config: dict[str, Any], data: MSADataset | None = None) -> None:
    """Ray Tune function trainable (wrap with ``tune.with_parameters(train_trial, data=...)``)."""
    import ray.tune as tune

    from msatune.models.step_cache import process_step_cache
    from msatune.search.trial import run_trial

    if data is None:
        raise ValueError("train_trial needs the dataset (tune.with_parameters(train_trial, data=...))")
    trial_config = {k: v for k, v in config.items() if not k.startswith("_")}
    work = trial_artifact_dir() / "work"  # Ray syncs it to the trial's storage dir (at the latest when it ends)
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    reports = EpochReports()

    def on_epoch(report: Any, extra: dict) -> None:
        metrics = {**reports.metrics(report), "final": bool(report.last), "cuda_visible_devices": devices}
        ckpt = extra.get("checkpoint")
        if ckpt is not None:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(ckpt)))
        else:
            tune.report(metrics)

    # The working copy of the checkpoint lives outside the synced dir: Ray copies each reported
    # checkpoint itself, and a stopped trial deletes its copy while the final sync may be running.
    with tune_trial() as ckpt_work:
        run_trial(trial_config, data, out_dir=work, on_epoch=on_epoch, checkpoint_every_improvement=True,
                  checkpoint_dir=ckpt_work / "checkpoint", step_cache=process_step_cache())
