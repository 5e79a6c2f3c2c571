"""Helpers shared by the benchmarks: the machine and versions record, result paths and JSON,
table printing, the data a benchmark runs on (``--data DIR`` or a synthetic preset, and its
record), a private Ray instance, msatune studies built for a benchmark, and a timed trainable
wrapper.

Nothing here imports TensorFlow at import time: the benchmark drivers stay light, and the Ray
workers that run a sleeping trainable never load it.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "benchmarks"
RESULTS = BENCH_DIR / "results"

#: A small model: seconds per synthetic-mosi epoch on 2 CPU cores (the presets take minutes).
SMALL_MODEL: dict[str, Any] = {
    "model_dim": 16, "num_heads": 2, "ff_dim": 32, "n_layers_mod": 1, "n_layers_fuse": 1,
}


# --------------------------------------------------------------------------------------------
# Run record


def mode_of(args: Any) -> str:
    return "smoke" if getattr(args, "smoke", False) else "quick" if getattr(args, "quick", False) else "full"


def result_path(name: str, mode: str, out: Path | None) -> Path:
    """``--out`` if given, else ``benchmarks/results/NAME[_quick].json`` (smoke needs ``--out``)."""
    if out is not None:
        return Path(out)
    if mode == "smoke":
        raise SystemExit("--smoke needs --out (its numbers are not a benchmark result)")
    return RESULTS / (f"{name}_quick.json" if mode == "quick" else f"{name}.json")


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on this platform
        return None


def machine() -> dict[str, Any]:
    """Where it ran: CPUs, memory, platform, load (the machine may be shared)."""
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:  # pragma: no cover - not Linux
        pass
    return {
        "cpu_count": os.cpu_count(),
        "sched_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": mem_gb,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "loadavg": loadavg(),
    }


def versions(modules: Iterable[str] = ("numpy", "tensorflow", "keras", "optuna", "ray")) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in modules:
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - a missing optional package
            out[mod] = "missing"
    return out


def base_doc(benchmark: str, mode: str, seeds: Mapping[str, Any], modules: Iterable[str] | None = None) -> dict[str, Any]:
    return {
        "benchmark": benchmark,
        "mode": mode,
        "machine": machine(),
        "versions": versions(modules) if modules is not None else versions(),
        "seeds": dict(seeds),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    tmp.replace(path)
    print(f"\nwrote {path}")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# --------------------------------------------------------------------------------------------
# Tables and statistics


def fmt(x: Any, nd: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, int]],
                title: str | None = None) -> None:
    """``columns``: (key, header, decimals). Right-aligned, one line per row."""
    if title:
        print(f"\n{title}")
    cells = [[fmt(r.get(k), nd) for k, _, nd in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, (_, h, _) in enumerate(columns)]
    head = "  ".join(h.rjust(w) for (_, h, _), w in zip(columns, widths, strict=True))
    print(head)
    print("-" * len(head))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths, strict=True)))


def median(xs: Iterable[float | None]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return statistics.median(vals) if vals else None


# --------------------------------------------------------------------------------------------
# Data, Ray, studies


def checkpoint_test_mae(trial: Any) -> float | None:
    """The test MAE of a trial's checkpoint (its ``predictions.npz``); None without a checkpoint."""
    import numpy as np

    from msatune.models.checkpoint import read_predictions

    if trial is None or not trial.user_attrs.get("checkpoint"):
        return None
    preds = read_predictions(trial.user_attrs["checkpoint"])
    return float(np.mean(np.abs(preds["test_pred"] - preds["test_label"])))


def synth_data(root: Path, preset: str, seed: int = 0) -> Path:
    from msatune.augment.synth import synthesize

    out = Path(root) / f"synthetic-{preset}-{seed}"
    if not (out / "y_train.h5").exists():
        synthesize(out, preset=preset, seed=seed, overwrite=True)
    return out


