"""The trial checkpoint format, whole: its files, their writers and their readers.

A checkpoint directory rebuilds its model without the study::

    model.weights.h5   the weights (no optimizer state)
    config.json        the flat trial config as given
    checkpoint.json    feature dims, seq_len, msatune version, format number, extra metadata
                       (best epoch, val MAE, data fingerprint, metrics)
    predictions.npz    {split}_pred, {split}_label, {split}_index (and {split}_id when the data
                       has ids) for split in valid, test: what ensembles and reports read.
                       A search writes test once, at a trial's last epoch: the checkpoint of
                       a trial the scheduler stopped holds valid only until
                       :func:`fill_predictions` predicts the rest from its weights. The file
                       holds raw model outputs; :func:`read_predictions` clips them to [-3, 3].

``search`` writes checkpoints, ``ensemble`` and ``studies`` read them: all through this module.
Files are written to a temporary name and renamed, so a killed writer never leaves a half-written
file under the final name.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import msatune
from msatune.errors import UserError, first_line
from msatune.json_values import json_default
from msatune.label_range import clip_predictions
from msatune.thirdparty.keras_internals import save_weights_without

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.weights.h5"
CONFIG_FILE = "config.json"
META_FILE = "checkpoint.json"
PREDICTIONS_FILE = "predictions.npz"
#: The splits a checkpoint holds predictions for (the train split is never predicted).
PREDICTION_SPLITS: tuple[str, ...] = ("valid", "test")
FORMAT = 1


def _write_json(path: Path, data: Mapping[str, Any], what: str) -> None:
    try:
        text = json.dumps(dict(data), indent=2, default=json_default, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UserError(f"cannot write {path}: the {what} is not plain JSON ({exc})") from exc
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"checkpoint {what} {path} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"checkpoint {what} {path} is unreadable or corrupt: {exc}") from exc
    if not isinstance(data, dict):
        raise UserError(f"checkpoint {what} {path} is corrupt: expected a JSON object")
    return data


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: keras.Model,
    config: Mapping[str, Any],
    dims: Mapping[str, int],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights, ``config`` and the metadata into ``directory`` (created).

    ``checkpoint.json`` = ``{"dims", "seq_len", "msatune_version", "format": 1, **meta}``;
    ``seq_len`` is the model's fixed T (``None`` when it accepts any T). Returns the directory.
    """
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create checkpoint directory {path}: {exc}") from exc
    seq_len = getattr(model, "seq_len", None)
    record = {
        "dims": {k: int(v) for k, v in dims.items()},
        "seq_len": seq_len,
        "msatune_version": msatune.__version__,
        "format": FORMAT,
        **(dict(meta) if meta else {}),
    }
    weights = path / WEIGHTS_FILE
    tmp_weights = path / ("tmp-" + WEIGHTS_FILE)  # must still end in .weights.h5
    _save_weights(model, tmp_weights)
    os.replace(tmp_weights, weights)
    _write_json(path / CONFIG_FILE, config, "config")
    _write_json(path / META_FILE, record, "checkpoint metadata")
    log.debug("saved checkpoint %s", path)
    return path


