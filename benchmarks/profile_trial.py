"""Where a trial's time goes: the training loop's steps, its first (tracing) epoch and its start.

Each variant trains one model for a few epochs in its own process (thread and Grappler settings
must be fixed before TensorFlow initialises) and records, with plain timers (no profiler, so the
numbers are those a user sees):

* ``startup``: dataset pipelines, model build, compile, optimizer/metric pre-build (service) or
  build + compile (users), up to the first epoch;
* per call of Keras' ``train_function`` (one call = ``steps_per_execution`` steps): the first
  call (tracing + Grappler + graph instantiation + its steps) and the median of the rest;
* per epoch: training (epoch begin -> validation begin), validation, and the driver's own time
  after the epoch (best-weights copy, CSV, the caller's hook).

Variants (``--variants``; any mix, each ``name[:key=value,...]``):

* ``users``: msa-tf2's loop, ``model.fit`` on numpy arrays with Keras' validation, 1 + 1 threads;
* ``service``: ``models.training.train_model`` on ``search.trial.build_pipelines``; options
  ``intra``/``inter`` (threads), ``spe`` (steps_per_execution), ``jit`` (0/1), ``grappler``
  (a preset name from :data:`GRAPPLER`), ``aug`` (a noise strength, to see the augmentation map),
  ``update`` (how Adam updates: ``grouped``, msatune's default, or ``keras``, Keras' own class;
  ``models.recipe.OPTIMIZER_UPDATES``), ``monitor`` (0: no gradient norms or attention probe;
  1, the default, as trials run), ``onednn`` (``TF_ENABLE_ONEDNN_OPTS``).

Prints a table, writes JSON (``--out``, default ``benchmarks/results/profile_trial.json``);
never asserts times. Hold the machine lock: ``/work/locks/exclusive python benchmarks/profile_trial.py``.

    python benchmarks/profile_trial.py --model baseline --batch 4 --variants users service service:spe=16
    python benchmarks/profile_trial.py --data DIR     # on any msa-tf2 directory (default: synthetic mosi; recorded)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

#: Grappler (TensorFlow's graph optimizer) settings to compare: passed to
#: ``tf.config.optimizer.set_experimental_options`` before anything runs.
GRAPPLER: dict[str, dict[str, Any]] = {
    "default": {},
    "off": {"disable_meta_optimizer": True},
    # The optimizers that only matter on GPUs / with control flow this model has none of.
    "lean": {"layout_optimizer": False, "loop_optimization": False, "scoped_allocator_optimization": False,
             "pin_to_host_optimization": False, "implementation_selector": False,
             "auto_mixed_precision": False, "shape_optimization": False, "dependency_optimization": False},
    "remap_only": {"disable_meta_optimizer": False, "layout_optimizer": False, "loop_optimization": False,
                   "scoped_allocator_optimization": False, "pin_to_host_optimization": False,
                   "implementation_selector": False, "auto_mixed_precision": False,
                   "shape_optimization": False, "dependency_optimization": False,
                   "constant_folding": False, "arithmetic_optimization": False, "debug_stripper": False,
                   "function_optimization": True, "remapping": True},
}


def _parse_variant(text: str) -> dict[str, Any]:
    name, _, opts = text.partition(":")
    out: dict[str, Any] = {"loop": name, "label": text}
    for part in filter(None, opts.split(",")):
        k, _, v = part.partition("=")
        out[k] = v
    return out


# --------------------------------------------------------------------------------------------
# Worker


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    t_start = time.perf_counter()
    import tensorflow as tf

    v = spec["variant"]
    if v["loop"] == "users":
        v.setdefault("intra", "1")
        v.setdefault("inter", "1")
    if "intra" in v:
        tf.config.threading.set_intra_op_parallelism_threads(int(v["intra"]))
    if "inter" in v:
        tf.config.threading.set_inter_op_parallelism_threads(int(v["inter"]))
    if v.get("grappler"):
        tf.config.optimizer.set_experimental_options(GRAPPLER[v["grappler"]])
    import keras
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    if "update" in v:  # models.recipe.OPTIMIZER_UPDATES: grouped (the default) or keras
        import msatune.models.recipe as recipe
        import msatune.models.training as training

        stock = recipe.make_optimizer
        update = v["update"]
        training.make_optimizer = lambda settings, **_: stock(settings, update=update)

    from msatune.augment.dataset import load_dataset
    from msatune.search.trial_config import resolve_config

    calls: list[tuple[float, float]] = []  # (start, seconds) of every train_function call
    original_make = TensorFlowTrainer.make_train_function

    def make_train_function(self, force=False):  # time every call of the train function
        fn = original_make(self, force)
        fn = self.train_function
        if getattr(fn, "_timed", False):
            return fn

        def timed(iterator):
            t = time.perf_counter()
            try:
                return fn(iterator)
            finally:
                calls.append((t, time.perf_counter() - t))

        timed._timed = True
        self.train_function = timed
        return timed

    TensorFlowTrainer.make_train_function = make_train_function
    # None: the loop's own default (the service's: a whole epoch up to 128 steps; users': 1)
    spe = int(v["spe"]) if "spe" in v else None
    used: dict[str, int] = {}
    original_compile = keras.Model.compile
    phases: dict[str, float] = {}

    def compile_(self, *args, **kwargs):
        t = time.perf_counter()
        if spe is not None:
            kwargs["steps_per_execution"] = spe
        if "jit" in v:
            kwargs["jit_compile"] = bool(int(v["jit"]))
        try:
            return original_compile(self, *args, **kwargs)
        finally:
            used["steps_per_execution"] = int(getattr(self, "steps_per_execution", 1) or 1)
            phases["compile_s"] = time.perf_counter() - t

    keras.Model.compile = compile_

    data = load_dataset(spec["data"])
    config = resolve_config(spec["model"], (), int(spec["epochs"]))
    config.update({"batch_size": int(spec["batch"]), "patience": 0, "seed": 0})
    if v.get("aug"):
        config["aug_noise"] = float(v["aug"])
    config.update(spec.get("overrides") or {})
    t_ready = time.perf_counter()
    epochs: list[dict[str, float]] = []
    if v["loop"] == "users":
        out = _users(config, data, epochs, phases)
    else:
        out = _service(config, data, epochs, phases, monitor=v.get("monitor", "1") != "0")
    t_end = time.perf_counter()

    first_call = calls[0][1] if calls else None
    steady_calls = [c for _, c in calls[1:]]
    steady_epochs = epochs[1:]
    train_steady = statistics.median(e["train_s"] for e in steady_epochs) if steady_epochs else None
    steps = out["steps_per_epoch"]
    return {
        "variant": v["label"],
        "loop": v["loop"],
        "model": spec["model"],
        "batch": int(spec["batch"]),
        "threads": [tf.config.threading.get_intra_op_parallelism_threads(),
                    tf.config.threading.get_inter_op_parallelism_threads()],
        "steps_per_execution": used.get("steps_per_execution", spe),  # what the model compiled with
        "steps_per_epoch": steps,
        "import_and_load_s": t_ready - t_start,
        "phases": phases,
        "startup_s": (epochs[0]["begin"] - t_ready) if epochs else None,
        "first_call_s": first_call,
        "steady_call_s": statistics.median(steady_calls) if steady_calls else None,
        "steady_step_ms": (1000 * train_steady / steps) if train_steady else None,
        "first_epoch_s": epochs[0]["epoch_s"] if epochs else None,
        "first_epoch_train_s": epochs[0]["train_s"] if epochs else None,
        "steady_train_s": train_steady,
        "steady_valid_s": statistics.median(e["valid_s"] for e in steady_epochs) if steady_epochs else None,
        "first_valid_s": epochs[0]["valid_s"] if epochs else None,
        "steady_epoch_s": statistics.median(e["epoch_s"] for e in steady_epochs) if steady_epochs else None,
        "driver_after_epoch_s": statistics.median(after) if (after := [e["after_s"] for e in epochs if "after_s" in e])
        else None,
        "epochs": epochs,
        "total_s": t_end - t_start,
        "final_train_mae": out.get("final_train_mae"),
        "final_val_mae": out.get("final_val_mae"),
    }


def keras_optimizer(settings: dict[str, Any], make_optimizer: Any) -> Any:
    """The recipe's optimizer as Keras ships it (the users' own), not msatune's grouped one."""
    try:
        return make_optimizer(settings, update="keras")
    except TypeError:  # an msatune before models.optimizers (old-vs-new runs)
        return make_optimizer(settings)


