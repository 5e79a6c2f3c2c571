"""A study's refit read back as results: the validation-vs-OOF table and the bagged configurations.

:func:`refit_table` is what ``show`` and the report show: per refit configuration its validation
MAE, folds done, out-of-fold (OOF) MAE, held-out fold MAE, both ranks and the rank change.
:func:`finalists_ranking` says which measure ranks a study's finalists (OOF MAE once a refit has
one, else validation MAE) and who leads. :func:`bagged_configs` gives the fold models and OOF predictions that ``ensemble --from refit``
combines. The records themselves are :mod:`msatune.studies.store.refit_records`'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna

from msatune.ensemble.bagging import BaggedConfig, FoldModel, assemble_oof, oof_scores, rankdata
from msatune.errors import UserError, first_line
from msatune.json_values import jsonable
from msatune.studies.store.refit_records import (
    covered_rows,
    failed_folds,
    fold_models,
    fold_records,
    load_refit,
    spec_scheme,
)


def trial_checkpoints(storage: optuna.storages.BaseStorage, name: str) -> dict[int, Path]:
    """Trial number -> the checkpoint study ``name`` records for it (trials with one only)."""
    from msatune.studies.store.studies import load_study

    return {t.number: Path(t.user_attrs["checkpoint"]) for t in load_study(storage, name).get_trials(deepcopy=False)
            if t.user_attrs.get("checkpoint")}


def own_valid_row(checkpoint: Path, spec: dict[str, Any]) -> np.ndarray:
    """The study trial's own model's validation predictions as one more repeat of the seeds
    scheme: ``(n_pool,)``, valid's rows filled, train's NaN. UserError when they cannot be read."""
    from msatune.models.checkpoint import read_predictions

    pool = spec["pool"]
    arrays = read_predictions(checkpoint, ("valid",), clip=False)  # raw, as the repeats' held-out predictions
    idx = np.asarray(arrays["valid_index"], dtype=np.int64)
    if idx.size != int(pool["valid"]) or (idx.size and (idx.min() < 0 or idx.max() >= int(pool["valid"]))):
        raise UserError(f"checkpoint {checkpoint}: its valid predictions do not cover the {pool['valid']} "
                        "valid samples of the refit")
    row = np.full(int(pool["total"]), np.nan)
    row[int(pool["train"]) + idx] = np.asarray(arrays["valid_pred"], dtype=np.float64)
    return row


def refit_oof(models: list[FoldModel], spec: dict[str, Any],
              own: Path | None = None) -> tuple[np.ndarray, np.ndarray, str | None]:
    """``(oof, labels, left_out)``: :func:`assemble_oof` of a refit configuration's models over the
    rows its scheme covers, and with ``own`` (a seeds refit's trial checkpoint) its valid
    predictions as one more row; ``left_out`` says why they could not join (None: they did, or
    there was no ``own``)."""
    oof, labels = assemble_oof(models, int(spec["pool"]["total"]), int(spec["repeats"]), covered_rows(spec))
    if own is None:
        return oof, labels, None
    try:
        return np.vstack([oof, own_valid_row(own, spec)[None, :]]), labels, None
    except UserError as exc:
        return oof, labels, first_line(exc)


def refit_table(storage: optuna.storages.BaseStorage, name: str,
                trials: list[int] | None = None) -> dict[str, Any] | None:
    """The refit of study ``name`` as a table (None when it has none): per configuration its
    validation MAE, folds done, OOF MAE (mean/std over repeats), held-out fold MAE (mean/std),
    and both ranks (1 = best) with the change (positive: the refit ranks it higher). Configs are
    ``trials`` (default: every configuration refit so far), ordered by OOF MAE, unfinished last."""
    loaded = load_refit(storage, name)
    if loaded is None:
        return None
    rstudy, spec = loaded
    folds, repeats, n_pool = int(spec["folds"]), int(spec["repeats"]), int(spec.get("pool", {}).get("total", 0))
    seeds = spec_scheme(spec) == "seeds"
    records = fold_records(rstudy)
    entries = {int(e["trial"]): e for e in spec.get("trials", [])}
    own = trial_checkpoints(storage, name) if seeds else {}
    wanted = trials if trials is not None else list(entries)
    rows = []
    for trial in wanted:
        entry = entries.get(trial, {"val_mae": None, "preset": None})
        models = fold_models(records, trial, folds, repeats)
        row: dict[str, Any] = {"trial": trial, "val_mae": entry.get("val_mae"), "preset": entry.get("preset"),
                               "folds_done": len(models), "folds_total": folds * repeats, "oof_mae": None,
                               "problem": None, "checkpoints": [str(m.checkpoint) for m in models]}
        if len(models) == folds * repeats and n_pool:
            try:
                oof, labels, left_out = refit_oof(models, spec, own.get(trial))
                if left_out:
                    row["problem"] = f"its own model is left out ({left_out})"
                elif trial in own:
                    row["with_trial_model"] = True
                idx = covered_rows(spec) if seeds else slice(None)
                row.update(oof_scores(oof[:, idx], labels[idx], models))
                if seeds:  # ranked by its seeds' average (what its bag deploys), not their mean MAE
                    row.update(seed_mae_mean=row["oof_mae"], oof_mae=row["oof_mae_of_mean"])
            except UserError as exc:
                row["problem"] = str(exc)
        rows.append(row)
    ranked = [r for r in rows if r["oof_mae"] is not None and r["val_mae"] is not None]
    if ranked:
        by_val = rankdata([r["val_mae"] for r in ranked])
        by_oof = rankdata([r["oof_mae"] for r in ranked])
        for r, rv, ro in zip(ranked, by_val, by_oof, strict=True):
            r.update(rank_val=float(rv), rank_oof=float(ro), rank_change=float(rv - ro))
    rows.sort(key=lambda r: (r["oof_mae"] is None, r["oof_mae"] if r["oof_mae"] is not None else 0.0, r["trial"]))
    failed = failed_folds(rstudy)
    return jsonable({"study": name, "refit_study": rstudy.study_name, "scheme": spec_scheme(spec),
                     "folds": folds, "repeats": repeats,
                     "seed": spec.get("seed"), "pool": spec.get("pool"), "failed_folds": failed,
                     "configs": rows})


#: What the choice of ranking measure rests on (benchmarks/README.md, "What ranks finalists").
OOF_BASIS = ("out-of-fold MAE scores every sample of train+valid, and it predicted the refit models' test MAE "
             "better than the small validation split's MAE did (benchmarks/README.md, refit.py)")
#: The same for a refit of the seeds scheme (``oof_mae`` is then its seeds' averaged valid MAE).
SEEDS_BASIS = ("a configuration's seeds averaged predict test better than its one trial; over a top 10 the seeds' "
               "averaged valid MAE ranked the averages a bagged ensemble deploys at Spearman 0.77-0.98 with "
               "their test MAE (benchmarks/README.md, \"refit.py with the seeds scheme\")")


def measure_label(table: dict[str, Any] | None) -> str:
    """What a refit table's ``oof_mae`` column measures, in words."""
    return "seed-averaged valid MAE" if (table or {}).get("scheme") == "seeds" else "out-of-fold MAE"


def finalists_ranking(table: dict[str, Any] | None, best: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    """Which measure ranks study ``name``'s finalists, and which configuration leads by it.

    Out-of-fold MAE (a seeds refit's: its seeds' averaged valid MAE) when the refit ``table``
    (:func:`refit_table`) has a configuration with every fold trained (ranked over those), else
    validation MAE over the trials (``best``: the best COMPLETE trial's record, with ``number``
    and ``val_mae``). None when neither exists.
    """
    scored = [r for r in (table or {}).get("configs", []) if r.get("oof_mae") is not None]
    if scored:
        lead = min(scored, key=lambda r: (r["oof_mae"], r["trial"]))
        val_lead = (best or {}).get("number")
        seeds = (table or {}).get("scheme") == "seeds"
        return {"measure": "oof_mae", "label": measure_label(table), "trial": lead["trial"], "value": lead["oof_mae"],
                "val_mae": lead.get("val_mae"), "preset": lead.get("preset"), "configs": len(scored),
                "agrees_with_val": val_lead is None or val_lead == lead["trial"], "val_best_trial": val_lead,
                "basis": SEEDS_BASIS if seeds else OOF_BASIS}
    if best:
        return {"measure": "val_mae", "label": "validation MAE", "trial": best["number"], "value": best["val_mae"],
                "val_mae": best["val_mae"], "preset": best.get("preset"), "configs": None,
                "agrees_with_val": True, "val_best_trial": best["number"],
                "basis": (f"no refit yet: msatune refit {name} retrains the top configurations at more seeds "
                          "and ranks them by the seeds' averaged valid MAE, which predicted test better")}
    return None


def ranking_line(ranking: dict[str, Any]) -> str:
    """``finalists ranked by out-of-fold MAE: trial 7 leads (OOF 0.61, val 0.64) ...``: which
    measure ranks a study's finalists, who leads, and why that measure."""
    if ranking["measure"] == "val_mae":
        return f"finalists ranked by validation MAE ({ranking['basis']})"
    preset = f" (the {ranking['preset']} preset)" if ranking.get("preset") else ""
    line = (f"finalists ranked by {ranking['label']}: trial {ranking['trial']}{preset} leads "
            f"({ranking['label']} {_fmt4(ranking['value'])}, val MAE {_fmt4(ranking.get('val_mae'))}; "
            f"{ranking['configs']} configuration(s) refit")
    if not ranking["agrees_with_val"]:
        line += f"; validation MAE alone would pick trial {ranking['val_best_trial']}"
    return line + f"). Why: {ranking['basis']}"


def _fmt4(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}"


def bagged_configs(storage: optuna.storages.BaseStorage, name: str, *, with_trial: bool = True
                   ) -> tuple[dict[str, Any], list[BaggedConfig], list[str]]:
    """``(spec, configs, warnings)``: every refit configuration of study ``name`` whose folds are all
    trained, with its fold models and OOF predictions (the seeds scheme: its repeats' valid
    predictions and, ``with_trial``, its trial's own as one more row). UserError when there is no
    refit or no configuration is finished."""
    from msatune.models.checkpoint import read_checkpoint_meta

    loaded = load_refit(storage, name)
    if loaded is None:
        raise UserError(f"study {name!r} has no refit yet; run: msatune refit {name} --top-k K")
    rstudy, spec = loaded
    folds, repeats = int(spec["folds"]), int(spec["repeats"])
    records = fold_records(rstudy)
    configs, warnings = [], []
    own = trial_checkpoints(storage, name) if with_trial and spec_scheme(spec) == "seeds" else {}
    for entry in spec.get("trials", []):
        trial = int(entry["trial"])
        models = fold_models(records, trial, folds, repeats)
        if len(models) < folds * repeats:
            warnings.append(f"trial {trial}: {len(models)} of {folds * repeats} folds trained; left out "
                            f"(finish it with msatune refit {name})")
            continue
        try:
            oof, _, left_out = refit_oof(models, spec, own.get(trial))
            config, meta = read_checkpoint_meta(models[0].checkpoint)
        except UserError as exc:
            warnings.append(f"trial {trial}: {exc}; left out")
            continue
        if left_out:
            warnings.append(f"trial {trial}: its own model is left out of its bag ({left_out})")
        seq_len = meta.get("seq_len")
        configs.append(BaggedConfig(trial=trial, val_mae=entry.get("val_mae"), folds=models, oof=oof,
                                    config=config, dims={k: int(v) for k, v in meta["dims"].items()},
                                    seq_len=None if seq_len is None else int(seq_len),
                                    covered=covered_rows(spec), own=None if left_out else own.get(trial)))
    if not configs:
        raise UserError(f"no configuration of the refit of study {name!r} has all its folds trained "
                        f"({'; '.join(warnings[:2]) or 'no fold finished'}); continue it with: msatune refit {name}")
    return spec, configs, warnings