def add_data_args(parser: Any, default_preset: str, *, smoke_preset: str | None = "tiny",
                  synth: bool = True) -> None:
    """``--data DIR`` (any msa-tf2 directory, only read) and, with ``synth``, ``--synth NAME``
    (the synthetic preset to generate instead: any ``msatune.augment.synth.PRESETS`` key); the
    two exclude each other. ``default_preset`` and ``smoke_preset`` only word the help: the
    benchmark passes the preset it uses to :func:`resolve_data`."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--data", type=Path, default=None, metavar="DIR",
                       help="msa-tf2 data directory to run on instead of the synthetic set (only read; "
                            "recorded with its fingerprint)")
    if synth:
        from msatune.augment.synth import PRESETS

        smoke = f"; --smoke: {smoke_preset}" if smoke_preset else ""
        group.add_argument("--synth", choices=list(PRESETS), default=None, metavar="NAME",
                           help=f"synthetic preset to generate when no --data: {', '.join(PRESETS)} "
                                f"[{default_preset}{smoke}]")


def data_tag(args: Any, default_preset: str) -> str | None:
    """What names a result file after its data: ``--data``'s directory name, or a ``--synth``
    preset other than ``default_preset``; None for the benchmark's own default data."""
    if getattr(args, "data", None) is not None:
        return Path(args.data).expanduser().resolve().name
    synth = getattr(args, "synth", None)
    return synth if synth not in (None, default_preset) else None


def data_record(path: Path, *, synthetic_preset: str | None = None, seed: int | None = None,
                **extra: Any) -> dict[str, Any]:
    """Which data a benchmark ran on: ``{"path", "fingerprint", "synthetic_preset", "seed",
    "sizes": {split: n}}`` (plus ``extra``). The fingerprint is ``load_dataset``'s, read one split
    at a time (``files_fingerprint``); the sizes come from the label files' headers. Only reads."""
    import h5py

    from msatune.augment.dataset import H5_KEY, SPLITS, file_name, files_fingerprint
    from msatune.errors import UserError

    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise SystemExit(f"{root}: no such data directory (an msa-tf2 directory: 'msatune data synth DIR')")
    try:
        fingerprint = files_fingerprint(root)
    except UserError as exc:
        raise SystemExit(str(exc)) from exc
    sizes = {}
    for split in SPLITS:
        with h5py.File(root / file_name("labels", split), "r") as f:
            sizes[split] = int(f[H5_KEY].shape[0])
    return {"path": str(root), "fingerprint": fingerprint, "synthetic_preset": synthetic_preset,
            "seed": seed, "sizes": sizes, **extra}


def resolve_data(args: Any, root: Path, default_preset: str, seed: int = 0) -> tuple[Path, dict[str, Any]]:
    """The data directory to run on and its :func:`data_record`: ``args.data`` as given (read,
    never written), else the synthetic ``args.synth`` (or ``default_preset``) with ``seed``,
    generated under ``root`` unless already there."""
    if getattr(args, "data", None) is not None:
        path = Path(args.data).expanduser().resolve()
        return path, data_record(path)
    preset = getattr(args, "synth", None) or default_preset
    path = synth_data(root, preset, seed)
    return path, data_record(path, synthetic_preset=preset, seed=seed)


def data_label(record: Mapping[str, Any]) -> str:
    """A record in a few words, for table titles."""
    if record.get("synthetic_preset"):
        scale = record.get("scale")
        return (f"synthetic {record['synthetic_preset']}" + (f" x{scale:g}" if scale not in (None, 1.0) else "")
                + f" (seed {record['seed']})")
    return f"{record['path']} ({str(record.get('fingerprint'))[:12]})"


