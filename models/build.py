"""``build_model(config, dims)``: a flat trial config (JSON values) to a built Keras model.

The config is the whole trial config; keys this module does not own (learning_rate, batch_size,
aug_* ...) are ignored, and missing model keys take :data:`MODEL_DEFAULTS`. Bad model values raise
:class:`msatune.errors.UserError` with one line naming the key and the allowed values.

Families (:data:`FAMILIES`): ``baseline`` and ``improved`` (:mod:`msatune.models.networks`, msa-tf2's
``MSAModel`` and ``ImprovedMSAModel``) and ``seqlevel`` (:mod:`msatune.models.seqlevel`, their
``MSASeqLevelModel``). :data:`FAMILY_MODEL_KEYS` lists the model keys each family reads; a family
ignores the others (seqlevel ignores ``l2``, ``l2_scope``, ``adaptive_fusion``, ``key_dim`` and the
gate/head widths: they are validated, never errors, and change nothing). ``bidirectional_fusion``
and ``pooling_method`` (:data:`FAMILY_ONLY_KEYS`) are read by seqlevel only. seqlevel needs
``model_dim`` divisible by ``num_heads`` (its heads are ``model_dim // num_heads`` wide),
``model_dim >= 4`` (its fusion head has ``model_dim // 4`` wide layers) and a fixed ``seq_len``.
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
    "bidirectional_fusion": False,  # seqlevel: audio and video also attend to text
    "pooling_method": "mean",  # seqlevel: the fusion head's pooling over time
}

FAMILIES = ("baseline", "improved", "seqlevel")

#: String-valued model keys and their allowed values.
MODEL_CHOICES: dict[str, tuple[str, ...]] = {
    "family": FAMILIES,
    "l2_scope": ("theirs", "all"),
    "pooling_method": ("mean", "attention"),
}

_SHARED_KEYS = ("family", "model_dim", "num_heads", "ff_dim", "n_layers_mod", "n_layers_fuse", "dropout")
_BASELINE_KEYS = _SHARED_KEYS + ("l2", "adaptive_fusion", "key_dim", "l2_scope")

#: The model keys each family reads (``family`` included); the others do not change its model.
FAMILY_MODEL_KEYS: dict[str, tuple[str, ...]] = {
    "baseline": _BASELINE_KEYS,
    "improved": _BASELINE_KEYS + ("gate_units", "head_units", "head_units2"),
    "seqlevel": _SHARED_KEYS + ("bidirectional_fusion", "pooling_method"),
}

#: Model keys only the seqlevel family reads.
FAMILY_ONLY_KEYS: tuple[str, ...] = ("bidirectional_fusion", "pooling_method")


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
    for key in ("l2_scope", "pooling_method"):
        if merged[key] not in MODEL_CHOICES[key]:
            raise UserError(
                f"model config key '{key}' = {merged[key]!r}: allowed values are "
                f"{', '.join(MODEL_CHOICES[key])}"
            )
        out[key] = merged[key]
    out["dropout"] = _as_float("dropout", merged["dropout"], 0.0, 1.0, "numbers in [0, 1)")
    out["l2"] = _as_float("l2", merged["l2"], 0.0, None, "numbers >= 0")
    out["adaptive_fusion"] = _as_bool("adaptive_fusion", merged["adaptive_fusion"])
    out["bidirectional_fusion"] = _as_bool("bidirectional_fusion", merged["bidirectional_fusion"])
    if family == "seqlevel":
        dim, heads = out["model_dim"], out["num_heads"]
        if dim % heads:
            raise UserError(
                f"model config keys 'model_dim' = {dim} and 'num_heads' = {heads}: the seqlevel "
                "family needs model_dim divisible by num_heads (each head is model_dim // num_heads "
                "wide); change either"
            )
        if dim < 4:
            raise UserError(
                f"model config key 'model_dim' = {dim}: allowed values for the seqlevel family are "
                "integers >= 4 (its fusion head has model_dim // 4 wide layers)"
            )
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

    ``seq_len`` fixes T in the input spec; ``None`` (the default) accepts any T (baseline and
    improved only: seqlevel needs it). The returned model is built (``count_params()`` works)
    and not compiled.
    """
    resolved = resolve_model_config(config)
    feature_dims = _check_dims(dims)
    if seq_len is not None:
        seq_len = _as_int("seq_len", seq_len, 1)

    family = resolved["family"]
    if family == "seqlevel" and seq_len is None:
        raise UserError(
            "the seqlevel family needs a fixed sequence length (its positional embedding has one "
            "per step): pass seq_len to build_model, the T of your data"
        )
    # every key the family reads, by name: FAMILY_MODEL_KEYS is its constructor's model signature
    kwargs = {k: resolved[k] for k in FAMILY_MODEL_KEYS[family] if k != "family"}
    kwargs.update(text_dim=feature_dims["text"], audio_dim=feature_dims["audio"],
                  video_dim=feature_dims["video"], seq_len=seq_len)
    if family == "seqlevel":
        from msatune.models.seqlevel import SeqLevelMSAModel

        return SeqLevelMSAModel(**kwargs)
    from msatune.models.networks import ImprovedMSAModel, MSAModel

    return MSAModel(**kwargs) if family == "baseline" else ImprovedMSAModel(**kwargs)
