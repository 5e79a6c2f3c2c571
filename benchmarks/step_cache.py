"""What reusing a compiled train step saves a refit (models.step_cache, issue 25), end to end.

A refit trains every chosen configuration on F folds: F runs of one graph that differ only in
seed and data, as Ray Tune trials on reused actors. With the step cache a fold that follows one of
its own configuration on the same worker trains on the kept compiled step instead of tracing it.
This runs ``msatune refit`` of one study twice or more, alternating ``MSATUNE_STEP_CACHE=0``
(off, every fold traces) and on (the default), each time on a fresh copy of the study's store,
and records from the store: the refit's wall time, each fold's seconds and trace count, and its
held-out MAE (a fold trained on a kept step must score what it scores without: the same seed, the
same data). Never asserts; prints a table and writes JSON with the load average.

1. ``--stage study`` (once, kept in ``--workspace``): ``msatune launch`` on the data, default
   space and settings but ``--trials``/``--max-epochs`` and no ASHA stop (grace = max epochs).
2. ``--stage refit``: the refits (``--top-k``, ``--folds``, ``--concurrency``, ``--repeat`` pairs).

    python benchmarks/step_cache.py                      # synthetic mosi: 6 trials x 9 epochs, refit top 3 x 5 folds (refit default)
    python benchmarks/step_cache.py --data DIR           # any msa-tf2 directory (only read; recorded)
    python benchmarks/step_cache.py --concurrency 1      # one worker: every fold after the first of its config hits
    python benchmarks/step_cache.py --smoke --out /tmp/step_cache.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (  # noqa: E402
    REPO,
    add_data_args,
    base_doc,
    data_label,
    data_tag,
    fmt,
    loadavg,
    print_table,
    resolve_data,
    result_path,
    write_json,
)

NAME = "cache"
SIZES = {
    "full": {"trials": 6, "max_epochs": 9, "top_k": 3, "folds": 5},
    "smoke": {"trials": 3, "max_epochs": 2, "top_k": 2, "folds": 2},
}


def msatune(ws: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 7200) -> tuple[str, float]:
    """``msatune --workspace WS ARGS`` to its end: (stdout, wall seconds); exits on failure."""
    cmd = [sys.executable, "-m", "msatune.studies.cli", "--workspace", str(ws), *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout, wall


def stage_study(ws_root: Path, data: Path, size: dict[str, int]) -> dict[str, Any]:
    ws = ws_root / "study"
    if ws.exists():
        shutil.rmtree(ws)
    _, wall = msatune(ws, "launch", NAME, "--data", str(data), "--trials", str(size["trials"]),
                      "--max-epochs", str(size["max_epochs"]), "--grace-period", str(size["max_epochs"]),
                      "--seed", "0")  # no ASHA stop: every trial COMPLETE, so the top K are K real configs
    return {"wall_s": round(wall, 1), "trials": size["trials"], "max_epochs": size["max_epochs"]}


def refit_once(ws_root: Path, label: str, cache: bool, size: dict[str, int], concurrency: int) -> dict[str, Any]:
    import optuna

    ws = ws_root / f"refit-{label}"
    if ws.exists():
        shutil.rmtree(ws)
    ws.mkdir(parents=True)
    shutil.copy(ws_root / "study" / "studies.db", ws / "studies.db")
    load = loadavg()
    out, wall = msatune(ws, "refit", NAME, "--top-k", str(size["top_k"]), "--folds", str(size["folds"]),
                        "--concurrency", str(concurrency), "--json",
                        env={"MSATUNE_STEP_CACHE": "1" if cache else "0"})
    summary = json.loads(out)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=f"{NAME}:refit", storage=f"sqlite:///{ws / 'studies.db'}")
    folds = [{"trial": t.params["trial"], "fold": t.params["fold"], "held_out_mae": t.value,
              "seconds": t.user_attrs.get("seconds"), "traces": t.user_attrs.get("traces"),
              "epochs": t.user_attrs.get("epochs")}
             for t in sorted(study.trials, key=lambda t: t.number) if t.value is not None]
    return {"cache": cache, "wall_s": round(wall, 1), "refit_wall_s": summary["run"]["wall_seconds"],
            "loadavg_start": load, "loadavg_end": loadavg(), "folds": folds}


def fold_stats(run: dict[str, Any]) -> dict[str, Any]:
    folds = run["folds"]
    hit = [f for f in folds if f["traces"] == 0]
    miss = [f for f in folds if f["traces"] != 0]

    def per_epoch(fs: list[dict[str, Any]]) -> float | None:  # folds stop at different epochs
        xs = [f["seconds"] / f["epochs"] for f in fs if f["seconds"] and f["epochs"]]
        return statistics.median(xs) if xs else None

    return {"folds": len(folds), "reused": len(hit), "fold_s_sum": round(sum(f["seconds"] or 0 for f in folds), 1),
            "traced_fold_s_per_epoch": per_epoch(miss), "reused_fold_s_per_epoch": per_epoch(hit),
            "traced_fold_s": statistics.median([f["seconds"] for f in miss]) if miss else None,
            "reused_fold_s": statistics.median([f["seconds"] for f in hit]) if hit else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(p, "mosi")
    p.add_argument("--stage", choices=("study", "refit", "all"), default="all")
    p.add_argument("--workspace", type=Path, default=None, help="Where the study and the refits go.")
    p.add_argument("--concurrency", type=int, default=2, help="Folds at once [2].")
    p.add_argument("--repeat", type=int, default=1, help="Off/on pairs of refits, alternating [1].")
    p.add_argument("--smoke", action="store_true", help="Tiny data and sizes (tests).")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    size = SIZES[mode]
    tag = data_tag(args, "mosi")
    ws_root = (args.workspace or Path("/tmp") / f"msatune-bench-step-cache-{mode}-{tag or 'mosi'}").resolve()
    ws_root.mkdir(parents=True, exist_ok=True)
    state_file = ws_root / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if args.stage in ("study", "all"):
        data, rec = resolve_data(args, ws_root / "data", "tiny" if args.smoke else "mosi")
        print(f"[{time.strftime('%H:%M:%S')}] study on {data_label(rec)} ...", flush=True)
        state = {"study": {**stage_study(ws_root, data, size), "data": rec, "loadavg": loadavg()}}
        state_file.write_text(json.dumps(state, indent=2) + "\n")
    if args.stage == "study":
        return 0
    if "study" not in state:
        raise SystemExit(f"no study in {ws_root}: run --stage study first")
    runs = []
    for i in range(args.repeat):
        for cache in (False, True):
            label = f"{'on' if cache else 'off'}-{i}"
            print(f"[{time.strftime('%H:%M:%S')}] refit, step cache {label} ...", flush=True)
            runs.append(refit_once(ws_root, label, cache, size, args.concurrency))
    rows = [{"cache": "on" if r["cache"] else "off", "wall_s": r["wall_s"], "refit_wall_s": r["refit_wall_s"],
             "load": r["loadavg_start"][0] if r["loadavg_start"] else None, **fold_stats(r)} for r in runs]
    off = {(f["trial"], f["fold"]): f["held_out_mae"] for r in runs if not r["cache"] for f in r["folds"]}
    diffs = [abs(f["held_out_mae"] - off[(f["trial"], f["fold"])]) for r in runs if r["cache"]
             for f in r["folds"] if (f["trial"], f["fold"]) in off]
    print(f"\nrefit of top {size['top_k']} x {size['folds']} folds, {args.concurrency} at once, on "
          f"{data_label(state['study']['data'])}")
    print_table(rows, [("cache", "cache", 0), ("wall_s", "wall s", 1), ("refit_wall_s", "refit s", 1),
                       ("folds", "folds", 0), ("reused", "reused", 0), ("fold_s_sum", "sum fold s", 1),
                       ("traced_fold_s_per_epoch", "traced s/ep", 2), ("reused_fold_s_per_epoch", "reused s/ep", 2),
                       ("load", "load", 1)])
    print(f"held-out MAE, on vs off, per fold: max |difference| {fmt(max(diffs) if diffs else None, 7)}")
    doc = {**base_doc("step_cache", mode, {"study": 0}), "data": state["study"]["data"], "sizes": size,
           "concurrency": args.concurrency, "study": state["study"], "runs": runs, "table": rows,
           "held_out_mae_max_abs_diff": max(diffs) if diffs else None}
    out = result_path("step_cache" + (f"_{tag}" if tag else ""), mode, args.out)
    write_json(out, doc)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
