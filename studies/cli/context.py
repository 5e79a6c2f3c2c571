"""What every ``msatune`` command shares: the application context, the store and resource
options, JSON output, the step and warning lines on stderr."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from msatune.errors import UserError
from msatune.json_values import json_default, jsonable
from msatune.search.search_settings import SearchSettings
from msatune.studies.store.workspace import Workspace

DEFAULT_WORKSPACE = "./msatune-runs"
WORKSPACE_ENV = "MSATUNE_WORKSPACE"


@dataclass
class AppContext:
    """What every command gets: the workspace and the global flags."""

    workspace: Path
    debug: bool = False
    verbose: bool = False

    def ensure_workspace(self) -> Path:
        """Create the workspace directory on first use and return it (absolute)."""
        try:
            self.workspace.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"cannot create workspace {self.workspace}: {exc.strerror}; "
                f"pass --workspace DIR or set {WORKSPACE_ENV}"
            ) from exc
        return self.workspace

    @property
    def ws(self) -> Workspace:
        """The workspace layout (nothing is created: whoever writes there creates what it needs)."""
        return Workspace(self.workspace)

    def storage_url(self, url: str | None) -> str:
        """``--storage URL`` or the workspace's SQLite file (nothing is opened or created)."""
        return url if url is not None else self.ws.storage_url

    def reader(self, url: str | None) -> Any:
        """The store opened read-only, for commands that only look: never created, never
        written (a missing store is a one-line error naming the path)."""
        from msatune.studies.store.connect import open_storage

        return open_storage(self.storage_url(url), read_only=True)

    def storage(self, url: str | None, *, read_only: bool = False, create: bool = True) -> Any:
        """The study store: ``--storage URL`` or the workspace's SQLite file (the workspace is
        created for it unless ``read_only`` or ``create=False``: then a missing store is a one-line
        error and nothing is created)."""
        from msatune.studies.store.connect import open_storage

        if url is None:
            if create and not read_only:
                self.ensure_workspace()
            url = self.ws.storage_url
        return open_storage(url, read_only=read_only, create=create)


pass_app = click.make_pass_decorator(AppContext)

storage_option = click.option(
    "--storage", default=None, metavar="URL",
    help="SQLAlchemy URL of the study store [default: sqlite:///WORKSPACE/studies.db].",
)


def echo_json(payload: Any) -> None:
    """Print one strict JSON document on stdout (for ``--json``): NaN and infinities are null."""
    sys.stdout.write(json.dumps(jsonable(payload), indent=2, sort_keys=False, default=json_default,
                                allow_nan=False) + "\n")


def console():  # -> rich.console.Console
    """A rich console on stdout (tables and progress are rendering, never library output).

    Written to a file or a pipe (a log, CI), lines are not wrapped (a path or a command broken
    over two lines cannot be copied back) and tables are laid out for 160 columns, not rich's 80,
    unless ``$COLUMNS`` says otherwise (at 80 a trial's parameters fold mid-value)."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    return Console(soft_wrap=True, width=None if os.environ.get("COLUMNS") else LOG_WIDTH)


#: Columns of the CLI's tables written to a file or a pipe when ``$COLUMNS`` is unset.
LOG_WIDTH = 160


#: The defaults every command's resource options show.
DEFAULTS = SearchSettings()


def resource_options(f: Any) -> Any:
    """Where trials run (``launch``, ``resume``, ``refit``): --address, --concurrency and the
    CPUs/GPUs of one trial."""
    f = click.option("--address", default=None, metavar="ADDR",
                     help="Run on an existing Ray cluster (ray start --head ...); the store stays here.")(f)
    f = click.option("--concurrency", type=int, default=None,
                     help="Trials at once [default: what the cluster's CPUs/GPUs allow].")(f)
    f = click.option("--gpus-per-trial", type=float, default=None,
                     help="GPUs per trial; fractions share a GPU (0.25 = four trials per GPU); "
                          "0 trains on CPUs and hides the GPUs from the trial. "
                          f"[default: {DEFAULTS.gpus_per_trial:g}]")(f)
    f = click.option("--cpus-per-trial", type=float, default=None,
                     help=f"CPUs per trial (also TensorFlow's thread count). [default: {DEFAULTS.cpus_per_trial:g}]")(f)
    return f


def where_it_runs(app: AppContext, cpus_per_trial: float | None, gpus_per_trial: float | None,
                  concurrency: int | None, address: str | None) -> dict[str, Any]:
    """The :func:`resource_options` as the ``where`` of a resume or a refit (``None``: as recorded)."""
    return {"cpus_per_trial": cpus_per_trial, "gpus_per_trial": gpus_per_trial,
            "concurrency": concurrency, "address": address, "verbose": app.verbose}


def step_printer(app: AppContext) -> Callable[[str], None] | None:
    """What a slow command (tens of seconds: TensorFlow loads models) does now, one line per step
    on stderr, when stderr is a terminal or with --verbose. Off a terminal the steps stay out of
    stderr, where a failure must be one line."""
    if not (app.verbose or sys.stderr.isatty()):
        return None

    def say(text: str) -> None:
        click.echo(f"msatune: {text} ...", err=True)

    return say


def print_messages(summary: dict[str, Any]) -> None:
    """A result's ``warnings`` and ``notes``, one line each on stderr."""
    for w in summary.get("warnings", []):
        click.echo(f"msatune: warning: {w}", err=True)
    for n in summary.get("notes", []):
        click.echo(f"msatune: note: {n}", err=True)


class Duration(click.ParamType):
    """A wall-clock duration: seconds (``900``) or a number with units, summed (``90s``, ``30m``,
    ``1.5h``, ``1h30m``); converted to seconds (a float)."""

    name = "DURATION"
    _UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    _PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        else:
            seconds = self.parse(str(value))
            if seconds is None:
                self.fail(f"{value!r} is not a duration: give seconds (900) or a number with a unit "
                          "s, m, h or d (90s, 30m, 1.5h, 1h30m)", param, ctx)
        if not seconds > 0 or seconds == float("inf"):
            self.fail(f"{value!r} must be more than 0 seconds", param, ctx)
        return seconds

    @classmethod
    def parse(cls, text: str) -> float | None:
        """Seconds in ``text``, or None when it is not a duration."""
        text = text.strip().lower()
        try:
            return float(text)
        except ValueError:
            pass
        parts = cls._PART.findall(text)
        if not parts or cls._PART.sub("", text).strip():  # nothing but number-unit pairs
            return None
        return sum(float(n) * cls._UNITS[unit] for n, unit in parts)


def time_budget_option(f: Any) -> Any:
    """``--time-budget`` of a command that trains (``launch``, ``resume``, ``demo``, ``refit``)."""
    return click.option(
        "--time-budget", "time_budget", type=Duration(), default=None,
        help="Start no trial or refit fold after this long (seconds, or 90s, 30m, 2h, 1h30m), "
             "counted from the command's start (loading the data and starting Ray count; a run "
             "always starts one); running ones finish, so the command ends about one trial or fold "
             "later. What is left waits for `msatune resume NAME` (`msatune refit NAME` for a refit "
             "of its own), and finished trials and folds are kept. "
             "For a job with a wall limit (Slurm, a cloud VM), leave a trial's time spare. "
             "[default: none]")(f)
