"""Training throughput: the service's training loop against the users' original setup.

For the ``baseline`` and ``improved`` models, at their preset batch sizes (4 and 16) and at batch
64, on the synthetic mosi set (generated with seed 0 into a temporary directory; or ``--data DIR``,
``--synth NAME``), each setup is trained for a few epochs in its own subprocess (thread settings
must be fixed before TensorFlow initialises):

* ``users``: the users' original setup: TensorFlow limited to one intra-op and one inter-op
  thread, the same model compiled with the preset's optimizer and loss, plain
  ``model.fit(x_numpy_dict, y, batch_size=B, validation_data=(xv, yv))`` on numpy arrays;
* ``service``: ``models.training.train_model`` on the ``search.trial.build_pipelines`` pipelines
  (tf.data with prefetch, evaluation batch 256, last partial train batch dropped, pre-built
  optimizer and metrics), TensorFlow's default threading, ``jit_compile`` off;
* ``service+jit``: the same with ``jit_compile=True`` (XLA).

Steady-state throughput excludes the first epoch (tracing): ``train samples/s`` is the samples of
epochs 2..k divided by their training time (epoch begin -> validation begin); ``epoch samples/s``
divides by the whole epoch time (training + validation, as a user waits for it). The first epoch's
time and the startup time (model build and compile up to the first epoch) are reported
separately. With ``--repeat N`` every setup runs N times (alternating with the others of its
model and batch) and the fastest run counts: the machine may be shared. Goal (issue 3): for the same model and batch size, the service's loop reaches at least
1.5x the users' train samples/s. Prints a table and writes
``benchmarks/results/train_throughput[_quick].json``; never asserts times. The machine is shared:
the JSON records the load average before and after every setup.

    python benchmarks/train_throughput.py            # 2 models x 2 batch sizes x 3 setups, 3 epochs
    python benchmarks/train_throughput.py --quick    # improved at batch 16, no jit, 2 epochs (~1-2 min)
    python benchmarks/train_throughput.py --data DIR # any msa-tf2 directory (recorded)
    python benchmarks/train_throughput.py --smoke --out /tmp/t.json   # tiny data, small model (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import add_data_args, data_tag, resolve_data  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
GOAL_RATIO = 1.5
DATA_SEED = 0
MODEL_SEED = 0
USERS_BATCH = 4
LARGE_BATCH = 64
SETUPS = ("users", "service", "service+jit")
#: Diagnostics (``--setups``): each loop under the other's threading.
EXTRA_SETUPS = ("service-1thread", "users-allthreads")
#: ``--smoke`` trains a small model (tracing dominates a smoke run's time).
SMOKE_MODEL = {"model_dim": 16, "num_heads": 2, "ff_dim": 32, "n_layers_mod": 1, "n_layers_fuse": 1}


# --------------------------------------------------------------------------------------------
# Worker: one setup in one process


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one setup for ``spec["epochs"]`` epochs and return its per-epoch timings."""
    t_start = time.perf_counter()
    import tensorflow as tf

    if spec["setup"] in ("users", "service-1thread"):
        # Before any op runs: the users' setup pins TensorFlow to one thread of each kind.
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)

    from msatune.augment.dataset import load_dataset
    from msatune.search.trial_config import resolve_config

    data = load_dataset(spec["data"])
    epochs = int(spec["epochs"])
    config = resolve_config(spec["model"], (), epochs)
    config["batch_size"] = int(spec["batch_size"])
    config["patience"] = 0  # run every epoch
    config["jit_compile"] = spec["setup"] == "service+jit"
    config["seed"] = MODEL_SEED
    config.update(spec.get("overrides") or {})

    timing: dict[str, list[float]] = {"epoch_begin": [], "test_begin": [], "epoch_end": []}

    def mark(kind: str, at: float | None = None) -> None:
        timing[kind].append(time.perf_counter() if at is None else at)

    t_ready = time.perf_counter()
    if spec["setup"].startswith("users"):
        out = _run_users(config, data, epochs, mark)
    else:
        out = _run_service(config, data, mark)
    t_end = time.perf_counter()

    begins, tests, ends = timing["epoch_begin"], timing["test_begin"], timing["epoch_end"]
    n = min(len(begins), len(ends))
    epoch_s = [ends[i] - begins[i] for i in range(n)]
    train_s = [tests[i] - begins[i] for i in range(min(n, len(tests)))]
    samples = int(out["samples_per_epoch"])
    steady_epochs = epoch_s[1:]
    steady_train = train_s[1:]
    result = {
        **{k: spec[k] for k in ("model", "setup", "batch_size", "epochs")},
        "repeat": spec.get("repeat", 0),
        "overrides": spec.get("overrides") or {},
        "threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        },
        "jit_compile": out["jit_compile"],
        "samples_per_epoch": samples,
        "steps_per_epoch": out["steps_per_epoch"],
        "params": out["params"],
        "epoch_s": epoch_s,
        "train_s": train_s,
        "import_and_load_s": t_ready - t_start,
        "startup_s": (begins[0] - t_ready) if begins else None,  # build + compile (+ pre-build)
        "first_epoch_s": epoch_s[0] if epoch_s else None,  # includes tracing
        "first_epoch_train_s": train_s[0] if train_s else None,
        "steady_epoch_s": _mean(steady_epochs),
        "steady_train_s": _mean(steady_train),
        "train_samples_per_s": (samples * len(steady_train) / sum(steady_train)) if steady_train else None,
        "epoch_samples_per_s": (samples * len(steady_epochs) / sum(steady_epochs)) if steady_epochs else None,
        "total_s": t_end - t_start,
        "final_train_mae": out["final_train_mae"],
    }
    # Trace cost: what the first epoch took beyond a steady one.
    if result["first_epoch_s"] is not None and result["steady_epoch_s"] is not None:
        result["trace_overhead_s"] = result["first_epoch_s"] - result["steady_epoch_s"]
    else:
        result["trace_overhead_s"] = None
    return result


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def keras_optimizer(settings: dict[str, Any], make_optimizer: Any) -> Any:
    """The recipe's optimizer as Keras ships it (the users' own), not msatune's grouped one."""
    try:
        return make_optimizer(settings, update="keras")
    except TypeError:  # an msatune before models.optimizers (old-vs-new runs)
        return make_optimizer(settings)


