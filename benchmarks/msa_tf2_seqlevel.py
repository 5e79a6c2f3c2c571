"""The seqlevel preset trained by msatune and by the users' own msa-tf2 ``train_seqlevel.py``.

Issue 21 asks that the two agree within +-5% valid MAE on the same data. msa-tf2 has no license:
its code is never copied into msatune. This benchmark runs it from a checkout the user gives
(``--msa-tf2 DIR``, e.g. ``git clone https://github.com/ababthedon/msa-tf2``), importing its
``train_seqlevel`` module in a child process and calling its own functions in its own order:
``create_model``, ``compile_model``, ``load_datasets``, ``create_callbacks``, ``train_model``
(``model.fit``), ``model.evaluate`` on test. One change: Keras 3 cannot save their subclassed model
as ``.h5``, so their ``ModelCheckpoint`` callback is left out (their EarlyStopping restores the
best weights anyway, which is what is scored). ``create_model`` fixes video to 713 dims (MOSEI's),
so the data is MOSEI-shaped: by default synthetic mosei at a tenth of its size (1,632 training
samples, about MOSI's count)::

    python benchmarks/msa_tf2_seqlevel.py --msa-tf2 ~/src/msa-tf2
    python benchmarks/msa_tf2_seqlevel.py --msa-tf2 ~/src/msa-tf2 --data DIR   # any 300/74/713 msa-tf2 directory
    python benchmarks/msa_tf2_seqlevel.py --msa-tf2 ~/src/msa-tf2 --epochs 3  # a quick look

Then ``msatune train --preset seqlevel`` on the same data with the same seed. Valid MAE: the best
epoch's, raw (Keras' val_mae, as both early-stop on it); test MAE: the restored best weights'
predictions clipped to [-3, 3], as msatune scores them (theirs raw too). Never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import base_doc, data_record, loadavg, result_path, write_json  # noqa: E402

THEIRS = r"""
import json, os, sys
repo, data, weights, seed, epochs = sys.argv[1:6]
sys.path.insert(0, repo)
os.chdir(repo)
sys.argv = ["train_seqlevel.py", "--data_dir", data, "--weights_dir", weights, "--epochs", epochs]
import tensorflow as tf
import train_seqlevel as ts
args = ts.parse_args()
tf.keras.utils.set_random_seed(int(seed))
model = ts.create_model(args)
ts.compile_model(model, args)
train, val, test = ts.load_datasets(args)
callbacks = [c for c in ts.create_callbacks(args, "bench")
             if not isinstance(c, tf.keras.callbacks.ModelCheckpoint)]
history = ts.train_model(model, train, val, args, callbacks)
import numpy as np
results = dict(zip(["loss", "mae", "mse"], model.evaluate(test, verbose=0)))
labels = np.concatenate([y.numpy() for _, y in test]).reshape(-1)  # the test split is not shuffled
pred = model.predict(test, verbose=0).reshape(-1)
clipped = float(np.mean(np.abs(np.clip(pred, -3.0, 3.0) - labels)))
val_mae = [float(x) for x in history.history["val_mae"]]
best = min(range(len(val_mae)), key=val_mae.__getitem__)
print("RESULT " + json.dumps({"valid_mae": val_mae[best], "best_epoch": best + 1, "epochs_trained": len(val_mae),
                             "test_mae": float(results["mae"]), "test_mae_clipped": clipped, "params": int(model.count_params()),
                             "val_mae_per_epoch": val_mae}))
"""


def run_theirs(repo: Path, data: Path, seed: int, epochs: int, tmp: Path) -> dict[str, Any]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    t0, load = time.perf_counter(), loadavg()
    proc = subprocess.run([sys.executable, "-c", THEIRS, str(repo), str(data), str(tmp / "weights"), str(seed),
                           str(epochs)], capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1], "loadavg_before": load}
    return {**json.loads(lines[-1][len("RESULT "):]), "wall_seconds": round(time.perf_counter() - t0, 1),
            "loadavg_before": load}


def run_ours(data: Path, seed: int, epochs: int, tmp: Path) -> dict[str, Any]:
    t0, load = time.perf_counter(), loadavg()
    cmd = [sys.executable, "-m", "msatune.studies.cli", "--workspace", str(tmp / "ws"), "train", "--preset", "seqlevel",
           "--data", str(data), "--set", f"seed={seed}", "--json", "--out", str(tmp / "ours")]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1], "loadavg_before": load}
    p = json.loads(proc.stdout)
    return {"valid_mae": p["train_mae_at_best"] + p["gap_at_best"], "best_epoch": p["best_epoch"],
            "epochs_trained": p["epochs_trained"],
            "valid_mae_clipped": p["metrics"]["valid"]["mae"], "test_mae_clipped": p["metrics"]["test"]["mae"],
            "params": p["params"], "wall_seconds": round(time.perf_counter() - t0, 1), "loadavg_before": load}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--msa-tf2", type=Path, required=True, metavar="DIR",
                    help="a checkout of github.com/ababthedon/msa-tf2 (only read; its code runs from there)")
    ap.add_argument("--data", type=Path, default=None, metavar="DIR",
                    help="an msa-tf2 data directory with 300/74/713 features [synthetic mosei x0.1]")
    ap.add_argument("--scale", type=float, default=0.1, help="size of the synthetic mosei without --data [0.1]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=100, help="their --epochs and msatune's cap [100: the recipe's]")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    repo = args.msa_tf2.expanduser().resolve()
    if not (repo / "train_seqlevel.py").is_file():
        ap.error(f"{repo} has no train_seqlevel.py: --msa-tf2 takes a checkout of msa-tf2")
    with tempfile.TemporaryDirectory(prefix="msatune-msatf2-") as tmp_name:
        tmp = Path(tmp_name)
        if args.data is not None:
            data, record = args.data.expanduser().resolve(), data_record(args.data)
        else:
            data = tmp / "mosei"
            subprocess.run([sys.executable, "-m", "msatune.studies.cli", "--workspace", str(tmp / "ws"), "data",
                            "synth", str(data), "--preset", "mosei", "--scale", str(args.scale)],
                           check=True, capture_output=True)
            record = data_record(data, synthetic_preset="mosei", seed=0, scale=args.scale)
        print("msa-tf2's train_seqlevel.py ...", flush=True)
        theirs = run_theirs(repo, data, args.seed, args.epochs, tmp)
        print("msatune train --preset seqlevel ...", flush=True)
        ours = run_ours(data, args.seed, args.epochs if args.epochs != 100 else 0, tmp)
    for name, r in (("msa-tf2", theirs), ("msatune", ours)):
        if "error" in r:
            print(f"{name}: failed: {r['error']}")
        else:
            print(f"{name:8s} valid {r['valid_mae']:.4f} (best epoch {r['best_epoch']} of {r['epochs_trained']}) "
                  f"test {r['test_mae_clipped']:.4f} (clipped to [-3, 3])  params {r['params']:,}  "
                  f"{r['wall_seconds']:.0f} s")
    if "error" not in theirs and "error" not in ours:
        diff = 100.0 * (ours["valid_mae"] - theirs["valid_mae"]) / theirs["valid_mae"]
        print(f"valid MAE, msatune vs msa-tf2: {diff:+.1f}% (goal within +-5%)")
    doc = base_doc("msa_tf2_seqlevel", "full", {"model": args.seed})
    doc.update(data=record, msa_tf2=str(repo), theirs=theirs, ours=ours)
    write_json(result_path("msa_tf2_seqlevel", "full", args.out), doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
