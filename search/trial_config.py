"""Trial configurations: the flat dict of JSON values that one trial trains, and the users' presets.

A trial config is the union of the model keys (``models.build.MODEL_DEFAULTS``), the training keys
(``models.training.TRAIN_DEFAULTS``) and the augmentation keys (``augment.aug_config.AUG_DEFAULTS``).
It is saved beside every checkpoint, so any checkpoint rebuilds its model without the study.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from msatune.augment.aug_config import AUG_DEFAULTS, validate_aug_config
from msatune.errors import UserError
from msatune.models.build import MODEL_CHOICES, MODEL_DEFAULTS, resolve_model_config
from msatune.models.recipe import TRAIN_CHOICES, TRAIN_DEFAULTS, training_settings

TRIAL_DEFAULTS: dict[str, Any] = {**MODEL_DEFAULTS, **TRAIN_DEFAULTS, **AUG_DEFAULTS}

CHOICES: dict[str, tuple[str, ...]] = {**MODEL_CHOICES, **TRAIN_CHOICES}

_NO_AUGMENTATION = {k: 0.0 for k in AUG_DEFAULTS}

#: msa-tf2's architecture (``models/msamodel.py``, ``models/improved_msamodel.py``) at the sizes
#: their ``train.py`` and ``improved_train.py`` build.
_THEIR_ARCHITECTURE = {
    "model_dim": 64,
    "num_heads": 4,
    "ff_dim": 256,
    "n_layers_mod": 2,
    "n_layers_fuse": 1,
    "adaptive_fusion": True,
    "key_dim": 0,
    "l2_scope": "theirs",
    "gate_units": 64,
    "head_units": 128,
    "head_units2": 64,
}

#: The users' two hand-made recipes (msa-tf2), as complete trial configs: ``train.py`` and
#: ``improved_train.py``, every number as their scripts (and the Keras defaults they keep) set it.
PRESETS: dict[str, dict[str, Any]] = {
    "baseline": {
        **TRIAL_DEFAULTS,
        **_THEIR_ARCHITECTURE,
        "family": "baseline",
        "dropout": 0.1,  # TransformerEncoder's default; MSAModel takes no dropout
        "l2": 0.0,
        "optimizer": "adam",  # Adam(1e-3, beta_1 0.9, beta_2 0.999)
        "learning_rate": 1e-3,
        "weight_decay": 0.0,
        "clipnorm": 0.0,
        "loss": "mae",
        "lr_schedule": "plateau",  # ReduceLROnPlateau(val_mae, 0.5, patience 8, min_lr 1e-6)
        "plateau_metric": "val_mae",
        "plateau_factor": 0.5,
        "plateau_patience": 8,
        "min_lr": 1e-6,
        "warmup_epochs": 0,
        "batch_size": 4,
        "epochs": 100,
        "early_stop_metric": "val_mae",  # EarlyStopping(val_mae, patience 15, restore best)
        "patience": 15,
        **_NO_AUGMENTATION,
    },
    "improved": {
        **TRIAL_DEFAULTS,
        **_THEIR_ARCHITECTURE,
        "family": "improved",
        "dropout": 0.4,  # improved_train.py's dropout_rate (the class default is 0.3)
        "l2": 0.01,
        "optimizer": "adamw",  # AdamW(5e-4, weight_decay 0.01, clipnorm 1.0)
        "learning_rate": 5e-4,
        "weight_decay": 0.01,
        "clipnorm": 1.0,
        "loss": "huber",
        "huber_delta": 1.0,
        "lr_schedule": "cosine",  # LearningRateScheduler(cosine_decay_with_warmup)
        "warmup_epochs": 5,
        "cosine_epochs": 50,
        # ReduceLROnPlateau(val_loss, 0.5, patience 5, min_lr 1e-6) is registered too; the
        # per-epoch scheduler overwrites what it sets (see models.training), so it changes nothing.
        "plateau_metric": "val_loss",
        "plateau_factor": 0.5,
        "plateau_patience": 5,
        "min_lr": 1e-6,
        "batch_size": 16,
        "epochs": 50,
        "early_stop_metric": "val_loss",  # EarlyStopping(val_loss, patience 8, restore best)
        "patience": 8,
        **_NO_AUGMENTATION,
    },
}


#: msa-tf2's later recipes: ``train_seqlevel.py`` (``MSASeqLevelModel``, the users' final model,
#: at ``weights/seqlevel_config_20251019_010827.json``'s sizes) and ``balanced_train.py``
#: (``BalancedMSAModel``: the baseline architecture, with dropout and L2 on the three projections;
#: its one extra layer, a Dropout(0.2) before the output Dense, has no weights and no key here, so
#: the ``balanced`` preset trains without it: same parameters, same inference, slightly less noise).
PRESETS["seqlevel"] = {
    **TRIAL_DEFAULTS,
    **_THEIR_ARCHITECTURE,
    "family": "seqlevel",
    "model_dim": 128,
    "num_heads": 4,
    "ff_dim": 256,
    "n_layers_mod": 2,
    "n_layers_fuse": 1,
    "bidirectional_fusion": False,
    "pooling_method": "mean",
    "dropout": 0.1,
    "l2": 0.0,
    "optimizer": "adam",  # Adam(1e-4, beta_1 0.9, beta_2 0.999), no clipping
    "learning_rate": 1e-4,
    "weight_decay": 0.0,
    "clipnorm": 0.0,
    "loss": "mae",
    "lr_schedule": "plateau",  # ReduceLROnPlateau(val_mae, 0.5, patience 15 // 2, min_lr 1e-6)
    "plateau_metric": "val_mae",
    "plateau_factor": 0.5,
    "plateau_patience": 7,
    "min_lr": 1e-6,
    "warmup_epochs": 0,
    "batch_size": 32,
    "epochs": 100,
    "early_stop_metric": "val_mae",  # EarlyStopping(val_mae, patience 15, restore best)
    "patience": 15,
    **_NO_AUGMENTATION,
}
PRESETS["balanced"] = {
    **PRESETS["baseline"],
    "dropout": 0.2,
    "l2": 0.001,
    "optimizer": "adam",  # Adam(8e-4, clipnorm 0.5)
    "learning_rate": 8e-4,
    "clipnorm": 0.5,
    "loss": "mae",
    "lr_schedule": "plateau",  # ReduceLROnPlateau(val_mae, 0.7, patience 6, min_lr 1e-6)
    "plateau_metric": "val_mae",
    "plateau_factor": 0.7,
    "plateau_patience": 6,
    "min_lr": 1e-6,
    "batch_size": 8,
    "epochs": 100,
    "early_stop_metric": "val_mae",  # EarlyStopping(val_mae, patience 12, restore best)
    "patience": 12,
}

#: Every preset, in the order a study that starts with it runs it.
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)

#: What ``launch --family`` searches: the model families searched, and the presets the study
#: starts with (those of the searched families; the default keeps the users' first two recipes,
#: baseline and improved, as every earlier study had them).
SEARCH_FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "improved": (("improved",), ("baseline", "improved")),
    "seqlevel": (("seqlevel",), ("seqlevel",)),
    "all": (("improved", "seqlevel"), ("baseline", "improved", "balanced", "seqlevel")),
}


def preset_config(name: str) -> dict[str, Any]:
    """A copy of a preset's full config; an unknown name is a user error listing the presets."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def coerce_value(key: str, raw: Any) -> Any:
    """Turn a ``--set key=value`` string (or a TOML value) into the type the key takes."""
    if key not in TRIAL_DEFAULTS:
        raise UserError(_unknown_key_message(key))
    default = TRIAL_DEFAULTS[key]
    if key in CHOICES:
        value = str(raw)
        if value not in CHOICES[key]:
            raise UserError(f"{key}={value!r} is not allowed; choose one of {', '.join(CHOICES[key])}")
        return value
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{key}={raw!r} must be true or false")
    try:
        number = float(raw)
    except (TypeError, ValueError):
        kind = "an integer" if isinstance(default, int) else "a number"
        raise UserError(f"{key}={raw!r} must be {kind}") from None
    if isinstance(default, int):
        if not number.is_integer():
            raise UserError(f"{key}={raw!r} must be an integer")
        return int(number)
    return number


