"""Where a default study's wall time goes: start, tracing, steps, validation, checkpoints and Ray
(issue 25, Build 3).

One ``msatune launch`` at the default settings (TPE + ASHA, default space with the presets, as many
trials at once as the CPUs allow) runs in this process on one dataset; then every trial is taken
apart from what it reported to Ray each epoch (``result.json``: ``epoch_seconds``,
``validation_seconds``, ``time_this_iter_s``) and its Optuna start and end:

* ``start``: from Ray starting the trainable to its first epoch (data pipelines, model build);
* ``tracing``: the first epoch's extra over the trial's steady epochs (the train step traced and
  Grappler's rewrite; the validation graph's own extra is counted here too);
* ``steps``: training epochs without that extra; ``validation``: validation without its extra;
* ``checkpoints``: per epoch, what a report took beyond its epoch (the checkpoint written and
  handed to Ray; an epoch that did not improve writes none);
* ``ray``: the trial's Optuna duration beyond its trainable's time (actor placement, the searcher
  and scheduler, the result sync), so each trial's parts sum to its duration.

The study's wall time is then split into the trials' parts (summed over trials, divided by the
slots) and what remains: the driver's own start (Ray, the store, the data) and slots left idle.
A trial with a single epoch has no steady epoch, so its tracing is not separated (counted in steps).

``--step-cache both`` runs the study twice, ``MSATUNE_STEP_CACHE=0`` then on (a fresh workspace
each time, the same sampler seed), to show what reusing compiled steps does to a search: trials of
the default space rarely share a graph (see ``step_cache.py``). Projected hours for 100 trials are
the measured mean trial cost times 100 over the slots; per-GPU hours need a run on a GPU (the
step/tracing ratio changes there) and are left out unless the run was on one.

    python benchmarks/study_cost.py                         # 24 trials on synthetic mosi (~15 min)
    python benchmarks/study_cost.py --synth mosei --scale 0.25 --trials 12
    python benchmarks/study_cost.py --step-cache both       # the study twice, cache off then on
    python benchmarks/study_cost.py --data DIR              # any msa-tf2 directory (recorded)
    python benchmarks/study_cost.py --smoke --out /tmp/c.json   # tiny data, 4 trials x 3 epochs

Writes ``benchmarks/results/study_cost[_DATA].json`` and prints the tables; never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (  # noqa: E402
    add_data_args,
    base_doc,
    data_label,
    data_record,
    data_tag,
    loadavg,
    print_table,
    result_path,
    synth_data,
    write_json,
)

PARTS = ("start", "tracing", "steps", "validation", "checkpoints", "ray")
NAME = "cost"
SIZES = {"smoke": {"trials": 4, "max_epochs": 3, "grace_period": 1}, "full": {"trials": 24}}


def trial_parts(rows: Sequence[dict[str, Any]], duration_s: float | None) -> dict[str, float]:
    """One trial's wall seconds split into :data:`PARTS` from its per-epoch reports ``rows``
    (Ray's ``result.json`` lines, in order) and its Optuna duration (``None``: no ``ray`` part)."""
    epochs = [float(r["epoch_seconds"]) for r in rows]
    valid = [float(r.get("validation_seconds") or 0.0) for r in rows]
    iters = [float(r["time_this_iter_s"]) for r in rows]
    train = [e - v for e, v in zip(epochs, valid, strict=True)]
    after = [i - e for i, e in zip(iters[1:], epochs[1:], strict=True)]  # a report beyond its epoch
    ckpt = statistics.median(after) if after else 0.0
    if len(rows) > 1:
        steady_train, steady_valid = statistics.median(train[1:]), statistics.median(valid[1:])
        trace = max(0.0, train[0] - steady_train) + max(0.0, valid[0] - steady_valid)
        first_valid_extra = max(0.0, valid[0] - steady_valid)
    else:
        trace, first_valid_extra = 0.0, 0.0
    parts = {
        "start": max(0.0, iters[0] - epochs[0] - ckpt),
        "tracing": trace,
        "steps": sum(train) - (trace - first_valid_extra),
        "validation": sum(valid) - first_valid_extra,
        "checkpoints": ckpt + sum(max(0.0, a) for a in after),
    }
    total = float(rows[-1]["time_total_s"])
    parts["ray"] = max(0.0, duration_s - total) if duration_s is not None else 0.0
    parts["epochs"] = len(rows)
    parts["wall_s"] = duration_s if duration_s is not None else total
    parts["first_epoch_extra_s"] = trace
    return parts


def read_trials(ray_dir: Path, storage_url: str) -> list[dict[str, Any]]:
    """Every finished trial of the study: its Optuna number, state and :func:`trial_parts`."""
    import optuna

    rows_by_id: dict[str, list[dict[str, Any]]] = {}
    for result in ray_dir.glob("run*/trial_*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "epoch_seconds" in r and "time_this_iter_s" in r]
        if rows:
            rows_by_id[rows[0]["trial_id"]] = sorted(rows, key=lambda r: r["training_iteration"])
    study = optuna.load_study(study_name=NAME, storage=storage_url)
    out = []
    for t in study.trials:
        rows = rows_by_id.get(t.user_attrs.get("ray_trial_id", ""))
        if not rows or t.state.name not in ("COMPLETE", "PRUNED"):
            continue
        duration = t.duration.total_seconds() if t.duration else None
        out.append({"number": t.number, "state": t.state.name, "preset": t.user_attrs.get("preset"),
                    "value": t.value, **trial_parts(rows, duration)})
    return out


def summarise(trials: list[dict[str, Any]], wall_s: float, slots: int) -> dict[str, Any]:
    """The study's wall split into the trials' parts (over the slots) and the rest; the median
    first-rung trial; the projection of 100 trials."""
    sums = {p: sum(t[p] for t in trials) for p in PARTS}
    busy = sum(sums.values())
    shares = {p: (sums[p] / slots) / wall_s for p in PARTS}
    shares["driver_and_idle"] = max(0.0, 1.0 - busy / slots / wall_s)
    shortest = min((t["epochs"] for t in trials), default=0)
    first_rung = [t for t in trials if t["epochs"] == shortest]
    median_steps_share = statistics.median(t["steps"] / t["wall_s"] for t in first_rung) if first_rung else None
    return {
        "trials": len(trials), "wall_s": wall_s, "slots": slots, "seconds": sums, "shares_of_wall": shares,
        "epochs_trained": sum(t["epochs"] for t in trials),
        "first_rung": {"epochs": shortest, "trials": len(first_rung), "median_steps_share": median_steps_share,
                       "median_wall_s": statistics.median(t["wall_s"] for t in first_rung) if first_rung else None,
                       "median_first_epoch_extra_s": (statistics.median(t["first_epoch_extra_s"] for t in first_rung)
                                                      if first_rung else None)},
        "projected_hours_100_trials": wall_s / max(1, len(trials)) * 100 / 3600,
    }


def run_study(ws_root: Path, data: Path, size: dict[str, Any], seed: int, cache: bool) -> dict[str, Any]:
    from msatune.search.search_settings import SearchSettings
    from msatune.studies.runs import launch
    from msatune.studies.store.connect import open_storage
    from msatune.studies.store.workspace import Workspace

    if ws_root.exists():
        shutil.rmtree(ws_root)  # this benchmark's own scratch workspace
    ws = Workspace(ws_root).ensure()
    os.environ["MSATUNE_STEP_CACHE"] = "1" if cache else "0"
    settings = SearchSettings(seed=seed, **size)
    load = loadavg()
    t0 = time.perf_counter()
    run = launch(ws, open_storage(ws.storage_url), NAME, settings, data_dir=data)
    wall = time.perf_counter() - t0
    trials = read_trials(ws.ray_dir(NAME), ws.storage_url)
    slots = max(1, int((os.cpu_count() or 1) // settings.cpus_per_trial))  # a local Ray's CPUs, one trial each
    best = min((t["value"] for t in trials if t["state"] == "COMPLETE" and t["value"] is not None), default=None)
    return {"step_cache": cache, "loadavg_start": load, "loadavg_end": loadavg(), "best_val_mae": best,
            "run": run, "summary": summarise(trials, wall, slots), "trials": trials}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(p, "mosi")
    p.add_argument("--scale", type=float, default=1.0, help="the synthetic set at this fraction of its size [1]")
    p.add_argument("--trials", type=int, default=None, help="the study's budget [24; --smoke: 4]")
    p.add_argument("--seed", type=int, default=0, help="the study's seed (sampler, trials) [0]")
    p.add_argument("--step-cache", choices=("on", "off", "both"), default="on",
                   help="reuse of compiled train steps (models/step_cache.py); both: off then on [on]")
    p.add_argument("--workspace", type=Path, default=Path("/tmp/msatune-bench-study-cost"))
    p.add_argument("--smoke", action="store_true", help="tiny data, 4 trials of at most 3 epochs")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    size = dict(SIZES[mode])
    if args.trials is not None:
        size["trials"] = args.trials
    if args.data is not None:
        data = args.data.expanduser().resolve()
        record = data_record(data)
    else:
        preset = args.synth or ("tiny" if args.smoke else "mosi")
        if args.scale == 1.0:
            data = synth_data(args.workspace / "data", preset, 0)
        else:
            from msatune.augment.synth import synthesize

            data = args.workspace / "data" / f"synthetic-{preset}-0-x{args.scale:g}"
            if not (data / "y_train.h5").exists():
                synthesize(data, preset=preset, seed=0, overwrite=True, scale=args.scale)
        record = data_record(data, synthetic_preset=preset, seed=0, scale=args.scale)
    print(f"study cost on {data_label(record)}: {size}", flush=True)
    runs = []
    for cache in {"on": (True,), "off": (False,), "both": (False, True)}[args.step_cache]:
        print(f"[{time.strftime('%H:%M:%S')}] study with the step cache {'on' if cache else 'off'} ...", flush=True)
        runs.append(run_study(args.workspace / f"ws-cache-{int(cache)}", data, size, args.seed, cache))
        s = runs[-1]["summary"]
        rows = [{"part": k, "s": s["seconds"].get(k, 0.0), "share": v} for k, v in s["shares_of_wall"].items()]
        print_table(rows, [("part", "part", 0), ("s", "trial seconds (sum)", 0), ("share", "share of wall", 3)],
                    title=(f"cache {'on' if cache else 'off'}: {s['trials']} trials in {s['wall_s']:.0f} s on "
                           f"{s['slots']} slot(s), {s['epochs_trained']} epochs; best val MAE {runs[-1]['best_val_mae']}"))
        fr = s["first_rung"]
        print(f"first-rung trials ({fr['trials']} of {fr['epochs']} epoch(s)): median {fr['median_wall_s']} s, "
              f"steps {fr['median_steps_share']} of it, first-epoch extra {fr['median_first_epoch_extra_s']} s; "
              f"100 trials ~ {s['projected_hours_100_trials']:.2f} h on this machine", flush=True)
    doc = base_doc("study_cost", mode, {"trials": size["trials"]})
    doc.update({"data": record, "sizes": size, "seed": args.seed, "runs": runs,
                "per_gpu_hours": None, "per_gpu_note": "not measured: needs a run on a GPU machine"})
    tag = data_tag(args, "mosi")
    if args.scale != 1.0:
        tag = f"{tag or 'mosi'}_x{args.scale:g}"
    out = args.out or result_path("study_cost" + (f"_{tag}" if tag else ""), mode, None)
    write_json(out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
