"""How fast a trial's train pipeline alone delivers batches: the batch gather (now) or the element pipeline.

A trial's train pipeline (``augment.pipeline.make_datasets``) shuffles and batches sample indices
and gathers each batch's rows from the arrays in a ``tf.numpy_function``: no copy of the split
in TensorFlow, but a Python call per batch. ``element`` is what it replaced (until 2026-12-06,
written out here as ``tests/augment/test_pipeline.py`` does): ``Dataset.from_tensor_slices``
(TensorFlow's copy of the split), a shuffle buffer over the samples, then batches. Both apply the
preset's augmentation and drop the last partial batch, as a trial does. For each preset, each
kind in turn, ``--repeats`` times: the seconds to build the pipeline (the element pipeline's
copy) and to iterate one epoch of batches with no model, i.e. the rate at which the pipeline can
feed a training step (a GPU step of these models is 3-5 ms). Writes
``benchmarks/results/pipeline_rate[_DATA].json``; never asserts.

    python benchmarks/pipeline_rate.py --data /tmp/mosei
"""

from __future__ import annotations

import argparse
import os
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
    loadavg,
    median,
    print_table,
    resolve_data,
    result_path,
    write_json,
)

KINDS = ("gather", "element")


def element_pipeline(split: Any, batch_size: int, cfg: dict, seed: int = 0) -> Any:
    """The train pipeline before 2026-12-06: samples copied into TensorFlow, shuffled one by one."""
    import numpy as np
    import tensorflow as tf

    from msatune.augment.pipeline import _AUG_SALT, _SHUFFLE_SALT
    from msatune.augment.transforms import augment_batch

    labels = np.asarray(split.labels, np.float32).reshape(-1, 1)
    ds = tf.data.Dataset.from_tensor_slices((split.inputs(), labels))
    ds = ds.shuffle(split.n, seed=seed + _SHUFFLE_SALT, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    if any(v > 0 for v in cfg.values()):
        seeds = tf.data.Dataset.random(seed=seed + _AUG_SALT, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(lambda b, s: augment_batch(b[0], b[1], cfg, s),
                                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(parser, "mosi", smoke_preset=None)
    parser.add_argument("--presets", nargs="+", default=["baseline", "improved"])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each kind, alternating")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from msatune.augment.aug_config import validate_aug_config
    from msatune.augment.dataset import load_dataset
    from msatune.augment.pipeline import make_datasets
    from msatune.search.trial_config import PRESETS

    with tempfile.TemporaryDirectory() as tmp:
        path, record = resolve_data(args, Path(tmp), "mosi")
        train = load_dataset(path).train
    runs: list[dict[str, Any]] = []
    for preset in args.presets:
        cfg, batch = validate_aug_config(PRESETS[preset]), int(PRESETS[preset]["batch_size"])
        for r in range(args.repeats):
            for kind in KINDS:
                load = loadavg()
                t0 = time.perf_counter()
                if kind == "gather":
                    ds = make_datasets({"train": train.arrays()}, batch, cfg, seed=0, drop_last_partial=True)["train"]
                else:
                    ds = element_pipeline(train, batch, cfg)
                build = time.perf_counter() - t0
                it = iter(ds)
                next(it)  # the first batch waits on the iterator's start
                t1, k = time.perf_counter(), 1
                for _ in it:
                    k += 1
                epoch = time.perf_counter() - t1
                runs.append({"preset": preset, "batch": batch, "kind": kind, "repeat": r, "batches": k,
                             "build_s": build, "epoch_s": epoch, "ms_per_batch": 1000 * epoch / max(k - 1, 1),
                             "load_before": load})
                print(runs[-1], flush=True)
    rows = [{"preset": p, "batch": int(PRESETS[p]["batch_size"]), "kind": kind,
             **{key: median(r[key] for r in runs if r["preset"] == p and r["kind"] == kind)
                for key in ("build_s", "epoch_s", "ms_per_batch")}}
            for p in args.presets for kind in KINDS]
    doc = {**base_doc("pipeline_rate", "full", {"pipeline": 0}), "data": record, "n_train": train.n,
           "threads": os.cpu_count(), "runs": runs, "medians": rows}
    out = result_path("pipeline_rate" + (f"_{t}" if (t := data_tag(args, "mosi")) else ""), "full", args.out)
    write_json(out, doc)
    print_table(rows, [("preset", "preset", 0), ("batch", "batch", 0), ("kind", "pipeline", 0),
                       ("build_s", "build s", 2), ("epoch_s", "epoch s", 2), ("ms_per_batch", "ms/batch", 3)],
                title=f"{data_label(record)}: train split ({train.n} samples), medians of {args.repeats}")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
