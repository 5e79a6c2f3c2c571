"""What a trial's traced train step is made of, and where its first call's time goes (issue 25).

A first-rung trial's fixed cost is the first call of Keras' train function: TensorFlow builds the
step's graph in Python (one op at a time), then optimizes (Grappler) and instantiates it, then
runs the epoch's steps. For each preset (one process each: thread settings are fixed when
TensorFlow starts), this trains ``--epochs`` epochs through msatune's own loop
(``models.training.train_model`` on ``search.trial.build_pipelines``, monitoring on as in a
trial) and records:

* the traced step's ops (nodes of its graph and its function library) by part, from their name
  scopes: the model's forward pass, its gradients, the loss and its gradient, the optimizer's
  update, the monitoring's gradient norms (``grad_norms``), and the rest (metrics, the multi-step
  loop); and the most frequent op types;
* the first call split: ``python_trace_s`` (building the graph: ``get_concrete_function``,
  timed alone before the call) and ``graph_setup_s`` (the first call minus a steady call of the
  same number of steps: Grappler, instantiation, first-run allocations).

Prints a table, writes JSON (``--out``, default ``benchmarks/results/trace_census.json``); never
asserts times. Run it alone on the machine.

    python benchmarks/trace_census.py                          # improved 16, baseline 4, seqlevel 32
    python benchmarks/trace_census.py --presets improved --data DIR
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

#: The presets measured and the batch size each trains with (the presets' own).
DEFAULT_RUNS = ("improved:16", "baseline:4", "seqlevel:32")
PARTS = ("forward", "backward", "loss", "optimizer", "grad_norms", "other")


def classify(name: str, model_scope: str, optimizer_scope: str) -> str:
    """The part of the train step a node belongs to, from its name scope."""
    parts = name.split("/")
    if parts[0] == "gradient_tape":
        return "loss" if len(parts) > 1 and parts[1].startswith("compile_loss") else "backward"
    if parts[0] == "grad_norms":
        return "grad_norms"
    if parts[0].startswith(optimizer_scope):
        return "optimizer"
    if parts[0].startswith(model_scope):
        return "forward"
    if parts[0].startswith("compile_loss"):
        return "loss"
    return "other"


def census(graph_def: Any, model_scope: str, optimizer_scope: str) -> dict[str, Any]:
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    by_part = collections.Counter(classify(n.name, model_scope, optimizer_scope) for n in nodes)
    types = collections.Counter(n.op for n in nodes)
    return {"ops": len(nodes), "by_part": {p: by_part.get(p, 0) for p in PARTS},
            "op_types": dict(types.most_common(12)), "functions": len(graph_def.library.function)}


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    import inspect

    import tensorflow as tf
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    import msatune.models.training as training
    from msatune.augment.dataset import load_dataset
    from msatune.search.trial import build_pipelines
    from msatune.search.trial_config import resolve_config

    seen: dict[str, Any] = {"calls": []}
    original_make = TensorFlowTrainer.make_train_function

    def make_train_function(self: Any, force: bool = False) -> Any:
        original_make(self, force)
        fn = self.train_function
        if getattr(fn, "_census", False):
            return fn
        traced = next(v for v in inspect.getclosurevars(fn).nonlocals.values()
                      if hasattr(v, "get_concrete_function"))

        def timed(iterator: Any) -> Any:
            if "concrete" not in seen:
                t = time.perf_counter()
                seen["concrete"] = traced.get_concrete_function(iterator)
                seen["python_trace_s"] = time.perf_counter() - t
                seen["model_scope"], seen["optimizer_scope"] = self.name, self.optimizer.name
                seen["traced"] = traced
            t = time.perf_counter()
            try:
                return fn(iterator)
            finally:
                seen["calls"].append(time.perf_counter() - t)

        timed._census = True
        self.train_function = timed
        return timed

    TensorFlowTrainer.make_train_function = make_train_function
    data = load_dataset(spec["data"])
    config = resolve_config(spec["preset"], (), int(spec["epochs"]))
    config.update({"batch_size": int(spec["batch"]), "patience": 0, "seed": 0})
    datasets = build_pipelines(config, data)
    training.train_model(config, datasets, data.dims, seq_len=data.seq_len, monitor=True)
    from bench_common import median

    first, steady = seen["calls"][0], median(seen["calls"][1:])
    return {
        "preset": spec["preset"], "batch": int(spec["batch"]),
        "steps_per_epoch": int(datasets["train"].cardinality().numpy()),
        "traces": int(seen["traced"].experimental_get_tracing_count()),
        "python_trace_s": seen["python_trace_s"],
        "first_call_s": first,  # the trace above excluded
        "steady_call_s": steady,
        "graph_setup_s": (first - steady) if steady is not None else None,
        "census": census(seen["concrete"].graph.as_graph_def(), seen["model_scope"],
                         seen["optimizer_scope"]),
        "threads": [tf.config.threading.get_intra_op_parallelism_threads(),
                    tf.config.threading.get_inter_op_parallelism_threads()],
    }


def main(argv: list[str] | None = None) -> int:
    from bench_common import (
        add_data_args,
        add_worker_arg,
        answer_worker,
        base_doc,
        data_tag,
        print_table,
        resolve_data,
        result_path,
        run_worker,
        write_json,
    )

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=list(DEFAULT_RUNS), metavar="PRESET[:BATCH]",
                   help=f"presets to measure, each with its batch size [{' '.join(DEFAULT_RUNS)}]")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run (>= 2: the second is the steady call)")
    p.add_argument("--out", type=Path, default=None)
    add_worker_arg(p)
    add_data_args(p, "mosi", smoke_preset=None)
    args = p.parse_args(argv)
    if answer_worker(args, _worker):
        return 0
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (the second epoch's call is the steady one)")
    data, record = resolve_data(args, Path(os.environ.get("MSATUNE_BENCH_DATA", "/tmp/msatune-bench-data")), "mosi")
    doc = base_doc("trace_census", "full", {"seed": 0})
    doc["data"] = record
    doc["runs"] = []
    for item in args.presets:
        preset, _, batch = item.partition(":")
        spec = {"preset": preset, "batch": int(batch or 16), "epochs": args.epochs, "data": str(data)}
        print(f"{preset} {spec['batch']} ...", file=sys.stderr, flush=True)
        doc["runs"].append(run_worker(Path(__file__), spec, timeout=1800))
    rows = [{"preset": f"{r['preset']} {r['batch']}", "ops": r["census"]["ops"],
             **{p: r["census"]["by_part"][p] for p in PARTS},
             "python_trace_s": r["python_trace_s"], "graph_setup_s": r["graph_setup_s"],
             "steady_call_s": r["steady_call_s"]} for r in doc["runs"]]
    print_table(rows, [("preset", "preset", 0), ("ops", "ops", 0), *[(p, p, 0) for p in PARTS],
                       ("python_trace_s", "trace s", 2), ("graph_setup_s", "setup s", 2),
                       ("steady_call_s", "epoch s", 2)])
    tag = data_tag(args, "mosi")  # other data: NAME_<data>.json, the synthetic result stays
    out = result_path(f"trace_census_{tag}" if tag else "trace_census", "full", args.out)
    write_json(out, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