def clear_studies(ws_root: Path) -> None:
    """Remove a benchmark workspace's study store and study folders (``studies.db``, ``studies/``),
    so a study stage starts from an empty workspace; its data and other stages' files stay."""
    import shutil

    for old in ("studies.db", "studies"):
        path = Path(ws_root) / old
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def start_ray(num_cpus: float, num_gpus: float | None = None) -> float:
    """A private local Ray instance for this benchmark process; returns the seconds it took.

    ``benchmarks/`` goes on the workers' ``PYTHONPATH`` (they inherit the driver's environment),
    so trainables defined here unpickle in them.
    """
    import ray

    from msatune.search import ray_session

    ray_session.quiet_ray_environment()
    if hasattr(ray_session, "lean_local_ray_environment"):  # as msatune starts a local Ray
        ray_session.lean_local_ray_environment()
    paths = [str(BENCH_DIR), str(REPO), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    kwargs: dict[str, Any] = {
        "address": "local", "num_cpus": num_cpus, "include_dashboard": False,
        "log_to_driver": False, "logging_level": logging.WARNING, "configure_logging": True,
    }
    if num_gpus is not None:
        kwargs["num_gpus"] = num_gpus
    t0 = time.perf_counter()
    ray.init(**kwargs)
    return time.perf_counter() - t0


def new_study(ws_root: Path, name: str, space: Any, data_path: Path, settings: Any) -> Any:
    """An msatune study (what ``launch`` records) in the workspace's SQLite store, without
    ``launch``'s enqueued presets: the benchmark decides exactly what the study trains."""
    from msatune.augment.dataset import load_dataset
    from msatune.studies.runs import create_search_study
    from msatune.studies.store.connect import open_storage
    from msatune.studies.store.workspace import Workspace

    ws = Workspace(Path(ws_root)).ensure()
    space.for_study(settings.max_epochs, settings.seed)
    return create_search_study(open_storage(ws.storage_url), name, settings, load_dataset(data_path), space,
                               presets=False)


# --------------------------------------------------------------------------------------------
# A measurement in a process of its own


def run_worker(script: Path, spec: Mapping[str, Any], *, timeout: float,
               env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run ``script --worker JSON(spec)`` in a fresh Python (thread, Grappler and oneDNN settings
    are fixed when TensorFlow starts, so each variant needs its own process) with the repository
    importable, and return the dict its last ``RESULT {json}`` line carries, plus
    ``process_started`` / ``process_ended`` (``time.time()``), ``process_wall_s`` and the load
    average before and after. ``env``: variables added to the worker's environment. A non-zero exit
    raises ``RuntimeError`` with the end of the worker's output."""
    full_env = {**os.environ, **(env or {}),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    before = loadavg()
    started, t0 = time.time(), time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(script).resolve()), "--worker", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(script).name} worker failed (exit {proc.returncode}):\n"
                           f"{(proc.stderr or proc.stdout)[-3000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{Path(script).name} worker printed no RESULT line:\n{proc.stdout[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result.update(process_started=started, process_ended=started + wall, process_wall_s=wall,
                  loadavg_before=before, loadavg_after=loadavg())
    return result


def add_worker_arg(parser: Any) -> None:
    """The hidden ``--worker JSON`` option :func:`run_worker` starts a script with."""
    import argparse

    parser.add_argument("--worker", help=argparse.SUPPRESS)


def answer_worker(args: Any, worker: Callable[[dict[str, Any]], Mapping[str, Any]]) -> bool:
    """In a process :func:`run_worker` started: run ``worker(spec)`` and print its ``RESULT`` line
    (True); otherwise (no ``--worker``) do nothing (False)."""
    if not getattr(args, "worker", None):
        return False
    print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
    return True


# --------------------------------------------------------------------------------------------
# Inside a Ray worker: process memory and a timed trainable


