"""The model a default study returns against the users' improved preset averaged over seeds at the
same wall time (issue 22, goal 1, as a user runs it).

``refit.py`` answers the question for a study of small models without presets; this benchmark runs
the product's own path, the README's one command and the ensemble after it, as a user would::

    msatune launch bench --data D --trials 24 --max-epochs 27 --refit-top K --refit-scheme seeds --seed S
    msatune ensemble bench --json                                                    # --from auto: bagged

(``--refit-scheme seeds`` with 3 repeats, top 3, is the product's default since stop 56: stage
``seedbag`` measured it offline and ``refit --scheme seeds`` builds it, benchmarks/README.md "The
seeds scheme built"; ``--refit-scheme folds`` runs the 3-fold refit of the top 5 that every product
row recorded before stop 57 measured)

then trains ``msatune train --preset improved`` at seeds 0, 1, 2, ... one after another until their
wall time reaches the path's (launch + ensemble), and averages their test predictions
(``refit.stage_presets``). Test MAE is read once, at the end of each path. Also recorded from
the ensemble's JSON: the val-selected best single trial and the trials' greedy ensemble (both on
test), and what the path cost. Stage ``ensemble`` builds the product stage's ensembles again
(after a change to ``msatune ensemble``). Stage ``refolds`` refits the same study's top K again at
``--refolds`` folds (``msatune refit --replace``, after the product stage's 3-fold refit was read)
and builds the ensemble again: the fold count's effect on the bagged model with the search held
fixed. Stage ``bagshare`` (offline, reads the cached predictions only) scores the default ensemble
again with the trial's own model given other shares of its bag. Stage ``seedbag`` trains the
study's top ``--seedbag-top`` COMPLETE configurations ``--seedbag-repeats`` more times each on the
study's own train split at other seeds (early stopping on its valid split, as their trials; two
processes of one thread) and scores, offline, seed averages with each trial's own model: the
val-best configuration's, the top ones' mean and their greedy ensemble on validation (every such
model trained on all of train, with honest validation predictions; a fold model trains on 2/3 of
train+valid). Stages (``--stage product,refolds,presets``; ``all`` = product,presets) keep their state in the workspace; results merge into ``benchmarks/results/default_model.json`` per entry
(structure@seed).

    python benchmarks/default_model.py --dataset video                 # ~60 min on 2 CPUs (product ~30, presets ~30)
    python benchmarks/default_model.py --dataset lexicon --seed 1
    python benchmarks/default_model.py --data DIR                      # any msa-tf2 directory (only read)
    python benchmarks/default_model.py --dataset mosi --stage product,refolds  # then the same study's refit at 5 folds
    python benchmarks/default_model.py --dataset video --stage table   # the result from the stages already run
    python benchmarks/default_model.py --dataset lexicon --seed 1 --stage bagshare   # seconds, offline
    python benchmarks/default_model.py --dataset mosi --seed 4 --stage product,seedbag  # ~40 min on 2 CPUs
    python benchmarks/default_model.py --smoke --out /tmp/dm.json      # tiny data, every stage (~3 min)

Never asserts anything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (  # noqa: E402
    add_data_args,
    add_worker_arg,
    answer_worker,
    base_doc,
    clear_studies,
    data_label,
    data_tag,
    loadavg,
    print_table,
    resolve_data,
    result_path,
    run_worker,
    write_json,
)

NAME = "bench"
SIZES: dict[str, dict[str, int]] = {
    # refit_top: the fold refit's top K (every product row before stop 57); seeds_top: the seeds
    # scheme's (stop 56's product rows, the README's --refit-top 3)
    "smoke": {"trials": 4, "max_epochs": 3, "refit_top": 2, "seeds_top": 2, "refit_folds": 2, "refit_repeats": 1},
    "full": {"trials": 24, "max_epochs": 27, "refit_top": 5, "seeds_top": 3, "refit_folds": 3, "refit_repeats": 3},
}


def msatune(ws: Path, *args: str) -> tuple[float, str]:
    """Run ``msatune --workspace WS ARGS`` to its end; (wall seconds, stdout). Fails loudly."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "msatune.studies.cli", "--workspace", str(ws), *args],
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"msatune {' '.join(args)} exited {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return wall, proc.stdout


