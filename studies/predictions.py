"""Predictions of a dataset split by any msatune model, written as CSV (``msatune predict``)."""

from __future__ import annotations

import csv
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from msatune.errors import UserError
from msatune.output_files import check_output_file, header_line


def predict_split(model: Path, data_dir: Path, split: str, out_file: Path,
                  on_step: Callable[[str], None] | None = None, *, force: bool = False) -> dict[str, Any]:
    """Predict ``split`` of the dataset at ``data_dir`` with ``model`` (a trial checkpoint, an
    ensemble directory or a ``.keras`` file), write the CSV, return what was done (with the MAE
    against the split's labels). ``on_step(text)`` is told each step before it starts. An existing
    ``out_file`` is replaced only when it is a predictions CSV of msatune's, or with ``force``
    (never a SQLite file: that may be a study store)."""
    from msatune.augment.dataset import load_dataset

    check_out_file(out_file, force)
    step = on_step or (lambda text: None)
    step(f"reading dataset {data_dir}")
    data = load_dataset(data_dir)
    t0 = time.perf_counter()
    step(f"loading model {model} (TensorFlow starts)")
    from msatune.ensemble.export import load_predictor

    predictor = load_predictor(model)
    predictor.check_data(data.dims, data.seq_len, f"dataset {data_dir}")
    s = data.splits[split]
    step(f"predicting {s.n} {split} samples")
    pred = predictor.predict(s.inputs())
    write_predictions_csv(out_file, pred, s.labels, s.ids)
    labels = np.asarray(s.labels, dtype=np.float64).reshape(-1)
    mae = float(np.mean(np.abs(pred.astype(np.float64) - labels)))
    return {"model": str(model), "kind": predictor.kind, "data": str(data_dir), "split": split,
            "n": int(pred.shape[0]), "out": str(out_file), "mae": mae,
            "seconds": round(time.perf_counter() - t0, 3)}


#: The header lines a predictions CSV of msatune's can have.
_HEADERS = {",".join(["index", *ids, "prediction", *label])
            for ids in ([], ["id"]) for label in ([], ["label"])}


def check_out_file(path: Path, force: bool = False) -> None:
    """A UserError unless ``path`` may receive a predictions CSV (see :func:`check_output_file`)."""
    check_output_file(path, lambda head: header_line(head) in _HEADERS, force=force,
                      what="a predictions CSV of msatune's")


def write_predictions_csv(path: Path, pred: Any, labels: Any, ids: Any | None) -> None:
    """One row per sample: ``index[,id],prediction,label``."""
    pred = np.asarray(pred).reshape(-1)
    labels = None if labels is None else np.asarray(labels).reshape(-1)
    header = ["index"] + (["id"] if ids is not None else []) + ["prediction"] + (["label"] if labels is not None else [])
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
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
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from exc
