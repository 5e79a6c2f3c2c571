"""The bagged source of ``msatune ensemble NAME --from refit``: a refit's configurations, fitted on
their out-of-fold predictions (the path itself is :func:`msatune.studies.ensembles.run_ensemble`).

Every finished refit configuration is one candidate: its ``valid`` predictions are its
out-of-fold (OOF) predictions of every train+valid sample, its ``test`` predictions the average of
its fold models and (``bag_trial``, the default) of the study trial's own model, the one the
search trained on train, at ``trial_share`` of the bag (:data:`TRIAL_SHARE` by default; the fold
models split the rest; :mod:`msatune.ensemble.bagging`). The combiner (greedy, mean, weighted, median,
as for ``msatune ensemble``) is fitted on the OOF predictions only. Only then is the test split
looked at, once: the fold models predict it, and the bagged ensemble is scored next to

* the **best single** trial of the study chosen on validation MAE (what the search alone gives),
* the **best single after refit** (the configuration with the best OOF MAE, bagged),
* the **non-bagged ensemble** (the same method on the trials' validation predictions, as
  ``msatune ensemble`` builds it).

The export is one ``.keras`` model and one SavedModel in which each member is its bag (the same
shares); the result is recorded on the study as ``refit-<method>``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from msatune.augment.dataset import MSADataset, Split
from msatune.augment.folds import PoolLabels, pool_labels
from msatune.ensemble.bagging import (
    TRIAL_SHARE,
    bag_predictions,
    bagged_pool,
    fold_test_predictions,
    load_bagged_members,
    spearman,
    trial_test_predictions,
)
from msatune.ensemble.fitting import (
    EnsembleOptions,
    EnsembleResult,
    fit_ensemble,
    fit_pool,
    percent_change,
)
from msatune.errors import UserError, first_line
from msatune.json_values import jsonable
from msatune.label_range import clip_predictions
from msatune.studies.refit.table import bagged_configs
from msatune.studies.store.refit_records import spec_scheme
from msatune.studies.store.studies import trial_refs
from msatune.studies.study_data import study_data

log = logging.getLogger(__name__)

#: The name a bagged ensemble is recorded and exported under: ``refit-<method>``.
NAME_PREFIX = "refit-"


def bag_label(bag_trial: bool, trial_share: float | None, seeds: bool = False) -> str:
    """What a member's bag averages, in words (the ``bag`` of a bagged ensemble's record)."""
    if seeds:
        return "seed repeats and the trial's own model, equal shares" if bag_trial else "seed repeats"
    if not bag_trial:
        return "fold models"
    if trial_share is None:
        return "fold models and the trial's own model, equal shares"
    return f"fold models ({1 - trial_share:.0%}) and the trial's own model ({trial_share:.0%})"


def _rename(d: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    return {(new if k == old else k): v for k, v in d.items()}


@dataclass
class BaggedResult(EnsembleResult):
    """An ensemble of bagged refit configurations: ``valid`` of the pool means out-of-fold."""

    refit: dict[str, Any] = field(default_factory=dict)
    comparison: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The ``msatune ensemble --from refit --json`` payload (``oof`` where the pool says valid)."""
        s = super().summary()
        s = _rename(s, "valid", "oof")
        s["members"] = [_rename(m, "valid", "oof") for m in s["members"]]
        refit_best = _rename(s.pop("best_single"), "valid", "oof")
        s["reference"] = _rename(s["reference"], "valid", "oof")
        s["candidates"]["ranked"] = [_rename(r, "valid_mae", "oof_mae") for r in s["candidates"]["ranked"]]
        s["candidates"] = _rename(s["candidates"], "constant_valid_mae", "constant_oof_mae")
        s.pop("change_vs_best_single", None)
        c = self.comparison
        single = c.get("best_single") or {}
        flat = c.get("non_bagged") or {}
        test = s["test"]["mae"]
        out = {
            "study": s["study"], "method": s["method"], "source": "refit", "refit": self.refit,
            "members": s["members"], "oof": s["oof"], "test": s["test"],
            "best_single": single, "refit_best_single": refit_best, "non_bagged": flat,
            "change_vs": {"best_single": percent_change(test, (single.get("test") or {}).get("mae")),
                          "refit_best_single": percent_change(test, refit_best["test"]["mae"]),
                          "non_bagged": percent_change(test, (flat.get("test") or {}).get("mae"))},
            "configs": c.get("configs", []), "rank_agreement": c.get("rank_agreement", {}),
        }
        out.update({k: v for k, v in s.items() if k not in out})
        return jsonable(out)

    def record(self) -> dict[str, Any]:
        """The compact record on the study (``msatune:ensemble:refit-<method>``); its
        ``best_single`` is the study's validation-selected best single trial."""
        s = self.summary()
        single = s["best_single"] or {}
        return jsonable({
            "method": s["method"], "source": "refit",
            "folds": self.refit.get("folds"), "repeats": self.refit.get("repeats"), "bag": self.refit.get("bag"),
            "members": [{"trial": m["trial"], "weight": m["weight"], "family": m.get("family")}
                        for m in s["members"]],
            "oof": s["oof"], "test": s["test"],
            "best_single": {"trial": single.get("trial"),
                            "valid_mae": (single.get("valid") or {}).get("mae"),
                            "test_mae": (single.get("test") or {}).get("mae")},
            "refit_best_single": {"trial": s["refit_best_single"]["trial"],
                                  "oof_mae": s["refit_best_single"]["oof"]["mae"],
                                  "test_mae": s["refit_best_single"]["test"]["mae"]},
            "non_bagged": {"method": s["non_bagged"].get("method"),
                           "test_mae": (s["non_bagged"].get("test") or {}).get("mae")},
            "cv_oof_mae": (s["cv"] or {}).get("valid_mae"),
            "reference": s["reference"], "options": s["options"],
            "model_path": s["model_path"], "saved_model_path": s["saved_model_path"], "cost": s["cost"],
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        })


