"""Refits and bagged ensembles vs selection on one validation split (issue 17).

On one dataset per run (``--dataset mosi``: the embedded MOSI-like set; ``--dataset video``: a set
of another structure, see ``augment/synth.py``; any other synthetic preset, e.g. ``lexicon``;
``--data DIR``: any msa-tf2 directory, only read, its entry named after the directory), in three
stages that can run as separate processes (each stage reads what the previous one left in
``--workspace``):

1. ``study``: a study of small models (``model_dim`` 16/32, one layer each; ``family`` baseline
   or improved searched too, so ensembles mix both architectures) with msatune's TPE, no ASHA
   stop (``grace_period = max_epochs``: every trial COMPLETE, so the top-K are K real configs),
   2 trials at once of 1 CPU, no presets.
2. ``refit``: ``msatune refit`` of the top-K trials by validation MAE on F stratified folds
   (``--scheme seeds``: instead each trained 3 more times at other seeds on the study's own train
   split, early-stopped on valid, the product's default refit since stop 56; its entry is
   ``NAME+seeds``, and its "OOF MAE" is the seeds' averaged valid MAE that ranks its configurations).
3. ``score``: what each approach gives on test (never used before this stage):
   * best single (val-selected): the study's best trial by validation MAE;
   * greedy ensemble (val-selected): ``msatune ensemble`` (greedy, fitted on validation);
   * best single after refit: the configuration with the best OOF MAE, its fold models averaged;
   * bagged greedy ensemble: ``msatune ensemble --from refit`` (greedy on OOF predictions).
   Both ensembles are exported (``.keras`` + SavedModel) as a user would run them.
   Rank agreement: Spearman of validation MAE and of OOF MAE with the test MAE over the top-K
   (the test MAE of each trial's own checkpoint; with the bagged test MAE as a second target).
4. ``presets`` (optional, after the others; not part of ``--stage all``): the users' improved
   preset trained by ``msatune train`` at seeds 0, 1, 2, ... one after another until their wall
   time reaches the bagged ensemble's (study + refit + bagged ensemble), their test predictions
   averaged: issue 22's "seed-averaged improved preset of the same compute". Its row joins the
   table (and the JSON entry) once the stage ran.

Wall time of an approach = the stages it needs (study; + ensemble; + refit; + bagged ensemble).
Goals: bagged greedy test MAE <= 0.95 x the val-selected best single's on both datasets, and
Spearman(OOF, test) > Spearman(val, test). Writes ``benchmarks/results/refit.json`` (one entry per
dataset, merged), prints the table; never asserts.

    python benchmarks/refit.py --dataset mosi --stage study    # 20 trials x 15 epochs (~5 min)
    python benchmarks/refit.py --dataset mosi --stage refit    # top 10 x 5 folds (~12 min)
    python benchmarks/refit.py --dataset mosi --stage score    # both ensembles, exported (~3 min)
    python benchmarks/refit.py --dataset video --stage all     # all three in one process
    python benchmarks/refit.py --data DIR                      # any msa-tf2 directory (recorded)
    python benchmarks/refit.py --dataset lexicon --seed 1      # another seed of one structure
    python benchmarks/refit.py --across-seeds                  # medians over seeds per structure
    python benchmarks/refit.py --dataset mosi --stage presets  # the preset averaged at the same wall (~25 min)
    python benchmarks/refit.py --dataset mosi --scheme seeds   # the seeds refit: entry mosi+seeds
    python benchmarks/refit.py --smoke --out /tmp/refit.json   # tiny data, every stage (~2 min)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (  # noqa: E402
    add_data_args,
    base_doc,
    clear_studies,
    data_label,
    data_tag,
    print_table,
    resolve_data,
    result_path,
    write_json,
)

STAGES = ("study", "refit", "score")
#: Stages run only when asked for by name (``--stage presets``).
EXTRA_STAGES = ("presets",)
#: The most preset runs the presets stage makes, whatever the budget.
MAX_PRESET_RUNS = 40
GOAL_RATIO = 0.95
SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"trials": 4, "epochs": 8, "top_k": 2, "folds": 2, "repeats": 1},
    "full": {"trials": 20, "epochs": 15, "top_k": 10, "folds": 5, "repeats": 3},
}
SPACE = """
replace = true
[family]
choices = ["baseline", "improved"]
[learning_rate]
low = 3e-4
high = 3e-3
log = true
[optimizer]
choices = ["adam", "adamw"]
[loss]
choices = ["mae", "huber"]
[dropout]
low = 0.0
high = 0.5
[l2]
low = 1e-5
high = 1e-2
log = true
[warmup_epochs]
low = 0
high = 3
[aug_noise]
low = 0.0
high = 0.2
[aug_mixup]
low = 0.0
high = 0.3
[model_dim]
choices = [16, 32]
[batch_size]
choices = [32, 64]
[num_heads]
value = 2
[ff_dim]
value = 32
[n_layers_mod]
value = 1
[n_layers_fuse]
value = 1
[head_units]
value = 32
[head_units2]
value = 16
[gate_units]
value = 16
[cosine_epochs]
value = 0
"""
NAME = "bench"


def dataset_key(args: argparse.Namespace) -> str:
    """The run's entry in the result: ``--dataset``, or ``--data``'s directory name (with
    ``-data`` when that is also a synthetic preset's name)."""
    from msatune.augment.synth import PRESETS

    tag = data_tag(args, args.dataset) if args.data is not None else None
    key = args.dataset if tag is None else f"{tag}-data" if tag in PRESETS else tag
    key += "+seeds" if args.scheme == "seeds" else ""
    return key if args.seed == 0 else f"{key}@seed{args.seed}"


def workspace(args: argparse.Namespace) -> Path:
    return Path(args.workspace or f"/tmp/msatune-bench-refit/{dataset_key(args)}{'-smoke' if args.smoke else ''}")


def stage_study(ws_root: Path, data: Path, size: dict[str, Any], seed: int) -> dict[str, Any]:
    from msatune.search.search_settings import SearchSettings
    from msatune.studies.runs import launch
    from msatune.studies.store.connect import open_storage
    from msatune.studies.store.workspace import Workspace

    clear_studies(ws_root)  # a study stage starts from an empty workspace
    ws = Workspace(ws_root).ensure()
    space = ws_root / "space.toml"
    space.write_text(SPACE)
    settings = SearchSettings(trials=size["trials"], max_epochs=size["epochs"], grace_period=size["epochs"],
                              cpus_per_trial=1.0, seed=seed)
    t0 = time.perf_counter()
    run = launch(ws, open_storage(ws.storage_url), NAME, settings, data_dir=data, space_file=space, presets=False)
    return {"wall_s": time.perf_counter() - t0, "run": run}


def stage_refit(ws_root: Path, size: dict[str, Any], seed: int, scheme: str = "folds") -> dict[str, Any]:
    from msatune.studies.refit.run import RefitOptions, run_refit
    from msatune.studies.store.connect import open_storage
    from msatune.studies.store.workspace import Workspace

    ws = Workspace(ws_root)
    # a seeds refit has no fold assignment to seed: each repeat trains at its own seed
    shape = ({"folds": size["folds"], "seed": seed} if scheme == "folds" else {"repeats": size["repeats"]})
    t0 = time.perf_counter()
    summary = run_refit(ws, open_storage(ws.storage_url), NAME,
                        RefitOptions(top_k=size["top_k"], scheme=scheme, **shape))
    return {"wall_s": time.perf_counter() - t0, "run": summary["run"], "configs": summary["configs"],
            "scheme": scheme, **shape}


def stage_score(ws_root: Path) -> dict[str, Any]:
    from msatune.ensemble.fitting import EnsembleOptions
    from msatune.studies.ensembles import run_ensemble
    from msatune.studies.store.connect import open_storage
    from msatune.studies.store.workspace import Workspace

    ws = Workspace(ws_root)
    store = open_storage(ws.storage_url)
    t0 = time.perf_counter()
    flat = run_ensemble(ws, store, NAME, EnsembleOptions(method="greedy")).summary()
    t1 = time.perf_counter()
    bagged = run_ensemble(ws, store, NAME, EnsembleOptions(method="greedy"), source="refit").summary()
    t2 = time.perf_counter()
    return {"ensemble_wall_s": t1 - t0, "bagged_wall_s": t2 - t1, "flat": flat, "bagged": bagged}


def stage_presets(ws_root: Path, data: Path, budget_s: float, smoke: bool) -> dict[str, Any]:
    """The improved preset at seeds 0, 1, ... (``msatune train``, one process each, one after
    another) until their summed wall time reaches ``budget_s``; the test MAE of the average of
    the first k runs' test predictions for every k (clipped to [-3, 3], as msatune scores)."""
    import subprocess

    import numpy as np

    from msatune.models.checkpoint import read_predictions

    out_root = ws_root / "presets"
    if out_root.exists():
        shutil.rmtree(out_root)
    runs: list[dict[str, Any]] = []
    preds: list[np.ndarray] = []
    labels = None
    spent = 0.0
    while (spent < budget_s or not runs) and len(runs) < MAX_PRESET_RUNS:
        seed = len(runs)
        out = out_root / f"seed{seed}"
        cmd = [sys.executable, "-m", "msatune.studies.cli", "train", "--preset", "improved", "--data", str(data),
               "--set", f"seed={seed}", "--out", str(out), "--json"]
        if smoke:
            cmd += ["--epochs", "2", "--set", "model_dim=16", "--set", "ff_dim=32"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "MSATUNE_WORKSPACE": str(ws_root)})
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"msatune train failed: {(proc.stderr or proc.stdout).strip()[-2000:]}")
        spent += wall
        arrays = read_predictions(out / "checkpoint", ("test",))
        labels = arrays["test_label"] if labels is None else labels
        preds.append(arrays["test_pred"])
        runs.append({"seed": seed, "wall_s": wall, "test_mae": float(np.mean(np.abs(arrays["test_pred"] - labels)))})
        averaged = np.mean(preds, axis=0)
        runs[-1]["averaged_test_mae"] = float(np.mean(np.abs(averaged - labels)))
        print(f"  preset seed {seed}: test {runs[-1]['test_mae']:.4f}, average of {len(preds)} "
              f"{runs[-1]['averaged_test_mae']:.4f} ({spent:.0f} of {budget_s:.0f} s)", flush=True)
    return {"wall_s": spent, "budget_s": budget_s, "runs": runs,
            "test_mae": runs[-1]["averaged_test_mae"], "single_test_mae": runs[0]["test_mae"]}


