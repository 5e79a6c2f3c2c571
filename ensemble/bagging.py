"""Bagged members: a configuration's fold models as one predictor, and the pool they form.

A refit (``msatune refit``) trains each configuration on F folds of train+valid, R times. Here:

* **out-of-fold (OOF) predictions**: each fold model predicted only its held-out samples, so the
  F folds of a repeat give one prediction for every train+valid sample from a model that never
  saw it; with R repeats the R predictions are averaged. :func:`oof_scores` gives the OOF MAE
  (mean and std over repeats) and the per-fold MAEs (mean and std over every fold).
* **bagged predictions** on new data (the test split, at the very end): the average of all R x F
  fold models of the configuration (:func:`fold_test_predictions` predicts lazily and keeps the
  result in the fold checkpoint's predictions file), and by default one more model: the study
  trial's own checkpoint, trained on train and early-stopped on valid (:func:`trial_test_predictions`),
  at :data:`TRIAL_SHARE` of the bag. It has no OOF predictions (it trained on most of the pool),
  so the OOF fit never sees it; it only joins its configuration's average on new data.
* :func:`bagged_pool`: a :class:`~msatune.ensemble.candidates.CandidatePool` whose ``valid``
  predictions are the OOF ones (so every combiner of :mod:`msatune.ensemble.combiners` is fitted on
  OOF predictions only) and whose ``test`` predictions are the bagged ones.
* :func:`bag_shares` / :func:`bag_predictions`: how much each model weighs in its bag: the fold
  models split ``1 - trial_share``, the trial's own model has ``trial_share`` (``None``: all equal).
* :func:`bag_model`: the bag inside one Keras functional model; the export puts one per member into
  the fused ensemble model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from msatune.augment.dataset import SplitData
from msatune.augment.yardsticks import constant_mae
from msatune.ensemble.candidates import Candidate, CandidatePool
from msatune.errors import UserError
from msatune.modalities import MODALITIES
from msatune.models.checkpoint import read_predictions, write_predictions

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldModel:
    """One fold model of a refit configuration."""

    repeat: int
    fold: int
    checkpoint: Path
    held_out_mae: float | None = None


@dataclass
class BaggedConfig:
    """A refit configuration whose every fold is trained: its fold models and OOF predictions."""

    trial: int
    val_mae: float | None  # the source trial's validation MAE (what the search ranked it on)
    folds: list[FoldModel]
    oof: np.ndarray  # (repeats, n_pool) held-out predictions
    config: dict[str, Any]
    dims: dict[str, int]
    seq_len: int | None
    #: the pool rows ``oof`` predicts (the seeds scheme: valid's); ``None``: every row
    covered: np.ndarray | None = None
    #: the study trial's checkpoint whose valid predictions are ``oof``'s last row (the seeds
    #: scheme: the trial's model is one more seed of its bag); ``None``: no such row
    own: Path | None = None

    @property
    def oof_mean(self) -> np.ndarray:
        """The OOF prediction of every pool sample, averaged over repeats (NaN outside ``covered``)."""
        return self.oof.mean(axis=0)

    def rows(self, n_pool: int) -> np.ndarray:
        """The pool rows its OOF predictions cover."""
        return np.arange(int(n_pool)) if self.covered is None else np.asarray(self.covered, dtype=np.int64)

    def oof_mae(self, labels: np.ndarray) -> float:
        """MAE of :attr:`oof_mean` against the pool's ``labels`` over the covered rows."""
        y = np.asarray(labels, dtype=np.float64).reshape(-1)
        idx = self.rows(y.size)
        return float(np.mean(np.abs(self.oof_mean[idx] - y[idx])))