def stage_product(ws: Path, data: Path, size: dict[str, int], seed: int, smoke: bool,
                  scheme: str = "seeds", top_k: int | None = None) -> dict[str, Any]:
    """The default path: launch with --refit-top (``scheme``'s refit), then ``ensemble`` (--from auto)."""
    clear_studies(ws)
    if scheme == "folds":
        shape, default_top = {"folds": size["refit_folds"]}, size["refit_top"]
    else:
        shape, default_top = {"repeats": size["refit_repeats"]}, size["seeds_top"]
    top_k = default_top if top_k is None else top_k
    refit = ["--refit-scheme", scheme, *(a for k, v in shape.items() for a in (f"--refit-{k}", str(v)))]
    launch = ["launch", NAME, "--data", str(data), "--trials", str(size["trials"]),
              "--max-epochs", str(size["max_epochs"]), "--refit-top", str(top_k), *refit,
              "--seed", str(seed), "--json"]
    if smoke:
        launch += ["--grace-period", "1"]
    launch_s, launch_out = msatune(ws, *launch)
    run = json.loads(launch_out)
    ens = ensemble_summary(ws)
    return {"launch_s": launch_s, "wall_s": launch_s + ens["ensemble_s"], **ens, "scheme": scheme,
            "top_k": top_k, **shape,
            "launch": {k: run.get(k) for k in ("states", "best", "wall_seconds", "refit") if k in run}}


def ensemble_summary(ws: Path) -> dict[str, Any]:
    """``msatune ensemble NAME --json`` (the default kind) and what ``show`` says of the refit;
    first the bagged ensemble with fold models only (``--folds-only --no-export``: the bags
    without the trials' own models, recorded before the default's record replaces it)."""
    _, only_out = msatune(ws, "ensemble", NAME, "--from", "refit", "--folds-only", "--no-export", "--json")
    ensemble_s, ens_out = msatune(ws, "ensemble", NAME, "--json")
    ens = json.loads(ens_out)
    single = ens.get("best_single") or {}
    flat = ens.get("non_bagged") or {}
    _, show_out = msatune(ws, "show", NAME, "--top", "30", "--json")
    return {
        "ensemble_s": ensemble_s,
        "source": ens.get("source", "trials"), "test_mae": ens["test"]["mae"],
        "bag": (ens.get("refit") or {}).get("bag"),
        "folds_only_test_mae": json.loads(only_out)["test"]["mae"],
        "best_single": {"trial": single.get("trial"), "test_mae": (single.get("test") or {}).get("mae"),
                        "valid_mae": (single.get("valid") or {}).get("mae")},
        "trials_ensemble_test_mae": (flat.get("test") or {}).get("mae") if flat else None,
        "trials_ensemble_members": flat.get("members") if flat else None,
        "refit_best_single": {"trial": (ens.get("refit_best_single") or {}).get("trial"),
                              "test_mae": ((ens.get("refit_best_single") or {}).get("test") or {}).get("mae")},
        "members": [(m["trial"], m["weight"]) for m in ens.get("members", [])],
        "cost": ens.get("cost"), "show": json.loads(show_out),
    }


def stage_refolds(ws: Path, top_k: int, folds: int, seed: int) -> dict[str, Any]:
    """The product stage's study refit again at ``folds`` folds (its 3-fold refit replaced), then
    the default ensemble again; the search is the product stage's, ``top_k`` its refit's."""
    refit_s, _ = msatune(ws, "refit", NAME, "--top-k", str(top_k), "--folds", str(folds),
                         "--seed", str(seed), "--replace", "--json")
    return {"refit_s": refit_s, "folds": folds, **ensemble_summary(ws)}


#: the trial's own model's share of its bag in ``bagshare`` ("equal": 1 / (folds + 1), the product's share until
#: 2026-12-05; 0.5 since, ``msatune.ensemble.bagging.TRIAL_SHARE``)
BAG_SHARES = (0.0, "equal", 0.4, 0.5, 0.6, 1.0)