def table(entry: dict[str, Any]) -> dict[str, Any]:
    """The four approaches: test MAE, ratio to the val-selected best single, wall time."""
    st, rf, sc = entry["study"], entry["refit"], entry["score"]
    flat, bagged = sc["flat"], sc["bagged"]
    single = flat["best_single"]
    base = single["test"]["mae"]
    rows = [
        {"approach": f"best single (val-selected) #{single['trial']}", "test_mae": base,
         "wall_s": st["wall_s"]},
        {"approach": "greedy ensemble (val-selected)", "test_mae": flat["test"]["mae"],
         "wall_s": st["wall_s"] + sc["ensemble_wall_s"]},
        {"approach": f"best single after refit #{bagged['refit_best_single']['trial']}",
         "test_mae": bagged["refit_best_single"]["test"]["mae"], "wall_s": st["wall_s"] + rf["wall_s"]},
        {"approach": "bagged greedy ensemble", "test_mae": bagged["test"]["mae"],
         "wall_s": st["wall_s"] + rf["wall_s"] + sc["bagged_wall_s"]},
    ]
    if "presets" in entry:
        pr = entry["presets"]
        rows.append({"approach": f"improved preset, {len(pr['runs'])} seeds averaged (same wall)",
                     "test_mae": pr["test_mae"], "wall_s": pr["wall_s"]})
    for r in rows:
        r["ratio"] = r["test_mae"] / base
    ra = bagged["rank_agreement"]
    goals = {
        "bagged_ratio": rows[3]["ratio"], "bagged_ratio_goal": GOAL_RATIO, "bagged_met": rows[3]["ratio"] <= GOAL_RATIO,
        "spearman_val_test": ra["val_vs_test"], "spearman_oof_test": ra["oof_vs_test"],
        "spearman_met": (ra["oof_vs_test"] is not None and ra["val_vs_test"] is not None
                         and ra["oof_vs_test"] > ra["val_vs_test"]),
        "spearman_val_bagged_test": ra["val_vs_bagged_test"], "spearman_oof_bagged_test": ra["oof_vs_bagged_test"],
        "configs": ra["configs"],
        "bagged_beats_presets": (rows[3]["test_mae"] < rows[4]["test_mae"]) if len(rows) > 4 else None,
    }
    return {"rows": rows, "goals": goals, "reference": bagged["reference"]["test"],
            "configs": bagged["configs"], "members": [(m["trial"], m["weight"]) for m in bagged["members"]],
            "flat_members": [(m["trial"], m["weight"]) for m in flat["members"]]}


