"""Search efficiency: random search at full budget vs TPE at full budget vs TPE + ASHA.

On the synthetic mosi set (seed 0; or ``--data DIR``, ``--synth NAME``), three searches with the
same trial count, the same space (the default space's optimisation, regularisation and
augmentation keys on a small model) and the same seeds (sampler seed and model seeds), each
through msatune's runner (``search.study_run.run_search``: Ray Tune, the store-truthful study
searcher, SQLite store, ``cpus_per_trial = 1``, the same concurrency):

* ``random``: ``optuna.samplers.RandomSampler(seed)``, scheduler off (every trial runs
  ``max_epochs``, the recipe's early stopping aside): MMSA's tuning mode;
* ``tpe``: msatune's TPE sampler (``make_sampler``), scheduler off;
* ``tpe_asha``: msatune's default, TPE + ASHA (``grace_period``, ``reduction_factor``).

``random`` passes ``run_search(sampler=RandomSampler(seed))``. No preset is enqueued.

For each search: total epochs trained, wall time, best val MAE (the best COMPLETE trial, as
``msatune show`` reports it), the test MAE of that trial (its checkpoint's ``predictions.npz``),
and the anytime curve: best val MAE seen so far (any trial, any epoch) against cumulative epochs
trained, in the order the epochs finished. With several seeds every number is the median over
seeds. Goals (issue 6): TPE + ASHA reaches random search's final best val MAE with <= 1/4 of its
epochs, and ends no worse than it at equal trial count. Prints a table, writes
``benchmarks/results/search_efficiency[_quick].json`` and the curves as ``.png`` beside it; never
asserts.

    python benchmarks/search_efficiency.py            # 24 trials x 15 epochs, seeds 0 1 2 (~40 min)
    python benchmarks/search_efficiency.py --quick    # 8 trials x 4 epochs, seed 0 (a few minutes)
    python benchmarks/search_efficiency.py --data DIR # any msa-tf2 directory (recorded)
    python benchmarks/search_efficiency.py --smoke --out /tmp/s.json   # tiny data (tests)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (  # noqa: E402
    SMALL_MODEL,
    add_data_args,
    base_doc,
    checkpoint_test_mae,
    data_label,
    data_tag,
    median,
    mode_of,
    new_study,
    print_table,
    read_events,
    resolve_data,
    result_path,
    start_ray,
    timed_trainable,
    write_json,
)

METHODS = ("random", "tpe", "tpe_asha")
#: Optional (``--methods``): TPE + ASHA with 3x the trials, about a quarter of random search's
#: epochs in all; what ASHA is for (many more configurations for the same compute).
MORE_TRIALS = {"tpe_asha_3x": 3}
ALL_METHODS = METHODS + tuple(MORE_TRIALS)
ASHA_METHODS = ("tpe_asha", "tpe_asha_3x")
DATA_SEED = 0
GOAL_EPOCH_FRACTION = 0.25

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"preset": "tiny", "trials": 3, "epochs": 2, "grace": 1, "rf": 2, "seeds": [0],
              "slots": 2, "startup": 2, "batches": [8, 16]},
    "quick": {"preset": "mosi", "trials": 8, "epochs": 4, "grace": 1, "rf": 2, "seeds": [0],
              "slots": 2, "startup": 3, "batches": [32, 64]},
    # 24 trials x 15 epochs x 3 methods x 5 seeds is about 70 min on 2 cores; startup None =
    # msatune's own rule (min(10, max(3, budget // 3)) = 8 here); grace/rf None = msatune's defaults.
    "full": {"preset": "mosi", "trials": 24, "epochs": 15, "grace": None, "rf": None,
             "seeds": [0, 1, 2, 3, 4], "slots": 2, "startup": None, "batches": [32, 64]},
}

#: Searched: the default space minus capacity (the small model keeps mosi epochs to seconds).
CAPACITY_KEYS = ("model_dim", "num_heads", "ff_dim", "n_layers_mod", "n_layers_fuse", "batch_size")


def make_space(epochs: int, batches: list[int], first_rung: int | None) -> Any:
    """The same space for every method: the one a study with ASHA's first rung gets."""
    from optuna.distributions import CategoricalDistribution

    from msatune.search.space import default_space

    space = default_space(epochs, None, first_rung)
    for key in CAPACITY_KEYS:
        space.distributions.pop(key, None)
    space.distributions["model_dim"] = CategoricalDistribution([16, 32])
    space.distributions["batch_size"] = CategoricalDistribution(list(batches))
    space.base.update({k: v for k, v in SMALL_MODEL.items() if k != "model_dim"})
    space.base["ff_dim"] = 64
    return space