def stage_bagshare(ws: Path, data: Path) -> dict[str, Any]:
    """Offline, from the predictions the default ensemble's members cached: its test MAE when the
    trial's own model takes another share of each bag (the members and their weights stay as the
    OOF fit chose them; the trial's model never enters that fit). Reads through the product's own
    readers (``bagged_configs``, ``fold_test_predictions``, ``trial_test_predictions``)."""
    import numpy as np
    import optuna

    from msatune.augment.dataset import load_dataset
    from msatune.ensemble.bagging import (
        bag_predictions,
        fold_test_predictions,
        trial_test_predictions,
    )
    from msatune.label_range import clip_predictions
    from msatune.studies.refit.table import bagged_configs
    from msatune.studies.store.connect import open_storage

    ens = json.loads((ws / "studies" / NAME / "ensembles" / "refit-greedy" / "ensemble.json").read_text())
    storage = open_storage(f"sqlite:///{ws / 'studies.db'}", read_only=True)
    own_ckpt = {t.number: t.user_attrs.get("checkpoint")
                for t in optuna.load_study(study_name=NAME, storage=storage).get_trials(deepcopy=False)}
    folds_of = {c.trial: c.folds for c in bagged_configs(storage, NAME)[1]}
    test = load_dataset(data).test
    labels = np.asarray(test.labels, dtype=np.float64).reshape(-1)
    members = [(m["weight"], [fold_test_predictions(f.checkpoint, test) for f in folds_of[m["trial"]]],
                trial_test_predictions(Path(own_ckpt[m["trial"]]), test)) for m in ens["members"]]
    rows = []
    for share in BAG_SHARES:  # each bag as the product forms it (bag_predictions), clipped as exported
        pred = sum(weight * clip_predictions(bag_predictions(folds, own, None if share == "equal" else float(share)))
                   for weight, folds, own in members)
        rows.append({"share": share, "test_mae": float(np.mean(np.abs(clip_predictions(pred) - labels)))})
    return {"reported_test_mae": ens["test"]["mae"], "rows": rows}


#: the seedbag stage's training seeds: the trial's own seed moved by a prime per repeat
SEEDBAG_STRIDE = 104729


def seedbag_task(task: dict[str, Any]) -> dict[str, Any]:
    """One seed repeat (a :func:`bench_common.run_worker` process, one thread): the configuration's
    own recipe on the study's own train/valid split, at another seed; its valid and test
    predictions to ``task['out']``."""
    import numpy as np

    from msatune.augment.dataset import load_dataset
    from msatune.search.trainable import configure_tensorflow
    from msatune.search.trial import run_trial

    configure_tensorflow(1.0)
    data = load_dataset(task["data"])
    t0 = time.perf_counter()
    out = Path(task["out"])
    outcome = run_trial(task["config"], data, out_dir=out.with_suffix(".work"))
    pr = outcome.predictions
    meta = {"seconds": time.perf_counter() - t0, "best_epoch": outcome.result.best_epoch + 1,
            "epochs": outcome.result.epochs_trained, "val_mae": outcome.result.best_val_mae}
    np.savez(out.with_suffix(".tmp.npz"), valid_pred=pr["valid_pred"], valid_index=pr["valid_index"],
             test_pred=pr["test_pred"], test_index=pr["test_index"], meta=json.dumps(meta))
    out.with_suffix(".tmp.npz").rename(out)
    return meta


def _in_order(pred: Any, index: Any, n: int) -> Any:
    import numpy as np

    out = np.full(n, np.nan)
    out[np.asarray(index, dtype=np.int64)] = np.asarray(pred, dtype=np.float64).reshape(-1)
    if np.isnan(out).any():
        raise RuntimeError("predictions do not cover the split")
    return out


