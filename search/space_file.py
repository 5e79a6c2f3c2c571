"""The ``--space`` file: a TOML file that narrows or replaces the default search space, read and written.

:func:`load_space` reads one (every mistake a UserError naming the file and the key);
:func:`example_space_toml` writes the default space in the same format (it reads back equal).
One table per trial config key: ``low``/``high`` (with ``log`` or ``step``) for a range,
``choices`` for a choice, ``value`` for a key fixed, not searched; ``replace = true`` searches
only the keys in the file (``msatune space --help`` teaches it with an example).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from msatune.errors import UserError
from msatune.search.space import (
    CONDITIONS,
    RESERVED,
    SearchSpace,
    check_family_keys,
    default_base,
    default_distributions,
    warmup_limit,
)
from msatune.search.trial_config import CHOICES, TRIAL_DEFAULTS, coerce_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def load_space(path: str | Path, max_epochs: int | None = None, seed: int | None = None,
               first_rung: int | None = None, family: str = "improved") -> SearchSpace:
    """Read a TOML space file; every mistake is a UserError naming the file and the key.

    ``first_rung``: ASHA's first rung; a warm-up the file sets must end before it. ``family``
    (``launch --family``) is the default space the file narrows; a ``[family]`` table in the file
    overrides it. A model key that none of the space's families reads is refused.
    """
    path = Path(path)
    try:
        payload = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"space file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"space file {path} is a directory, expected a TOML file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"space file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 "
                        "TOML (see msatune space --example)") from None
    except OSError as exc:
        raise UserError(f"cannot read space file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"space file {path} is not valid TOML: {exc}") from None
    replace = payload.pop("replace", False)
    if not isinstance(replace, bool):
        raise UserError(f"space file {path}: 'replace' must be true or false")
    family = _file_family(payload.get("family"), family)
    space = SearchSpace({} if replace else default_distributions(first_rung, family), default_base(family))
    for key, spec in payload.items():
        where = f"space file {path}, key {key!r}"
        if key not in TRIAL_DEFAULTS:
            coerce_value(key, None)  # raises the unknown-key message with suggestions
        if key in RESERVED:
            raise UserError(f"{where}: {key} is set by the study, not searched (use launch options)")
        if not isinstance(spec, dict):
            raise UserError(f"{where}: expected a table like [{key}] with low/high, choices or value")
        space.distributions.pop(key, None)
        if "value" in spec:
            _only(spec, {"value"}, where)
            space.base[key] = coerce_value(key, spec["value"])
        elif "choices" in spec:
            _only(spec, {"choices"}, where)
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise UserError(f"{where}: choices must be a non-empty list")
            space.distributions[key] = CategoricalDistribution([_typed_choice(key, c, where) for c in choices])
        elif "low" in spec or "high" in spec:
            _only(spec, {"low", "high", "log", "step"}, where)
            space.distributions[key] = _range(key, spec, where)
        else:
            raise UserError(f"{where}: give low/high, choices or value")
    if first_rung is not None and "warmup_epochs" in payload:
        _check_warmup(space, first_rung, f"space file {path}, key 'warmup_epochs'")
    check_family_keys(space, list(payload), f"space file {path}")
    space.for_study(max_epochs, seed, first_rung)
    if not space.distributions:
        raise UserError(f"space file {path} leaves nothing to search (every key is fixed)")
    return space.validate(f"space file {path}")


def _file_family(spec: Any, family: str) -> str:
    """The default space a file narrows: that of the families its ``[family]`` table names (a
    seqlevel-only file starts from the seqlevel space), else ``family`` (``launch --family``)."""
    if not isinstance(spec, dict):
        return family
    names = spec.get("choices") if "choices" in spec else [spec.get("value")]
    if not isinstance(names, list) or not names:
        return family  # a malformed table: the key's own check names the mistake
    if "seqlevel" not in names:
        return "improved"
    return "seqlevel" if set(names) == {"seqlevel"} else "all"


def _check_warmup(space: SearchSpace, first_rung: int, where: str) -> None:
    dist = space.distributions.get("warmup_epochs")
    if isinstance(dist, IntDistribution):
        longest = dist.high
    elif isinstance(dist, CategoricalDistribution):
        longest = max(int(c) for c in dist.choices)
    else:
        longest = int(space.base.get("warmup_epochs", 0))
    limit = warmup_limit(first_rung)
    if longest > limit:
        raise UserError(
            f"{where}: a warm-up of up to {longest} epochs does not end before ASHA's first rung "
            f"(epoch {first_rung}), where trials would be compared while their learning rate still "
            f"ramps up; use warm-ups of at most {limit} epochs or raise --grace-period above {longest}"
        )


def _only(spec: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(spec) - allowed)
    if extra:
        raise UserError(f"{where}: unexpected field(s) {', '.join(extra)}; allowed here: {', '.join(sorted(allowed))}")


def _typed_choice(key: str, value: Any, where: str) -> Any:
    try:
        return coerce_value(key, value)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def _number(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where}: {name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise UserError(f"{where}: {name} must be a finite number, got {value!r}")
    return value


def _range(key: str, spec: Mapping[str, Any], where: str) -> BaseDistribution:
    if key in CHOICES or isinstance(TRIAL_DEFAULTS[key], bool):
        raise UserError(f"{where}: {key} is categorical; use choices = [...]")
    if "low" not in spec or "high" not in spec:
        raise UserError(f"{where}: a range needs both low and high")
    low, high = _number(spec["low"], "low", where), _number(spec["high"], "high", where)
    if low > high:
        raise UserError(f"{where}: low ({low}) > high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{where}: log must be true or false")
    if log and low <= 0:
        raise UserError(f"{where}: a log range needs low > 0 (got {low})")
    step = spec.get("step")
    if step is not None:
        step = _number(step, "step", where)
        if step <= 0:
            raise UserError(f"{where}: step must be > 0 (got {step})")
        if log:
            raise UserError(f"{where}: step and log cannot be combined")
    if isinstance(TRIAL_DEFAULTS[key], int):
        if float(low) != int(low) or float(high) != int(high):
            raise UserError(f"{where}: {key} is an integer; low and high must be integers")
        if step is not None and float(step) != int(step):
            raise UserError(f"{where}: {key} is an integer; step must be a whole number (got {step})")
        return IntDistribution(int(low), int(high), log=log, step=int(step or 1))
    return FloatDistribution(float(low), float(high), log=log, step=float(step) if step else None)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def example_space_toml(family: str = "improved") -> str:
    """The default search space of ``family`` as a ``--space`` file: every searched key with its
    range or choices, in the format :func:`load_space` reads (it reads back equal)."""
    from msatune.search.search_settings import DEFAULT_GRACE_PERIOD, SearchSettings

    first_rung = SearchSettings().first_rung
    lines = [
        "# msatune search space (msatune launch NAME --space FILE). Edit, remove or add tables:",
        "#   [key] low = .. / high = .. (log = true: log scale; step = ..: a grid)  a range",
        "#   [key] choices = [..]                                                  a choice",
        "#   [key] value = ..                                                      fixed, not searched",
        "# Keys not listed keep the default space's distribution, or with replace = true the",
        "# 'improved' preset's value. Any trial config key works (msatune train --set lists them).",
        f"# Warm-ups must end before ASHA's first rung: at most {DEFAULT_GRACE_PERIOD - 1} epochs with the",
        f"# default --grace-period {DEFAULT_GRACE_PERIOD} (longer with a larger --grace-period).",
        "replace = false",
    ]
    if family == "seqlevel":
        lines += ["", "[family]", 'value = "seqlevel"']
    for key, dist in default_distributions(first_rung, family).items():
        lines.append("")
        cond = CONDITIONS.get(key)
        if cond is not None:
            values = " or ".join(_toml_value(v) for v in cond[1])
            lines.append(f"# sampled only when {cond[0]} = {values}")
        lines.append(f"[{key}]")
        if isinstance(dist, CategoricalDistribution):
            lines.append(f"choices = {_toml_value(list(dist.choices))}")
            continue
        if isinstance(dist, (FloatDistribution, IntDistribution)):
            lines.append(f"low = {_toml_value(dist.low)}")
            lines.append(f"high = {_toml_value(dist.high)}")
            if dist.log:
                lines.append("log = true")
            if dist.step is not None and not (isinstance(dist, IntDistribution) and dist.step == 1):
                lines.append(f"step = {_toml_value(dist.step)}")
    return "\n".join(lines) + "\n"