def _save_weights(model: keras.Model, path: Path) -> None:
    """The model's weights without the optimizer state (a third of the size with Adam).

    Keras 3's public ``save_weights`` also writes the optimizer variables of a compiled model;
    the boundary's :func:`save_weights_without` can skip them, and the public call is the fallback.
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and save_weights_without(model, path, [optimizer]):
        return
    model.save_weights(path)


def read_checkpoint_meta(directory: str | os.PathLike[str]) -> tuple[dict, dict]:
    """``(config, meta)`` of the checkpoint in ``directory``, without building a model."""
    path = Path(directory)
    if not path.is_dir():
        raise UserError(f"checkpoint directory {path} does not exist")
    config = _read_json(path / CONFIG_FILE, "config")
    meta = _read_json(path / META_FILE, "metadata")
    fmt = meta.get("format")
    if fmt != FORMAT:
        raise UserError(
            f"checkpoint metadata {path / META_FILE} has format {fmt!r}; this msatune "
            f"({msatune.__version__}) reads format {FORMAT}"
        )
    dims = meta.get("dims")
    if not isinstance(dims, dict):
        raise UserError(f"checkpoint metadata {path / META_FILE} is corrupt: no 'dims' object")
    return config, meta


def load_checkpoint(directory: str | os.PathLike[str]) -> tuple[keras.Model, dict, dict]:
    """``(model, config, meta)``: the model rebuilt with ``build_model`` and its weights loaded."""
    from msatune.models.build import build_model

    path = Path(directory)
    config, meta = read_checkpoint_meta(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"checkpoint weights {weights} are missing")
    model = build_model(config, meta["dims"], meta.get("seq_len"))
    _check_weights_file(weights, model)
    try:
        with warnings.catch_warnings():
            # Keras only warns when the file's structure does not match the model and leaves
            # freshly initialized weights behind: that must fail loudly here.
            warnings.filterwarnings("error", category=UserWarning, module=r"keras\.src\.saving")
            model.load_weights(weights)
    except Exception as exc:  # h5py OSError on truncation, ValueError on shape mismatch, ...
        raise UserError(
            f"checkpoint weights {weights} are corrupt or do not match config.json: {first_line(exc)}"
        ) from exc
    return model, config, meta


def _check_weights_file(weights: Path, model: keras.Model) -> None:
    """Raise UserError unless ``weights`` is a readable HDF5 file holding arrays of exactly the
    shapes of ``model``'s weights (Keras itself only warns on a structural mismatch)."""
    import h5py

    try:
        with h5py.File(weights, "r") as handle:
            found: list[tuple[int, ...]] = []
            for top in handle:
                if top == "optimizer":  # written by Keras' save_weights for compiled models
                    continue
                group = handle[top]
                if isinstance(group, h5py.Dataset):
                    found.append(group.shape)
                    continue
                group.visititems(
                    lambda _, obj: found.append(obj.shape) if isinstance(obj, h5py.Dataset) else None
                )
    except Exception as exc:  # OSError for truncated/foreign files, others for damaged ones
        raise UserError(f"checkpoint weights {weights} are corrupt: {first_line(exc)}") from exc
    wanted = [tuple(int(d) for d in w.shape) for w in model.weights]
    found = [tuple(int(d) for d in shape) for shape in found]
    if sorted(found) == sorted(wanted):
        return
    values = int(sum(int(np.prod(shape)) for shape in found))
    want_values = int(sum(int(np.prod(shape)) for shape in wanted))
    extra = collections.Counter(found) - collections.Counter(wanted)
    missing = collections.Counter(wanted) - collections.Counter(found)
    detail = "; ".join(
        part
        for part in (
            f"shapes only in the file: {_shapes(extra)}" if extra else "",
            f"only in the model: {_shapes(missing)}" if missing else "",
        )
        if part
    )
    raise UserError(
        f"checkpoint weights {weights} do not match config.json and checkpoint.json: the file "
        f"holds {len(found)} arrays ({values} values), the configured model has {len(wanted)} "
        f"({want_values} values); {detail} (a checkpoint of an earlier msatune model family "
        "does not load into today's models: retrain it)"
    )