def stage_seedbag(ws: Path, data: Path, top_k: int, repeats: int) -> dict[str, Any]:
    """Seed repeats instead of folds: the study's top ``top_k`` COMPLETE configurations each trained
    ``repeats`` more times on the study's own train split (early stopping on its valid split, as
    their trials), two processes of one thread at a time, then combined offline with each trial's
    own model: every model sees all the training data and has honest validation predictions."""
    import numpy as np
    import optuna

    from msatune.augment.dataset import load_dataset
    from msatune.ensemble.bagging import trial_test_predictions
    from msatune.ensemble.combiners import fit_greedy
    from msatune.label_range import clip_predictions
    from msatune.models.checkpoint import read_predictions
    from msatune.studies.refit.choice import choose_configs
    from msatune.studies.store.connect import open_storage

    storage = open_storage(f"sqlite:///{ws / 'studies.db'}", read_only=True)
    study = optuna.load_study(study_name=NAME, storage=storage)
    chosen, _ = choose_configs(study, top_k, up_to=True)
    ckpt = {t.number: Path(t.user_attrs["checkpoint"]) for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get("checkpoint")}
    sb = ws / "seedbag"
    sb.mkdir(exist_ok=True)
    tasks = []
    for c in chosen:
        for r in range(1, repeats + 1):
            out = sb / f"t{c.trial}_r{r}.npz"
            if not out.exists():
                cfg = {**c.config, "seed": int(c.config.get("seed", 0)) + SEEDBAG_STRIDE * r}
                tasks.append({"config": cfg, "data": str(data), "out": str(out)})
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:  # two worker processes at a time; a failure raises with its output
        list(pool.map(lambda task: run_worker(Path(__file__), task, timeout=3 * 3600,
                                              env={"TF_CPP_MIN_LOG_LEVEL": "3"}), tasks))
    walls = sb / "wall.json"  # the seed repeats' wall over every run of this stage (a rerun trains only what is missing)
    wall = (json.loads(walls.read_text())["wall_s"] if walls.exists() else 0.0) + time.perf_counter() - t0
    walls.write_text(json.dumps({"wall_s": wall}))
    ds = load_dataset(data)
    yv = np.asarray(ds.valid.labels, dtype=np.float64).reshape(-1)
    yt = np.asarray(ds.test.labels, dtype=np.float64).reshape(-1)
    configs, seconds = [], []
    for c in chosen:
        own_v = read_predictions(ckpt[c.trial], ("valid",), clip=False)
        models = [(_in_order(own_v["valid_pred"], own_v["valid_index"], yv.size),
                   trial_test_predictions(ckpt[c.trial], ds.test))]
        reps = []
        for r in range(1, repeats + 1):
            with np.load(sb / f"t{c.trial}_r{r}.npz") as f:
                models.append((_in_order(f["valid_pred"], f["valid_index"], yv.size),
                               _in_order(f["test_pred"], f["test_index"], yt.size)))
                meta = json.loads(str(f["meta"]))
            seconds.append(meta["seconds"])
            reps.append(meta)
        v = np.mean([clip_predictions(m[0]) for m in models], axis=0)
        t = np.mean([clip_predictions(m[1]) for m in models], axis=0)
        maes = [(float(np.mean(np.abs(clip_predictions(m[0]) - yv))), float(np.mean(np.abs(clip_predictions(m[1]) - yt))))
                for m in models]
        configs.append({"trial": c.trial, "valid_mae": c.val_mae, "preset": c.preset, "models": maes, "repeats": reps,
                        "avg_valid_mae": float(np.mean(np.abs(v - yv))), "avg_test_mae": float(np.mean(np.abs(t - yt))),
                        "_v": v, "_t": t})
    best = configs[0]  # choose_configs: by the trial's validation MAE
    by_avg = min(configs, key=lambda c: c["avg_valid_mae"])
    V = np.stack([c["_v"] for c in configs], axis=1)
    T = np.stack([c["_t"] for c in configs], axis=1)
    greedy = fit_greedy(V, yv)
    rows = {
        "val-best single (its trial)": best["models"][0][1],
        "val-best configuration, seeds averaged": best["avg_test_mae"],
        "configuration best by its seeds' averaged validation, seeds averaged": by_avg["avg_test_mae"],
        f"top {len(configs)} seed-averaged, equal mean": float(np.mean(np.abs(T.mean(axis=1) - yt))),
        f"top {len(configs)} seed-averaged, greedy on validation": float(np.mean(np.abs(
            clip_predictions(T @ greedy.weights) - yt))),
    }
    with np.load(ws / "studies" / NAME / "ensembles" / "refit-greedy" / "predictions.npz") as f:  # the default's
        default = clip_predictions(_in_order(f["test_pred"], f["test_index"], yt.size))
    rows["the default and the seed repeats' greedy ensemble, 50/50"] = float(np.mean(np.abs(
        0.5 * default + 0.5 * clip_predictions(T @ greedy.weights) - yt)))
    for c in configs:
        del c["_v"], c["_t"]
    return {"top_k": len(configs), "repeats": repeats, "wall_s": wall, "tasks_run": len(tasks),
            "train_s_sum": float(np.sum(seconds)), "greedy_weights": greedy.weights.tolist(),
            "best_by_avg_valid": by_avg["trial"], "rows": rows, "configs": configs}


