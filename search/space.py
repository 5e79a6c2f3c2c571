"""The search space: Optuna distributions over the improved-model trial config.

The default space covers optimisation (learning rate, optimizer, weight decay, batch size, loss and
Huber delta, warm-up), capacity (model_dim, heads, ff_dim, layers), regularisation (dropout, L2)
and every augmentation strength (0 included). A TOML file (``--space FILE``, read and written by :mod:`msatune.search.space_file`) narrows or
replaces it::

    replace = false          # true: search only the keys below, the rest stay at the base config
    [learning_rate]
    low = 1e-4
    high = 3e-3
    log = true
    [batch_size]
    choices = [16, 32]
    [dropout]
    value = 0.3              # fix a key (not searched)

Conditional keys: ``weight_decay`` is sampled only with ``optimizer = "adamw"`` and
``huber_delta`` only with ``loss = "huber"``.

The model family is searchable from a file (``[family]`` with ``choices = ["baseline",
"improved"]``): trials then train msa-tf2's ``MSAModel`` or ``ImprovedMSAModel`` with the rest of
the trial's config, so a study (and its ensembles) can mix both architectures.

Not in the default space, searchable from a file: msatune's architecture variants (``key_dim``,
``l2_scope``, ``gate_units``, ``head_units``, ``head_units2``; their defaults are msa-tf2's) and
the recipe's rules (``early_stop_metric``, ``patience``, ``cosine_epochs``, ``plateau_*``,
``min_lr``), e.g. ``[l2_scope]`` with ``choices = ["theirs", "all"]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from msatune.errors import UserError
from msatune.search.trial_config import (
    PRESETS,
    TRIAL_DEFAULTS,
    validate_config,
)
from msatune.thirdparty.optuna_internals import distribution_contains, fixed_params

#: key -> the key/value that must hold for it to be sampled
CONDITIONS: dict[str, tuple[str, Any]] = {
    "weight_decay": ("optimizer", "adamw"),
    "huber_delta": ("loss", "huber"),
}

#: Keys a study fixes itself; a space may not search them.
RESERVED = ("epochs", "seed", "lr_schedule", "jit_compile", "mixed_precision")
#: Trial user attr: the enqueued values of searched keys that lie outside their distributions.
CONSTANTS_ATTR = "constants"
#: Keys whose one home is the study's own record (``max_epochs``, ``seed``), not the stored space.
STUDY_KEYS = ("epochs", "seed")


#: The longest warm-up the default space searches (when the first ASHA rung allows it).
MAX_WARMUP = 5


def default_distributions(first_rung: int | None = None) -> dict[str, BaseDistribution]:
    """The default space. Its warm-up ends before ``first_rung`` (the first epoch ASHA compares
    trials at), so no trial is compared while its learning rate is still ramping up."""
    return {
        "learning_rate": FloatDistribution(1e-4, 3e-3, log=True),
        "optimizer": CategoricalDistribution(["adam", "adamw"]),
        "weight_decay": FloatDistribution(1e-4, 1e-1, log=True),
        "batch_size": CategoricalDistribution([8, 16, 32, 64]),
        "loss": CategoricalDistribution(["mae", "huber"]),
        "huber_delta": FloatDistribution(0.25, 2.0),
        "warmup_epochs": IntDistribution(0, warmup_limit(first_rung) if first_rung else MAX_WARMUP),
        "model_dim": CategoricalDistribution([32, 64, 128]),
        "num_heads": CategoricalDistribution([1, 2, 4]),  # msa-tf2 heads are model_dim wide
        "ff_dim": CategoricalDistribution([64, 128, 256]),
        "n_layers_mod": IntDistribution(1, 3),
        "n_layers_fuse": IntDistribution(1, 2),
        "adaptive_fusion": CategoricalDistribution([True, False]),
        "dropout": FloatDistribution(0.0, 0.6),
        "l2": FloatDistribution(1e-5, 3e-2, log=True),
        "aug_noise": FloatDistribution(0.0, 0.3),
        "aug_time_mask": FloatDistribution(0.0, 0.3),
        "aug_feature_drop": FloatDistribution(0.0, 0.3),
        "aug_modality_drop": FloatDistribution(0.0, 0.3),
        "aug_time_shift": FloatDistribution(0.0, 0.2),
        "aug_mixup": FloatDistribution(0.0, 0.4),
    }


def warmup_limit(first_rung: int) -> int:
    """The longest warm-up (epochs) that ends before the first rung: at most ``first_rung - 1``."""
    return max(0, min(MAX_WARMUP, int(first_rung) - 1))


def default_base() -> dict[str, Any]:
    """What a searched trial starts from: the improved recipe, its cosine decay spread over the
    study's epoch budget (``cosine_epochs = 0``) rather than msa-tf2's fixed 50 epochs, so every
    trial anneals by the end of the budget whatever the budget is."""
    return {**PRESETS["improved"], "cosine_epochs": 0}


@dataclass
class SearchSpace:
    """Distributions to sample + the base config every trial starts from."""

    distributions: dict[str, BaseDistribution]
    base: dict[str, Any] = field(default_factory=default_base)

    def to_json(self) -> dict[str, Any]:
        """JSON form, stored in the study's user attrs (``from_json`` reads it back). The epoch
        budget and the seed are left out: the study records them once, as its own settings."""
        return {
            "distributions": {
                k: optuna.distributions.distribution_to_json(d) for k, d in self.distributions.items()
            },
            "base": {k: v for k, v in self.base.items() if k not in STUDY_KEYS},
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any], *, max_epochs: int, seed: int) -> SearchSpace:
        return cls(
            {k: optuna.distributions.json_to_distribution(v) for k, v in payload["distributions"].items()},
            dict(payload["base"]),
        ).for_study(max_epochs, seed)

    def validate(self, where: str) -> SearchSpace:
        """Self, or a UserError (naming ``where`` and the key) for a bound, choice or fixed value
        outside its key's legal range, or a non-finite bound: what a trial would fail on."""
        for key, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                for choice in dist.choices:
                    _check_legal(key, choice, f"{where}, key {key!r}")
                continue
            for name in ("low", "high"):
                bound = getattr(dist, name)
                if not math.isfinite(bound):
                    raise UserError(f"{where}, key {key!r}: {name} must be a finite number, got {bound}")
                _check_legal(key, bound, f"{where}, key {key!r}")
        fixed = {k: v for k, v in self.base.items() if not k.startswith("_") and k in TRIAL_DEFAULTS}
        try:
            validate_config(fixed)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        return self

    def for_study(self, max_epochs: int | None, seed: int | None = None,
                  first_rung: int | None = None) -> SearchSpace:
        """Set the study-level keys of every trial: the epoch budget and the seed trials offset
        (trial *i* trains with seed + i); ``None`` leaves a key as it is. With ``first_rung``
        (ASHA's first rung), the base warm-up is cut to end before it. Returns self."""
        if max_epochs is not None:
            self.base["epochs"] = int(max_epochs)
        if seed is not None:
            self.base["seed"] = int(seed)
        if first_rung is not None:
            self.base["warmup_epochs"] = min(int(self.base.get("warmup_epochs", 0)), warmup_limit(first_rung))
        return self

    def sample(self, trial: Any) -> dict[str, Any]:
        """Define-by-run: sample ``trial`` (an Optuna trial or Ray's captor) → its full config.

        Enqueued trials (the presets) carry fixed params; those outside a distribution (e.g. the
        baseline's batch size 4) or not in the space at all become constants of the config
        instead of params, so every preset trains exactly as the users' recipe.
        """
        fixed = fixed_params(trial)  # an enqueued trial's values (Optuna has no public accessor)
        config = {**self.base, **fixed}
        constants: dict[str, Any] = {}
        for name, dist in self.distributions.items():
            cond = CONDITIONS.get(name)
            if cond is not None and config.get(cond[0]) != cond[1]:
                continue
            if name in fixed and not distribution_contains(dist, fixed[name]):
                constants[name] = fixed[name]  # a preset value outside the space: a constant
                continue
            config[name] = _suggest(trial, name, dist)
        if constants and callable(getattr(trial, "set_user_attr", None)):
            # not params (outside their distributions): recorded so the dashboard and
            # `msatune export` show what the trial trained with (e.g. the baseline's batch size 4)
            trial.set_user_attr(CONSTANTS_ATTR, constants)
        config["seed"] = int(config.get("seed", 0)) + int(trial.number)
        preset = (getattr(trial, "user_attrs", None) or {}).get("preset")
        if preset:
            config["_preset"] = preset  # ``_`` keys are bookkeeping, not training config
        return config


def _suggest(trial: Any, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    raise TypeError(f"unsupported distribution {dist!r}")  # pragma: no cover


def default_space(max_epochs: int | None = None, seed: int | None = None,
                  first_rung: int | None = None) -> SearchSpace:
    """The default space for a study (``first_rung``: the first epoch ASHA compares trials at)."""
    return SearchSpace(default_distributions(first_rung)).for_study(max_epochs, seed, first_rung)


def _check_legal(key: str, value: Any, where: str) -> None:
    """A UserError at ``where`` when ``key = value`` is outside the key's legal range."""
    try:
        validate_config({key: value})
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
