"""Per-trial checkpoints: ``model.weights.h5`` + ``config.json`` + ``checkpoint.json``.

A checkpoint directory rebuilds its model without the study: ``config.json`` is the flat trial
config as given, ``checkpoint.json`` holds the feature dims, ``seq_len``, the msatune version, the
format number and any extra metadata. Files are written to a temporary name and renamed, so a
killed writer never leaves a half-written file under the final name.
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

import msatune
from msatune.errors import UserError

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.weights.h5"
CONFIG_FILE = "config.json"
META_FILE = "checkpoint.json"
FORMAT = 1


def _json_default(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return item()
    tolist = getattr(value, "tolist", None)  # numpy arrays
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _write_json(path: Path, data: Mapping[str, Any], what: str) -> None:
    try:
        text = json.dumps(dict(data), indent=2, default=_json_default, allow_nan=False)
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
    its ``saving_lib.save_weights_only`` can skip them. Fall back to the public call if that
    internal function is gone or changed.
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        try:
            from keras.src.saving import saving_lib

            saving_lib.save_weights_only(model, str(path), objects_to_skip=[optimizer])
            return
        except (ImportError, AttributeError, TypeError):  # pragma: no cover - other Keras
            log.debug("saving weights with the optimizer state (no saving_lib.objects_to_skip)")
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
    from models.build import build_model

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
            f"checkpoint weights {weights} are corrupt or do not match config.json: {_reason(exc)}"
        ) from exc
    return model, config, meta


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_weights_file(weights: Path, model: keras.Model) -> None:
    """Raise UserError unless ``weights`` is a readable HDF5 file holding arrays of exactly the
    shapes of ``model``'s weights (Keras itself only warns on a structural mismatch)."""
    import h5py
    import numpy as np

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
        raise UserError(f"checkpoint weights {weights} are corrupt: {_reason(exc)}") from exc
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