def table(state: dict[str, Any]) -> list[dict[str, Any]]:
    pr, pd = state["product"], state.get("presets")
    pr.setdefault("wall_s", pr["launch_s"] + pr["ensemble_s"])
    base = pr["best_single"]["test_mae"]
    rows = [
        {"approach": f"val-selected best single #{pr['best_single']['trial']}", "test_mae": base, "wall_s": None},
        {"approach": "trials' greedy ensemble", "test_mae": pr["trials_ensemble_test_mae"], "wall_s": None},
        {"approach": f"the study's model: `ensemble` ({pr['source']})", "test_mae": pr["test_mae"],
         "wall_s": pr["wall_s"]},
    ]
    if pd:
        rows.append({"approach": f"improved preset, {len(pd['runs'])} seeds averaged", "test_mae": pd["test_mae"],
                     "wall_s": pd["wall_s"]})
        rows.append({"approach": "improved preset, seed 0 alone", "test_mae": pd["single_test_mae"],
                     "wall_s": pd["runs"][0]["wall_s"]})
    if pr.get("folds_only_test_mae") is not None:
        rows.insert(2, {"approach": "bagged refit, fold models only (--folds-only)",
                        "test_mae": pr["folds_only_test_mae"], "wall_s": None})
    rf = state.get("refolds")
    if rf:
        at = next(i for i, r in enumerate(rows) if r["approach"].startswith("the study's model")) + 1
        rows.insert(at, {"approach": f"`ensemble` after a {rf['folds']}-fold refit ({rf['source']})",
                        "test_mae": rf["test_mae"],
                        "wall_s": ((pr.get("cost") or {}).get("search_s") or 0) + rf["refit_s"] + rf["ensemble_s"]})
    for r in rows:
        r["ratio"] = r["test_mae"] / base if r["test_mae"] is not None and base else None
    return rows


