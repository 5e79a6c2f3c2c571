"""Export an ensemble as one Keras 3 model, and load any msatune predictor for ``msatune predict``.

The exported model takes the dict inputs ``{"text", "audio", "video"}`` (B, T, D) and returns
(B, 1): every member runs inside one functional graph (one ``predict`` call, batched), their
outputs are concatenated and combined by a fixed, non-trainable ``Dense(1, use_bias=False)``
whose kernel holds the weights (greedy, mean, weighted), or by :class:`ensemble.layers.MemberMedian`
(median). An ensemble directory holds::

    ensemble.keras     loads with keras.saving.load_model(path, safe_mode=True) after ``import msatune``
    saved_model/       TF SavedModel (``model.export``): tf.saved_model.load(dir).serve(inputs),
                       or the ``serving_default`` signature; no msatune code needed (TF Serving)
    ensemble.json      members, weights, metrics, dims, seq_len: the ``msatune ensemble --json`` payload
    predictions.npz    the ensemble's valid/test predictions, in a checkpoint's layout

Export checks itself: the fused model's predictions on the validation inputs are compared with
the members run one by one and combined in numpy (``max_abs_diff_vs_members``), and with the
predictions the trials recorded (``max_abs_diff_vs_recorded``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from msatune.ensemble.candidates import SPLITS
from msatune.errors import UserError, first_line
from msatune.keras_objects import IMPORT_HINT
from msatune.label_range import clip_predictions
from msatune.modalities import MODALITIES
from msatune.models.checkpoint import write_predictions

if TYPE_CHECKING:
    import keras

    from msatune.ensemble.fitting import EnsembleResult

log = logging.getLogger(__name__)

ENSEMBLE_FILE = "ensemble.json"
MODEL_FILE = "ensemble.keras"
SAVED_MODEL_DIR = "saved_model"
EXPORT_BATCH = 256
#: Fused vs members-in-numpy must agree to this (float32 arithmetic, different summation order).
EXPORT_TOLERANCE = 1e-5
#: Members' predictions now vs what the trials recorded: larger means the checkpoint changed.
RECORDED_TOLERANCE = 1e-3


class MemberLoadError(UserError):
    """A member's checkpoint could not be rebuilt (the caller may drop the trial and refit)."""

    def __init__(self, trial: int, message: str) -> None:
        super().__init__(f"trial {trial}: {message}")
        self.trial = trial
        self.reason = message


def load_member_models(result: EnsembleResult) -> list[tuple[int, float, keras.Model]]:
    """``(trial, weight, model)`` for each member, rebuilt from its checkpoint and renamed
    ``member_<trial>`` (layer names must be unique inside the fused model)."""
    from msatune.models.checkpoint import load_checkpoint

    by_trial = {c.trial: c for c in result.pool.candidates}
    out = []
    for trial, weight in result.members:
        try:
            model, _, _ = load_checkpoint(by_trial[trial].checkpoint)
        except UserError as exc:
            raise MemberLoadError(trial, str(exc)) from None
        model.name = f"member_{trial}"
        out.append((trial, weight, model))
    return out


def build_fused_model(
    members: Sequence[keras.Model],
    weights: Sequence[float],
    *,
    method: str,
    dims: Mapping[str, int],
    seq_len: int | None,
    name: str = "msatune_ensemble",
) -> keras.Model:
    """One functional model: dict inputs -> every member -> weighted sum (or median) -> (B, 1)."""
    import keras

    if not members:
        raise ValueError("an ensemble needs at least one member")
    from msatune.ensemble.layers import LabelRange
    from msatune.label_range import LABEL_RANGE

    inputs = {m: keras.Input(shape=(seq_len, int(dims[m])), dtype="float32", name=m) for m in MODALITIES}
    # each member's output on the sentiment scale, as the recorded predictions are scored
    outs = [LabelRange(*LABEL_RANGE, name=f"in_range_{i}", dtype="float32")(mdl(inputs))
            for i, mdl in enumerate(members)]
    stacked = outs[0] if len(outs) == 1 else keras.layers.Concatenate(axis=-1, name="member_predictions")(outs)
    if method == "median":
        from msatune.ensemble.layers import MemberMedian

        output = MemberMedian(name="ensemble_median", dtype="float32")(stacked)
    else:
        combine = keras.layers.Dense(1, use_bias=False, trainable=False, dtype="float32", name="ensemble_weights")
        output = combine(stacked)
        combine.set_weights([np.asarray(weights, dtype=np.float32).reshape(-1, 1)])
    return keras.Model(inputs=inputs, outputs=output, name=name)


