"""What the users' recipes do for a search: the space holding their values, TPE starting from them
(issue 22, Build 5).

Each arm is one default study (``msatune launch``: TPE + ASHA, the default space, the presets
enqueued, as many trials at once as the CPUs allow) on the same data with the same seed, in a
fresh workspace:

* ``default``: the default space, batch sizes 8-64 (the baseline preset's batch size 4 outside
  it: a constant of that trial, so TPE's grouped model samples the batch size apart from the
  other keys and never proposes 4);
* ``batch4``: the default space with batch sizes 4-64 (a ``--space`` file): every preset value
  inside it but the two that cannot be, the baseline's l2 0 and the improved's 5 warm-up epochs;
* ``from_presets``: the default space with TPE's random start-up cut to the presets
  (``n_startup_trials`` = their number), so the first searched trials after them are TPE's,
  drawn from the presets' results instead of at random.

Per run: wall time, epochs trained, best val MAE (the best COMPLETE trial) and that trial's test
MAE, the greedy ensemble's valid/test MAE (``msatune ensemble``'s default over trials, no refit),
the searched trials at batch size 4 and what they cost, and every trial's record. With several
seeds or data structures the script prints a row per run and the medians per arm.

    python benchmarks/presets_in_search.py                          # 3 arms, synthetic mosi, seed 0 (~27 min)
    python benchmarks/presets_in_search.py --synth lexicon --seeds 0 1
    python benchmarks/presets_in_search.py --arms default from_presets --data DIR
    python benchmarks/presets_in_search.py --smoke --out /tmp/p.json   # tiny data (tests)

Writes ``benchmarks/results/presets_in_search[_DATA].json`` (``--append`` adds runs to it); never
asserts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (  # noqa: E402
    add_data_args,
    base_doc,
    checkpoint_test_mae,
    data_label,
    data_tag,
    loadavg,
    median,
    print_table,
    resolve_data,
    result_path,
    write_json,
)

ARMS = ("default", "batch4", "from_presets")
NAME = "presets"
SIZES = {"smoke": {"trials": 4, "max_epochs": 3, "grace_period": 1}, "full": {"trials": 24}}
BATCH4_SIZES = (4, 8, 16, 32, 64)


def run_arm(arm: str, ws_root: Path, data: Path, size: dict[str, Any], seed: int) -> dict[str, Any]:
    import optuna

    from msatune.ensemble.fitting import EnsembleOptions
    from msatune.search.search_settings import SearchSettings
    from msatune.search.trial_config import SEARCH_FAMILIES
    from msatune.studies.ensembles import run_ensemble
    from msatune.studies.runs import launch
    from msatune.studies.store.connect import open_storage
    from msatune.studies.store.studies import best_complete
    from msatune.studies.store.workspace import Workspace

    if ws_root.exists():
        shutil.rmtree(ws_root)  # this benchmark's own scratch workspace
    ws = Workspace(ws_root).ensure()
    space_file = None
    if arm == "batch4":
        space_file = ws_root / "batch4.toml"
        space_file.write_text(f"[batch_size]\nchoices = {list(BATCH4_SIZES)}\n")
    startup = len(SEARCH_FAMILIES["improved"][1]) if arm == "from_presets" else None
    settings = SearchSettings(seed=seed, n_startup_trials=startup, **size)
    load = loadavg()
    t0 = time.perf_counter()
    storage = open_storage(ws.storage_url)
    launch(ws, storage, NAME, settings, data_dir=data, space_file=space_file)
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=NAME, storage=storage)
    t_start = min(t.datetime_start for t in study.trials if t.datetime_start)
    trials = []
    for t in study.trials:
        if t.state.name not in ("COMPLETE", "PRUNED"):
            continue
        batch = t.params.get("batch_size", (t.user_attrs.get("constants") or {}).get("batch_size"))
        trials.append({"number": t.number, "state": t.state.name, "preset": t.user_attrs.get("preset"),
                       "value": t.value, "epochs": len(t.intermediate_values), "batch_size": batch,
                       "start_s": (t.datetime_start - t_start).total_seconds(),
                       "end_s": (t.datetime_complete - t_start).total_seconds(),
                       "params": t.params})
    top = best_complete(study.trials)
    test_mae = checkpoint_test_mae(top)
    ens = run_ensemble(ws, storage, NAME, EnsembleOptions(), source="trials", export=False).summary()
    searched = [t for t in trials if not t["preset"]]
    small = [t for t in searched if t["batch_size"] == 4]
    presets = {t["preset"]: t["value"] for t in trials if t["preset"]}
    return {
        "arm": arm, "seed": seed, "loadavg_start": load, "loadavg_end": loadavg(), "wall_s": wall,
        "epochs_trained": sum(t["epochs"] for t in trials), "trials": len(trials),
        "complete": sum(t["state"] == "COMPLETE" for t in trials),
        "best_val_mae": top.value if top is not None else None,
        "best_trial": top.number if top is not None else None,
        "best_is_preset": bool(top is not None and top.user_attrs.get("preset")),
        "best_searched_val_mae": min((t["value"] for t in searched if t["state"] == "COMPLETE"), default=None),
        "test_mae": test_mae,
        "ensemble_valid_mae": ens["valid"]["mae"], "ensemble_test_mae": ens["test"]["mae"],
        "ensemble_members": [m["trial"] for m in ens["members"]],
        "presets_val_mae": presets,
        "batch4_trials": len(small), "batch4_epochs": sum(t["epochs"] for t in small),
        "batch4_seconds": sum(t["end_s"] - t["start_s"] for t in small),
        "trial_seconds": sum(t["end_s"] - t["start_s"] for t in trials),
        "trial_records": trials,
    }


COLUMNS = [("data", "data", 0), ("seed", "seed", 0), ("arm", "arm", 0), ("wall_s", "wall s", 0),
           ("epochs_trained", "epochs", 0), ("best_val_mae", "best val", 4), ("test_mae", "its test", 4),
           ("ensemble_test_mae", "ensemble test", 4), ("batch4_trials", "batch-4 trials", 0),
           ("batch4_seconds", "their s", 0)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(p, "mosi")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="study seeds (sampler, trials) [0]")
    p.add_argument("--trials", type=int, default=None, help="the study's budget [24; --smoke: 4]")
    p.add_argument("--workspace", type=Path, default=Path("/tmp/msatune-bench-presets-in-search"))
    p.add_argument("--smoke", action="store_true", help="tiny data, 4 trials of at most 3 epochs")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--append", action="store_true", help="add the runs to the JSON at the output path")
    args = p.parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    size = dict(SIZES[mode])
    if args.trials is not None:
        size["trials"] = args.trials
    data, record = resolve_data(args, args.workspace / "data", "tiny" if args.smoke else "mosi")
    label = data_label(record)
    print(f"presets in the search on {label}: {size}, arms {args.arms}, seeds {args.seeds}", flush=True)
    tag = data_tag(args, "mosi")
    out = args.out or result_path("presets_in_search" + (f"_{tag}" if tag else ""), mode, None)
    doc = base_doc("presets_in_search", mode, {"study": args.seeds})
    doc.update({"data": record, "sizes": size, "runs": []})
    if args.append and out.exists():
        doc["runs"] = json.loads(out.read_text()).get("runs", [])
    for seed in args.seeds:
        for arm in args.arms:
            print(f"[{time.strftime('%H:%M:%S')}] seed {seed}, {arm} ...", flush=True)
            run = run_arm(arm, args.workspace / f"ws-{arm}", data, size, seed)
            run["data"] = label
            doc["runs"].append(run)
            write_json(out, doc)  # every finished run is kept
            print_table([run], COLUMNS)
    rows = [r for r in doc["runs"] if r["data"] == label]
    print_table(rows, COLUMNS, title=f"all runs on {label}")
    medians = []
    for arm in dict.fromkeys(r["arm"] for r in rows):  # every arm in the file, in run order
        mine = [r for r in rows if r["arm"] == arm]
        medians.append({"data": label, "seed": "median", "arm": arm,
                        **{k: median(r[k] for r in mine) for k, _, _ in COLUMNS[3:]}})
    print_table(medians, COLUMNS, title="medians per arm")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
