"""How the study store's read paths scale: ``msatune studies``, ``msatune show``, a dashboard refresh.

Builds a study of N trials (default 2,000) with 20 intermediate values each, directly with Optuna
in a temporary SQLite store (no training; states, params and user attrs like a real study's), then
times, each ``--repeat`` times (median reported):

* ``msatune studies`` and ``msatune show NAME`` as a user runs them (a new process each time), and
  the query alone in-process (``list_studies`` / ``show_study``);
* a dashboard refresh against ``msatune dashboard`` (read-only, cached storage): the study JSON the
  page loads once (``/api/studies/<id>``), the poll it repeats while open (``?after=<index of the
  first unfinished trial>``, here all N), also after optuna-dashboard's own in-memory trial cache
  expired, and ``/api/studies``; the same against plain ``optuna-dashboard`` for comparison.

Goal: each under 1 s. Prints a table and writes ``benchmarks/results/store_scale[_quick].json``;
never asserts times.

    python benchmarks/store_scale.py            # 2,000 trials
    python benchmarks/store_scale.py --quick    # 200 trials, 3 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

GOAL_S = 1.0
STEPS = 20
NAME = "scale"


def build_study(db: Path, n_trials: int, seed: int = 0) -> float:
    """A study like msatune's (attrs, presets, params, 20 steps per trial); returns build seconds."""
    import numpy as np
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial

    from msatune.studies.store.connect import open_storage
    from msatune.studies.store.studies import create_study

    t0 = time.perf_counter()
    storage = open_storage(f"sqlite:///{db}")
    study = create_study(storage, NAME, {
        "data_path": "/data/mosi", "budget": n_trials, "max_epochs": STEPS, "seed": seed,
        "asha": {"grace_period": 3, "reduction_factor": 3}, "runs": [],
    })
    dists = {
        "learning_rate": FloatDistribution(1e-5, 1e-2, log=True),
        "dropout": FloatDistribution(0.0, 0.5),
        "l2": FloatDistribution(1e-6, 1e-2, log=True),
        "model_dim": CategoricalDistribution([32, 64, 128]),
        "n_layers_mod": IntDistribution(1, 3),
        "batch_size": CategoricalDistribution([16, 32, 64]),
        "loss": CategoricalDistribution(["mae", "huber"]),
    }
    rng = np.random.default_rng(seed)
    trials = []
    for i in range(n_trials):
        params = {
            "learning_rate": float(10 ** rng.uniform(-5, -2)), "dropout": float(rng.uniform(0, 0.5)),
            "l2": float(10 ** rng.uniform(-6, -2)), "model_dim": int(rng.choice([32, 64, 128])),
            "n_layers_mod": int(rng.integers(1, 4)), "batch_size": int(rng.choice([16, 32, 64])),
            "loss": str(rng.choice(["mae", "huber"])),
        }
        curve = 1.0 + 0.6 * np.exp(-np.arange(1, STEPS + 1) / rng.uniform(2, 8)) + rng.normal(0, 0.03, STEPS)
        r = rng.uniform()
        state = TrialState.FAIL if r < 0.03 else (TrialState.PRUNED if r < 0.4 else TrialState.COMPLETE)
        attrs: dict[str, Any] = {
            "ray_trial_id": f"{i:08x}", "epochs": STEPS,
            "checkpoint": f"/ws/studies/{NAME}/ray/run0/trial_{i:08x}/checkpoint_000003",
        }
        if i < 2:
            attrs["preset"] = ("baseline", "improved")[i]
        if state == TrialState.FAIL:
            attrs = {"ray_trial_id": attrs["ray_trial_id"], "fail_reason": "ResourceExhaustedError: OOM"}
            trials.append(create_trial(state=state, params=params, distributions=dists, user_attrs=attrs))
            continue
        attrs["best_val_mae"] = float(curve.min())
        trials.append(create_trial(
            state=state, value=float(curve.min()), params=params, distributions=dists, user_attrs=attrs,
            intermediate_values={e + 1: float(v) for e, v in enumerate(curve)},
        ))
    study.add_trials(trials)
    storage.engine.dispose()
    return time.perf_counter() - t0


def timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": repeat}


def cli(ws: Path, *args: str) -> Callable[[], None]:
    cmd = [sys.executable, "-m", "msatune.studies.cli", "--workspace", str(ws), *args]

    def run() -> None:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       env={**os.environ, "COLUMNS": "200"})

    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.read()


