"""Where a workspace keeps things: the study store, datasets, runs, ensembles, reports.

One directory holds everything msatune writes (DESIGN §6); this module is the only place that
knows its layout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from msatune.errors import UserError

log = logging.getLogger(__name__)

SYNTHETIC_NAME = "synthetic-mosi"
SYNTHETIC_SEED = 0


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def store_path(self) -> Path:
        return self.root / "studies.db"

    @property
    def storage_url(self) -> str:
        return f"sqlite:///{self.store_path.resolve()}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def synthetic_data(self) -> Path:
        return self.data_dir / SYNTHETIC_NAME

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    def study_dir(self, study: str) -> Path:
        return self.root / "studies" / study

    @property
    def artifact_dir(self) -> Path:
        return self.root / "artifacts"

    def ensure(self) -> Workspace:
        """Create the workspace directory (a UserError when it cannot be made)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create workspace {self.root}: {exc.strerror or exc}; "
                            "pass --workspace DIR or set MSATUNE_WORKSPACE") from None
        return self


def default_dataset(ws: Workspace) -> Path:
    """The embedded synthetic MOSI-like set, generated into the workspace on first use."""
    path = ws.synthetic_data
    if not (path / "y_train.h5").exists():
        from msatune.augment.synth import synthesize

        ws.ensure()
        log.info("writing the synthetic mosi dataset to %s", path)
        synthesize(path, preset="mosi", seed=SYNTHETIC_SEED, overwrite=True)
    return path
