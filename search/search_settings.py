"""How a study searches and where it runs: one settings type, one set of defaults, one validation.

The CLI fills :class:`SearchSettings` from its options (its defaults are these), ``launch``
records the study-level part on the study, ``resume`` rebuilds it from the study and takes only
the where-it-runs fields from the command line, and the runner reads one per run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

from msatune.errors import UserError

#: Epochs before ASHA may stop a trial, unless a study says otherwise (at most ``max_epochs``).
DEFAULT_GRACE_PERIOD = 3


@dataclass(frozen=True)
class SearchSettings:
    """A study's search (``trials`` .. ``seed``) and where a run of it goes (the rest)."""

    trials: int = 20  # the study's budget; for one run of the runner, that run's trial count
    # Epoch budget of one trial (ASHA's max_t): 27 = 3 x 3^2 puts ASHA's top rung on the budget
    # itself (rungs 3, 9, 27); with 30 a trial could be cut at epoch 27 of 30 and end PRUNED.
    max_epochs: int = 27
    grace_period: int | None = None  # None: DEFAULT_GRACE_PERIOD, at most max_epochs
    reduction_factor: int = 3
    seed: int = 0  # the study's seed; the runner gets a per-run sampler seed (see for_run)
    n_startup_trials: int | None = None  # TPE's random start-up; None: default_startup_trials(trials)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    concurrency: int | None = None  # None: as many as the cluster's resources allow
    address: str | None = None  # an existing Ray cluster; None: a local instance of our own
    max_failures: int = 1
    verbose: bool = False
    # This run's wall-clock budget in seconds: no trial starts after it, running ones finish
    # (Optuna's ``timeout``); the rest of the trial budget waits for ``resume``. None: no limit.
    time_budget_s: float | None = None
    # The ``time.monotonic()`` the budget counts from: the command's start (the CLI sets it, so
    # loading data and starting Ray count too); None: the search's own start.
    budget_from: float | None = None

    def deadline(self) -> float | None:
        """The ``time.monotonic()`` after which no trial starts (None: no time budget); without
        :attr:`budget_from` the budget counts from this call."""
        return deadline_of(self.time_budget_s, self.budget_from if self.budget_from is not None
                           else time.monotonic())

    @property
    def grace(self) -> int:
        """The grace period in effect."""
        if self.grace_period is not None:
            return int(self.grace_period)
        return max(1, min(DEFAULT_GRACE_PERIOD, int(self.max_epochs)))

    @property
    def first_rung(self) -> int | None:
        """The first epoch ASHA compares trials at; None when ASHA never stops a trial."""
        return self.grace if self.grace < int(self.max_epochs) else None

    @property
    def startup_trials(self) -> int:
        """TPE's random start-up trials, the presets among them (a study's own, or the default
        for its budget: :func:`default_startup_trials`)."""
        if self.n_startup_trials is not None:
            return int(self.n_startup_trials)
        return default_startup_trials(int(self.trials))

    def validate(self) -> SearchSettings:
        """Self, or a UserError naming the option (as the CLI spells it) and its allowed range."""
        def number(value: Any) -> bool:
            return (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value))

        if not number(self.trials) or self.trials <= 0:
            raise UserError(f"--trials must be > 0 (got {self.trials})")
        if not number(self.max_epochs) or self.max_epochs <= 0:
            raise UserError(f"--max-epochs must be > 0 (got {self.max_epochs})")
        if self.grace_period is not None and not 1 <= self.grace_period <= self.max_epochs:
            raise UserError(f"--grace-period must be between 1 and --max-epochs ({self.max_epochs}), "
                            f"got {self.grace_period}")
        if self.reduction_factor < 2:
            raise UserError(f"--reduction-factor must be >= 2 (got {self.reduction_factor})")
        if not number(self.cpus_per_trial) or self.cpus_per_trial <= 0:
            raise UserError(f"--cpus-per-trial must be > 0 (got {self.cpus_per_trial})")
        if not number(self.gpus_per_trial) or self.gpus_per_trial < 0:
            raise UserError(f"--gpus-per-trial must be >= 0 (got {self.gpus_per_trial})")
        if self.gpus_per_trial > 1 and not float(self.gpus_per_trial).is_integer():
            raise UserError(f"--gpus-per-trial above 1 must be a whole number (got {self.gpus_per_trial})")
        if self.concurrency is not None and self.concurrency <= 0:
            raise UserError(f"--concurrency must be > 0 (got {self.concurrency})")
        if self.n_startup_trials is not None and (not number(self.n_startup_trials) or self.n_startup_trials < 0
                                                  or not float(self.n_startup_trials).is_integer()):
            raise UserError(f"--startup-trials must be a whole number >= 0 (got {self.n_startup_trials}); "
                            f"0: TPE from the first trial")
        if self.max_failures < 0:
            raise UserError(f"--max-failures must be >= 0 (got {self.max_failures})")
        if self.time_budget_s is not None and (not number(self.time_budget_s) or self.time_budget_s <= 0):
            raise UserError(f"--time-budget must be > 0 seconds (got {self.time_budget_s})")
        return self

    def for_run(self, trials: int, run_index: int) -> SearchSettings:
        """The settings of one run of a study: its trial count and its own sampler seed (the
        same seed in every run would repeat the same parameters, optuna#3255). The random
        start-up stays the study's: a resume with fewer trials left does not shorten it."""
        return replace(self, trials=int(trials), seed=int(self.seed) + 7919 * int(run_index),
                       n_startup_trials=self.startup_trials)

    def study_record(self) -> dict[str, Any]:
        """What a study records of its search (``from_study`` reads it back)."""
        return {
            "budget": int(self.trials),
            "max_epochs": int(self.max_epochs),
            "asha": {"grace_period": self.grace, "reduction_factor": int(self.reduction_factor)},
            "seed": int(self.seed),
            "startup_trials": int(self.startup_trials),
            "resources": {"cpus_per_trial": float(self.cpus_per_trial),
                          "gpus_per_trial": float(self.gpus_per_trial)},
        }

    @classmethod
    def from_study(cls, attrs: dict[str, Any], **where: Any) -> SearchSettings:
        """A study's recorded search, run where ``where`` says (cpus/gpus per trial,
        concurrency, address, verbose, time_budget_s; ``None`` keeps the recorded value or the default)."""
        resources = attrs.get("resources", {})
        runs_on = {k: v for k, v in where.items() if v is not None}
        return cls(
            trials=int(attrs["budget"]),
            max_epochs=int(attrs["max_epochs"]),
            grace_period=int(attrs["asha"]["grace_period"]),
            reduction_factor=int(attrs["asha"]["reduction_factor"]),
            seed=int(attrs["seed"]),
            # studies made before it was recorded: the default for their budget
            n_startup_trials=None if attrs.get("startup_trials") is None else int(attrs["startup_trials"]),
            cpus_per_trial=float(runs_on.pop("cpus_per_trial", resources.get("cpus_per_trial", 1.0))),
            gpus_per_trial=float(runs_on.pop("gpus_per_trial", resources.get("gpus_per_trial", 0.0))),
            **runs_on,
        )


def default_startup_trials(trials: int) -> int:
    """TPE's random start-up trials for a study of ``trials`` trials (the presets among them):
    half the budget, at least 3 and at most 12. Measured on 24-trial searches of four data
    structures x four seeds (benchmarks/README.md, "TPE's random start-up"): after 8 random
    trials TPE stayed near the start-up's best, its best beat random search's best on test in 8
    of 16 runs and reached random's final best within half its epochs in 10; after 12, in 14
    and 14, and its best was better than after 8 in 11 of 16 (on validation and on test). The
    cap keeps a large study's start-up near Optuna's own 10."""
    return min(12, max(3, int(trials) // 2))


def deadline_of(time_budget_s: float | None, start: float) -> float | None:
    """The ``time.monotonic()`` a ``--time-budget`` of ``time_budget_s`` seconds counted from
    ``start`` ends at (None: no budget): the one clock of a command's search and refit."""
    return None if time_budget_s is None else start + float(time_budget_s)
