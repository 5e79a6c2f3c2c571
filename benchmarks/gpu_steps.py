"""msatune's models on an accelerator without TensorFlow: their train steps at MOSEI's shapes through
Keras 3's JAX backend, one process and several sharing one GPU (what ``--gpus-per-trial`` < 1 buys).

The GPU machine lent to this project has JAX and PyTorch but no TensorFlow, and cannot install it,
so msatune's own loop (``models.training``: tf.function steps, tf.data, the grouped optimizer)
cannot run there. What can: the same Keras models (``models.build.build_model``: pure Keras 3,
no TensorFlow) with the presets' optimizer and loss (``models.recipe``, Keras' own Adam/AdamW),
trained by Keras' ``model.fit`` on the JAX backend (one jitted XLA step). That measures what a
GPU does with these models at MOSEI's sizes: the steady step, the first epoch's compile, and how
trials that share the GPU slow each other. It is not TensorFlow's GPU step (other kernels, another
per-step dispatch) and not its tracing; the projection (``report``) says which numbers it mixes.

Three steps, so the device needs nothing but the carried Keras wheels::

    python benchmarks/gpu_steps.py plan                        # here (TensorFlow): the presets' configs -> results/gpu_steps_plan.json
    KERAS_BACKEND=jax python benchmarks/gpu_steps.py run --out $OUT/gpu_steps.json   # there
    python benchmarks/gpu_steps.py report benchmarks/results/gpu_steps_h200.json     # here: table + 100-trial hours per GPU
    KERAS_BACKEND=jax python benchmarks/gpu_steps.py run --smoke --out /tmp/g.json   # any machine with JAX, ~1 min

``run``: each preset trains ``--epochs`` epochs alone on random data of the plan's shapes (values
do not change a step's time), then ``--share-preset`` runs in K processes at once for each K of
``--share`` (started together behind a barrier file), each recording its epochs' wall seconds.
JSON is rewritten after every measurement, so a run cut short keeps what it finished.
Never asserts anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import REPO, RESULTS, loadavg  # noqa: E402  (no TensorFlow: runs on the GPU machine too)

PLAN = RESULTS / "gpu_steps_plan.json"
PRESET_NAMES = ("baseline", "improved", "balanced", "seqlevel")
#: CMU-MOSEI's shapes (``data synth --preset mosei``): train / valid samples, T, feature sizes.
MOSEI = {"train": 16326, "valid": 1871, "seq_len": 20, "dims": {"text": 300, "audio": 74, "video": 713}}


def plan(out: Path) -> None:
    """Resolve each preset's full trial config here, where TensorFlow imports, for the device."""
    from msatune.search.trial_config import preset_config

    doc = {"shapes": MOSEI, "presets": {p: preset_config(p) for p in PRESET_NAMES},
           "source": "msatune.search.trial_config.preset_config at this commit"}
    out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")


# --------------------------------------------------------------------------------------------
# One worker process: build, compile, fit; its epochs' wall seconds on stdout as JSON.


