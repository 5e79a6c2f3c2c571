"""Slots scaling: trials per minute as concurrent trial slots grow.

1. **Scheduling path** (no TensorFlow): Ray started with declared fake GPUs
   (``ray.init(address="local", num_cpus=<cores>, num_gpus=8)``), each trial takes one GPU and
   ``cores / 8`` CPU, and its trainable only sleeps (``--epochs`` reports of ``--epoch-s`` seconds
   each, a val MAE computed from the config). The rest is msatune's real path: ``run_search`` with
   the store-truthful study searcher over the default space, TPE, SQLite store, ``reuse_actors``,
   scheduler off (``grace_period = max_epochs``). ``slots x rounds`` trials at 1, 2, 4, 8 slots.
2. **Real training** on the synthetic mosi set (or ``--data DIR``, ``--synth NAME``; small model,
   learning rate and dropout searched, scheduler off) at 1 and 2 slots of 1 CPU each.

Trials per minute two ways: ``wall`` = trials / the ``run_search`` call (actor start-up included)
and ``steady`` = trials / (first trial start -> last trial end, in the workers). Scaling =
rate(k) / (k x rate(1)). Goal (issue 6): the scheduling path reaches >= 0.85 x linear at 8 slots
(judged on the steady rate; the wall rate is reported beside it). Prints tables, writes
``benchmarks/results/slots_scaling[_quick].json``; never asserts.

    python benchmarks/slots_scaling.py            # 10 s trials, 6 rounds; real: 8 trials x 4 epochs
    python benchmarks/slots_scaling.py --quick    # 2 s trials, 4 rounds; real: 4 trials x 2 epochs
    python benchmarks/slots_scaling.py --data DIR # the real part on any msa-tf2 directory (recorded)
    python benchmarks/slots_scaling.py --smoke --out /tmp/x.json   # 1-2 slots, tiny data (tests)
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
    synth_data,
    timed_trainable,
    trial_timeline,
    write_json,
)

FAKE_GPUS = 8
DATA_SEED = 0
SEED = 0
GOAL_SCALING = 0.85

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"slots": [1, 2], "epochs": 2, "epoch_s": 0.2, "rounds": 2,
              "real_preset": "tiny", "real_slots": [1], "real_trials": 2, "real_epochs": 1, "real_batch": 16},
    "quick": {"slots": [1, 2, 4, 8], "epochs": 4, "epoch_s": 0.5, "rounds": 4,
              "real_preset": "mosi", "real_slots": [1, 2], "real_trials": 4, "real_epochs": 2, "real_batch": 64},
    "full": {"slots": [1, 2, 4, 8], "epochs": 10, "epoch_s": 1.0, "rounds": 6,
             "real_preset": "mosi", "real_slots": [1, 2], "real_trials": 8, "real_epochs": 4, "real_batch": 64},
}


def sleeping_trainable(config: dict[str, Any], data: Any = None, epochs: int = 4, epoch_s: float = 0.5) -> None:
    """Reports like msatune's trainable, but only sleeps: no TensorFlow in the worker."""
    import ray.tune as tune

    value = abs(math.log10(float(config["learning_rate"])) + 3.0) + float(config.get("dropout", 0.0))
    best = math.inf
    for epoch in range(1, epochs + 1):
        time.sleep(epoch_s)
        val = value + 1.0 / epoch
        best = min(best, val)
        tune.report({"val_mae": val, "best_val_mae": best, "rung_mae": best, "epoch": epoch, "epoch_seconds": epoch_s,
                     "final": epoch == epochs})


def run_level(kind: str, slots: int, trials: int, epochs: int, ws: Path, data_path: Path, space: Any,
              cpus_per_trial: float, gpus_per_trial: float, inner: Any) -> dict[str, Any]:
    from msatune.augment.dataset import load_dataset
    from msatune.search.search_settings import SearchSettings
    from msatune.search.study_run import run_search

    name = f"{kind}-{slots}"
    settings = SearchSettings(trials=trials, max_epochs=epochs, grace_period=epochs, reduction_factor=2,
                              cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                              concurrency=slots, seed=SEED)
    study = new_study(ws, name, space, data_path, settings)
    events = ws / f"events-{name}.jsonl"
    data = load_dataset(data_path)
    t0 = time.time()
    summary = run_search(study, space, data, settings, ray_dir=ws / "ray" / name, run_name="run0",
                         trainable=partial(timed_trainable, events=str(events), inner=inner))
    t1 = time.time()
    timeline = [t for t in trial_timeline(read_events(events)) if "end" in t]
    first, last = (timeline[0]["start"], max(t["end"] for t in timeline)) if timeline else (t0, t1)
    wall, steady = t1 - t0, last - first
    return {
        "kind": kind, "slots": slots, "trials": len(timeline), "complete": summary.complete,
        "failed": summary.failed, "epochs_per_trial": epochs, "wall_s": wall, "steady_s": steady,
        "first_start_s": first - t0,
        "trials_per_min_wall": 60.0 * len(timeline) / wall if wall > 0 else None,
        "trials_per_min_steady": 60.0 * len(timeline) / steady if steady > 0 else None,
        "median_trial_s": median(t["end"] - t["start"] for t in timeline),
        "workers": len({t["pid"] for t in timeline}),
        "epoch_s": sum(t["epoch_seconds"] for t in timeline),
    }


def add_scaling(rows: list[dict[str, Any]]) -> None:
    base = next((r for r in rows if r["slots"] == 1), None)
    for r in rows:
        for key in ("wall", "steady"):
            rate, one = r[f"trials_per_min_{key}"], base and base[f"trials_per_min_{key}"]
            r[f"scaling_{key}"] = rate / (r["slots"] * one) if rate and one else None