def main(argv: list[str] | None = None) -> int:
    from refit import stage_presets

    from msatune.augment.synth import PRESETS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=list(PRESETS), default="mosi", help="synthetic preset when no --data [mosi]")
    add_data_args(p, "mosi", synth=False)
    p.add_argument("--stage", default="all",
                   help="comma-separated stages of product, ensemble (the product's ensembles again), refolds, "
                        "presets, bagshare (offline: the trial's own model's share of its bag); all = product,presets; "
                        "table: only write the result from the stages already run")
    p.add_argument("--refit-scheme", choices=("seeds", "folds"), default="seeds",
                   help="the product stage's refit: seeds (the product's default, top 3 x 3 repeats) or folds "
                        "(3 folds of the top 5, what product rows before stop 57 measured) [seeds]")
    p.add_argument("--refit-top", type=int, default=None,
                   help="the product stage's --refit-top [3 for seeds, 5 for folds]")
    p.add_argument("--refolds", type=int, default=5, help="folds of the refolds stage's refit [5]")
    p.add_argument("--seed", type=int, default=0, help="the study's seed (the data stays the structure's seed-0 set)")
    p.add_argument("--workspace", type=Path, default=None)
    p.add_argument("--smoke", action="store_true", help="tiny data and sizes")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--seedbag-top", type=int, default=3, help="configurations of the seedbag stage [3]")
    p.add_argument("--seedbag-repeats", type=int, default=3, help="seed repeats per configuration [3]")
    add_worker_arg(p)  # a seed repeat of the seedbag stage
    args = p.parse_args(argv)
    if answer_worker(args, seedbag_task):
        return 0
    mode = "smoke" if args.smoke else "full"
    size = SIZES[mode]
    tag = data_tag(args, args.dataset) if args.data is not None else None
    key = (tag or args.dataset) + (f"@seed{args.seed}" if args.seed else "")
    ws = Path(args.workspace or f"/tmp/msatune-bench-default/{key}{'-smoke' if args.smoke else ''}")
    ws.mkdir(parents=True, exist_ok=True)
    state_file = ws / "stages.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    data, data_rec = resolve_data(args, ws / "data", "tiny" if args.smoke else args.dataset, seed=0)
    print(f"{key}: {data_label(data_rec)}", flush=True)
    stages = {"all": ("product", "presets"), "table": ()}.get(args.stage, tuple(args.stage.split(",")))
    unknown = set(stages) - {"product", "ensemble", "refolds", "presets", "bagshare", "seedbag"}
    if unknown:
        p.error(f"--stage {args.stage}: unknown {', '.join(sorted(unknown))} "
                "(product, ensemble, refolds, presets, bagshare, seedbag, all, table)")
    if "product" not in state and "product" not in stages:
        print(f"{ws}: run the product stage first (--stage product)")
        return 2
    for stage in stages:
        print(f"[{time.strftime('%H:%M:%S')}] stage {stage} ...", flush=True)
        load = loadavg()
        if stage == "product":
            state = {"product": stage_product(ws, data, size, args.seed, args.smoke, args.refit_scheme,
                                              args.refit_top)}
        elif stage == "ensemble":  # the product stage's study, its ensembles built again (e.g. after a code change)
            state["product"].update(ensemble_summary(ws))
            state["product"]["wall_s"] = state["product"]["launch_s"] + state["product"]["ensemble_s"]
            state["ensemble"] = {"rebuilt": True}
        elif stage == "refolds":
            done = state["product"]["launch"].get("refit") or {}
            top_k, refit_seed = done.get("top_k") or size["refit_top"], done.get("seed", 0)  # the same folds
            state["refolds"] = stage_refolds(ws, int(top_k), 3 if args.smoke else args.refolds, int(refit_seed))
        elif stage == "bagshare":
            state["bagshare"] = stage_bagshare(ws, data)
            print("trial's own share of its bag -> test MAE: " + ", ".join(
                f"{r['share']}: {r['test_mae']:.4f}" for r in state["bagshare"]["rows"]), flush=True)
        elif stage == "seedbag":
            state["seedbag"] = stage_seedbag(ws, data, 1 if args.smoke else args.seedbag_top,
                                             1 if args.smoke else args.seedbag_repeats)
            print("seed repeats -> test MAE: " + ", ".join(
                f"{k}: {v:.4f}" for k, v in state["seedbag"]["rows"].items()), flush=True)
        else:
            state["presets"] = stage_presets(ws, data, state["product"]["wall_s"], args.smoke)
        state[stage].update(loadavg_start=load, loadavg_end=loadavg(), finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        state_file.write_text(json.dumps(state, indent=2, default=str) + "\n")
    rows = table(state)
    print_table(rows, [("approach", "approach", 0), ("test_mae", "test MAE", 4), ("ratio", "x best single", 3),
                       ("wall_s", "wall s", 0)], title=f"{key}: {data_label(data_rec)}")
    out = result_path("default_model", mode, args.out)
    doc = json.loads(out.read_text()) if out.exists() else base_doc("default_model", mode, {"data": 0})
    entries = doc.setdefault("entries", {})
    if "product" in stages and key in entries:  # a new study: the earlier study's entry is kept, renamed
        n = 1
        while f"{key}#{n}" in entries:
            n += 1
        entries[f"{key}#{n}"] = entries.pop(key)
        print(f"{out}: the earlier {key} entry kept as {key}#{n}", flush=True)
    entries[key] = {"data": data_rec, "sizes": size, "seed": args.seed, "rows": rows,
                    "stages": state, "machine": base_doc("default_model", mode, {})["machine"]}
    write_json(out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
