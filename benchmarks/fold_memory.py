"""A refit fold worker's own memory: its splits as rows of the shared pool, or as copies of them.

A refit ships the pooled train+valid samples to every fold worker through Ray's object store
(``tune.with_parameters``), where a worker reads them in place. Its fold's train and held-out splits
are rows of that pool: ``rows`` (``search.fold_run.fold_dataset`` now) reads them in place, a
batch at a time; ``copy`` builds them as copies of their rows (what ``fold_dataset`` did until
2026-12-06). For each mode, in turn and each in a fresh Ray worker process, this runs a fold
worker's data path for fold 0 of ``--folds``: the fold's data, its input pipelines (the improved
preset's batch size and augmentation), one pass over its train and held-out batches; and records
the worker's own memory (USS: pages no other process shares, e.g. not the object store's) and
its RSS before and after. No model is trained: what differs between the modes is data only.
Writes ``benchmarks/results/fold_memory[_DATA].json``; never asserts.

    python benchmarks/fold_memory.py --data /tmp/mosei      # a MOSEI-sized directory
    python benchmarks/fold_memory.py --synth mosi --repeats 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (  # noqa: E402
    add_data_args,
    base_doc,
    data_label,
    data_tag,
    fmt,
    loadavg,
    print_table,
    resolve_data,
    result_path,
    start_ray,
    write_json,
)

MODES = ("rows", "copy")


def _memory() -> dict[str, float]:
    """This process's USS and RSS now, MB (``/proc/self/smaps_rollup``)."""
    got: dict[str, int] = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Private_Clean", "Private_Dirty"):
            got[key] = int(rest.split()[0]) * 1024
    return {"uss_mb": (got["Private_Clean"] + got["Private_Dirty"]) / 1e6, "rss_mb": got["Rss"] / 1e6}


def fold_worker(mode: str, pool: Any, assignment: Any, folds: int) -> dict[str, Any]:
    """In a Ray worker: the fold's data and pipelines as a refit fold builds them, one pass."""
    import numpy as np
    import tensorflow as tf  # noqa: F401  (imported before the first measurement)

    from msatune.augment.dataset import MSADataset, SplitData
    from msatune.augment.folds import fold_split
    from msatune.search.fold_run import fold_dataset
    from msatune.search.trial import build_pipelines
    from msatune.search.trial_config import PRESETS

    before = _memory()
    t0 = time.perf_counter()
    if mode == "rows":
        data = fold_dataset(pool, assignment, 0, 0, "bench")
    else:  # the splits as copies of their rows (fold_dataset until 2026-12-06)
        split = fold_split(assignment, 0, 0)

        def copy(rows: np.ndarray) -> SplitData:
            return SplitData(text=pool.text[rows], audio=pool.audio[rows], video=pool.video[rows],
                             labels=pool.labels[rows])

        data = MSADataset(Path("bench"), {"train": copy(split.train), "valid": copy(split.held_out)}, "bench")
    datasets = build_pipelines({**PRESETS["improved"], "seed": 0}, data)
    built = _memory()
    batches = {name: sum(1 for _ in datasets[name]) for name in ("train", "valid")}
    return {"mode": mode, "folds": folds, "n_train": data.train.n, "n_held_out": data.valid.n,
            "batches": batches, "seconds": time.perf_counter() - t0, "before": before,
            "built": built, "after": _memory()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(parser, "mosi", smoke_preset=None)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each mode, alternating")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import numpy as np
    import ray

    from msatune.augment.dataset import load_dataset
    from msatune.augment.folds import pool_splits, stratified_folds

    with tempfile.TemporaryDirectory() as tmp:
        path, record = resolve_data(args, Path(tmp), "mosi")
        pool = pool_splits(load_dataset(path).splits)
    assignment = stratified_folds(pool.labels, args.folds, seed=0)
    start_ray(num_cpus=1)
    try:
        pool_ref, assignment_ref = ray.put(pool), ray.put(np.asarray(assignment))
        worker = ray.remote(num_cpus=1, max_calls=1)(fold_worker)  # a fresh process per run
        runs = []
        for r in range(args.repeats):
            for mode in MODES:
                load = loadavg()
                run = ray.get(worker.remote(mode, pool_ref, assignment_ref, args.folds))
                runs.append({**run, "repeat": r, "load_before": load})
                print(f"{mode}: USS {fmt(run['before']['uss_mb'], 0)} -> {fmt(run['after']['uss_mb'], 0)} MB "
                      f"(load {load})", flush=True)
    finally:
        ray.shutdown()
    pool_mb = sum(a.nbytes for a in pool.arrays().values()) / 1e6
    doc = {**base_doc("fold_memory", "full", {"fold_assignment": 0, "pipeline": 0}), "data": record, "pool_mb": pool_mb,
           "folds": args.folds, "runs": runs}
    out = result_path("fold_memory" + (f"_{t}" if (t := data_tag(args, "mosi")) else ""), "full", args.out)
    write_json(out, doc)
    print(f"\n{data_label(record)}: pool (train+valid) {pool_mb:,.0f} MB, fold 0 of {args.folds}")
    print_table(
        [{"mode": r["mode"], "repeat": r["repeat"], "train": r["n_train"], "held": r["n_held_out"],
          "uss0": r["before"]["uss_mb"], "uss_built": r["built"]["uss_mb"], "uss_after": r["after"]["uss_mb"],
          "rss_after": r["after"]["rss_mb"], "s": r["seconds"]} for r in runs],
        [("mode", "mode", 0), ("repeat", "rep", 0), ("train", "train", 0), ("held", "held out", 0),
         ("uss0", "USS before MB", 0), ("uss_built", "USS built MB", 0), ("uss_after", "USS after pass MB", 0),
         ("rss_after", "RSS after MB", 0), ("s", "s", 1)],
    )
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
