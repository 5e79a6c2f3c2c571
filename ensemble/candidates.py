"""Which trials may join an ensemble: the candidate pool of a study.

A candidate is a COMPLETE trial (never PRUNED, FAIL or RUNNING) with a readable checkpoint whose
validation MAE beats the constant predictor (the median of the validation labels). The pool keeps
the ``max_candidates`` best by validation MAE (ties: lower trial number first), all on the same
data and with the same input signature (feature dims and sequence length).

A trial whose checkpoint is missing or damaged (no ``checkpoint`` attr, an unreadable
``checkpoint.json`` / ``config.json``, a missing or non-HDF5 ``model.weights.h5``, a bad
``predictions.npz``) is skipped with a warning that names it; only when no trial is usable is that
an error. Everything here reads the recorded validation/test predictions with numpy: no model is
built and TensorFlow is not imported, except for a checkpoint that lacks some predictions (a
search predicts test once, at a trial's last epoch: a trial the scheduler stopped has valid
only) when the study's dataset is given: those are predicted from its weights, once, and added
to the checkpoint.

Trials come in as :class:`TrialRef` records (number, state, value, checkpoint directory), which
``msatune.studies`` builds from the store: this package never reads Optuna trials.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msatune.augment.dataset import MSADataset
from msatune.augment.yardsticks import constant_mae
from msatune.errors import UserError, first_line
from msatune.models.checkpoint import (
    PREDICTION_SPLITS,
    WEIGHTS_FILE,
    fill_predictions,
    read_checkpoint_meta,
    read_predictions,
)

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = PREDICTION_SPLITS
DEFAULT_MAX_CANDIDATES = 50


@dataclass(frozen=True)
class TrialRef:
    """A study's trial as the ensemble sees it: plain values, no store behind it."""

    number: int
    state: str  # "COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"
    value: float | None  # the trial's objective (best validation MAE); None when it has none
    checkpoint: Path | None  # its best checkpoint directory, when one was recorded


@dataclass(frozen=True, eq=False)
class Candidate:
    """One usable trial: its checkpoint and its recorded predictions."""

    trial: int
    value: float  # the trial's recorded objective (best validation MAE)
    checkpoint: Path
    config: dict[str, Any]
    dims: dict[str, int]
    seq_len: int | None
    fingerprint: str | None
    predictions: dict[str, np.ndarray]

    def pred(self, split: str) -> np.ndarray:
        return self.predictions[f"{split}_pred"]

    def mae(self, split: str) -> float:
        p = self.predictions[f"{split}_pred"].astype(np.float64)
        y = self.predictions[f"{split}_label"].astype(np.float64)
        return float(np.mean(np.abs(p - y)))

    @property
    def valid_mae(self) -> float:
        return self.mae("valid")


@dataclass
class CandidatePool:
    """The ranked candidates of a study plus what was left out and why."""

    candidates: list[Candidate]
    n_trials: int
    n_complete: int
    n_usable: int  # complete trials with a readable checkpoint on the pool's data
    constant_valid_mae: float
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"trial", "reason"}
    warnings: list[str] = field(default_factory=list)

    @property
    def trials(self) -> list[int]:
        return [c.trial for c in self.candidates]

    @property
    def dims(self) -> dict[str, int]:
        return dict(self.candidates[0].dims)

    @property
    def seq_len(self) -> int | None:
        return self.candidates[0].seq_len

    @property
    def fingerprint(self) -> str | None:
        return self.candidates[0].fingerprint

    def labels(self, split: str) -> np.ndarray:
        return self.candidates[0].predictions[f"{split}_label"].astype(np.float64)

    def index(self, split: str) -> np.ndarray:
        return self.candidates[0].predictions[f"{split}_index"]

    def ids(self, split: str) -> np.ndarray | None:
        return self.candidates[0].predictions.get(f"{split}_id")

    def matrix(self, split: str) -> np.ndarray:
        """``(n_samples, n_candidates)`` float64 predictions on ``split``, columns in pool order."""
        return np.stack([c.pred(split).astype(np.float64) for c in self.candidates], axis=1)


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def load_candidate(trial: TrialRef, data: MSADataset | None = None) -> Candidate:
    """Read one trial's checkpoint metadata and predictions; a UserError says what is wrong.

    With ``data`` (the study's dataset), predictions the checkpoint lacks are made from its
    weights and added to it first (:func:`msatune.models.checkpoint.fill_predictions`).
    """
    number = int(trial.number)
    if trial.checkpoint is None:
        raise UserError("no checkpoint recorded")
    directory = Path(trial.checkpoint)
    config, meta = read_checkpoint_meta(directory)  # UserError on a missing/corrupt file
    _check_weights(directory / WEIGHTS_FILE)
    if data is not None:
        trained_on = meta.get("data_fingerprint")
        if trained_on and trained_on != data.fingerprint:  # never write other data's predictions
            raise UserError(f"trained on other data (fingerprint {str(trained_on)[:12]}, "
                            f"the data given is {data.fingerprint[:12]})")
        fill_predictions(directory, data.splits)
    predictions = read_predictions(directory)
    dims = {str(k): int(v) for k, v in meta["dims"].items()}
    seq_len = meta.get("seq_len")
    return Candidate(
        trial=number,
        value=float(trial.value),
        checkpoint=directory,
        config=config,
        dims=dims,
        seq_len=None if seq_len is None else int(seq_len),
        fingerprint=meta.get("data_fingerprint"),
        predictions=predictions,
    )


