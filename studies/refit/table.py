"""A study's refit read back as results: the validation-vs-OOF table and the bagged configurations.

:func:`refit_table` is what ``show`` and the report show: per refit configuration its validation
MAE, folds done, out-of-fold (OOF) MAE, held-out fold MAE, both ranks and the rank change.
:func:`finalists_ranking` says which measure ranks a study's finalists (OOF MAE once a refit has
one, else validation MAE) and who leads. :func:`bagged_configs` gives the fold models and OOF predictions that ``ensemble --from refit``
combines. The records themselves are :mod:`msatune.studies.store.refit_records`'.
"""

from __future__ import annotations

from typing import Any

import optuna

from msatune.ensemble.bagging import BaggedConfig, assemble_oof, oof_scores, rankdata
from msatune.errors import UserError
from msatune.json_values import jsonable
from msatune.studies.store.refit_records import failed_folds, fold_models, fold_records, load_refit


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
    records = fold_records(rstudy)
    entries = {int(e["trial"]): e for e in spec.get("trials", [])}
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
                oof, labels = assemble_oof(models, n_pool, repeats)
                row.update(oof_scores(oof, labels, models))
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
    return jsonable({"study": name, "refit_study": rstudy.study_name, "folds": folds, "repeats": repeats,
                     "seed": spec.get("seed"), "pool": spec.get("pool"), "failed_folds": failed,
                     "configs": rows})


#: What the choice of ranking measure rests on (benchmarks/README.md, "What ranks finalists").
OOF_BASIS = ("out-of-fold MAE scores every sample of train+valid, and it predicted the refit models' test MAE "
             "better than the small validation split's MAE did (benchmarks/README.md, refit.py)")


def finalists_ranking(table: dict[str, Any] | None, best: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    """Which measure ranks study ``name``'s finalists, and which configuration leads by it.

    Out-of-fold MAE when the refit ``table`` (:func:`refit_table`) has a configuration with every
    fold trained (ranked over those), else validation MAE over the trials (``best``: the best
    COMPLETE trial's record, with ``number`` and ``val_mae``). None when neither exists.
    """
    scored = [r for r in (table or {}).get("configs", []) if r.get("oof_mae") is not None]
    if scored:
        lead = min(scored, key=lambda r: (r["oof_mae"], r["trial"]))
        val_lead = (best or {}).get("number")
        return {"measure": "oof_mae", "label": "out-of-fold MAE", "trial": lead["trial"], "value": lead["oof_mae"],
                "val_mae": lead.get("val_mae"), "preset": lead.get("preset"), "configs": len(scored),
                "agrees_with_val": val_lead is None or val_lead == lead["trial"], "val_best_trial": val_lead,
                "basis": OOF_BASIS}
    if best:
        return {"measure": "val_mae", "label": "validation MAE", "trial": best["number"], "value": best["val_mae"],
                "val_mae": best["val_mae"], "preset": best.get("preset"), "configs": None,
                "agrees_with_val": True, "val_best_trial": best["number"],
                "basis": (f"no refit yet: msatune refit {name} ranks the top configurations by out-of-fold "
                          "MAE, which predicted test better")}
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


def bagged_configs(storage: optuna.storages.BaseStorage, name: str) -> tuple[dict[str, Any], list[BaggedConfig], list[str]]:
    """``(spec, configs, warnings)``: every refit configuration of study ``name`` whose folds are all
    trained, with its fold models and OOF predictions. UserError when there is no refit or no
    configuration is finished."""
    from msatune.models.checkpoint import read_checkpoint_meta

    loaded = load_refit(storage, name)
    if loaded is None:
        raise UserError(f"study {name!r} has no refit yet; run: msatune refit {name} --top-k K --folds F")
    rstudy, spec = loaded
    folds, repeats, n_pool = int(spec["folds"]), int(spec["repeats"]), int(spec["pool"]["total"])
    records = fold_records(rstudy)
    configs, warnings = [], []
    for entry in spec.get("trials", []):
        trial = int(entry["trial"])
        models = fold_models(records, trial, folds, repeats)
        if len(models) < folds * repeats:
            warnings.append(f"trial {trial}: {len(models)} of {folds * repeats} folds trained; left out "
                            f"(finish it with msatune refit {name})")
            continue
        try:
            oof, _ = assemble_oof(models, n_pool, repeats)
            config, meta = read_checkpoint_meta(models[0].checkpoint)
        except UserError as exc:
            warnings.append(f"trial {trial}: {exc}; left out")
            continue
        seq_len = meta.get("seq_len")
        configs.append(BaggedConfig(trial=trial, val_mae=entry.get("val_mae"), folds=models, oof=oof,
                                    config=config, dims={k: int(v) for k, v in meta["dims"].items()},
                                    seq_len=None if seq_len is None else int(seq_len)))
    if not configs:
        raise UserError(f"no configuration of the refit of study {name!r} has all its folds trained "
                        f"({'; '.join(warnings[:2]) or 'no fold finished'}); continue it with: msatune refit {name}")
    return spec, configs, warnings