def _users(config: dict[str, Any], data: Any, epochs: list[dict], phases: dict) -> dict[str, Any]:
    import keras
    import numpy as np

    from msatune.models.build import build_model
    from msatune.models.training import make_loss, make_optimizer, training_settings

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs.append({"begin": time.perf_counter()})

        def on_test_begin(self, logs=None):
            epochs[-1]["test_begin"] = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            e = epochs[-1]
            now = time.perf_counter()
            e.update(train_s=e["test_begin"] - e["begin"], valid_s=now - e["test_begin"],
                     epoch_s=now - e["begin"], val_mae=float(logs["val_mae"]), mae=float(logs["mae"]))

    settings = training_settings(config)
    keras.utils.set_random_seed(0)
    t = time.perf_counter()
    model = build_model(config, data.dims, data.seq_len)
    phases["build_s"] = time.perf_counter() - t
    model.compile(optimizer=keras_optimizer(settings, make_optimizer), loss=make_loss(settings), metrics=["mae", "mse"])
    x, y = data.train.inputs(), np.asarray(data.train.labels, np.float32).reshape(-1, 1)
    xv, yv = data.valid.inputs(), np.asarray(data.valid.labels, np.float32).reshape(-1, 1)
    batch = int(config["batch_size"])
    model.fit(x, y, batch_size=batch, epochs=int(config["epochs"]), validation_data=(xv, yv),
              callbacks=[Clock()], verbose=0)
    return {"steps_per_epoch": -(-len(y) // batch), "final_train_mae": epochs[-1]["mae"],
            "final_val_mae": epochs[-1]["val_mae"]}


def _service(config: dict[str, Any], data: Any, epochs: list[dict], phases: dict, monitor: bool = True) -> dict[str, Any]:
    import msatune.models.training as training
    from msatune.search.trial import build_pipelines

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] = time.perf_counter() - t
        return wrapper

    training.build_model = timed("build_s", training.build_model)
    training._prebuild = timed("prebuild_s", training._prebuild)

    def on_epoch(report: Any) -> None:
        now = time.perf_counter()
        if epochs:
            epochs[-1]["after_s"] = report.started - epochs[-1]["end"]
        epochs.append({"begin": report.started, "train_s": report.seconds - report.validation_seconds,
                       "valid_s": report.validation_seconds, "epoch_s": report.seconds,
                       "end": now, "val_mae": report.metrics["val_mae"], "mae": report.metrics["mae"]})

    t = time.perf_counter()
    datasets = build_pipelines(config, data)
    phases["pipelines_s"] = time.perf_counter() - t
    result = training.train_model(config, datasets, data.dims, seq_len=data.seq_len, on_epoch=on_epoch,
                                  monitor=monitor)
    steps = int(datasets["train"].cardinality().numpy())
    return {"steps_per_epoch": steps, "final_train_mae": result.history[-1]["mae"],
            "final_val_mae": result.history[-1]["val_mae"]}