def _check_weights(path: Path) -> None:
    """A cheap readability check (the weights are loaded for real only when exporting)."""
    if not path.is_file():
        raise UserError(f"checkpoint weights {path} are missing")
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            if len(handle.keys()) == 0:
                raise UserError(f"checkpoint weights {path} hold no arrays")
    except UserError:
        raise
    except Exception as exc:  # OSError for truncated or foreign files
        raise UserError(f"checkpoint weights {path} are corrupt ({first_line(exc)})") from None


def _same_data(a: Candidate, b: Candidate) -> bool:
    for split in SPLITS:
        if not np.array_equal(a.predictions[f"{split}_label"], b.predictions[f"{split}_label"]):
            return False
        if not np.array_equal(a.predictions[f"{split}_index"], b.predictions[f"{split}_index"]):
            return False
    return True


def _signature(c: Candidate) -> tuple:
    return (tuple(sorted(c.dims.items())), c.seq_len)


def _describe(sig: tuple) -> str:
    dims = dict(sig[0])
    text = "/".join(str(dims.get(m, "?")) for m in ("text", "audio", "video"))
    return f"dims text/audio/video {text}, seq_len {sig[1]}"


def _trial_list(numbers: Iterable[int]) -> str:
    nums = sorted(numbers)
    shown = ", ".join(str(n) for n in nums[:8])
    return shown + (f" and {len(nums) - 8} more" if len(nums) > 8 else "")