def run_one(method: str, seed: int, size: dict[str, Any], ws: Path, data_path: Path) -> dict[str, Any]:
    from msatune.augment.dataset import load_dataset
    from msatune.search.search_settings import SearchSettings
    from msatune.search.study_run import run_search

    epochs = int(size["epochs"])
    grace = int(size["grace"]) if method in ASHA_METHODS else epochs  # grace = max_t: no early stops
    n_trials = int(size["trials"]) * MORE_TRIALS.get(method, 1)
    space = make_space(epochs, size["batches"], size["grace"] if size["grace"] < epochs else None)
    name = f"{method}-s{seed}"
    settings = SearchSettings(trials=n_trials, max_epochs=epochs, grace_period=grace,
                              reduction_factor=int(size["rf"]), cpus_per_trial=1.0,
                              concurrency=int(size["slots"]), seed=seed,
                              n_startup_trials=None if size["startup"] is None else int(size["startup"]))
    study = new_study(ws, name, space, data_path, settings)
    events_path = ws / f"events-{name}.jsonl"
    data = load_dataset(data_path)
    t0 = time.time()
    import optuna

    sampler = optuna.samplers.RandomSampler(seed=settings.seed) if method == "random" else None
    summary = run_search(study, space, data, settings, ray_dir=ws / "ray" / name, run_name="run0",
                         sampler=sampler, trainable=partial(timed_trainable, events=str(events_path)))
    wall = time.time() - t0
    counts = {"complete": summary.complete, "pruned": summary.pruned, "failed": summary.failed}
    return collect_run(method, seed, study, events_path, t0, wall, counts)


def collect_run(method: str, seed: int, study: Any, events_path: Path, t0: float, wall: float,
                counts: dict[str, int]) -> dict[str, Any]:
    """One search's record from its study and its trainable's events (``t0``: when it began)."""
    from msatune.search.reconcile import SAMPLED_ATTR
    from msatune.studies.store.studies import best_complete

    events = read_events(events_path)
    epochs_ev = [e for e in events
                 if e["kind"] == "epoch" and e.get("val_mae") is not None and math.isfinite(e["val_mae"])]
    curve, best = [], math.inf
    for i, e in enumerate(epochs_ev, start=1):
        best = min(best, float(e["val_mae"]))
        curve.append([i, best, round(e["t"] - t0, 3)])
    trials = study.trials
    top = best_complete(trials)
    test_mae = checkpoint_test_mae(top)
    # every trial's own curve (to tell a search lost at ASHA's cut from one lost in its proposals)
    by_ray_id: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e["kind"] == "epoch" and e.get("epoch") is not None:
            by_ray_id.setdefault(e["trial_id"], []).append(e)
    per_trial = []
    for t in trials:
        evs = sorted(by_ray_id.get(str(t.user_attrs.get(SAMPLED_ATTR)), []), key=lambda e: e["epoch"])
        per_trial.append({"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                          "preset": t.user_attrs.get("preset"),
                          "val_mae": [e.get("val_mae") for e in evs], "train_mae": [e.get("train_mae") for e in evs],
                          "rung_score": [e.get("rung_score") for e in evs]})
    return {
        "method": method, "seed": seed, "trials": len(trials), **counts, "epochs": len(epochs_ev),
        "wall_s": wall, "best_val_mae": top.value if top is not None else None,
        "best_trial": top.number if top is not None else None,
        "best_trial_params": top.params if top is not None else None,
        "test_mae": test_mae, "curve_best_val_mae": curve[-1][1] if curve else None,
        "curve": curve, "per_trial": per_trial,
    }


