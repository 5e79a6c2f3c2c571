"""msatune's Adam/AdamW against Keras' own over a whole preset run, epoch by epoch.

Each arm trains the same preset (default: improved) with the same seed on the same data through
msatune's own loop (``msatune train``'s ``train_one``: schedule, dropout, augmentation, clipnorm,
weight decay, early stopping), in its own process, and keeps every epoch's weights:

* ``keras``: Keras' own Adam/AdamW, as the presets train (run twice: is a run reproducible?);
* ``keras32``: Keras' own, with ``beta_1``/``beta_2`` rounded to float32, i.e. the ``1 - beta``
  that ``ResourceApplyAdam`` forms (issue 15's fused optimizer, removed in issue 25, was this
  update bit for bit): how far a rounding of the update alone carries a run;
* ``grouped``: :mod:`msatune.models.optimizers`, msatune's default (Keras' arithmetic, all
  variables at once), which must equal ``keras`` bit for bit.

Printed and written: per arm the valid/test MAE and epochs; per pair of arms, each epoch's
relative L2 distance of the weights and both val MAEs::

    python benchmarks/optimizer_rounding.py                        # improved, seed 0, synthetic mosi
    python benchmarks/optimizer_rounding.py --preset baseline --seed 1 --data DIR
    python benchmarks/optimizer_rounding.py --epochs 3 --synth tiny --out /tmp/o.json   # quick look
    python benchmarks/optimizer_rounding.py --arms keras grouped     # only the equality

Never asserts anything (``tests/models/test_optimizers.py`` pins the equality it found).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import add_data_args, base_doc, loadavg, resolve_data, result_path, write_json  # noqa: E402

ARMS = ("keras", "keras_again", "keras32", "grouped")
PAIRS = (("keras", "keras_again"), ("keras", "keras32"), ("keras", "grouped"))

CHILD = r"""
import json, sys
from pathlib import Path
import numpy as np
import msatune.models.recipe as recipe
import msatune.models.training as training
from msatune.studies.store.workspace import Workspace
from msatune.studies.train_one import train_one

arm, preset, seed, epochs, data, out = sys.argv[1:7]
out = Path(out)
stock = recipe.make_optimizer
made = {}

def make(settings, **_):
    opt = stock(settings, update="grouped" if arm == "grouped" else "keras")
    if arm == "keras32":
        opt.beta_1, opt.beta_2 = float(np.float32(opt.beta_1)), float(np.float32(opt.beta_2))
    made["opt"] = opt
    return opt

training.make_optimizer = make
weights, rows = [], []

def on_epoch(report, extra):
    if not report.last:  # the last report holds the restored best weights
        weights.append(np.concatenate([np.ravel(w) for w in report.model.get_weights()]))
    rows.append({"epoch": report.epoch + 1, "val_mae": float(report.metrics["val_mae"]),
                 "learning_rate": float(report.metrics["learning_rate"])})

payload = train_one(Workspace(out / "ws").ensure(), preset=preset, overrides=[f"seed={seed}"],
                    epochs=None if epochs == "0" else int(epochs), data_dir=Path(data),
                    out_dir=out / "train", on_epoch=on_epoch)
np.save(out / "weights.npy", np.stack(weights))
(out / "result.json").write_text(json.dumps({
    "optimizer": type(made["opt"]).__name__, "beta_1": made["opt"].beta_1, "beta_2": made["opt"].beta_2,
    "valid_mae": payload["metrics"]["valid"]["mae"], "test_mae": payload["metrics"]["test"]["mae"],
    "best_epoch": payload["best_epoch"], "epochs_trained": payload["epochs_trained"], "rows": rows}))
"""


def run_arm(arm: str, preset: str, seed: int, epochs: int, data: Path, root: Path) -> dict[str, Any]:
    out = root / arm
    out.mkdir(parents=True)
    kind = "keras" if arm == "keras_again" else arm
    t0, load = time.perf_counter(), loadavg()
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, preset, str(seed), str(epochs), str(data), str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"arm": arm, "error": proc.stderr.strip().splitlines()[-1:]}
    res = json.loads((out / "result.json").read_text())
    res.update(arm=arm, wall_seconds=round(time.perf_counter() - t0, 2), loadavg_before=load)
    res["_weights"] = np.load(out / "weights.npy")
    return res


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    wa, wb = a["_weights"], b["_weights"]
    n = min(len(wa), len(wb))
    return [{"epoch": e + 1,
             "rel_l2": float(np.linalg.norm(wa[e] - wb[e]) / np.linalg.norm(wa[e])),
             "max_abs": float(np.max(np.abs(wa[e] - wb[e]))),
             "val_mae_a": a["rows"][e]["val_mae"], "val_mae_b": b["rows"][e]["val_mae"]} for e in range(n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="improved", choices=("baseline", "improved", "balanced", "seqlevel"))
    ap.add_argument("--seed", type=int, default=0, help="the model seed (--set seed=N) [0]")
    ap.add_argument("--epochs", type=int, default=0, help="cap the epochs (0: the preset's own, to early stopping)")
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="the runs to make [all]")
    ap.add_argument("--out", type=Path, default=None)
    add_data_args(ap, "mosi", smoke_preset=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="msatune-optround-") as tmp:
        data, record = resolve_data(args, Path(tmp), "mosi")
        arms = {}
        for arm in args.arms:
            print(f"{arm} ...", flush=True)
            arms[arm] = run_arm(arm, args.preset, args.seed, args.epochs, data, Path(tmp) / "arms")
        for arm, r in arms.items():
            if "error" in r:
                print(f"{arm}: failed: {r['error']}")
                continue
            print(f"{arm:12s} {r['optimizer']:10s} beta_1 {r['beta_1']!r} beta_2 {r['beta_2']!r}: valid "
                  f"{r['valid_mae']:.4f} test {r['test_mae']:.4f} best epoch {r['best_epoch']} of "
                  f"{r['epochs_trained']} ({r['wall_seconds']:.0f} s)")
        pairs = {}
        for a, b in PAIRS:
            if a not in arms or b not in arms or "error" in arms[a] or "error" in arms[b]:
                continue
            rows = compare(arms[a], arms[b])
            pairs[f"{a}-{b}"] = rows
            print(f"{a} vs {b}: relative L2 distance of the weights after epoch 1 / 10 / last: "
                  + " / ".join(f"{rows[e]['rel_l2']:.2e}" for e in sorted({0, min(9, len(rows) - 1), len(rows) - 1})))
    doc = base_doc("optimizer_rounding", "full", {"model": args.seed})
    doc.update(data=record, preset=args.preset,
               arms={k: {kk: vv for kk, vv in v.items() if kk != "_weights"} for k, v in arms.items()},
               pairs=pairs)
    name = f"optimizer_rounding_{args.preset}_seed{args.seed}"
    write_json(result_path(name, "full", args.out), doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
