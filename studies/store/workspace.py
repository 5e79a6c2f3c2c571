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

    def ray_dir(self, study: str) -> Path:
        """The study's Ray Tune runs (``run0``, ``run1``, ...: trial dirs and checkpoints), its
        Ray pid file and its trials' temporary files."""
        return self.study_dir(study) / "ray"

    def refit_dir(self, study: str) -> Path:
        """The study's refit: its Ray Tune runs (fold checkpoints), OOF files and pid file."""
        return self.study_dir(study) / "refit"

    def ensemble_dir(self, study: str, name: str) -> Path:
        """Where ``msatune ensemble`` exports the study's ensemble ``name`` (its method, or
        ``refit-<method>``)."""
        return self.study_dir(study) / "ensembles" / name

    def report_dir(self, study: str) -> Path:
        return self.study_dir(study) / "report"

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


def next_run_index(directory: Path, recorded: int) -> int:
    """The index of the next Ray Tune run under ``directory`` (``run0``, ``run1``, ...), given how
    many runs the store records: a killed driver never recorded its run, so its directory counts
    too, and every run gets a fresh experiment directory."""
    previous = [p for p in Path(directory).glob("run*") if p.is_dir()]
    return max(int(recorded), len(previous))


def default_dataset(ws: Workspace) -> Path:
    """The embedded synthetic MOSI-like set, generated into the workspace on first use."""
    path = ws.synthetic_data
    if not (path / "y_train.h5").exists():
        from msatune.augment.synth import synthesize

        ws.ensure()
        log.info("writing the synthetic mosi dataset to %s", path)
        synthesize(path, preset="mosi", seed=SYNTHETIC_SEED, overwrite=True)
    return path