def predict_eager(model: Any, inputs: Mapping[str, np.ndarray], batch: int = EXPORT_BATCH) -> np.ndarray:
    n = next(iter(inputs.values())).shape[0]
    parts = []
    for start in range(0, n, batch):
        chunk = {k: v[start:start + batch] for k, v in inputs.items()}
        parts.append(np.asarray(model(chunk, training=False), dtype=np.float64).reshape(-1))
    return np.concatenate(parts) if parts else np.zeros(0)


def combine_numpy(method: str, preds: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """``(n, k)`` member predictions -> the ensemble's, as the fused model computes it."""
    if method == "median":
        return np.median(preds, axis=1)
    return preds @ np.asarray(weights, dtype=np.float64)


def split_inputs(data: Any, split: str, index: np.ndarray | None = None) -> dict[str, np.ndarray]:
    s = data.splits[split]
    x = {m: np.asarray(v, dtype=np.float32) for m, v in s.inputs().items()}
    if index is not None and not np.array_equal(index, np.arange(s.n)):
        x = {m: v[index] for m, v in x.items()}
    return x


def export_ensemble(
    result: EnsembleResult,
    out_dir: str | os.PathLike[str],
    *,
    data: Any | None = None,
    saved_model: bool = True,
    members: list[tuple[int, float, keras.Model]] | None = None,
    check_split: str = "valid",
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write the fused model (``.keras`` and SavedModel), ``ensemble.json`` and the ensemble's
    predictions into ``out_dir`` (replaced as a whole); fill ``result.export`` and return it.

    ``data`` (the study's MSADataset) enables the self-check on the ``check_split`` inputs.
    ``members`` (``(trial, weight, model)``, default: each member's trial checkpoint) lets a
    caller fuse other member models, e.g. bagged fold models (:mod:`msatune.ensemble.bagging`),
    whose recorded ``check_split`` predictions are what the fused model must reproduce.
    ``on_step(text)`` is told what the export does next (its steps take seconds each).
    """
    step = on_step or (lambda text: None)
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory for the ensemble")
    if out.is_dir() and any(out.iterdir()) and not (out / ENSEMBLE_FILE).is_file():
        raise UserError(f"--out {out} is a non-empty directory that holds no ensemble; "
                        "give a new or empty directory (an ensemble directory is replaced)")
    if members is None:
        step(f"loading the {len(result.members)} member checkpoint(s) and building one Keras model")
        members = load_member_models(result)
    else:
        members = list(members)
        step(f"building one Keras model from {len(members)} member model(s)")
    trials = [t for t, _, _ in members]
    weights = [w for _, w, _ in members]
    method = result.combination.method
    fused = build_fused_model([m for _, _, m in members], weights, method=method,
                              dims=result.pool.dims, seq_len=result.pool.seq_len)

    check: dict[str, Any] | None = None
    if data is not None and check_split in getattr(data, "splits", {}):
        step(f"checking the exported model against the members on the {check_split} inputs")
        idx = result.pool.index(check_split)
        x = split_inputs(data, check_split, idx)
        each = np.stack([clip_predictions(predict_eager(m, x)) for _, _, m in members], axis=1)
        in_memory = combine_numpy(method, each, weights)
        fused_pred = np.asarray(fused.predict(x, batch_size=EXPORT_BATCH, verbose=0), dtype=np.float64).reshape(-1)
        check = {
            "split": check_split, "samples": int(x["text"].shape[0]),
            "max_abs_diff_vs_members": float(np.max(np.abs(fused_pred - in_memory))),
            "max_abs_diff_vs_recorded": float(np.max(np.abs(fused_pred - result.predictions[check_split]))),
        }
        if check["max_abs_diff_vs_members"] > EXPORT_TOLERANCE:  # pragma: no cover - a bug, not input
            log.error("fused model differs from its members by %.3g", check["max_abs_diff_vs_members"])
        if check["max_abs_diff_vs_recorded"] > RECORDED_TOLERANCE:
            msg = (f"the exported ensemble's {check_split} predictions differ from the trials' recorded ones by "
                   f"up to {check['max_abs_diff_vs_recorded']:.3g}: a member checkpoint changed after its trial")
            result.warnings.append(msg)
            log.info(msg)
    else:
        result.notes.append("dataset not available: the export was not checked against the recorded predictions")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        step(f"saving {MODEL_FILE}" + (" and the TensorFlow SavedModel" if saved_model else ""))
        fused.save(tmp / MODEL_FILE)
        if saved_model:
            fused.export(str(tmp / SAVED_MODEL_DIR), verbose=False)
        result.export = {
            "out_dir": str(out),
            "model_path": str(out / MODEL_FILE),
            "saved_model_path": str(out / SAVED_MODEL_DIR) if saved_model else None,
            "check": check,
        }
        payload = result.summary()
        payload["model"] = {
            "dims": result.pool.dims, "seq_len": result.pool.seq_len, "method": method,
            "members": [{"trial": t, "weight": w, "layer": f"member_{t}"} for t, w in zip(trials, weights, strict=True)],
            "inputs": list(MODALITIES), "output": "(B, 1) sentiment",
            "load_keras": f"import msatune, keras; keras.saving.load_model('{out / MODEL_FILE}', safe_mode=True)",
            "serve": f"tf.saved_model.load('{out / SAVED_MODEL_DIR}').serve({{'text': ..., 'audio': ..., 'video': ...}})",
        }
        (tmp / ENSEMBLE_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        arrays: dict[str, np.ndarray] = {}
        for split in SPLITS:
            arrays[f"{split}_pred"] = result.predictions[split].astype(np.float32)
            arrays[f"{split}_label"] = result.pool.labels(split).astype(np.float32)
            arrays[f"{split}_index"] = result.pool.index(split)
            ids = result.pool.ids(split)
            if ids is not None:
                arrays[f"{split}_id"] = ids
        write_predictions(tmp, arrays)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write the ensemble to {out}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s ensemble of %d members to %s", method, len(members), out)
    return result.export


# ------------------------------------------------------------------------------------------------
# Loading any predictor (msatune predict)


@dataclass
class Predictor:
    """A loaded model: a trial checkpoint, an exported ``.keras`` file or an ensemble directory."""

    kind: str  # "checkpoint" | "ensemble" | "keras"
    path: Path
    model: Any
    dims: dict[str, int] | None
    seq_len: int | None

    def predict(self, inputs: Mapping[str, np.ndarray], batch_size: int = EXPORT_BATCH) -> np.ndarray:
        """Predictions of ``inputs``; a trial checkpoint's are clipped to the label range (an
        ensemble clips inside its graph; a foreign ``.keras`` model's are left as it gives them)."""
        x = {m: np.asarray(inputs[m], dtype=np.float32) for m in MODALITIES}
        out = np.asarray(self.model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float32).reshape(-1)
        return clip_predictions(out) if self.kind == "checkpoint" else out

    def check_data(self, dims: Mapping[str, int], seq_len: int, where: str) -> None:
        if self.dims is not None and any(int(self.dims[m]) != int(dims[m]) for m in MODALITIES):
            have = "/".join(str(self.dims[m]) for m in MODALITIES)
            want = "/".join(str(dims[m]) for m in MODALITIES)
            raise UserError(f"{self.path} takes text/audio/video dims {have} but {where} has {want}: "
                            "point --data at features of the model's dims (or train one on these)")
        if self.seq_len is not None and int(self.seq_len) != int(seq_len):
            raise UserError(f"{self.path} takes sequences of length {self.seq_len} but {where} has {seq_len}: "
                            "point --data at features of the model's length (or train one on these)")


def _keras_dims(model: Any) -> tuple[dict[str, int] | None, int | None]:
    try:
        spec = model.input
        if isinstance(spec, Mapping):
            dims = {m: int(spec[m].shape[-1]) for m in MODALITIES}
            t = spec["text"].shape[1]
            return dims, None if t is None else int(t)
    except (AttributeError, KeyError, TypeError, ValueError):
        pass
    return None, None


def _msatune_dims(model: Any, path: Path) -> tuple[dict[str, int], int | None]:
    """A loaded model's modality dims; a UserError when its inputs are not msatune's (a dict of
    ``text``, ``audio`` and ``video`` sequences): a foreign model cannot predict our datasets."""
    dims, seq_len = _keras_dims(model)
    if dims is None:
        raise UserError(f"{path} is a Keras model but not one of msatune's: its inputs are not the "
                        f"named sequences {', '.join(MODALITIES)}; give a model msatune wrote (a trial "
                        "checkpoint, an ensemble directory or its ensemble.keras)")
    return dims, seq_len


def load_keras_file(path: Path) -> Any:
    """A ``.keras`` file loaded with ``safe_mode=True``; every failure is one UserError line."""
    import keras

    from msatune.keras_objects import register

    register()
    if not zipfile.is_zipfile(path):
        raise UserError(f"cannot load the Keras model {path}: it is not a .keras file (a zip archive); "
                        "damaged or of another format: export the model again (msatune ensemble)")
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except TypeError as exc:  # a class Keras cannot find: not ours, or from another msatune
        text = first_line(exc)
        if "Could not locate" in text or "could not be deserialized" in text:
            cls = text.split("'")[1] if text.count("'") >= 2 else "a class"
            raise UserError(f"cannot load the Keras model {path}: it needs {cls}, which this msatune "
                            "does not register (a model from another msatune version or package); "
                            f"in your own code: {IMPORT_HINT}") from None
        raise UserError(f"cannot load the Keras model {path}: {text}") from None
    except Exception as exc:  # damaged or foreign file, weights that no longer fit the model
        raise UserError(f"cannot load the Keras model {path}: {first_line(exc)}") from None


def load_predictor(path: str | os.PathLike[str]) -> Predictor:
    """Load a trial checkpoint directory, an ensemble directory or a ``.keras`` file."""
    from msatune.models.checkpoint import META_FILE, load_checkpoint

    p = Path(path).expanduser()
    if p.is_dir() and (p / ENSEMBLE_FILE).is_file():
        model = load_keras_file(p / MODEL_FILE) if (p / MODEL_FILE).is_file() else None
        if model is None:
            raise UserError(f"ensemble directory {p} has no {MODEL_FILE}; rebuild it with msatune ensemble")
        dims, seq_len = _msatune_dims(model, p / MODEL_FILE)
        return Predictor("ensemble", p, model, dims, seq_len)
    if p.is_dir() and (p / META_FILE).is_file():
        model, _, meta = load_checkpoint(p)
        seq_len = meta.get("seq_len")
        return Predictor("checkpoint", p, model, {k: int(v) for k, v in meta["dims"].items()},
                         None if seq_len is None else int(seq_len))
    if p.is_file() and p.suffix == ".keras":
        model = load_keras_file(p)
        dims, seq_len = _msatune_dims(model, p)
        return Predictor("keras", p, model, dims, seq_len)
    if not p.exists():
        raise UserError(f"model {p} does not exist; give a trial checkpoint directory, an ensemble "
                        "directory or a .keras file")
    raise UserError(f"{p} is not a model msatune can load: give a trial checkpoint directory (with "
                    f"{META_FILE}), an ensemble directory (with {ENSEMBLE_FILE}) or a .keras file")