def _shapes(counts: collections.Counter, limit: int = 4) -> str:
    """``(16, 2, 8) x14, (2, 8) x14 and 2 more``: the distinct shapes, most frequent first."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{shape} x{n}" for shape, n in items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


# --- predictions.npz ----------------------------------------------------------------------------


def write_predictions(directory: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``{split}_pred/_label/_index[/_id]`` arrays as the checkpoint's predictions file."""
    path = Path(directory) / PREDICTIONS_FILE
    tmp = path.with_name(PREDICTIONS_FILE + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def read_predictions(
    directory: str | os.PathLike[str], splits: tuple[str, ...] = PREDICTION_SPLITS, *, clip: bool = True
) -> dict[str, np.ndarray]:
    """The validated ``{split}_pred/_label/_index[/_id]`` arrays of ``splits`` in a checkpoint (or
    an exported ensemble, which uses the same layout); a UserError says what is missing or damaged.

    The file holds the model's raw outputs; the predictions come back clipped to the label range
    (:mod:`msatune.label_range`: what msatune serves and scores) unless ``clip=False``."""
    path = Path(directory) / PREDICTIONS_FILE
    if not path.is_file():
        raise UserError(f"checkpoint predictions {path} are missing")
    try:
        with np.load(path, allow_pickle=False) as f:
            raw = {k: f[k] for k in f.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError, EOFError
        raise UserError(f"checkpoint predictions {path} are corrupt ({first_line(exc)})") from None
    out: dict[str, np.ndarray] = {}
    for split in splits:
        for kind in ("pred", "label"):
            key = f"{split}_{kind}"
            if key not in raw:
                raise UserError(f"checkpoint predictions {path} lack {key!r}")
            arr = np.asarray(raw[key]).reshape(-1)
            if arr.dtype.kind not in "fiu":
                raise UserError(f"checkpoint predictions {path}: {key!r} is not numeric")
            if not np.all(np.isfinite(arr)):
                raise UserError(f"checkpoint predictions {path}: {key!r} holds NaN or inf")
            out[key] = arr.astype(np.float32)
        if clip:
            out[f"{split}_pred"] = clip_predictions(out[f"{split}_pred"])
        n = out[f"{split}_pred"].shape[0]
        if out[f"{split}_label"].shape[0] != n or n == 0:
            raise UserError(f"checkpoint predictions {path}: {split} predictions and labels differ in length")
        index = raw.get(f"{split}_index")
        out[f"{split}_index"] = (
            np.arange(n, dtype=np.int64) if index is None else np.asarray(index).reshape(-1).astype(np.int64)
        )
        if out[f"{split}_index"].shape[0] != n:
            raise UserError(f"checkpoint predictions {path}: {split}_index has the wrong length")
        ids = raw.get(f"{split}_id")
        if ids is not None:
            out[f"{split}_id"] = np.asarray(ids).reshape(-1).astype(str)
    return out


def prediction_mae(directory: str | os.PathLike[str], split: str) -> float:
    """MAE of a checkpoint's recorded ``split`` predictions (clipped to the label range) against
    their labels."""
    arrays = read_predictions(directory, (split,))
    err = arrays[f"{split}_pred"].astype(np.float64) - arrays[f"{split}_label"].astype(np.float64)
    return float(np.mean(np.abs(err)))


def missing_predictions(directory: str | os.PathLike[str]) -> tuple[str, ...]:
    """The :data:`PREDICTION_SPLITS` whose predictions the checkpoint's file lacks (all when
    there is no file); readable files only, damage is :func:`read_predictions`' to report."""
    path = Path(directory) / PREDICTIONS_FILE
    if not path.is_file():
        return PREDICTION_SPLITS
    try:
        with np.load(path, allow_pickle=False) as f:
            present = set(f.files)
    except Exception:  # noqa: BLE001 - a damaged file: read_predictions says what is wrong
        return ()
    return tuple(s for s in PREDICTION_SPLITS if f"{s}_pred" not in present or f"{s}_label" not in present)


def fill_predictions(directory: str | os.PathLike[str], splits: Mapping[str, Any]) -> tuple[str, ...]:
    """Predict, from the checkpoint's weights, the splits its predictions file lacks, and add them.

    ``splits`` maps a split name to its data: an object with ``inputs()`` (modality -> ``(N, T,
    D)`` array), ``labels`` (``(N,)``) and ``ids`` (``(N,)`` or None), as
    ``augment.dataset.SplitData``. Returns the splits it added (none when nothing was missing);
    a split that is missing and not in ``splits`` is a UserError.
    """
    path = Path(directory)
    missing = missing_predictions(path)
    if not missing:
        return ()
    absent = [s for s in missing if s not in splits]
    if absent:
        raise UserError(f"checkpoint {path} lacks {', '.join(absent)} predictions and no data was given to make them")
    import tensorflow as tf

    from msatune.models.training import predict

    model, _, _ = load_checkpoint(path)
    arrays: dict[str, np.ndarray] = {}
    if (path / PREDICTIONS_FILE).is_file():
        with np.load(path / PREDICTIONS_FILE, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    for split in missing:
        part = splits[split]
        labels = np.asarray(part.labels, np.float32).reshape(-1)
        inputs = {k: np.asarray(v, np.float32) for k, v in part.inputs().items()}
        dataset = tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(256)
        arrays[f"{split}_pred"] = predict(model, dataset)
        arrays[f"{split}_label"] = labels
        arrays[f"{split}_index"] = np.arange(labels.shape[0], dtype=np.int64)
        if getattr(part, "ids", None) is not None:
            arrays[f"{split}_id"] = np.asarray(part.ids).astype(str)
    write_predictions(path, arrays)
    log.info("checkpoint %s: predicted %s from its weights", path, ", ".join(missing))
    return missing