def across_seeds(datasets: dict[str, Any]) -> list[dict[str, Any]]:
    """Per structure (an entry's name without ``@seedN``): how many seeds, and the median over them
    of each approach's test MAE ratio to the val-selected best single and of each Spearman."""
    import statistics

    groups: dict[str, list[dict[str, Any]]] = {}
    for key, entry in datasets.items():
        groups.setdefault(key.split("@seed")[0], []).append(entry)

    def med(values: list[Any]) -> float | None:
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    out = []
    for structure, entries in sorted(groups.items()):
        ratios = [[r["ratio"] for r in e["rows"]] for e in entries]
        g = [e["goals"] for e in entries]
        out.append({
            "structure": structure, "seeds": len(entries),
            "greedy_val": med([r[1] for r in ratios]), "refit_single": med([r[2] for r in ratios]),
            "bagged": med([r[3] for r in ratios]), "bagged_worst": max(r[3] for r in ratios),
            "bagged_met": sum(r[3] <= GOAL_RATIO for r in ratios),
            "bagged_wall": med([e["rows"][3]["wall_s"] / e["rows"][0]["wall_s"] for e in entries]),
            "presets": med([e["rows"][4]["ratio"] for e in entries if len(e["rows"]) > 4]),
            "presets_seeds": sum(len(e["rows"]) > 4 for e in entries),
            "sp_val_single": med([x["spearman_val_test"] for x in g]),
            "sp_oof_single": med([x["spearman_oof_test"] for x in g]),
            "sp_val_bagged": med([x["spearman_val_bagged_test"] for x in g]),
            "sp_oof_bagged": med([x["spearman_oof_bagged_test"] for x in g]),
        })
    return out