# --------------------------------------------------------------------------------------------
# Driver


def run_variant(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    from bench_common import run_worker

    env = {"TF_ENABLE_ONEDNN_OPTS": spec["variant"]["onednn"]} if "onednn" in spec["variant"] else None
    return run_worker(Path(__file__), spec, timeout=timeout, env=env)  # oneDNN: read when TF loads


def _f(x: Any, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def print_rows(rows: list[dict[str, Any]]) -> None:
    head = (f"{'model':<8} {'B':>3} {'variant':<28} {'thr':>5} {'step ms':>8} {'train s':>8} {'valid s':>8} "
            f"{'after s':>8} {'1st call s':>10} {'1st ep s':>8} {'startup s':>9} {'val MAE':>8} {'load':>5}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:<8} {r['batch']:>3} {r['variant']:<28} {'/'.join(map(str, r['threads'])):>5} "
              f"{_f(r['steady_step_ms']):>8} {_f(r['steady_train_s']):>8} {_f(r['steady_valid_s']):>8} "
              f"{_f(r['driver_after_epoch_s'], 3):>8} {_f(r['first_call_s']):>10} {_f(r['first_epoch_s']):>8} "
              f"{_f(r['startup_s']):>9} {_f(r['final_val_mae'], 4):>8} {r['loadavg_before'][0]:>5}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("baseline", "improved"), default="improved")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=["users", "service"])
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--append", action="store_true", help="add to the JSON at --out instead of replacing it")
    from bench_common import add_data_args, add_worker_arg, answer_worker

    add_worker_arg(p)
    add_data_args(p, "mosi", smoke_preset=None)
    args = p.parse_args(argv)
    if answer_worker(args, _worker):
        return 0
    out = args.out or REPO / "benchmarks" / "results" / "profile_trial.json"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="msatune-profile-") as tmp:
        from bench_common import resolve_data

        data, data_rec = resolve_data(args, Path(tmp), "mosi", 0)
        for rep in range(args.repeat):
            for text in args.variants:
                spec = {"model": args.model, "batch": args.batch, "epochs": args.epochs, "data": str(data),
                        "variant": _parse_variant(text), "repeat": rep}
                print(f"{args.model} {args.batch} {text} ...", file=sys.stderr, flush=True)
                rows.append(run_variant(spec, 1800))
    print_rows(rows)
    doc: dict[str, Any] = {"benchmark": "profile_trial", "runs": []}
    if args.append and out.exists():
        doc = json.loads(out.read_text())
    from bench_common import machine, versions

    doc["runs"].append({"machine": machine(), "versions": versions(("numpy", "tensorflow", "keras")),
                        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "data": data_rec, "rows": rows})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