def epochs_to_reach(curve: list[list[float]], target: float | None) -> int | None:
    if target is None:
        return None
    for epochs, best, _ in curve:
        if best <= target + 1e-12:
            return int(epochs)
    return None


def compare(runs: list[dict[str, Any]], seeds: list[int], method: str = "tpe_asha") -> dict[str, Any]:
    """Per seed: ``method``'s epochs to reach random's final best val MAE, over random's epochs."""
    per_seed = []
    for seed in seeds:
        by = {r["method"]: r for r in runs if r["seed"] == seed}
        rnd, asha = by.get("random"), by.get(method)
        if not rnd or not asha:
            continue
        target = rnd["best_val_mae"]
        reach = epochs_to_reach(asha["curve"], target)
        per_seed.append({
            "seed": seed, "random_best_val_mae": target, "random_epochs": rnd["epochs"],
            "tpe_asha_epochs_to_reach": reach,
            "fraction": (reach / rnd["epochs"]) if reach is not None and rnd["epochs"] else None,
            "tpe_asha_no_worse": (asha["best_val_mae"] is not None and target is not None
                                  and asha["best_val_mae"] <= target),
        })
    fractions = [s["fraction"] for s in per_seed]
    frac = median(fractions) if all(f is not None for f in fractions) and fractions else None
    return {
        "per_seed": per_seed,
        "median_fraction_of_random_epochs": frac,
        "reached_in_all_seeds": all(f is not None for f in fractions) if fractions else False,
        "goal_fraction": GOAL_EPOCH_FRACTION,
        "fraction_goal_met": frac is not None and frac <= GOAL_EPOCH_FRACTION,
        "no_worse_goal_met": bool(per_seed) and sum(s["tpe_asha_no_worse"] for s in per_seed) * 2 > len(per_seed),
    }