def print_across_seeds(path: Path) -> None:
    doc = json.loads(path.read_text())
    rows = across_seeds(doc.get("datasets", {}))
    print_table(rows, [("structure", "structure", 0), ("seeds", "seeds", 0),
                       ("greedy_val", "greedy (val) x", 3), ("refit_single", "refit single x", 3),
                       ("bagged", "bagged x", 3), ("bagged_worst", "bagged worst x", 3),
                       ("bagged_met", f"seeds <= {GOAL_RATIO}", 0), ("bagged_wall", "bagged wall x search", 1),
                       ("presets", "presets avg x", 3), ("presets_seeds", "seeds w/ presets", 0),
                       ("sp_val_single", "rho val/test", 2), ("sp_oof_single", "rho OOF/test", 2),
                       ("sp_val_bagged", "rho val/bagged test", 2), ("sp_oof_bagged", "rho OOF/bagged test", 2)],
                title=f"{path.name}: medians over seeds (x = test MAE / val-selected best single's)")


def main(argv: list[str] | None = None) -> int:
    from msatune.augment.synth import PRESETS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=list(PRESETS), default="mosi",
                   help="the synthetic preset when no --data (--smoke: tiny) [mosi]")
    add_data_args(p, "mosi", synth=False)
    p.add_argument("--stage", choices=(*STAGES, *EXTRA_STAGES, "all"), default="all",
                   help="one stage, or all of study, refit, score (presets runs only when named)")
    p.add_argument("--workspace", type=Path, default=None, help="Where the stages keep the study.")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the study (sampler, trials) and of the refit's folds; the data stays the "
                        "structure's seed-0 set, so seeds replicate one dataset [0]; its entry is NAME@seedN")
    p.add_argument("--scheme", choices=("folds", "seeds"), default="folds",
                   help="the refit stage's scheme: folds (top 10 x 5 folds of train+valid, what every entry "
                        "before stop 57 measured) or seeds (top 10 x 3 seed repeats on train, valid held out; "
                        "the entry is NAME+seeds) [folds]")
    p.add_argument("--smoke", action="store_true", help="Tiny data and sizes (tests).")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--across-seeds", action="store_true",
                   help="only print the medians over seeds per structure from the result file (runs nothing)")
    args = p.parse_args(argv)
    if args.across_seeds:
        print_across_seeds(result_path("refit", "full", args.out))
        return 0
    mode = "smoke" if args.smoke else "full"
    size = SIZES[mode]
    ws_root = workspace(args)
    ws_root.mkdir(parents=True, exist_ok=True)
    state_file = ws_root / "stages.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    key = dataset_key(args)
    stages = STAGES if args.stage == "all" else (args.stage,)
    for stage in stages:
        print(f"[{time.strftime('%H:%M:%S')}] {key}: stage {stage} ...", flush=True)
        t_load = base_doc("refit", mode, {"data": 0, "study": 0, "folds": 0})["machine"]["loadavg"]
        if stage == "study":
            # the data is the study's: the later stages read it from the study, its record from here
            data, data_rec = resolve_data(args, ws_root / "data", "tiny" if args.smoke else args.dataset, seed=0)
            print(f"  on {data_label(data_rec)}", flush=True)
            state = {"study": stage_study(ws_root, data, size, args.seed)}
            state["study"]["data"] = data_rec
        elif stage == "refit":
            state["refit"] = stage_refit(ws_root, size, args.seed, args.scheme)
        elif stage == "presets":
            if not all(s in state for s in STAGES):
                print("run the study, refit and score stages first: the presets get their wall time")
                return 2
            budget = state["study"]["wall_s"] + state["refit"]["wall_s"] + state["score"]["bagged_wall_s"]
            data = resolve_data(args, ws_root / "data", "tiny" if args.smoke else args.dataset, seed=0)[0]
            state["presets"] = stage_presets(ws_root, data, budget, args.smoke)
        else:
            state["score"] = stage_score(ws_root)
        state[stage]["loadavg_start"] = t_load
        state[stage]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        state_file.write_text(json.dumps(state, indent=2, default=str) + "\n")
    if not all(s in state for s in STAGES):
        print(f"stages done so far: {[s for s in STAGES if s in state]}; run the others to get the table")
        return 0

    data_rec = state["study"].get("data")
    if data_rec is None:  # a workspace whose study stage ran before the data was recorded there
        data_rec = resolve_data(args, ws_root / "data", "tiny" if args.smoke else args.dataset, seed=0)[1]
    stage_keys = ("wall_s", "ensemble_wall_s", "bagged_wall_s", "loadavg_start", "finished", "run", "budget_s", "scheme",
                  "runs")
    entry = {"preset": data_rec["synthetic_preset"], "data": data_rec, "sizes": size, "seed": args.seed,
             "stages": {s: {k: v for k, v in state[s].items() if k in stage_keys}
                        for s in (*STAGES, *EXTRA_STAGES) if s in state},
             **table(state)}
    out = result_path("refit", "smoke" if args.smoke else "full", args.out)
    doc = json.loads(out.read_text()) if out.exists() else base_doc("refit", mode, {"data": 0, "study": 0, "folds": 0})
    # the entry keeps when it was first written and its machine record (its study's); a later stage
    # merged into it says when in ``updated`` and keeps its own load and end in its stage record
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    previous = doc.setdefault("datasets", {}).get(key) or {}
    doc["datasets"][key] = {**entry, "timestamp": previous.get("timestamp", now), "updated": now,
                            "machine": previous.get("machine") or base_doc("refit", mode, {})["machine"]}
    print_table(entry["rows"], [("approach", "approach", 0), ("test_mae", "test MAE", 4), ("ratio", "x best single", 3),
                                ("wall_s", "wall s", 0)],
                title=f"{key}: test MAE (constant {entry['reference']['constant_mae']:.4f}, "
                      f"floor {entry['reference'].get('floor_mae') or 0:.4f})")
    print_table(entry["configs"], [("trial", "trial", 0), ("val_mae", "val MAE", 4), ("oof_mae", "OOF MAE", 4),
                                   ("test_mae_single", "test (trial)", 4), ("test_mae_bagged", "test (bagged)", 4)],
                title="top-K configurations")
    g = entry["goals"]
    print(f"\nbagged greedy / best single = {g['bagged_ratio']:.3f} (goal <= {GOAL_RATIO}): "
          f"{'met' if g['bagged_met'] else 'missed'}")
    print(f"Spearman with test MAE over {g['configs']} configs: val {g['spearman_val_test']}, "
          f"OOF {g['spearman_oof_test']}: {'met' if g['spearman_met'] else 'missed'}")
    write_json(out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