def worker(config: dict[str, Any], shapes: dict[str, Any], epochs: int, scale: float, seed: int,
           barrier: str | None) -> dict[str, Any]:
    import keras
    import numpy as np

    from msatune.models.build import build_model
    from msatune.models.recipe import make_loss, make_optimizer, training_settings

    rng = np.random.default_rng(seed)
    n_train = max(8, round(shapes["train"] * scale))
    n_valid = max(8, round(shapes["valid"] * scale))
    T, dims = shapes["seq_len"], shapes["dims"]

    def split(n: int) -> tuple[dict[str, Any], Any]:
        x = {m: rng.standard_normal((n, T, d), dtype=np.float32) for m, d in dims.items()}
        return x, rng.uniform(-3, 3, size=(n, 1)).astype(np.float32)

    (x_tr, y_tr), (x_va, y_va) = split(n_train), split(n_valid)
    keras.utils.set_random_seed(seed)
    t0 = time.perf_counter()
    model = build_model(config, dims, seq_len=T)
    settings = training_settings(config)
    model.compile(optimizer=make_optimizer(settings, update="keras"), loss=make_loss(settings), metrics=["mae"])
    build_s = time.perf_counter() - t0
    if barrier:  # start the timed part with the other workers of this measurement
        Path(barrier + f".ready{seed}").touch()
        while not Path(barrier).exists():
            time.sleep(0.02)
    times: list[float] = []

    class EpochTimes(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            times.append(round(time.perf_counter() - self._t, 3))

    batch = int(config["batch_size"])
    hist = model.fit(x_tr, y_tr, batch_size=batch, epochs=epochs, validation_data=(x_va, y_va),
                     verbose=0, shuffle=True, callbacks=[EpochTimes()])
    steady = statistics.median(times[1:]) if len(times) > 1 else None
    steps = -(-n_train // batch)
    out = {"params": int(model.count_params()), "batch_size": batch, "train": n_train, "valid": n_valid,
           "steps_per_epoch": steps, "build_compile_s": round(build_s, 3), "epoch_seconds": times,
           "first_epoch_s": times[0], "steady_epoch_s": steady,
           "first_epoch_extra_s": round(times[0] - steady, 3) if steady is not None else None,
           "steady_step_ms": round(1000 * steady / steps, 3) if steady is not None else None,
           "val_mae_last": float(hist.history["val_mae"][-1])}
    return out


def _device() -> dict[str, Any]:
    rec: dict[str, Any] = {"backend": os.environ.get("KERAS_BACKEND", "tensorflow"), "python": platform.python_version(),
                           "cpus": os.cpu_count(), "loadavg": loadavg()}
    try:
        rec["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                     "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rec["gpu"] = None
    try:
        import jax
        import keras

        rec.update(jax=jax.__version__, keras=keras.__version__, jax_devices=[str(d) for d in jax.devices()])
    except Exception as exc:  # noqa: BLE001 - a record, not a check
        rec["import_error"] = repr(exc)
    return rec


def _spawn(config: dict[str, Any], shapes: dict[str, Any], args: argparse.Namespace, seed: int,
           barrier: str | None) -> subprocess.Popen:
    payload = json.dumps({"config": config, "shapes": shapes, "epochs": args.epochs, "scale": args.scale,
                          "seed": seed, "barrier": barrier})
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, __file__, "_worker", payload], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def _collect(procs: list[subprocess.Popen], timeout: float) -> list[dict[str, Any]]:
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        results.append(json.loads(lines[-1]) if p.returncode == 0 and lines
                       else {"error": f"exit {p.returncode}: {err.strip().splitlines()[-3:]}"})
    return results


def run(args: argparse.Namespace) -> None:
    doc_plan = json.loads(Path(args.plan).read_text())
    shapes, configs = doc_plan["shapes"], doc_plan["presets"]
    if args.smoke:
        args.scale, args.epochs, args.share = 0.005, 2, [1, 2]
    doc: dict[str, Any] = {"benchmark": "gpu_steps", "mode": "smoke" if args.smoke else "full",
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": _device(),
                           "epochs": args.epochs, "scale": args.scale, "shapes": shapes, "share_preset": args.share_preset,
                           "alone": {}, "shared": {}}
    out = Path(args.out)

    def save() -> None:
        out.write_text(json.dumps(doc, indent=1) + "\n")

    save()
    for preset in args.presets:
        t = time.perf_counter()
        [res] = _collect([_spawn(configs[preset], shapes, args, 0, None)], args.worker_timeout)
        doc["alone"][preset] = {**res, "process_s": round(time.perf_counter() - t, 1)}
        print(preset, json.dumps(doc["alone"][preset]), flush=True)
        save()
    for k in args.share:
        with tempfile.TemporaryDirectory() as tmp:
            barrier = str(Path(tmp) / "go")
            procs = [_spawn(configs[args.share_preset], shapes, args, i, barrier) for i in range(k)]
            deadline = time.time() + args.worker_timeout
            while sum(1 for i in range(k) if Path(barrier + f".ready{i}").exists()) < k and time.time() < deadline \
                    and all(p.poll() is None for p in procs):
                time.sleep(0.05)
            Path(barrier).touch()
            t = time.perf_counter()
            res = _collect(procs, args.worker_timeout)
        ok = [r for r in res if "steady_epoch_s" in r and r["steady_epoch_s"]]
        row: dict[str, Any] = {"workers": res, "wall_s": round(time.perf_counter() - t, 1)}
        if ok:
            steady = statistics.median(r["steady_epoch_s"] for r in ok)
            row.update(median_steady_epoch_s=steady,
                       epochs_per_hour_all=round(len(ok) * 3600 / steady, 1),
                       steps_per_s_all=round(sum(r["steps_per_epoch"] / r["steady_epoch_s"] for r in ok), 1),
                       median_first_epoch_extra_s=statistics.median(r["first_epoch_extra_s"] for r in ok))
        doc["shared"][str(k)] = row
        print(f"{k} x {args.share_preset}", json.dumps({x: y for x, y in row.items() if x != "workers"}), flush=True)
        save()
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    doc["device"]["loadavg_end"] = loadavg()
    save()


# --------------------------------------------------------------------------------------------
# Report, here: the table and a 100-trial study per GPU, from the GPU steps and this machine's tracing.


def _steps_per_s(row: dict[str, Any]) -> float | None:
    ok = [r for r in row.get("workers", []) if r.get("steady_epoch_s")]
    return round(sum(r["steps_per_epoch"] / r["steady_epoch_s"] for r in ok), 1) if ok else None


def report(paths: list[Path], cpu: list[Path], trials: int) -> None:
    from study_hours import SURVIVAL, rungs, study_hours

    from msatune.search.search_settings import SearchSettings

    docs = [json.loads(p.read_text()) for p in paths]
    doc = docs[0]
    cpu_doc: dict[str, Any] = {"presets": {}}
    for c in cpu:
        cpu_doc["presets"].update(json.loads(c.read_text())["presets"])
    settings = SearchSettings(trials=trials)
    print(f"{doc['device'].get('gpu')}; {doc['device'].get('backend')} backend, jax {doc['device'].get('jax')}, "
          f"keras {doc['device'].get('keras')}; {doc['epochs']} epochs at scale {doc['scale']}")
    print(f"{'preset':<10}{'batch':>6}{'steps':>7}{'1st epoch s':>13}{'steady s':>10}{'step ms':>9}"
          f"{'compile s':>11}{'CPU steady s':>14}{'CPU 1st extra s':>17}")
    projection: dict[str, Any] = {}
    for preset, r in doc["alone"].items():
        if "steady_epoch_s" not in r:
            print(f"{preset:<10} failed: {r.get('error')}")
            continue
        c = cpu_doc["presets"].get(preset, {})
        print(f"{preset:<10}{r['batch_size']:>6}{r['steps_per_epoch']:>7}{r['first_epoch_s']:>13.2f}"
              f"{r['steady_epoch_s']:>10.2f}{r['steady_step_ms']:>9.3f}{r['first_epoch_extra_s']:>11.2f}"
              f"{c.get('steady_epoch_s', float('nan')):>14.2f}{c.get('first_epoch_extra_s', float('nan')):>17.2f}")
        projection[preset] = {
            f"{scenario}_{extra}": study_hours(
                r["steady_epoch_s"], r["first_epoch_extra_s"] if extra == "gpu_compile" else c.get("first_epoch_extra_s", 0.0),
                trials=trials, rung_epochs=rungs(settings), stop_fractions=s["stop_fractions"],
                max_epochs=settings.max_epochs)["hours"]
            for scenario, s in SURVIVAL.items() for extra in ("gpu_compile", "cpu_trace")}
    alone = doc["alone"].get("improved", {})
    base = alone["steps_per_epoch"] / alone["steady_epoch_s"] if alone.get("steady_epoch_s") else None
    for d in docs:
        for k, row in d["shared"].items():
            sps = _steps_per_s(row)
            gain = f" = {sps / base:.2f}x one alone" if sps and base else ""
            print(f"{k} x {d.get('share_preset', 'improved')} on one GPU (scale {d['scale']}): median steady epoch "
                  f"{row.get('median_steady_epoch_s')} s, {sps} steps/s together{gain}, "
                  f"median 1st extra {row.get('median_first_epoch_extra_s')} s")
    print(f"\n{trials} trials, one at a time per GPU (hours): " + json.dumps(projection, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="write the presets' configs for the device (needs TensorFlow)")
    p.add_argument("--out", type=Path, default=PLAN)
    r = sub.add_parser("run", help="measure (KERAS_BACKEND=jax; no TensorFlow needed)")
    r.add_argument("--plan", type=Path, default=PLAN)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--presets", nargs="*", default=list(PRESET_NAMES), choices=PRESET_NAMES)
    r.add_argument("--epochs", type=int, default=3, help="epochs per process (the first compiles; default 3)")
    r.add_argument("--scale", type=float, default=1.0, help="fraction of MOSEI's samples (default 1.0)")
    r.add_argument("--share", type=int, nargs="*", default=[2, 4, 8], help="processes at once on one GPU")
    r.add_argument("--share-preset", default="improved", choices=PRESET_NAMES)
    r.add_argument("--worker-timeout", type=float, default=300.0)
    r.add_argument("--smoke", action="store_true", help="tiny data, 2 epochs, share 1 and 2")
    s = sub.add_parser("report", help="table and projected hours per GPU (here)")
    s.add_argument("paths", type=Path, nargs="+", help="run results; the first gives the presets alone")
    s.add_argument("--cpu", type=Path, nargs="+",
                   default=[RESULTS / f"study_hours_mosei_{n}.json" for n in ("3presets4", "seqlevel4")],
                   help="study_hours.py's results whose first-epoch extras (TensorFlow's tracing on CPUs) are mixed in")
    s.add_argument("--trials", type=int, default=100)
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "_worker":
        job = json.loads(sys.argv[2])
        print(json.dumps(worker(job["config"], job["shapes"], job["epochs"], job["scale"], job["seed"], job["barrier"])))
        return 0
    args = ap.parse_args(argv)
    if args.cmd == "plan":
        plan(args.out)
    elif args.cmd == "run":
        run(args)
    else:
        report(args.paths, args.cpu, args.trials)
    return 0


if __name__ == "__main__":
    sys.exit(main())