def _unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, TRIAL_DEFAULTS, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"unknown config key {key!r}; {hint}allowed keys: {', '.join(sorted(TRIAL_DEFAULTS))}"


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``["dropout=0.3", "loss=mae"]`` → ``{"dropout": 0.3, "loss": "mae"}`` (typed, validated keys)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set expects key=value, got {pair!r} (e.g. --set dropout=0.3)")
        out[key] = coerce_value(key, raw.strip())
    return out


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A complete, checked trial config: defaults filled, unknown keys and bad values refused."""
    unknown = [k for k in config if k not in TRIAL_DEFAULTS]
    if unknown:
        raise UserError(_unknown_key_message(unknown[0]))
    full = {**TRIAL_DEFAULTS, **config}
    for key, choices in CHOICES.items():
        if full[key] not in choices:
            raise UserError(f"{key}={full[key]!r} is not allowed; choose one of {', '.join(choices)}")
    full.update(resolve_model_config(full))
    full.update(training_settings(full))
    full.update(validate_aug_config(full))
    return full


def resolve_config(
    preset: str = "improved", overrides: Iterable[str] = (), epochs: int | None = None
) -> dict[str, Any]:
    """Preset + ``--set`` overrides (+ ``--epochs``) → a validated trial config."""
    config = preset_config(preset)
    config.update(parse_overrides(overrides))
    if epochs is not None:
        config["epochs"] = epochs
    return validate_config(config)