def assemble_oof(folds: Sequence[FoldModel], n_pool: int, repeats: int,
                 covered: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(oof, labels)``: ``(repeats, n_pool)`` OOF predictions and the ``(n_pool,)`` labels, from
    the fold checkpoints' held-out predictions. ``covered`` (pool rows; ``None``: all) are the
    rows every repeat must predict (the seeds scheme holds out valid's only); the others stay NaN.

    Raises UserError when a fold's predictions are unreadable, or a covered sample of a repeat has
    no prediction, or any sample more than one (folds of different assignments mixed)."""
    out = np.full((int(repeats), int(n_pool)), np.nan, dtype=np.float64)
    labels = np.full(int(n_pool), np.nan, dtype=np.float64)
    for fm in folds:
        arrays = read_predictions(fm.checkpoint, ("valid",))
        idx = arrays["valid_index"]
        if idx.size and (idx.min() < 0 or idx.max() >= n_pool):
            raise UserError(f"fold checkpoint {fm.checkpoint}: held-out indices outside the {n_pool} "
                            "train+valid samples (a refit of other data?)")
        row = out[fm.repeat]
        if np.any(np.isfinite(row[idx])):
            raise UserError(f"fold checkpoint {fm.checkpoint}: held-out samples overlap another fold of "
                            f"repeat {fm.repeat}")
        row[idx] = arrays["valid_pred"].astype(np.float64)
        labels[idx] = arrays["valid_label"].astype(np.float64)
    cols = np.arange(int(n_pool)) if covered is None else np.asarray(covered, dtype=np.int64)
    missing = ~np.isfinite(out[:, cols])
    if missing.any():
        r = int(np.flatnonzero(missing.any(axis=1))[0])
        raise UserError(f"repeat {r} lacks held-out predictions for {int(missing[r].sum())} of {cols.size} "
                        "samples: not every fold of it is trained")
    return out, labels


def oof_scores(oof: np.ndarray, labels: np.ndarray, folds: Sequence[FoldModel] = ()) -> dict[str, Any]:
    """OOF MAE (mean over repeats, std over repeats) and per-fold held-out MAE (mean, std)."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    per_repeat = [float(np.mean(np.abs(row - y))) for row in np.asarray(oof, dtype=np.float64)]
    fold_maes = [float(f.held_out_mae) for f in folds if f.held_out_mae is not None]
    return {
        "oof_mae": float(np.mean(per_repeat)),
        "oof_mae_std_repeats": float(np.std(per_repeat)) if len(per_repeat) > 1 else None,
        "oof_mae_per_repeat": per_repeat,
        "oof_mae_of_mean": float(np.mean(np.abs(np.mean(oof, axis=0) - y))),
        "fold_mae_mean": float(np.mean(fold_maes)) if fold_maes else None,
        "fold_mae_std": float(np.std(fold_maes)) if len(fold_maes) > 1 else None,
    }


def rankdata(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties get their average rank (as ``scipy.stats.rankdata``)."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(v.size, dtype=np.float64)
    ranks[order] = np.arange(1, v.size + 1)
    for value in np.unique(v):
        tied = v == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation of ``a`` and ``b`` (None for fewer than 3 pairs or no spread)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError("spearman needs two sequences of the same length")
    if a.size < 3:
        return None
    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _predict(model: Any, inputs: Mapping[str, np.ndarray], batch: int = 256) -> np.ndarray:
    from msatune.ensemble.export import predict_eager

    return predict_eager(model, inputs, batch)


def fold_test_predictions(checkpoint: Path, test: SplitData) -> np.ndarray:
    """A fold model's raw predictions on the test split: read from its predictions file when they
    are there (and were made for these test labels), else predicted now and added to that file.

    Only the final scoring calls this: the fold's training never saw the test split."""
    from msatune.models.checkpoint import PREDICTIONS_FILE

    labels = np.asarray(test.labels, dtype=np.float32).reshape(-1)
    with np.load(Path(checkpoint) / PREDICTIONS_FILE, allow_pickle=False) as f:
        cached = {k: f[k] for k in f.files if k.startswith("test_")}
    if "test_pred" in cached and np.array_equal(cached.get("test_label"), labels):
        return cached["test_pred"].astype(np.float64)
    from msatune.models.checkpoint import load_checkpoint

    model, _, _ = load_checkpoint(checkpoint)
    pred = _predict(model, {m: np.asarray(v, dtype=np.float32) for m, v in test.inputs().items()})
    arrays = read_predictions(checkpoint, ("valid",), clip=False)  # written back: the file keeps raw outputs
    arrays.update({"test_pred": pred.astype(np.float32), "test_label": labels,
                   "test_index": np.arange(labels.shape[0], dtype=np.int64)})
    write_predictions(checkpoint, arrays)
    return pred.astype(np.float64)


def trial_test_predictions(checkpoint: Path, test: SplitData) -> np.ndarray:
    """The study trial's own model's raw test predictions, in the test split's order: the ones its
    checkpoint recorded (a search predicts test at a COMPLETE trial's last epoch), else predicted
    from its weights now and added to its file. UserError when they are not the test split's."""
    from msatune.models.checkpoint import fill_predictions

    labels = np.asarray(test.labels, dtype=np.float32).reshape(-1)
    fill_predictions(checkpoint, {"test": test})
    arrays = read_predictions(checkpoint, ("test",), clip=False)
    order = arrays["test_index"]
    if order.shape[0] != labels.shape[0] or not np.array_equal(np.sort(order), np.arange(labels.shape[0])):
        raise UserError(f"checkpoint {checkpoint}: its test predictions are not of this test split "
                        f"({order.shape[0]} rows, the split has {labels.shape[0]})")
    pred = np.empty(labels.shape[0], dtype=np.float64)
    pred[order] = arrays["test_pred"].astype(np.float64)
    got = np.empty_like(pred)
    got[order] = arrays["test_label"].astype(np.float64)
    if not np.allclose(got, labels, atol=1e-5):
        raise UserError(f"checkpoint {checkpoint}: its test labels are not this test split's")
    return pred


def bagged_pool(
    configs: Sequence[BaggedConfig],
    pool_labels: np.ndarray,
    test_predictions: Mapping[int, np.ndarray],
    test_labels: np.ndarray,
    *,
    fingerprint: str | None = None,
    study_name: str = "",
) -> CandidatePool:
    """The candidate pool of a refit: ``valid`` = OOF predictions of train+valid (of the rows the
    refit covers: valid's for the seeds scheme), ``test`` = the bagged test predictions
    (``test_predictions``: trial -> mean of its fold models).

    Candidates are ranked by OOF MAE; those no better than the constant predictor on the OOF
    labels are left out (UserError when none is left)."""
    y_all = np.asarray(pool_labels, dtype=np.float64).reshape(-1)
    idx = configs[0].rows(y_all.size) if configs else np.arange(y_all.size)
    if any(not np.array_equal(c.rows(y_all.size), idx) for c in configs):
        raise ValueError("the configurations of one pool must cover the same rows")
    y = y_all[idx]
    yt = np.asarray(test_labels, dtype=np.float64).reshape(-1)
    const = constant_mae(y)
    cands, skipped = [], []
    for c in configs:
        preds = {"valid_pred": c.oof_mean[idx], "valid_label": y, "valid_index": idx,
                 "test_pred": np.asarray(test_predictions[c.trial], dtype=np.float64), "test_label": yt,
                 "test_index": np.arange(yt.size)}
        cand = Candidate(trial=c.trial, value=float(np.mean(np.abs(c.oof_mean[idx] - y))),
                         checkpoint=c.folds[0].checkpoint.parent, config=c.config, dims=c.dims,
                         seq_len=c.seq_len, fingerprint=fingerprint, predictions=preds)
        if cand.valid_mae < const:
            cands.append(cand)
        else:
            skipped.append({"trial": c.trial, "reason": f"OOF MAE {cand.valid_mae:.4f} is no better than "
                                                        f"the constant predictor's {const:.4f}"})
    if not cands:
        label = f"study {study_name!r}" if study_name else "the refit"
        raise UserError(f"none of the {len(configs)} refit configurations of {label} beats the constant "
                        f"predictor on out-of-fold predictions (MAE {const:.4f})")
    cands.sort(key=lambda c: (c.valid_mae, c.trial))
    return CandidatePool(candidates=cands, n_trials=len(configs), n_complete=len(configs),
                         n_usable=len(configs), constant_valid_mae=float(const), skipped=skipped,
                         warnings=[f"trial {s['trial']}: {s['reason']}; skipped" for s in skipped])


#: The study trial's own model's share of its bag by default (its fold models split the rest);
#: ``None`` is an equal share, 1 / (folds x repeats + 1). benchmarks/README.md, "Seeds 3".
TRIAL_SHARE: float | None = 0.5


def bag_shares(n_folds: int, trial_share: float | None) -> list[float]:
    """The shares of a bag of ``n_folds`` fold models and, last, the trial's own model: the fold
    models split ``1 - trial_share`` equally; ``None`` gives every model an equal share."""
    if trial_share is None:
        return [1.0 / (n_folds + 1)] * (n_folds + 1)
    if not 0.0 <= trial_share <= 1.0:
        raise ValueError(f"the trial's share of its bag must lie in [0, 1], not {trial_share}")
    return [(1.0 - trial_share) / n_folds] * n_folds + [float(trial_share)]


def bag_predictions(fold_preds: Sequence[np.ndarray], own: np.ndarray | None,
                    trial_share: float | None) -> np.ndarray:
    """A bag's prediction: the fold models' predictions (and the trial's own, when given) averaged
    with :func:`bag_shares` (the fold models alone: their plain mean)."""
    preds = np.asarray(fold_preds, dtype=np.float64)
    if own is None:
        return preds.mean(axis=0)
    shares = bag_shares(len(preds), trial_share)
    return np.tensordot(shares[:-1], preds, axes=1) + shares[-1] * np.asarray(own, dtype=np.float64)


def bag_model(models: Sequence[keras.Model], name: str, dims: Mapping[str, int],
              seq_len: int | None, shares: Sequence[float] | None = None) -> keras.Model:
    """One functional model: dict inputs -> every model of the bag -> their average, (B, 1), or
    their ``shares``-weighted sum (a frozen ``Dense`` holds the shares, as the fused ensemble
    holds its members' weights)."""
    import keras

    if not models:
        raise ValueError("a bag needs at least one model")
    inputs = {m: keras.Input(shape=(seq_len, int(dims[m])), dtype="float32", name=m) for m in MODALITIES}
    outs = [mdl(inputs) for mdl in models]
    if len(outs) == 1:
        output = outs[0]
    elif shares is None or np.allclose(shares, shares[0]):
        output = keras.layers.Average(name=f"{name}_mean")(outs)
    else:
        if len(shares) != len(outs):
            raise ValueError(f"{len(shares)} shares for a bag of {len(outs)} models")
        stacked = keras.layers.Concatenate(axis=-1, name=f"{name}_models", dtype="float32")(outs)
        combine = keras.layers.Dense(1, use_bias=False, trainable=False, dtype="float32", name=f"{name}_shares")
        output = combine(stacked)
        combine.set_weights([np.asarray(shares, dtype=np.float32).reshape(-1, 1)])
    return keras.Model(inputs=inputs, outputs=output, name=name)


def load_bagged_members(members: Sequence[tuple[int, float]], folds_of: Mapping[int, Sequence[FoldModel]],
                        dims: Mapping[str, int], seq_len: int | None,
                        trial_checkpoints: Mapping[int, Path] | None = None,
                        trial_share: float | None = None) -> list[tuple[int, float, keras.Model]]:
    """``(trial, weight, bag model)`` per member: its fold checkpoints rebuilt and averaged, with
    the trial's own checkpoint (``trial_checkpoints[trial]``, where given) as one more model of
    the bag, at ``trial_share`` of it (:func:`bag_shares`; ``None``: an equal share).

    A model that cannot be rebuilt raises :class:`msatune.ensemble.export.MemberLoadError` for its
    trial (the caller may drop that member and refit)."""
    from msatune.ensemble.export import MemberLoadError
    from msatune.models.checkpoint import load_checkpoint

    out = []
    for trial, weight in members:
        parts = [(fm.checkpoint, f"member_{trial}_r{fm.repeat}f{fm.fold}") for fm in folds_of[trial]]
        own = (trial_checkpoints or {}).get(trial)
        if own is not None:
            parts.append((own, f"member_{trial}_trial"))
        models = []
        for checkpoint, name in parts:
            try:
                model, _, _ = load_checkpoint(checkpoint)
            except UserError as exc:
                raise MemberLoadError(trial, str(exc)) from None
            model.name = name
            models.append(model)
        shares = bag_shares(len(models) - 1, trial_share) if own is not None else None
        out.append((trial, weight, bag_model(models, f"member_{trial}", dims, seq_len, shares)))
    return out