def goals(runs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Issue 14's goals: TPE + ASHA's median best val MAE <= random's with <= 0.5 of its epochs;
    random's final best reached within <= 1/4 of random's epochs in >= 3 of 5 seeds; with 3x the
    trials (random's compute) ahead of TPE alone in median."""
    def med(method: str, key: str) -> float | None:
        return median(r[key] for r in runs if r["method"] == method)

    out: dict[str, Any] = {"lines": []}
    rnd_best, asha_best = med("random", "best_val_mae"), med("tpe_asha", "best_val_mae")
    rnd_ep, asha_ep = med("random", "epochs"), med("tpe_asha", "epochs")
    if None not in (rnd_best, asha_best, rnd_ep, asha_ep):
        out["median_best_no_worse"] = asha_best <= rnd_best
        out["epoch_fraction"] = asha_ep / rnd_ep
        out["lines"].append(f"TPE+ASHA median best val MAE {asha_best:.4f} vs random {rnd_best:.4f} "
                            f"({'met' if asha_best <= rnd_best else 'missed'}) with {asha_ep / rnd_ep:.2f} of "
                            f"its epochs (goal <= 0.5: {'met' if asha_ep / rnd_ep <= 0.5 else 'missed'})")
    reached = compare(runs, seeds)["per_seed"]
    quick = sum(1 for s in reached if s["fraction"] is not None and s["fraction"] <= GOAL_EPOCH_FRACTION)
    out["seeds_reaching_random_within_quarter"] = quick
    out["lines"].append(f"reached random's final best within 1/4 of its epochs in {quick} of {len(reached)} seeds "
                        f"(goal >= 3 of 5)")
    more, tpe = med("tpe_asha_3x", "best_val_mae"), med("tpe", "best_val_mae")
    if more is not None and tpe is not None:
        out["equal_compute_ahead_of_tpe"] = more < tpe
        out["lines"].append(f"TPE+ASHA with 3x the trials {more:.4f} vs TPE alone {tpe:.4f} "
                            f"({'ahead' if more < tpe else 'not ahead'})")
    # equal compute, exactly: the 3x search's best val MAE so far when it had trained as many
    # epochs as TPE alone did (3x the trials at grace 3 costs about twice TPE's epochs)
    pairs = []
    for seed in seeds:
        x = next((r for r in runs if r["method"] == "tpe_asha_3x" and r["seed"] == seed), None)
        t = next((r for r in runs if r["method"] == "tpe" and r["seed"] == seed), None)
        within = [c[1] for c in x["curve"] if c[0] <= t["epochs"]] if x and t else []
        if within:
            pairs.append((within[-1], t["best_val_mae"]))
    if pairs:
        m3, mt = median([a for a, _ in pairs]), median([b for _, b in pairs])
        ahead = sum(a < b for a, b in pairs)
        out["equal_epochs"] = {"tpe_asha_3x_best": m3, "tpe_best": mt, "ahead_in_seeds": ahead,
                               "seeds": len(pairs), "ahead": m3 < mt}
        out["lines"].append(f"TPE+ASHA (3x trials) at TPE's own epoch count: median best {m3:.4f} vs TPE "
                            f"alone {mt:.4f} ({'ahead' if m3 < mt else 'not ahead'}; ahead in {ahead} of "
                            f"{len(pairs)} seeds)")
    return out


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for method in ALL_METHODS:
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue
        rows.append({"method": method, "seeds": len(rs),
                     **{k: median(r[k] for r in rs) for k in
                        ("trials", "complete", "pruned", "epochs", "wall_s", "best_val_mae", "test_mae",
                         "curve_best_val_mae")}})
    return rows


def plot(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"random": "tab:gray", "tpe": "tab:blue", "tpe_asha": "tab:red", "tpe_asha_3x": "tab:orange"}
    labels = {"random": "random, full budget", "tpe": "TPE, full budget", "tpe_asha": "TPE + ASHA",
              "tpe_asha_3x": "TPE + ASHA, 3x trials"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    seen = set()
    for r in runs:
        if not r["curve"]:
            continue
        xs = [c[0] for c in r["curve"]]
        ys = [c[1] for c in r["curve"]]
        label = labels[r["method"]] if r["method"] not in seen else None
        seen.add(r["method"])
        ax.step(xs, ys, where="post", color=colors[r["method"]], alpha=0.85, label=label)
    ax.set_xlabel("cumulative epochs trained")
    ax.set_ylabel("best validation MAE so far")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="8 trials x 4 epochs, one seed")
    p.add_argument("--smoke", action="store_true", help="tiny data, 3 trials x 2 epochs (tests)")
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="max epochs per trial (the full budget)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--slots", type=int, default=None, help="concurrent trials (1 CPU each)")
    p.add_argument("--grace", type=int, default=None, help="ASHA grace period in epochs [full size: msatune's default]")
    p.add_argument("--rf", type=int, default=None, help="ASHA reduction factor (full size: 3)")
    p.add_argument("--startup", type=int, default=None,
                   help="TPE's random start-up trials (full size: msatune's default for the trial count)")
    p.add_argument("--methods", nargs="+", choices=ALL_METHODS, default=list(METHODS),
                   help=f"searches to run (default: {' '.join(METHODS)}; tpe_asha_3x: 3x the trials)")
    p.add_argument("--random-from", type=Path, default=None,
                   help="a results JSON whose runs of the methods not run now (same size and seeds) are compared with")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    add_data_args(p, "mosi")
    p.add_argument("--from-workspace", type=Path, default=None,
                   help="rebuild the records of the searches that finished in an interrupted run's "
                        "workspace (its temp dir's ws/, kept when the run was killed) instead of running")
    args = p.parse_args(argv)

    mode = mode_of(args)
    size = dict(SIZES[mode])
    tag = data_tag(args, size["preset"])
    out_path = result_path("search_efficiency" + (f"_{tag}" if tag else ""), mode, args.out)
    for key, val in (("trials", args.trials), ("epochs", args.epochs), ("seeds", args.seeds),
                     ("slots", args.slots), ("grace", args.grace), ("rf", args.rf),
                     ("startup", args.startup)):
        if val is not None:
            size[key] = val
    from msatune.search.search_settings import SearchSettings

    defaults = SearchSettings(max_epochs=size["epochs"])
    size["grace"] = min(size["grace"] if size["grace"] is not None else defaults.grace, size["epochs"])
    size["rf"] = size["rf"] if size["rf"] is not None else defaults.reduction_factor

    t_all = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="msatune-searcheff-") as tmp:
        root = Path(tmp)
        # a recovered run's data: the same --data or synthetic preset again (same seed, same fingerprint)
        data, data_rec = resolve_data(args, root, size["preset"], DATA_SEED)
        size["preset"] = data_rec["synthetic_preset"]
        if args.random_from is not None:  # its runs are compared with these: the same data
            import json

            earlier = (json.loads(args.random_from.read_text()).get("data") or {}).get("fingerprint")
            if earlier not in (None, data_rec["fingerprint"]):
                raise SystemExit(f"--random-from {args.random_from}: ran on other data (fingerprint "
                                 f"{earlier[:12]}, not {data_rec['fingerprint'][:12]})")
        if args.from_workspace is not None:
            runs, ray_init_s = recover_runs(args.from_workspace, args.methods, size), None
        else:
            runs, ray_init_s = run_all(args.methods, size, root, data)
    finish(args, mode, out_path, size, runs, ray_init_s, t_all, load_before, data_rec)
    return 0