class Server:
    def __init__(self, cmd: list[str], port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                get(self.base + "/api/meta")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start: {cmd}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def dashboard_timings(server: Server, n_trials: int, repeat: int) -> dict[str, dict[str, float]]:
    """The calls the page makes: the study JSON once, then a poll of ``?after=N`` every few seconds.

    optuna-dashboard also keeps the trial list in memory for 2/5/10 s (under 100/500/more trials);
    the ``expired`` row waits that out, so it shows what a refresh costs at the store.
    """
    listing = json.loads(get(server.base + "/api/studies"))
    sid = listing["study_summaries"][0]["study_id"]
    detail = f"{server.base}/api/studies/{sid}"
    poll = f"{detail}?after={n_trials}"
    ttl = 2 if n_trials < 100 else (5 if n_trials < 500 else 10)
    out: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    body = get(detail)
    out["first page load (full study JSON)"] = {"median_s": time.perf_counter() - t0, "min_s": 0.0,
                                                "max_s": 0.0, "n": 1, "mb": round(len(body) / 1e6, 2)}
    out["full study JSON again"] = timed(lambda: get(detail), repeat)
    out["page poll ?after=N (in-memory cache)"] = timed(lambda: get(poll), repeat)

    def expired() -> None:
        time.sleep(ttl + 0.5)
        t0 = time.perf_counter()
        get(poll)
        times.append(time.perf_counter() - t0)

    times: list[float] = []
    for _ in range(min(repeat, 3)):
        expired()
    out["page poll ?after=N (cache expired)"] = {"median_s": statistics.median(times), "min_s": min(times),
                                                 "max_s": max(times), "n": len(times)}
    out["/api/studies"] = timed(lambda: get(server.base + "/api/studies"), repeat)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="200 trials, 3 repeats")
    ap.add_argument("--no-baseline", action="store_true", help="skip plain optuna-dashboard")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.trials, args.repeat = 200, 3
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    out_path = args.out or root / "benchmarks" / "results" / ("store_scale_quick.json" if args.quick else "store_scale.json")

    import optuna
    import optuna_dashboard

    from msatune.studies.queries import list_studies, show_study
    from msatune.studies.store.connect import open_storage

    tmp = Path(tempfile.mkdtemp(prefix="msatune-store-scale-"))
    try:
        ws = tmp / "ws"
        ws.mkdir()
        db = ws / "studies.db"
        build_s = build_study(db, args.trials)
        print(f"built {args.trials} trials x {STEPS} steps in {build_s:.1f} s ({db.stat().st_size / 1e6:.1f} MB)",
              file=sys.stderr)
        rows: dict[str, dict[str, Any]] = {}
        rows["msatune studies (process)"] = timed(cli(ws, "studies"), args.repeat)
        rows["msatune show (process)"] = timed(cli(ws, "show", NAME), args.repeat)
        empty = tmp / "empty"
        empty.mkdir()
        open_storage(f"sqlite:///{empty / 'studies.db'}").engine.dispose()
        rows["msatune studies, empty store (process floor)"] = timed(cli(empty, "studies"), args.repeat)
        storage = open_storage(f"sqlite:///{db}")
        rows["list_studies (query only)"] = timed(lambda: list_studies(storage), args.repeat)
        rows["show_study (query only)"] = timed(lambda: show_study(storage, NAME, 10), args.repeat)
        storage.engine.dispose()

        port = free_port()
        srv = Server([sys.executable, "-m", "msatune.studies.cli", "--workspace", str(ws), "dashboard", "--port", str(port)], port)
        try:
            for k, v in dashboard_timings(srv, args.trials, args.repeat).items():
                rows[f"msatune dashboard {k}"] = v
        finally:
            srv.stop()
        exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).with_name("optuna-dashboard"))
        if not args.no_baseline and Path(exe).exists():
            port = free_port()
            srv = Server([exe, f"sqlite:///{db}", "--port", str(port), "--server", "wsgiref", "--quiet"], port)
            try:
                for k, v in dashboard_timings(srv, args.trials, args.repeat).items():
                    rows[f"plain optuna-dashboard {k}"] = v
            finally:
                srv.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    goals = {"msatune studies (process)", "msatune show (process)",
             "msatune dashboard page poll ?after=N (in-memory cache)",
             "msatune dashboard page poll ?after=N (cache expired)", "msatune dashboard /api/studies"}
    width = max(len(k) for k in rows)
    print(f"\nstore scale: {args.trials} trials x {STEPS} intermediate values (SQLite), median of {args.repeat}")
    print(f"{'operation':<{width}}  {'median s':>9}  {'min s':>7}  {'max s':>7}  goal")
    for k, v in rows.items():
        goal = ("ok" if v["median_s"] < GOAL_S else "OVER") + f" (<{GOAL_S:g} s)" if k in goals else ""
        print(f"{k:<{width}}  {v['median_s']:>9.3f}  {v['min_s']:>7.3f}  {v['max_s']:>7.3f}  {goal}")
        v["goal_s"] = GOAL_S if k in goals else None
    result = {
        "benchmark": "store_scale",
        "trials": args.trials, "steps": STEPS, "repeat": args.repeat, "build_s": round(build_s, 2),
        "results": rows,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "optuna": optuna.__version__,
                    "optuna_dashboard": optuna_dashboard.__version__},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