def _run_users(config: dict[str, Any], data: Any, epochs: int, mark: Any) -> dict[str, Any]:
    """The users' msa-tf2 loop: build, compile, ``model.fit`` on numpy arrays."""
    import keras
    import numpy as np

    from msatune.models.build import build_model
    from msatune.models.recipe import make_loss, make_optimizer, training_settings

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            mark("epoch_begin")

        def on_test_begin(self, logs=None):
            if len(timing_guard) < epochs:  # only the validation run inside fit
                timing_guard.append(1)
                mark("test_begin")

        def on_epoch_end(self, epoch, logs=None):
            mark("epoch_end")
            last_logs.clear()
            last_logs.update(logs or {})

    timing_guard: list[int] = []
    last_logs: dict[str, float] = {}
    settings = training_settings(config)
    keras.utils.set_random_seed(MODEL_SEED)
    model = build_model(config, data.dims, data.seq_len)
    model.compile(optimizer=keras_optimizer(settings, make_optimizer), loss=make_loss(settings), metrics=["mae", "mse"])
    train, valid = data.train, data.valid
    x = train.inputs()
    y = np.asarray(train.labels, np.float32).reshape(-1, 1)
    xv = valid.inputs()
    yv = np.asarray(valid.labels, np.float32).reshape(-1, 1)
    batch = int(config["batch_size"])
    model.fit(
        x, y, batch_size=batch, epochs=epochs, validation_data=(xv, yv), callbacks=[Clock()], verbose=0
    )
    n = int(y.shape[0])
    return {
        "samples_per_epoch": n,
        "steps_per_epoch": -(-n // batch),
        "params": int(model.count_params()),
        "jit_compile": bool(model.jit_compile),
        "final_train_mae": float(last_logs.get("mae", float("nan"))),
    }


def _run_service(config: dict[str, Any], data: Any, mark: Any) -> dict[str, Any]:
    """The service's loop: ``train_model`` on the trial's ``tf.data`` pipelines; the epoch
    timestamps come from its per-epoch reports (epoch start, validation time)."""
    from msatune.models.training import train_model
    from msatune.search.trial import build_pipelines

    def on_epoch(report: Any) -> None:
        mark("epoch_begin", report.started)
        mark("test_begin", report.started + report.seconds - report.validation_seconds)
        mark("epoch_end", report.started + report.seconds)

    datasets = build_pipelines(config, data)
    steps = int(datasets["train"].cardinality().numpy())
    result = train_model(config, datasets, data.dims, seq_len=data.seq_len, on_epoch=on_epoch)
    return {
        "samples_per_epoch": steps * int(config["batch_size"]),
        "steps_per_epoch": steps,
        "params": int(result.model.count_params()),
        "jit_compile": bool(result.model.jit_compile),
        "final_train_mae": float(result.history[-1]["mae"]),
    }


# --------------------------------------------------------------------------------------------
# Driver


def run_setup(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    load_before = _loadavg()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise RuntimeError(f"setup {spec} failed (exit {proc.returncode}):\n{tail}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    result["process_wall_s"] = wall
    result["loadavg_before"] = load_before
    result["loadavg_after"] = _loadavg()
    return result


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on this platform
        return None


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    from msatune.search.trial_config import PRESETS

    specs = []
    for model in args.models:
        batches = [int(PRESETS[model]["batch_size"])]
        if not args.preset_batch_only and LARGE_BATCH not in batches:
            batches.append(LARGE_BATCH)
        for batch in batches:
            # Setups of one model and batch run back to back (and, with --repeat, alternate), so
            # that the machine's load changes as little as possible between the compared runs.
            for rep in range(args.repeat):
                for setup in args.setups:
                    specs.append({
                        "model": model, "batch_size": batch, "setup": setup, "epochs": args.epochs,
                        "repeat": rep, "overrides": SMOKE_MODEL if args.smoke else {},
                    })
    return specs


def best_of(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per (model, batch, setup): the repeat with the highest train samples/s."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in results:
        key = (r["model"], r["batch_size"], r["setup"])
        if key not in best or (r["train_samples_per_s"] or 0) > (best[key]["train_samples_per_s"] or 0):
            best[key] = r
    return list(best.values())


def compare(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and batch size: each service setup's train samples/s over the users'."""
    out = []
    keys = sorted({(r["model"], r["batch_size"]) for r in results}, key=lambda k: (k[0], k[1]))
    for model, batch in keys:
        group = {r["setup"]: r for r in results if r["model"] == model and r["batch_size"] == batch}
        users = group.get("users")
        row: dict[str, Any] = {"model": model, "batch_size": batch}
        for setup in [s for s in (*SETUPS, *EXTRA_SETUPS) if s != "users"]:
            r = group.get(setup)
            if users is None or r is None or not users.get("train_samples_per_s"):
                continue
            ratio = r["train_samples_per_s"] / users["train_samples_per_s"]
            row[f"{setup}_ratio"] = round(ratio, 3)
            if users.get("epoch_samples_per_s") and r.get("epoch_samples_per_s"):
                row[f"{setup}_epoch_ratio"] = round(r["epoch_samples_per_s"] / users["epoch_samples_per_s"], 3)
            row[f"{setup}_meets_goal"] = ratio >= GOAL_RATIO
        best = [row[k] for k in ("service_ratio", "service+jit_ratio", "service-1thread_ratio") if k in row]
        if best:
            row["best_ratio"] = max(best)
            row["meets_goal"] = max(best) >= GOAL_RATIO
        out.append(row)
    return out


def _fmt(x: Any, nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def print_table(results: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> None:
    head = (
        f"{'model':<9} {'batch':>5} {'setup':<12} {'thr':>5} {'train sam/s':>11} {'epoch sam/s':>11} "
        f"{'x users':>7} {'1st epoch s':>11} {'trace s':>7} {'startup s':>9} {'steady ep s':>11}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        ratio = None
        for row in ratios:
            if row["model"] == r["model"] and row["batch_size"] == r["batch_size"]:
                ratio = 1.0 if r["setup"] == "users" else row.get(f"{r['setup']}_ratio")
        thr = f"{r['threads']['intra_op'] or 'all'}"
        print(
            f"{r['model']:<9} {r['batch_size']:>5} {r['setup']:<12} {thr:>5} "
            f"{_fmt(r['train_samples_per_s']):>11} {_fmt(r['epoch_samples_per_s']):>11} "
            f"{_fmt(ratio, 2):>7} {_fmt(r['first_epoch_s']):>11} {_fmt(r['trace_overhead_s']):>7} "
            f"{_fmt(r['startup_s']):>9} {_fmt(r['steady_epoch_s'], 2):>11}"
        )
    print()
    for row in ratios:
        flag = "meets" if row.get("meets_goal") else "misses"
        print(
            f"{row['model']} batch {row['batch_size']}: service {_fmt(row.get('service_ratio'), 2)}x, "
            f"service+jit {_fmt(row.get('service+jit_ratio'), 2)}x the users' train samples/s "
            f"({flag} the {GOAL_RATIO}x goal)"
        )


def versions() -> dict[str, str]:
    import keras
    import numpy as np
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="improved at batch 16, users vs service (no jit), 2 epochs")
    p.add_argument("--smoke", action="store_true", help="tiny synthetic data, 2 epochs, no jit (tests)")
    p.add_argument("--models", nargs="+", choices=("baseline", "improved"), default=None)
    p.add_argument("--setups", nargs="+", choices=SETUPS + EXTRA_SETUPS, default=None)
    p.add_argument("--epochs", type=int, default=None, help="epochs per setup (the first is excluded)")
    add_data_args(p, "mosi")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    p.add_argument("--repeat", type=int, default=1, help="runs per setup, alternating; the best counts")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per setup")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        result = _worker(json.loads(args.worker))
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.models is None:
        args.models = ["improved"] if mode != "full" else ["baseline", "improved"]
    if args.setups is None:
        # XLA's first epoch alone takes ~40 s on a loaded 2-core machine: --quick leaves it out.
        args.setups = list(SETUPS) if mode == "full" else ["users", "service"]
    if args.epochs is None:
        args.epochs = {"smoke": 2, "quick": 2, "full": 3}[mode]
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the first epoch is excluded)")
    args.preset_batch_only = mode != "full"
    tag = data_tag(args, "tiny" if mode == "smoke" else "mosi")
    name = "train_throughput" + (f"_{tag}" if tag else "")
    out_path = args.out or RESULTS / (f"{name}_quick.json" if mode == "quick" else f"{name}.json")
    if mode == "smoke" and args.out is None:
        p.error("--smoke needs --out (its numbers are not a benchmark result)")

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="msatune-throughput-") as tmp:
        data_dir, data_rec = resolve_data(args, Path(tmp), "tiny" if mode == "smoke" else "mosi", DATA_SEED)
        results = []
        for spec in plan(args):
            spec["data"] = str(data_dir)
            print(f"running {spec['model']} batch {spec['batch_size']} {spec['setup']} ...", file=sys.stderr, flush=True)
            results.append(run_setup(spec, args.timeout))
    chosen = best_of(results)
    ratios = compare(chosen)
    print_table(chosen, ratios)

    doc = {
        "benchmark": "train_throughput",
        "mode": mode,
        "goal": f"service train samples/s >= {GOAL_RATIO}x the users' setup, same model and batch size",
        "goal_ratio": GOAL_RATIO,
        "data": data_rec,
        "seeds": {"data": DATA_SEED, "model": MODEL_SEED},
        "epochs_per_setup": args.epochs,
        "steady_state": "epochs 2..k: train = epoch begin -> validation begin; epoch = whole epoch",
        "setups": {
            "users": "1 intra-op + 1 inter-op thread, model.fit on numpy dicts, Keras default validation batch",
            "service": "models.training.train_model on search.trial.build_pipelines, default threads",
            "service+jit": "the same with jit_compile=True",
            "service-1thread": "the service's loop with the users' 1 + 1 threads (diagnostic)",
            "users-allthreads": "the users' model.fit with TensorFlow's default threads (diagnostic)",
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "sched_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
        },
        "versions": versions(),
        "repeat": args.repeat,
        "results": chosen,
        "all_runs": results,
        "ratios": ratios,
        "total_s": time.perf_counter() - t0,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {out_path} ({doc['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