def rss_mb() -> float | None:
    """Resident set size of this process now (``VmRSS``), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return None


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def append_event(path: str | Path, event: Mapping[str, Any]) -> None:
    """One JSON line per event (small appends from one process at a time per trial)."""
    with open(path, "a") as f:
        f.write(json.dumps(event) + "\n")


def read_events(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    return sorted((json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()), key=lambda e: e["t"])


def timed_trainable(config: dict[str, Any], data: Any = None, events: str | None = None,
                    inner: Callable[..., None] | None = None) -> None:
    """msatune's trainable (or ``inner``), with timestamps and RSS recorded per trial and epoch.

    Every ``ray.tune.report`` of the trial also carries ``bench_t`` (wall clock), ``bench_rss_mb``
    and ``bench_pid``, and appends an ``epoch`` event to ``events`` (JSON lines); the trial's
    start and end (after the trainable returned) are events too.
    """
    import ray.tune as tune

    if inner is None:
        from msatune.search.trainable import train_trial as inner
    trial_id = tune.get_context().get_trial_id()
    pid = os.getpid()

    def log(kind: str, **extra: Any) -> None:
        if events:
            append_event(events, {"kind": kind, "t": time.time(), "trial_id": trial_id, "pid": pid,
                                  "rss_mb": rss_mb(), "max_rss_mb": max_rss_mb(), **extra})

    original = tune.report

    def report(metrics: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        now = time.time()
        metrics = {**metrics, "bench_t": now, "bench_rss_mb": rss_mb(), "bench_pid": pid}
        log("epoch", epoch=metrics.get("epoch"), epoch_seconds=metrics.get("epoch_seconds"),
            validation_seconds=metrics.get("validation_seconds"), val_mae=metrics.get("val_mae"),
            train_mae=metrics.get("train_mae"), rung_score=metrics.get("rung_mae"),
            final=bool(metrics.get("final")))
        return original(metrics, *args, **kwargs)

    log("start", seed=config.get("seed"))
    tune.report = report  # train_trial looks it up on the module at call time
    try:
        inner(config, data=data)
    finally:
        tune.report = original
        log("end")


def trial_timeline(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per trial (by start time): start, first/last epoch end, end, epochs, epoch seconds, RSS
    (at the trial's end event, else at its last report)."""
    trials: dict[str, dict[str, Any]] = {}
    for e in events:
        t = trials.setdefault(e["trial_id"], {"trial_id": e["trial_id"], "epochs": 0, "epoch_seconds": 0.0,
                                               "epoch_ends": [], "epoch_secs": [], "valid_secs": []})
        if e["kind"] == "start":
            t.update(start=e["t"], pid=e["pid"], rss_start_mb=e["rss_mb"], seed=e.get("seed"))
        elif e["kind"] == "epoch":
            t["epochs"] += 1
            t["epoch_seconds"] += float(e.get("epoch_seconds") or 0.0)
            t["epoch_ends"].append(e["t"])
            t["epoch_secs"].append(float(e.get("epoch_seconds") or 0.0))
            v = e.get("validation_seconds")
            t["valid_secs"].append(None if v is None else float(v))
            # Ray may stop a trial at its last report (ASHA at max_t) before the trainable's own
            # end event is written: the last report's RSS stands in until that event comes
            t.setdefault("end_event", False)
            if not t["end_event"]:
                t.update(rss_end_mb=e["rss_mb"], max_rss_mb=e["max_rss_mb"])
        elif e["kind"] == "end":
            t["end_event"] = True
            t.update(end=e["t"], rss_end_mb=e["rss_mb"], max_rss_mb=e["max_rss_mb"])
    return sorted((t for t in trials.values() if "start" in t), key=lambda t: t["start"])


def overheads(timeline: list[dict[str, Any]], run_end: float | None = None) -> list[dict[str, Any]]:
    """Per trial on one slot: ``startup_s`` (start → first epoch end, minus that epoch's time) and
    ``gap_s`` (last epoch end → the next trial's start; the last trial: → ``run_end``)."""
    out = []
    for i, t in enumerate(timeline):
        if not t["epoch_ends"]:
            continue
        nxt = timeline[i + 1]["start"] if i + 1 < len(timeline) else run_end
        startup = t["epoch_ends"][0] - t["start"] - t["epoch_secs"][0]
        gap = (nxt - t["epoch_ends"][-1]) if nxt is not None else None
        out.append({"trial_id": t["trial_id"], "startup_s": startup, "gap_s": gap,
                    "overhead_s": startup + gap if gap is not None else None,
                    "last": i + 1 == len(timeline)})
    return out


def first_epoch_extra(t: dict[str, Any]) -> float | None:
    """Start -> first epoch end, minus the trial's steady epoch (median of its epochs 2..)."""
    if len(t["epoch_ends"]) < 2:
        return None
    return t["epoch_ends"][0] - t["start"] - median(t["epoch_secs"][1:])


def steady_train_secs(t: dict[str, Any]) -> list[float]:
    """The training part (epoch minus validation) of a trial's epochs 2.., where recorded."""
    return [e - v for e, v in zip(t["epoch_secs"][1:], t.get("valid_secs", [])[1:], strict=False)
            if v is not None]


def trial_slices(timeline: list[dict[str, Any]], run_end: float) -> list[tuple[float, bool]]:
    """Per trial on one slot: (its start -> the next trial's start or ``run_end``, is-last)."""
    out = []
    for i, t in enumerate(timeline):
        nxt = timeline[i + 1]["start"] if i + 1 < len(timeline) else run_end
        out.append((nxt - t["start"], i + 1 == len(timeline)))
    return out
