"""``build_model(config, dims)``: a flat trial config (JSON values) to a built Keras model.

The config is the whole trial config; keys this module does not own (learning_rate, batch_size,
aug_* ...) are ignored, and missing model keys take :data:`MODEL_DEFAULTS`. Bad model values raise
:class:`msatune.errors.UserError` with one line naming the key and the allowed values.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from msatune.errors import UserError
from msatune.modalities import MODALITIES

if TYPE_CHECKING:
    import keras

MODEL_DEFAULTS: dict[str, Any] = {
    "family": "improved",
    "model_dim": 64,
    "num_heads": 4,
    "ff_dim": 256,
    "n_layers_mod": 2,
    "n_layers_fuse": 1,
    "dropout": 0.1,
    "l2": 0.0,
    "adaptive_fusion": True,
    # The keys below default to msa-tf2's architecture; other values are msatune's variants.
    "key_dim": 0,  # per-head attention size of the encoders; 0 = model_dim (msa-tf2)
    "l2_scope": "theirs",  # "theirs": msa-tf2's regularized kernels; "all": + FFN and gate output
    "gate_units": 64,  # improved: adaptive-fusion gate's hidden width; 0 = model_dim
    "head_units": 128,  # improved: the head's first hidden Dense
    "head_units2": 64,  # improved: the head's second hidden Dense
}

FAMILIES = ("baseline", "improved")

#: String-valued model keys and their allowed values.
MODEL_CHOICES: dict[str, tuple[str, ...]] = {"family": FAMILIES, "l2_scope": ("theirs", "all")}


def _where(key: str) -> str:
    return key if key.startswith("dims.") or key == "seq_len" else f"model config key '{key}'"


def _as_int(key: str, value: Any, minimum: int) -> int:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and math.isfinite(value)
        and float(value).is_integer()
    )
    if not ok or int(value) < minimum:
        raise UserError(f"{_where(key)} = {value!r}: allowed values are integers >= {minimum}")
    return int(value)


def _as_float(key: str, value: Any, low: float, high: float | None, what: str) -> float:
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if ok:
        value = float(value)
        ok = value >= low and (high is None or value < high)
    if not ok:
        raise UserError(f"{_where(key)} = {value!r}: allowed values are {what}")
    return float(value)


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if type(value).__name__ == "bool_":  # numpy bool
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise UserError(f"{_where(key)} = {value!r}: allowed values are true or false")


def resolve_model_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The model keys of ``config`` (defaults filled in), validated and normalized.

    Raises UserError for a bad value. Keys that are not model keys are ignored.
    """
    if not isinstance(config, Mapping):
        raise UserError(f"model config must be a mapping of keys to values, got {type(config).__name__}")
    merged = {k: config.get(k, default) for k, default in MODEL_DEFAULTS.items()}
    family = merged["family"]
    if family not in FAMILIES:
        raise UserError(
            f"model config key 'family' = {family!r}: allowed values are {', '.join(FAMILIES)}"
        )
    out: dict[str, Any] = {"family": family}
    for key in ("model_dim", "num_heads", "ff_dim", "head_units", "head_units2"):
        out[key] = _as_int(key, merged[key], 1)
    for key in ("n_layers_mod", "n_layers_fuse", "key_dim", "gate_units"):
        out[key] = _as_int(key, merged[key], 0)
    scope = merged["l2_scope"]
    if scope not in MODEL_CHOICES["l2_scope"]:
        raise UserError(
            f"model config key 'l2_scope' = {scope!r}: allowed values are "
            f"{', '.join(MODEL_CHOICES['l2_scope'])}"
        )
    out["l2_scope"] = scope
    out["dropout"] = _as_float("dropout", merged["dropout"], 0.0, 1.0, "numbers in [0, 1)")
    out["l2"] = _as_float("l2", merged["l2"], 0.0, None, "numbers >= 0")
    out["adaptive_fusion"] = _as_bool("adaptive_fusion", merged["adaptive_fusion"])
    return out


def _check_dims(dims: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(dims, Mapping):
        raise UserError(f"model dims must map text/audio/video to feature sizes, got {dims!r}")
    missing = [m for m in MODALITIES if m not in dims]
    if missing:
        raise UserError(
            f"model dims lack {', '.join(missing)}: need feature sizes for {', '.join(MODALITIES)}"
        )
    return {m: _as_int(f"dims.{m}", dims[m], 1) for m in MODALITIES}


def build_model(
    config: Mapping[str, Any], dims: Mapping[str, int], seq_len: int | None = None
) -> keras.Model:
    """Build the model of ``config["family"]`` for feature sizes ``dims`` (text/audio/video).

    ``seq_len`` fixes T in the input spec; ``None`` (the default) accepts any T. The returned
    model is built (``count_params()`` works) and not compiled.
    """
    resolved = resolve_model_config(config)
    feature_dims = _check_dims(dims)
    if seq_len is not None:
        seq_len = _as_int("seq_len", seq_len, 1)

    from msatune.models.networks import ImprovedMSAModel, MSAModel

    common = dict(
        text_dim=feature_dims["text"],
        audio_dim=feature_dims["audio"],
        video_dim=feature_dims["video"],
        model_dim=resolved["model_dim"],
        num_heads=resolved["num_heads"],
        ff_dim=resolved["ff_dim"],
        n_layers_mod=resolved["n_layers_mod"],
        n_layers_fuse=resolved["n_layers_fuse"],
        dropout=resolved["dropout"],
        l2=resolved["l2"],
        adaptive_fusion=resolved["adaptive_fusion"],
        key_dim=resolved["key_dim"],
        l2_scope=resolved["l2_scope"],
        seq_len=seq_len,
    )
    if resolved["family"] == "baseline":
        return MSAModel(**common)
    return ImprovedMSAModel(
        gate_units=resolved["gate_units"],
        head_units=resolved["head_units"],
        head_units2=resolved["head_units2"],
        **common,
    )