def small_space(epochs: int, batch: int) -> Any:
    import optuna

    from msatune.search.space import SearchSpace
    from msatune.search.trial_config import PRESETS

    base = {**PRESETS["improved"], **SMALL_MODEL, "batch_size": batch, "epochs": epochs, "patience": 0,
            "warmup_epochs": 0}
    return SearchSpace({"learning_rate": optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True),
                        "dropout": optuna.distributions.FloatDistribution(0.0, 0.6)}, base)


COLUMNS = [
    ("slots", "slots", 0), ("trials", "trials", 0), ("workers", "workers", 0), ("wall_s", "wall s", 1),
    ("first_start_s", "1st start s", 1), ("median_trial_s", "trial s", 2),
    ("trials_per_min_wall", "trials/min wall", 1), ("scaling_wall", "x linear", 2),
    ("trials_per_min_steady", "trials/min steady", 1), ("scaling_steady", "x linear", 2),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 s sleeping trials, 4 rounds; 4 real trials")
    p.add_argument("--smoke", action="store_true", help="1-2 slots, tiny data (tests)")
    p.add_argument("--slots", type=int, nargs="+", default=None, help="slot counts of the sleeping part")
    p.add_argument("--epochs", type=int, default=None, help="reports per sleeping trial")
    p.add_argument("--epoch-s", type=float, default=None, help="seconds per sleeping epoch")
    p.add_argument("--rounds", type=int, default=None, help="trials per slot")
    p.add_argument("--skip-real", action="store_true", help="only the sleeping part")
    add_data_args(p, "mosi")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    args = p.parse_args(argv)

    mode = mode_of(args)
    size = dict(SIZES[mode])
    tag = None if args.skip_real else data_tag(args, size["real_preset"])
    out_path = result_path("slots_scaling" + (f"_{tag}" if tag else ""), mode, args.out)
    for key, val in (("slots", args.slots), ("epochs", args.epochs), ("epoch_s", args.epoch_s),
                     ("rounds", args.rounds)):
        if val is not None:
            size[key] = val
    if max(size["slots"]) > FAKE_GPUS:
        p.error(f"at most {FAKE_GPUS} slots (the declared fake GPUs)")
    cores = float(os.cpu_count() or 1)

    t_all = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="msatune-slots-") as tmp:
        root = Path(tmp)
        # the real part's data (the sleeping trials never read theirs): None with --skip-real
        data, data_rec = (None, None) if args.skip_real else resolve_data(args, root, size["real_preset"], DATA_SEED)
        if data_rec is not None:
            size["real_preset"] = data_rec["synthetic_preset"]
        ray_init_s = start_ray(num_cpus=cores, num_gpus=FAKE_GPUS)
        import ray

        from msatune.search.space import default_space

        sleeping: list[dict[str, Any]] = []
        real: list[dict[str, Any]] = []
        try:
            tiny = synth_data(root, "tiny", DATA_SEED)  # the sleeping trials' (unused) data
            inner = partial(sleeping_trainable, epochs=size["epochs"], epoch_s=size["epoch_s"])
            for slots in size["slots"]:
                print(f"sleeping trials, {slots} slot(s) ...", file=sys.stderr, flush=True)
                sleeping.append(run_level(
                    "sleep", slots, slots * size["rounds"], size["epochs"], root / "ws", tiny,
                    default_space(size["epochs"]), cpus_per_trial=cores / FAKE_GPUS, gpus_per_trial=1.0,
                    inner=inner))
            if data is not None:
                for slots in size["real_slots"]:
                    print(f"real training, {slots} slot(s) ...", file=sys.stderr, flush=True)
                    real.append(run_level(
                        "real", slots, size["real_trials"], size["real_epochs"], root / "ws", data,
                        small_space(size["real_epochs"], size["real_batch"]), cpus_per_trial=1.0,
                        gpus_per_trial=0.0, inner=None))
        finally:
            ray.shutdown()
    add_scaling(sleeping)
    add_scaling(real)

    print_table(sleeping, COLUMNS, title=(
        f"Scheduling path: sleeping trials of {size['epochs']} x {size['epoch_s']} s, "
        f"{size['rounds']} per slot, 1 fake GPU + {cores / FAKE_GPUS:g} CPU each"))
    if real:
        print_table(real, COLUMNS, title=(
            f"Real training: {size['real_trials']} trials x {size['real_epochs']} epochs "
            f"({data_label(data_rec)}, small model, batch {size['real_batch']}), 1 CPU per slot"))
    top = max(sleeping, key=lambda r: r["slots"])
    goal = {"goal": GOAL_SCALING, "slots": top["slots"], "steady": top["scaling_steady"],
            "wall": top["scaling_wall"],
            "met": top["slots"] == 8 and (top["scaling_steady"] or 0) >= GOAL_SCALING}
    print(f"\nscheduling path at {top['slots']} slots: {goal['steady'] or 0:.2f} x linear steady, "
          f"{goal['wall'] or 0:.2f} x linear wall (goal >= {GOAL_SCALING} at 8): "
          f"{'met' if goal['met'] else 'missed'}")

    doc = base_doc("slots_scaling", mode, {"data": DATA_SEED, "sampler": SEED})
    doc.update({
        "size": size, "data": data_rec, "fake_gpus": FAKE_GPUS, "ray_num_cpus": cores, "ray_init_s": ray_init_s,
        "sleeping": sleeping, "real": real, "goal": goal,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "total_s": time.time() - t_all,
    })
    write_json(out_path, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