def select_candidates(
    trials: Iterable[TrialRef],
    *,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    study_name: str = "",
    expected_fingerprint: str | None = None,
    skip: Mapping[int, str] | None = None,
    include_pruned: bool = False,
    data: MSADataset | None = None,
) -> CandidatePool:
    """Rank a study's usable COMPLETE trials and keep the ``max_candidates`` best.

    ``expected_fingerprint`` (the study's dataset fingerprint): trials trained on other data are
    skipped with a warning; ``skip`` maps trial numbers to a reason to leave them out (e.g. weights
    that failed to load at export). ``include_pruned`` (not the product's default; for experiments)
    also admits PRUNED trials with a recorded value and checkpoint; their checkpoints hold
    validation predictions only until ``data`` (the study's dataset) is given to predict test
    from their weights (:func:`load_candidate`). Raises UserError when no candidate remains (saying why: no complete
    trial, no usable checkpoint, none beats the constant predictor) or when the candidates
    differ in input dims (naming the trials).
    """
    if int(max_candidates) < 1:
        raise UserError(f"--max-candidates must be at least 1, got {max_candidates}")
    trials = list(trials)
    label = f"study {study_name!r}" if study_name else "the study"
    states = ("COMPLETE", "PRUNED") if include_pruned else ("COMPLETE",)
    complete = [t for t in trials if t.state in states and _finite(t.value)]
    if not complete:
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.state] = counts.get(t.state, 0) + 1
        what = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "no trials"
        raise UserError(
            f"{label} has no COMPLETE trial to ensemble ({what}); pruned and failed trials never join "
            f"an ensemble: run more trials (msatune resume {study_name or 'NAME'} --trials N)"
        )
    complete.sort(key=lambda t: (float(t.value), int(t.number)))

    skipped: list[dict[str, Any]] = []
    warnings: list[str] = []
    loaded: list[Candidate] = []
    for t in complete:
        try:
            if skip and int(t.number) in skip:
                raise UserError(skip[int(t.number)])
            cand = load_candidate(t, data)
        except UserError as exc:
            reason = str(exc)
            skipped.append({"trial": int(t.number), "reason": reason})
            msg = f"trial {t.number}: {reason}; skipped"
            warnings.append(msg)
            log.info(msg)
            continue
        if expected_fingerprint and cand.fingerprint and cand.fingerprint != expected_fingerprint:
            reason = "trained on other data than the study's dataset (fingerprint differs)"
            skipped.append({"trial": cand.trial, "reason": reason})
            warnings.append(f"trial {cand.trial}: {reason}; skipped")
            log.info("trial %s: %s; skipped", cand.trial, reason)
            continue
        loaded.append(cand)
    if not loaded:
        reasons = "; ".join(f"trial {s['trial']}: {s['reason']}" for s in skipped[:2])
        raise UserError(
            f"none of the {len(complete)} complete trials of {label} has a usable checkpoint ({reasons})"
        )

    # The reference data: the best trial's. Trials evaluated on other samples cannot be averaged.
    ref = min(loaded, key=lambda c: (c.valid_mae, c.trial))
    other = [c for c in loaded if not _same_data(c, ref)]
    if other:
        same = [c.trial for c in loaded if c not in other]
        raise UserError(
            f"the complete trials of {label} were evaluated on different data: trials "
            f"{_trial_list(same)} share one validation/test set, trials {_trial_list(c.trial for c in other)} "
            "another; an ensemble combines predictions on the same samples"
        )
    const = constant_mae(ref.predictions["valid_label"])
    beating = [c for c in loaded if c.valid_mae < const]
    if not beating:
        best = ref
        raise UserError(
            f"none of the {len(loaded)} usable complete trials of {label} beats the constant predictor "
            f"(valid MAE {const:.4f}; best is trial {best.trial} at {best.valid_mae:.4f}): "
            f"train longer or widen the search before ensembling"
        )
    beating.sort(key=lambda c: (c.valid_mae, c.trial))
    pool = beating[: int(max_candidates)]

    sigs: dict[tuple, list[int]] = {}
    for c in pool:
        sigs.setdefault(_signature(c), []).append(c.trial)
    if len(sigs) > 1:
        parts = "; ".join(f"trials {_trial_list(ns)} take {_describe(s)}" for s, ns in sigs.items())
        raise UserError(f"the candidates of {label} differ in input dims ({parts}); one ensemble needs one input signature")

    return CandidatePool(
        candidates=pool,
        n_trials=len(trials),
        n_complete=len(complete),
        n_usable=len(loaded),
        constant_valid_mae=float(const),
        skipped=skipped,
        warnings=warnings,
    )


def pool_from_predictions(
    predictions: Mapping[int, Mapping[str, np.ndarray]], *, dims: Mapping[str, int] | None = None
) -> CandidatePool:
    """A pool from in-memory predictions (``trial -> {split}_pred/_label``), for tests and tools."""
    cands = []
    for trial, preds in predictions.items():
        full = {k: np.asarray(v) for k, v in preds.items()}
        for split in SPLITS:
            full.setdefault(f"{split}_index", np.arange(len(full[f"{split}_label"])))
        cands.append(
            Candidate(
                trial=int(trial), value=0.0, checkpoint=Path("."), config={},
                dims=dict(dims or {"text": 1, "audio": 1, "video": 1}), seq_len=None,
                fingerprint=None, predictions=full,
            )
        )
    cands.sort(key=lambda c: (c.valid_mae, c.trial))
    const = constant_mae(cands[0].predictions["valid_label"])
    return CandidatePool(
        candidates=cands, n_trials=len(cands), n_complete=len(cands), n_usable=len(cands),
        constant_valid_mae=float(const),
    )
