"""The augmentation keys of a trial config: their defaults, bounds and checks.

Pure Python, no TensorFlow: what reads or checks a config (a space file, ``launch``'s checks
before Ray) imports this module, and only what augments batches imports
:mod:`msatune.augment.transforms`, which holds what each strength means.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

from msatune.errors import UserError

__all__ = ["AUG_DEFAULTS", "validate_aug_config"]

AUG_DEFAULTS: dict[str, float] = {
    "aug_noise": 0.0,
    "aug_time_mask": 0.0,
    "aug_feature_drop": 0.0,
    "aug_modality_drop": 0.0,
    "aug_time_shift": 0.0,
    "aug_mixup": 0.0,
}

# Upper bound of each strength (None: unbounded) and what the value means, for error messages.
_BOUNDS: dict[str, tuple[float | None, str]] = {
    "aug_noise": (None, "a noise standard deviation"),
    "aug_time_mask": (1.0, "a fraction of the sequence length"),
    "aug_feature_drop": (1.0, "a probability"),
    "aug_modality_drop": (1.0, "a probability"),
    "aug_time_shift": (1.0, "a fraction of the sequence length"),
    "aug_mixup": (None, "a Beta(alpha, alpha) alpha"),
}

def validate_aug_config(config: Mapping | None) -> dict[str, float]:
    """Pick the ``aug_*`` keys of a (larger, flat) config, fill defaults and check the values.

    Keys that do not start with ``aug_`` are ignored. An ``aug_*`` key that is not one of
    :data:`AUG_DEFAULTS` is rejected (it is almost surely a typo that would silently turn an
    augmentation off). Returns a new dict with exactly the keys of :data:`AUG_DEFAULTS`, as floats.

    Raises:
        UserError: naming the key, when a value is not a finite real number, is negative, or is a
            probability or fraction above 1.
    """
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise UserError(
            f"augmentation config must be a mapping of aug_* keys to numbers, got {type(config).__name__}"
        )
    unknown = sorted(str(k) for k in config if str(k).startswith("aug_") and k not in AUG_DEFAULTS)
    if unknown:
        raise UserError(
            f"unknown augmentation key {unknown[0]!r}; known keys: {', '.join(AUG_DEFAULTS)}"
        )
    out: dict[str, float] = {}
    for key, default in AUG_DEFAULTS.items():
        value = config.get(key, default)
        if value is None:
            value = default
        upper, meaning = _BOUNDS[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise UserError(f"augmentation {key} must be a number ({meaning}), got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise UserError(f"augmentation {key} must be finite ({meaning}), got {value!r}")
        if value < 0:
            raise UserError(f"augmentation {key} must be >= 0 ({meaning}), got {value!r}")
        if upper is not None and value > upper:
            raise UserError(f"augmentation {key} must be <= {upper:g} ({meaning}), got {value!r}")
        out[key] = value
    return out