def _comparison(study: optuna.Study, attrs: dict[str, Any], data: MSADataset, options: EnsembleOptions,
                configs: list, test_preds: dict[int, np.ndarray], oof_mae: dict[int, float]) -> dict[str, Any]:
    """The baselines the bagged ensemble is reported against, and how well each ranking of the
    refit configurations predicts their test MAE (Spearman)."""
    from msatune.models.checkpoint import prediction_mae

    trials = study.get_trials(deepcopy=False)
    out: dict[str, Any] = {"best_single": None, "non_bagged": None}
    try:
        flat = fit_ensemble(trial_refs(trials), options, study_name=study.study_name, data=data,
                            expected_fingerprint=attrs.get("data_fingerprint"))
        best = flat.best_single
        out["best_single"] = {"trial": best, **flat.member_metrics[best],
                              "checkpoint": str(flat.pool.candidates[0].checkpoint)}
        out["non_bagged"] = {"method": options.method, "members": [list(m) for m in flat.members],
                             "valid": flat.metrics["valid"], "test": flat.metrics["test"]}
    except UserError as exc:
        out["non_bagged_error"] = str(exc)
    by_number = {t.number: t for t in trials}
    yt = np.asarray(data.test.labels, dtype=np.float64)
    rows = []
    for c in configs:
        ckpt = by_number[c.trial].user_attrs.get("checkpoint") if c.trial in by_number else None
        try:
            single = prediction_mae(ckpt, "test") if ckpt else None
        except UserError:
            single = None
        rows.append({"trial": c.trial, "val_mae": c.val_mae, "oof_mae": oof_mae[c.trial],
                     "test_mae_single": single,
                     "test_mae_bagged": float(np.mean(np.abs(test_preds[c.trial] - yt)))})
    out["configs"] = rows
    usable = [r for r in rows if r["val_mae"] is not None and r["test_mae_single"] is not None]
    cols = {k: [r[k] for r in usable] for k in ("val_mae", "oof_mae", "test_mae_single", "test_mae_bagged")}
    out["rank_agreement"] = {
        "configs": len(usable),
        "val_vs_test": spearman(cols["val_mae"], cols["test_mae_single"]),
        "oof_vs_test": spearman(cols["oof_mae"], cols["test_mae_single"]),
        "val_vs_bagged_test": spearman(cols["val_mae"], cols["test_mae_bagged"]),
        "oof_vs_bagged_test": spearman(cols["oof_mae"], cols["test_mae_bagged"]),
    }
    return out


@dataclass(frozen=True)
class PoolView:
    """What the ensemble's fit and export read of a dataset (``splits``): the pool's labels and
    oracle as ``valid``, the split its out-of-fold predictions are of, and the test split whole
    (the export checks the fused model on its inputs)."""

    splits: dict[str, PoolLabels | Split]