def recover_runs(ws: Path, methods: list[str], size: dict[str, Any]) -> list[dict[str, Any]]:
    """The searches of ``methods`` x seeds that ran all their trials in workspace ``ws``; the
    wall time is from the first to the last event of the search (Ray's start excluded)."""
    import optuna
    from optuna.trial import TrialState

    runs = []
    storage = f"sqlite:///{ws / 'studies.db'}"
    names = set(optuna.get_all_study_names(storage))
    for seed in size["seeds"]:
        for method in [m for m in ALL_METHODS if m in methods]:
            name, events_path = f"{method}-s{seed}", ws / f"events-{method}-s{seed}.jsonl"
            if name not in names or not events_path.is_file():
                continue
            study = optuna.load_study(study_name=name, storage=storage)
            states = [t.state for t in study.trials]
            if len(states) < int(size["trials"]) * MORE_TRIALS.get(method, 1) or any(
                    s in (TrialState.RUNNING, TrialState.WAITING) for s in states):
                print(f"{name}: unfinished, left out", file=sys.stderr)
                continue
            times = [e["t"] for e in read_events(events_path)]
            counts = {"complete": states.count(TrialState.COMPLETE), "pruned": states.count(TrialState.PRUNED),
                      "failed": states.count(TrialState.FAIL)}
            runs.append(collect_run(method, seed, study, events_path, min(times), max(times) - min(times), counts))
    return runs


def run_all(methods: list[str], size: dict[str, Any], root: Path, data: Path) -> tuple[list[dict[str, Any]], float]:
    runs: list[dict[str, Any]] = []
    ray_init_s = start_ray(num_cpus=max(float(os.cpu_count() or 1), float(size["slots"])))
    import ray

    try:
        for seed in size["seeds"]:
            for method in [m for m in ALL_METHODS if m in methods]:  # back to back per seed
                print(f"{method} seed {seed} ...", file=sys.stderr, flush=True)
                runs.append(run_one(method, seed, size, root / "ws", data))
    finally:
        ray.shutdown()
    return runs, ray_init_s


