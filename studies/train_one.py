"""One configuration trained by hand (``msatune train``): the trial's computation, outside a study.

:func:`train_one` resolves the preset and overrides, trains through the same
:func:`msatune.search.trial.run_trial` a study's trial uses, and writes the checkpoint, the
msa-tf2 CSV log and ``metrics.json`` (MMSA metrics on valid and test, next to the constant
predictor and the noise floor). It returns that payload; the CLI renders it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from msatune.errors import UserError
from msatune.json_values import jsonable
from msatune.studies.store.workspace import Workspace, default_dataset


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train_one`: ``out`` was removed when the run had created it."""

    def __init__(self, out: Path, removed: bool) -> None:
        super().__init__(str(out))
        self.out, self.removed = out, removed


def train_one(
    ws: Workspace,
    *,
    preset: str = "improved",
    overrides: Iterable[str] = (),
    epochs: int | None = None,
    data_dir: Path | None = None,
    out_dir: Path | None = None,
    clip_labels: bool = False,
    on_epoch: Callable[[Any, dict], None] | None = None,
    verbose: int = 0,
) -> dict[str, Any]:
    """Train ``preset`` with ``overrides`` (``key=value`` strings); returns ``metrics.json``'s payload.

    Epochs in the payload are 1-based (``best_epoch`` 1 is the first epoch); the CSV log keeps
    Keras' 0-based ``epoch`` column, as msa-tf2's logs have it. ``on_epoch(report, extra)`` is
    called after every epoch (the CLI prints a line per epoch from it). Bad keys or values are
    UserErrors raised before anything is written, and a failed run removes the directory it
    created.
    """
    from msatune.augment.dataset import load_dataset
    from msatune.search.trial_config import resolve_config

    config = resolve_config(preset, overrides, epochs)  # validate before any heavy work
    data = load_dataset(data_dir if data_dir is not None else default_dataset(ws), clip_labels=clip_labels)
    out = out_dir or ws.train_dir / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output directory {out}: {exc.strerror or exc}") from None

    from msatune.search.trial import run_trial

    epoch_seconds: list[float] = []  # wall time of each epoch (train + validation), in order

    def timed(report: Any, extra: dict) -> None:
        epoch_seconds.append(round(report.seconds, 3))
        if on_epoch is not None:
            on_epoch(report, extra)

    t0 = time.perf_counter()
    try:
        outcome = run_trial(config, data, out_dir=out, on_epoch=timed, verbose=verbose)
    except BaseException as exc:
        if created:  # a failed or interrupted run leaves nothing it made (an existing --out stays)
            shutil.rmtree(created[-1], ignore_errors=True)
        if isinstance(exc, KeyboardInterrupt):
            raise TrainingInterrupted(out, removed=bool(created)) from None
        raise
    wall = time.perf_counter() - t0
    result = outcome.result
    best = result.best
    payload = {
        "preset": preset,
        "out": str(out),
        "checkpoint": str(outcome.checkpoint),
        "data": str(data.path),
        "data_fingerprint": data.fingerprint,
        "params": int(result.model.count_params()),
        "epochs_trained": result.epochs_trained,
        "best_epoch": result.best_epoch + 1,  # 1-based, as everywhere msatune shows epochs
        "stopped_early": result.stopped_early,
        "early_stop_best_epoch": result.early_stop_best_epoch + 1 if result.early_stop_best_epoch >= 0 else None,
        "train_mae_at_best": best["mae"],
        "gap_at_best": best["gap"],
        "wall_seconds": round(wall, 2),
        "epoch_seconds": epoch_seconds,  # the first includes tracing the train and validation graphs
        "metrics": outcome.metrics,
        "reference": {split: data.splits[split].reference_maes() for split in ("valid", "test")},
        "config": config,
    }
    (out / "metrics.json").write_text(json.dumps(jsonable(payload), indent=2))
    return payload
