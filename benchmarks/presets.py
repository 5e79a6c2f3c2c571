"""The presets (the users' msa-tf2 recipes) trained to early stopping on synthetic mosi (or --data).

Each preset runs as ``msatune train --preset NAME --json`` in its own process, one after the
other (never side by side), on synthetic mosi (seed 0) generated into the workspace (``--synth
NAME``: another preset; ``--data DIR``: any msa-tf2 directory, only read). The result keeps
the previous committed numbers under ``previous`` so a re-run shows old vs new::

    python benchmarks/presets.py                      # the four presets, full recipes
    python benchmarks/presets.py --presets improved   # one preset
    python benchmarks/presets.py --data DIR           # on any msa-tf2 directory (recorded with its fingerprint)
    python benchmarks/presets.py --smoke --out /tmp/p.json   # tiny data, 2 epochs (tests)

Columns: valid/test MAE of the best-val-MAE epoch, that epoch (1-based), epochs trained, the
parameter count, wall seconds of the ``train`` command. Never asserts anything.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (  # noqa: E402
    REPO,
    add_data_args,
    base_doc,
    data_tag,
    loadavg,
    mode_of,
    print_table,
    resolve_data,
    result_path,
    write_json,
)

NAMES = ("baseline", "improved", "balanced", "seqlevel")


#: ``--keras-optimizer``: ``msatune train`` with Keras' own Adam/AdamW instead of msatune's
#: grouped ones (models.optimizers; bitwise the same results), to tell their rounding apart from seed noise.
KERAS_OPTIMIZER = (
    "import sys; import msatune.models.recipe as r; import msatune.models.training as t; "
    "stock = r.make_optimizer; t.make_optimizer = lambda s, **k: stock(s, update=\"keras\"); "
    "from msatune.studies.cli import main; sys.exit(main(sys.argv[1:]))"
)


def train(ws: Path, preset: str, extra: list[str], *, keras_optimizer: bool = False, tag: str = "") -> dict[str, Any]:
    entry = ["-c", KERAS_OPTIMIZER] if keras_optimizer else ["-m", "msatune.studies.cli"]
    cmd = [sys.executable, *entry, "--workspace", str(ws), "train", "--preset", preset,
           "--json", "--out", str(ws / "train" / f"{preset}{tag}"), *extra]
    load = loadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{preset} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    payload = json.loads(proc.stdout)
    return {
        "command": " ".join(cmd[1:]),
        "valid_mae": payload["metrics"]["valid"]["mae"],
        "test_mae": payload["metrics"]["test"]["mae"],
        "best_epoch": payload["best_epoch"],  # msatune train reports it 1-based, like the users' logs
        "epochs_trained": payload["epochs_trained"],
        "stopped_early": payload["stopped_early"],
        "early_stop_best_epoch": payload.get("early_stop_best_epoch"),
        "params": payload.get("params"),
        "train_mae_at_best": payload["train_mae_at_best"],
        "gap_at_best": payload["gap_at_best"],
        "wall_seconds": payload["wall_seconds"],
        "process_wall_seconds": round(time.perf_counter() - t0, 3),
        "loadavg_before": load,
        "metrics": payload["metrics"],
        "reference": payload["reference"],
        "config": payload["config"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", choices=NAMES, default=list(NAMES))
    ap.add_argument("--smoke", action="store_true", help="tiny data, 2 epochs (what the tests run)")
    ap.add_argument("--workspace", type=Path, default=None, help="workspace (default: a temp dir)")
    add_data_args(ap, "mosi")
    ap.add_argument("--epochs", type=int, default=None, help="cap every preset's epochs")
    ap.add_argument("--out", type=Path, default=None, help="JSON to write")
    ap.add_argument("--seeds", nargs="+", type=int, default=None,
                    help="noise runs: train each preset with these model seeds (--set seed=N), "
                         "msatune's default optimizer and Keras' own side by side; written as 'seed_runs' (not the record)")
    args = ap.parse_args(argv)
    if args.seeds:
        return seed_runs(args)
    mode = mode_of(args)
    out = result_path(f"presets_{data_tag(args, 'mosi') or 'mosi'}", mode, args.out)
    ws = args.workspace or Path(tempfile.mkdtemp(prefix="msatune-presets-"))
    data, data_rec = resolve_data(args, ws, "tiny" if mode == "smoke" else "mosi", 0)
    extra = ["--data", str(data)]
    if mode == "smoke":
        extra += ["--epochs", "2"]
    elif args.epochs is not None:
        extra += ["--epochs", str(args.epochs)]
    doc = base_doc("presets", mode, {"data": 0, "model": 0})
    doc["data"] = data_rec
    previous = json.loads(out.read_text()) if out.is_file() else None
    doc["presets"] = {name: train(ws, name, extra) for name in args.presets}
    if previous:
        zero_based = "benchmark" not in previous  # the first, hand-made record counted epochs from 0
        doc["previous"] = {name: {k: rec.get(k) for k in ("valid_mae", "test_mae", "best_epoch", "epochs_trained",
                                                          "params", "wall_seconds")}
                           for name, rec in previous.get("presets", {}).items()}
        for rec in doc["previous"].values():
            if zero_based and rec.get("best_epoch") is not None:
                rec["best_epoch"] += 1
        doc["previous"]["timestamp"] = previous.get("timestamp")
    write_json(out, doc)
    rows = [{"preset": n, **r} for n, r in doc["presets"].items()]
    rows += [{"preset": f"{n} (previous)", **r} for n, r in (doc.get("previous") or {}).items() if isinstance(r, dict)]
    print_table(rows, [("preset", "preset", 0), ("valid_mae", "valid MAE", 4), ("test_mae", "test MAE", 4),
                       ("best_epoch", "best ep", 0), ("epochs_trained", "epochs", 0), ("params", "params", 0),
                       ("wall_seconds", "wall s", 1)])
    print(f"wrote {out}")
    return 0


def seed_runs(args: argparse.Namespace) -> int:
    """The presets at several seeds, with msatune's default optimizer (``grouped`` since issue 25,
    ``fused`` in the runs of issue 15) and with Keras' own: how far a valid MAE moves with the
    seed, and with the optimizer's rounding alone."""
    out = args.out or (REPO / "benchmarks" / "results" / f"presets_{data_tag(args, 'mosi') or 'mosi'}_seeds.json")
    ws = args.workspace or Path(tempfile.mkdtemp(prefix="msatune-presets-"))
    data, data_rec = resolve_data(args, ws, "mosi", 0)
    doc = base_doc("presets_seeds", "full", {"data": 0, "model": list(args.seeds)})
    doc["data"] = data_rec
    runs = []
    for name in args.presets:
        for seed in args.seeds:
            for keras_opt in (False, True):
                rec = train(ws, name, ["--data", str(data), "--set", f"seed={seed}"], keras_optimizer=keras_opt,
                            tag=f"-s{seed}{'-keras' if keras_opt else ''}")
                runs.append({"preset": name, "seed": seed, "optimizer": "keras" if keras_opt else "msatune",
                             **{k: rec[k] for k in ("valid_mae", "test_mae", "best_epoch", "epochs_trained",
                                                    "wall_seconds", "loadavg_before")}})
                print(runs[-1], flush=True)
    doc["seed_runs"] = runs
    write_json(out, doc)
    print_table(runs, [("preset", "preset", 0), ("seed", "seed", 0), ("optimizer", "optimizer", 0),
                       ("valid_mae", "valid MAE", 4), ("test_mae", "test MAE", 4), ("best_epoch", "best ep", 0),
                       ("epochs_trained", "epochs", 0)])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
