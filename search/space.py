"""The search space: Optuna distributions over the improved-model trial config.

The default space covers optimisation (learning rate, optimizer, weight decay, batch size, loss and
Huber delta, warm-up), capacity (model_dim, heads, ff_dim, layers), regularisation (dropout, L2)
and every augmentation strength (0 included). Three values the presets use lie outside it and
are constants of those trials (:data:`CONSTANTS_ATTR`), not params: the baseline's l2 0 (no log
scale holds 0), the improved recipe's 5 warm-up epochs (a searched warm-up ends before the first
rung) and the baseline's batch size 4. Batch size 4 was measured inside the space (issue 22,
``benchmarks/presets_in_search.py``): a default mosi study took 1.6x the wall time (6 of 22
searched trials at batch 4, a quarter of all trial time, the training-MAE rung promoting four of
them), none of them the best; at MOSEI's 16k samples or on a GPU each such epoch costs more
still. The price of leaving it out: TPE's grouped model samples a key a preset trial lacks as a
param (batch size, l2, warm-up) apart from the others. A TOML file (``--space FILE``, read and written by
:mod:`msatune.search.space_file`) narrows or replaces it::

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
``huber_delta`` only with ``loss = "huber"``; a model key only for the families that read it
(``models.build.FAMILY_MODEL_KEYS``: ``bidirectional_fusion`` and ``pooling_method`` only with
``family = "seqlevel"``; ``l2`` and ``adaptive_fusion`` not with it).

The families a study searches (``launch --family``, :data:`~msatune.search.trial_config.SEARCH_FAMILIES`):
``improved`` (the default: msa-tf2's ``ImprovedMSAModel``), ``seqlevel`` (their sequence-level
cross-attention ``MSASeqLevelModel``) or ``all`` (both, a ``family`` choice the sampler picks per
trial: recommendation 1 of the users' document, ensembles of different architectures). Every
family trains with the same searched recipe frame (cosine over the budget, warm-up before the
first rung), so families differ by architecture, not by schedule. The family is searchable from a
file too (``[family]`` with ``choices = ["baseline", "improved", "seqlevel"]``).

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
from msatune.models.build import FAMILIES, FAMILY_MODEL_KEYS, MODEL_DEFAULTS
from msatune.search.trial_config import (
    PRESETS,
    SEARCH_FAMILIES,
    TRIAL_DEFAULTS,
    validate_config,
)
from msatune.thirdparty.optuna_internals import distribution_contains, fixed_params

#: key -> the key and the values it must have for the key to be sampled
CONDITIONS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "weight_decay": ("optimizer", ("adamw",)),
    "huber_delta": ("loss", ("huber",)),
}
for _key in MODEL_DEFAULTS:
    _readers = tuple(f for f in FAMILIES if _key in FAMILY_MODEL_KEYS[f])
    if _key != "family" and len(_readers) < len(FAMILIES):
        CONDITIONS[_key] = ("family", _readers)  # a model key some families do not read
del _key, _readers

#: The key a space searches families with (sampled before every key conditioned on it).
FAMILY_KEY = "family"

#: Keys a study fixes itself; a space may not search them.
RESERVED = ("epochs", "seed", "lr_schedule", "jit_compile", "mixed_precision")
#: Trial user attr: the enqueued values of searched keys that lie outside their distributions.
CONSTANTS_ATTR = "constants"
#: Trial user attr: the model family the trial trains.
FAMILY_ATTR = "family"
#: Keys whose one home is the study's own record (``max_epochs``, ``seed``), not the stored space.
STUDY_KEYS = ("epochs", "seed")


#: The longest warm-up the default space searches (when the first ASHA rung allows it).
MAX_WARMUP = 5


def check_search_family(family: str) -> tuple[str, ...]:
    """The model families ``launch --family`` searches; an unknown name is a one-line UserError."""
    if family not in SEARCH_FAMILIES:
        raise UserError(f"--family {family!r} is not a family msatune searches; choose one of "
                        f"{', '.join(SEARCH_FAMILIES)}")
    return SEARCH_FAMILIES[family][0]


def default_distributions(first_rung: int | None = None, family: str = "improved") -> dict[str, BaseDistribution]:
    """The default space of ``family`` (a :data:`SEARCH_FAMILIES` name). Its warm-up ends before
    ``first_rung`` (the first epoch ASHA compares trials at), so no trial is compared while its
    learning rate is still ramping up."""
    families = check_search_family(family)
    out: dict[str, BaseDistribution] = {}
    if len(families) > 1:
        out[FAMILY_KEY] = CategoricalDistribution(list(families))
    for key, dist in _common_distributions(first_rung).items():
        cond = CONDITIONS.get(key)
        if cond is None or cond[0] != FAMILY_KEY or set(cond[1]) & set(families):
            out[key] = dist  # not a model key that none of the searched families reads
    if "seqlevel" in families:
        out["bidirectional_fusion"] = CategoricalDistribution([False, True])
        out["pooling_method"] = CategoricalDistribution(["mean", "attention"])
    return out


def _common_distributions(first_rung: int | None) -> dict[str, BaseDistribution]:
    return {
        "learning_rate": FloatDistribution(1e-4, 3e-3, log=True),
        "optimizer": CategoricalDistribution(["adam", "adamw"]),
        "weight_decay": FloatDistribution(1e-4, 1e-1, log=True),
        "batch_size": CategoricalDistribution([8, 16, 32, 64]),  # not 4: see the module docstring
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


def default_base(family: str = "improved") -> dict[str, Any]:
    """What a searched trial starts from: the improved recipe, its cosine decay spread over the
    study's epoch budget (``cosine_epochs = 0``) rather than msa-tf2's fixed 50 epochs, so every
    trial anneals by the end of the budget whatever the budget is. For ``family = "seqlevel"`` the
    same recipe frame with the seqlevel preset's architecture (``all``: the improved one; the
    ``family`` choice then picks per trial)."""
    base = {**PRESETS["improved"], "cosine_epochs": 0}
    if check_search_family(family) == ("seqlevel",):
        seq = PRESETS["seqlevel"]
        base.update({k: seq[k] for k in FAMILY_MODEL_KEYS["seqlevel"]})
    return base


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
        # the family first: which model keys are sampled depends on it
        order = sorted(self.distributions, key=lambda k: k != FAMILY_KEY)
        for name in order:
            dist = self.distributions[name]
            cond = CONDITIONS.get(name)
            if cond is not None and config.get(cond[0]) not in cond[1]:
                continue
            if name in fixed and not distribution_contains(dist, fixed[name]):
                constants[name] = fixed[name]  # a preset value outside the space: a constant
                continue
            config[name] = _suggest(trial, name, dist)
        if constants and callable(getattr(trial, "set_user_attr", None)):
            # not params (outside their distributions): recorded so the dashboard and
            # `msatune export` show what the trial trained with (e.g. the baseline's batch size 4)
            trial.set_user_attr(CONSTANTS_ATTR, constants)
        if callable(getattr(trial, "set_user_attr", None)):
            trial.set_user_attr(FAMILY_ATTR, config.get(FAMILY_KEY))  # `show` and reports list it
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
                  first_rung: int | None = None, family: str = "improved") -> SearchSpace:
    """The default space for a study of ``family`` (a :data:`SEARCH_FAMILIES` name;
    ``first_rung``: the first epoch ASHA compares trials at)."""
    return SearchSpace(default_distributions(first_rung, family), default_base(family)).for_study(
        max_epochs, seed, first_rung)


def space_families(space: SearchSpace) -> tuple[str, ...]:
    """The families a space's trials can train: its ``family`` choices, or the base's family."""
    dist = space.distributions.get(FAMILY_KEY)
    if isinstance(dist, CategoricalDistribution):
        return tuple(str(c) for c in dist.choices)
    return (str(space.base.get(FAMILY_KEY, MODEL_DEFAULTS[FAMILY_KEY])),)


def check_family_keys(space: SearchSpace, keys: Any, where: str) -> None:
    """A UserError at ``where`` when one of ``keys`` is a model key none of the space's families
    reads (e.g. ``pooling_method`` in a space that trains only ``improved`` models)."""
    families = space_families(space)
    for key in keys:
        cond = CONDITIONS.get(key)
        if cond is None or cond[0] != FAMILY_KEY or set(families) & set(cond[1]):
            continue
        raise UserError(
            f"{where}, key {key!r}: only the {', '.join(cond[1])} family reads it, and this space "
            f"trains {', '.join(families)}; remove the key, or search that family "
            f"(launch --family, or [family] choices in the file)")


def _check_legal(key: str, value: Any, where: str) -> None:
    """A UserError at ``where`` when ``key = value`` is outside the key's legal range."""
    try:
        validate_config({key: value})
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