class RefitSource:
    """The study's refit configurations, bagged: fitted on their out-of-fold predictions; each
    member averages its fold models and, with ``bag_trial``, the study trial's own model (the
    bagged source of :func:`msatune.studies.ensembles.run_ensemble`)."""

    def __init__(self, storage: optuna.storages.BaseStorage, study: optuna.Study, attrs: dict[str, Any],
                 options: EnsembleOptions, *, bag_trial: bool = True,
                 trial_share: float | None = TRIAL_SHARE) -> None:
        name = study.study_name
        if trial_share is not None and not 0.0 <= trial_share <= 1.0:
            raise UserError(f"--trial-share {trial_share}: the trial's own model's share of its bag must lie "
                            "in [0, 1] (0.5: half of it; 'equal': one share as one more fold model)")
        if trial_share == 0:  # nothing of the trial's model: the fold models alone (--folds-only)
            bag_trial = False
        self.study, self.attrs, self.options = study, attrs, options
        self.name = NAME_PREFIX + options.method
        spec, self.configs, self.warnings = bagged_configs(storage, name, with_trial=bag_trial)
        seeds = spec_scheme(spec) == "seeds"
        if seeds and bag_trial:  # the trial's model is one more seed: its valid predictions are in the fit
            if trial_share is not None and trial_share != TRIAL_SHARE:
                self.warnings.append(f"--trial-share {trial_share} applies to refits of the folds scheme; in a "
                                     "seeds refit the trial's own model is one seed of its bag, at an equal share")
            trial_share = None
        self.trial_share = trial_share
        self.data = data = study_data(attrs, name, needed_for="the fold models must predict its test split "
                                                                "to score the bagged ensemble")
        if spec.get("data_fingerprint") != data.fingerprint:
            raise UserError(f"the refit of study {name!r} was trained on other data than the study's; "
                            f"rerun it: msatune refit {name} --replace ...")
        self.pool = pool = pool_labels(data.splits)  # the OOF predictions' labels; no features copied
        # What is read of the features from here on: test (the bags' and the export's predictions)
        # and valid (a trial checkpoint that lacks its predictions). Train's go (on MOSEI ~1.4 GB
        # of the 1.95 GB loaded), before the models are loaded.
        self.data = data = MSADataset(path=data.path, fingerprint=data.fingerprint,
                                      splits={"valid": data.valid, "test": data.test})
        self.view = PoolView(splits={"valid": pool, "test": data.test})
        # The fit reads OOF predictions only; the test predictions ride along unread until the
        # combination is fixed (ensemble.fitting.fit_pool), as for a study's ensemble.
        self.test_preds: dict[int, np.ndarray] = {}
        self.unpredictable: dict[int, str] = {}
        self.trial_checkpoints: dict[int, Path] = {}
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)} if bag_trial else {}
        for c in self.configs:  # a fold checkpoint that cannot predict drops its configuration, not the run
            try:
                preds = [fold_test_predictions(fm.checkpoint, data.test) for fm in c.folds]
            except (UserError, OSError, ValueError) as exc:
                self.unpredictable[c.trial] = f"a fold model could not predict the test split ({first_line(exc)})"
                continue
            own_preds = None
            if bag_trial and seeds and c.own is None:
                pass  # its valid predictions could not be read (bagged_configs warned): its repeats alone
            elif bag_trial:  # the trial's own model: one more of its bag; without it, the folds alone
                own = by_number[c.trial].user_attrs.get("checkpoint") if c.trial in by_number else None
                try:
                    if not own:
                        raise UserError("the study records no checkpoint for it")
                    own_preds = trial_test_predictions(Path(own), data.test)
                    self.trial_checkpoints[c.trial] = Path(own)
                except (UserError, OSError, ValueError) as exc:
                    self.warnings.append(f"trial {c.trial}: its own model is left out of its bag, which averages "
                                         f"its fold models only ({first_line(exc)})")
            # the bag's average on the sentiment scale, as its exported model clips it
            self.test_preds[c.trial] = clip_predictions(bag_predictions(preds, own_preds, trial_share))
        self.folds_of = {c.trial: c.folds for c in self.configs}
        self.refit_info = {"scheme": spec_scheme(spec), "folds": spec["folds"], "repeats": spec["repeats"],
                           "seed": spec.get("seed"),
                           "pool": spec.get("pool"), "configs": len(self.configs),
                           "bag": bag_label(bag_trial, trial_share, seeds),
                           "trial_share": (0.0 if not bag_trial else trial_share if trial_share is not None
                                           else 1.0 / (spec["folds"] * spec["repeats"] + 1)),
                           "trials_in_bags": sorted(self.trial_checkpoints),
                           "fitted_on": (f"the seeds' averaged predictions of the {spec['pool']['valid']} valid samples"
                                         if seeds else f"out-of-fold predictions of the {pool.n} train+valid samples")}
        self.cpool: Any = None

    def fit(self, dropped: dict[int, str]) -> BaggedResult:
        name, data, pool = self.study.study_name, self.data, self.pool
        left_out = {**self.unpredictable, **dropped}
        kept = [c for c in self.configs if c.trial not in left_out]
        if not kept:
            raise UserError(f"no refit configuration of study {name!r} could be exported: "
                            f"{'; '.join(f'trial {t}: {r}' for t, r in list(left_out.items())[:2])}")
        self.cpool = bagged_pool(kept, pool.labels, self.test_preds, data.test.labels,
                                 fingerprint=data.fingerprint, study_name=name)
        base = fit_pool(self.cpool, self.options, study_name=name, data=self.view)
        oof_mae = {c.trial: c.oof_mae(pool.labels) for c in kept}
        comparison = _comparison(self.study, self.attrs, data, self.options, kept, self.test_preds, oof_mae)
        result = BaggedResult(**{f.name: getattr(base, f.name) for f in dataclasses.fields(EnsembleResult)},
                              refit=self.refit_info, comparison=comparison)
        result.warnings[:0] = self.warnings + [f"trial {t}: {r}; dropped" for t, r in left_out.items()]
        return result

    def export(self, result: EnsembleResult, target: Path, *, saved_model: bool,
               on_step: Callable[[str], None] | None) -> None:
        from msatune.ensemble.export import export_ensemble

        members = load_bagged_members(result.members, self.folds_of, self.cpool.dims, self.cpool.seq_len,
                                      self.trial_checkpoints, self.trial_share)
        export_ensemble(result, target, data=self.view, saved_model=saved_model, members=members,
                        check_split="test", on_step=on_step)
