"""What every ``msatune`` command shares: the application context, the store option, JSON output."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from msatune.errors import UserError
from msatune.json_values import json_default, jsonable
from msatune.studies.workspace import Workspace

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
        from msatune.studies.store import open_storage

        return open_storage(self.storage_url(url), read_only=True)

    def storage(self, url: str | None, *, read_only: bool = False, create: bool = True) -> Any:
        """The study store: ``--storage URL`` or the workspace's SQLite file (the workspace is
        created for it unless ``read_only`` or ``create=False``: then a missing store is a one-line
        error and nothing is created)."""
        from msatune.studies.store import open_storage

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
    """A rich console on stdout (tables and progress are rendering, never library output)."""
    from rich.console import Console

    return Console()
