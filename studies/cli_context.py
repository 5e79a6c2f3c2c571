"""What every ``msatune`` command shares: the application context and output helpers."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from msatune.errors import UserError
from studies.workspace import Workspace

DEFAULT_WORKSPACE = "./msatune-runs"
WORKSPACE_ENV = "MSATUNE_WORKSPACE"


@dataclass
class AppContext:
    """What every command gets: the workspace and the global flags."""

    workspace: Path
    debug: bool = False
    verbose: bool = False
    extra: dict = field(default_factory=dict)

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
        """The workspace layout (created on first use)."""
        self.ensure_workspace()
        return Workspace(self.workspace)


pass_app = click.make_pass_decorator(AppContext)


def echo_json(payload: Any) -> None:
    """Print one JSON document on stdout (for ``--json``)."""
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def console():  # -> rich.console.Console
    """A rich console on stdout (tables and progress are rendering, never library output)."""
    from rich.console import Console

    return Console()