def finish(args: argparse.Namespace, mode: str, out_path: Path, size: dict[str, Any],
           runs: list[dict[str, Any]], ray_init_s: float | None, t_all: float,
           load_before: tuple[float, float, float], data_rec: dict[str, Any]) -> None:
    """Compare, print, plot and write the results of ``runs``."""
    seeds = sorted({r["seed"] for r in runs}) if args.from_workspace is not None else size["seeds"]
    size = {**size, "seeds": seeds}
    if args.random_from is not None:
        import json

        earlier = json.loads(args.random_from.read_text())
        # the earlier file's runs of every method not run now (random, tpe, ...), same seeds
        runs = [r for r in earlier["runs"] if r["method"] not in args.methods and r["seed"] in size["seeds"]] + runs
    rows = summarize(runs)
    goal = goals(runs, size["seeds"])
    cmp = compare(runs, size["seeds"])
    cmp_more = {m: compare(runs, size["seeds"], m) for m in MORE_TRIALS if m in args.methods}
    seeds_txt = f"seed {size['seeds'][0]}" if len(size["seeds"]) == 1 else f"median of {len(size['seeds'])} seeds"
    title = (f"{size['trials']} trials x {size['epochs']} epochs, {data_label(data_rec)} "
             f"({seeds_txt}; ASHA grace {size['grace']}, rf {size['rf']})")
    print_table(rows, [
        ("method", "method", 0), ("trials", "trials", 0), ("pruned", "pruned", 0), ("epochs", "epochs", 0),
        ("wall_s", "wall s", 1), ("best_val_mae", "best val MAE", 4), ("test_mae", "test MAE", 4),
        ("curve_best_val_mae", "best any epoch", 4),
    ], title=title)
    shown = ({"tpe_asha": cmp} if "tpe_asha" in args.methods else {}) | cmp_more
    for method, c in shown.items():
        frac = c["median_fraction_of_random_epochs"]
        print(f"\n{method} reaches random search's final best val MAE with "
              f"{'-' if frac is None else f'{frac:.2f}'} of its epochs (goal <= {GOAL_EPOCH_FRACTION}): "
              f"{'met' if c['fraction_goal_met'] else 'missed'}; "
              f"ends no worse than random: {'yes' if c['no_worse_goal_met'] else 'no'}")

    for line in goal["lines"]:
        print(line)

    png = out_path.with_suffix(".png")
    plot(runs, png, f"Anytime best val MAE: {title}")
    print(f"curves: {png}")

    doc = base_doc("search_efficiency", mode, {"data": DATA_SEED, "search": size["seeds"],
                                               "model": "study seed + trial number"})
    doc.update({
        "data": data_rec,
        "size": size,
        "space": {"searched": sorted(make_space(size["epochs"], size["batches"], None).distributions),
                  "fixed": {k: v for k, v in SMALL_MODEL.items() if k != "model_dim"} | {"ff_dim": 64}},
        "methods": {
            "random": "optuna RandomSampler(seed), grace_period = max_epochs (no early stops by the scheduler)",
            "tpe": "msatune make_sampler (TPE, multivariate, constant_liar), grace_period = max_epochs",
            "tpe_asha": f"msatune make_sampler + ASHA(grace_period={size['grace']}, reduction_factor={size['rf']})",
            "tpe_asha_3x": "as tpe_asha with 3x the trials",
        },
        "methods_run": [m for m in ALL_METHODS if m in args.methods],
        "random_from": str(args.random_from) if args.random_from else None,
        "ray_init_s": ray_init_s,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "summary": rows,
        "comparison": cmp,
        "comparison_more_trials": cmp_more,
        "goals": goal,
        "runs": runs,
        "plot": png.name,
        "total_s": time.time() - t_all,
    })
    if args.from_workspace is not None:
        doc["recovered_from_workspace"] = str(args.from_workspace)
    write_json(out_path, doc)


if __name__ == "__main__":
    sys.exit(main())
