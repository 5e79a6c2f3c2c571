"""What a study costs on MOSEI-sized data: each preset's epoch times at a trial's threads, and the
projected hours of a 100-trial study at msatune's default ASHA settings.

Each preset runs as ``msatune train --preset NAME --epochs E --json`` in its own process, one
after the other (never side by side), with TensorFlow's threads set as a study's trial with
``--cpus-per-trial T`` sets them (``search.trainable.configure_tensorflow(T)``; ``OMP_NUM_THREADS``
too, as Ray sets it). Epoch 1 includes tracing the train and validation graphs, the later ones
are steady; ``msatune train --json`` lists every epoch's wall seconds (``epoch_seconds``)::

    python benchmarks/study_hours.py                     # 4 presets, full synthetic mosei (16,326 train samples)
    python benchmarks/study_hours.py --presets improved  # one preset
    python benchmarks/study_hours.py --scale 0.1         # synthetic mosei at a tenth of its size
    python benchmarks/study_hours.py --data DIR          # any msa-tf2 directory (recorded with its fingerprint)
    python benchmarks/study_hours.py --synth lexicon     # another synthetic preset (--scale applies too)
    python benchmarks/study_hours.py --smoke --out /tmp/h.json   # tiny data, 2 epochs (seconds of training)

Per preset: parameters, first and steady epoch seconds, the first epoch's extra (tracing), the
child's peak RSS (``os.wait4``'s rusage of that child alone; ``getrusage(RUSAGE_CHILDREN)`` after
it is recorded too, the maximum over every child so far, the data synthesis included) and the
load average before it. Then :func:`study_hours` projects a study from them under each survival
scenario in :data:`SURVIVAL`. Never asserts anything.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (  # noqa: E402
    REPO,
    add_data_args,
    base_doc,
    data_label,
    data_record,
    data_tag,
    loadavg,
    median,
    mode_of,
    print_table,
    result_path,
    write_json,
)

NAMES = ("baseline", "improved", "balanced", "seqlevel")

#: The child: TensorFlow's threads as a study's trial with ``--cpus-per-trial THREADS`` gets them,
#: then the ``msatune`` command line.
ENTRY = (
    "import sys; from msatune.search.trainable import configure_tensorflow; "
    "configure_tensorflow(float(sys.argv[1])); "
    "from msatune.studies.cli import main; sys.exit(main(sys.argv[2:]))"
)

#: Fractions of a study's trials that ASHA stops at each rung below the budget (the default
#: settings' rungs 3 and 9); the rest train to ``max_epochs``.
SURVIVAL: dict[str, dict[str, Any]] = {
    "measured": {
        "stop_fractions": [60 / 120, 15 / 120],
        "source": "benchmarks/README.md, 'search_efficiency after issue 14' (results/search_efficiency_5seeds.json, "
                  "tpe_asha): 24 searched trials x 5 seeds at grace 3 / rf 3 on rung_mae, a 15-epoch budget "
                  "(rungs 3 and 9, as at 27); pooled over the seeds 60 of 120 trials stopped at epoch 3, 15 at "
                  "epoch 9, 45 reached the budget (each seed's count from its complete / pruned / epochs, "
                  "e.g. seed 0: 10 complete, 14 pruned, 216 epochs = 10 x 3 + 4 x 9 + 10 x 15)",
    },
    "asha_steady_state": {
        "stop_fractions": [2 / 3, 2 / 9],
        "source": "ASHA once its rungs are full: 1 in reduction_factor trials goes on at each rung "
                  "(a 24-trial study is still filling them; a 100-trial one comes closer)",
    },
}


def rungs(settings: Any) -> list[int]:
    """The epochs ASHA compares trials at below the budget: grace x rf^k < max_epochs."""
    out, r = [], settings.grace
    while settings.first_rung is not None and r < settings.max_epochs:
        out.append(r)
        r *= settings.reduction_factor
    return out


def study_hours(steady_epoch_s: float, first_epoch_extra_s: float, *, trials: int, rung_epochs: Sequence[int],
                stop_fractions: Sequence[float], max_epochs: int, concurrency: int = 1) -> dict[str, float]:
    """Projected hours of a study whose every trial trains like the measured preset.

    Model: a fraction ``stop_fractions[i]`` of the ``trials`` is stopped at epoch
    ``rung_epochs[i]``, the rest reach ``max_epochs``; the study trains
    ``epochs = trials x (sum_i f_i x r_i + (1 - sum_i f_i) x max_epochs)`` epochs, each at the
    steady epoch time, and every trial pays its first epoch's extra (tracing) once:
    ``hours = (epochs x steady_epoch_s + trials x first_epoch_extra_s) / concurrency / 3600``.
    ``concurrency`` trials run side by side at the measured speed (1: one 2-thread trial on 2
    CPUs). Left out: a trial's start before its first epoch (build, compile: ~1.3 s in
    harness_overhead), its end (test predictions, checkpoint), Ray's gaps between trials, and the
    presets' own early stopping (the search's budget is the cap).
    """
    if len(stop_fractions) != len(rung_epochs) or not 0 <= sum(stop_fractions) <= 1:
        raise ValueError(f"one stop fraction per rung {list(rung_epochs)}, summing to at most 1: {stop_fractions}")
    per_trial = sum(f * r for f, r in zip(stop_fractions, rung_epochs, strict=True)) \
        + (1 - sum(stop_fractions)) * max_epochs
    epochs = trials * per_trial
    seconds = epochs * steady_epoch_s + trials * first_epoch_extra_s
    return {"epochs": round(epochs, 1), "epochs_per_trial": round(per_trial, 3),
            "hours": round(seconds / concurrency / 3600, 3)}


def run_child(cmd: list[str], env: Mapping[str, str]) -> tuple[int, str, str, float]:
    """Run ``cmd`` to its end; (exit status, stdout, stderr, this child's peak RSS in MiB)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO, env=dict(env), text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), usage.ru_maxrss / 1024  # KiB on Linux


def measure(ws: Path, preset: str, data: Path, epochs: int, threads: int) -> dict[str, Any]:
    """One preset trained for ``epochs`` in its own process: its epoch times, size and memory."""
    args = ["--workspace", str(ws), "train", "--preset", preset, "--data", str(data), "--epochs", str(epochs),
            "--json", "--out", str(ws / "train" / preset)]
    cmd = [sys.executable, "-c", ENTRY, str(threads), *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "3"}
    load = loadavg()
    t0 = time.perf_counter()
    rc, out, err, peak = run_child(cmd, env)
    rec: dict[str, Any] = {"command": "msatune " + " ".join(args), "threads": threads, "loadavg_before": load,
                           "process_wall_seconds": round(time.perf_counter() - t0, 3),
                           "peak_rss_mb": round(peak, 1),
                           "children_max_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}
    if rc != 0:
        lines = err.strip().splitlines()
        return {**rec, "error": f"exit {rc}: {lines[-1] if lines else ''}"}
    payload = json.loads(out)
    secs = payload.get("epoch_seconds")
    if not secs or len(secs) < 2:
        return {**rec, "error": f"no per-epoch times for {epochs} epochs: epoch_seconds={secs!r}"}
    steady = median(secs[1:])
    return {**rec, "params": payload.get("params"), "epoch_seconds": secs, "first_epoch_s": secs[0],
            "steady_epoch_s": round(steady, 3), "first_epoch_extra_s": round(secs[0] - steady, 3),
            "train_wall_seconds": payload["wall_seconds"],
            # pipelines, build, compile before epoch 1; test predictions, checkpoint after the last
            "outside_epochs_s": round(payload["wall_seconds"] - sum(secs), 3),
            "batch_size": payload["config"].get("batch_size"), "data_fingerprint": payload.get("data_fingerprint")}


def prepare_data(args: argparse.Namespace, ws: Path, mode: str) -> tuple[Path, dict[str, Any]]:
    """The data directory and its record (``bench_common.data_record``; synthesized into ``ws``,
    in a child process, unless ``--data``)."""
    if args.data is not None:
        path = args.data.expanduser().resolve()
        return path, data_record(path)
    preset, scale = ("tiny", 1.0) if mode == "smoke" and args.synth is None else (args.synth or "mosei", args.scale)
    path = ws / (f"synthetic-{preset}" + ("" if scale == 1.0 else f"-x{scale:g}"))
    if not (path / "y_train.h5").exists():
        cmd = [sys.executable, "-m", "msatune.studies.cli", "data", "synth", str(path), "--preset", preset,
               "--seed", "0", "--overwrite"] + ([] if scale == 1.0 else ["--scale", str(scale)])
        print(f"synthesizing {preset}{'' if scale == 1.0 else f' x{scale:g}'} into {path} ...", flush=True)
        subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
    return path, data_record(path, synthetic_preset=preset, seed=0, scale=scale)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", choices=NAMES, default=list(NAMES))
    ap.add_argument("--epochs", type=int, default=2, help="epochs per preset, >= 2 (the first traces) [2]")
    ap.add_argument("--threads", type=int, default=2, help="TensorFlow threads: a trial's --cpus-per-trial [2]")
    ap.add_argument("--trials", type=int, default=100, help="the projected study's trials [100]")
    ap.add_argument("--concurrency", type=int, default=1, help="trials side by side in the projection [1]")
    add_data_args(ap, "mosei")
    ap.add_argument("--scale", type=float, default=1.0, help="the synthetic set at this fraction of its size [1]")
    ap.add_argument("--workspace", type=Path, default=None,
                    help="workspace (kept, and its synthetic data reused; default: a temp dir, removed)")
    ap.add_argument("--smoke", action="store_true", help="tiny data, 2 epochs (seconds of training)")
    ap.add_argument("--out", type=Path, default=None, help="JSON to write")
    args = ap.parse_args(argv)
    if args.epochs < 2:
        ap.error("--epochs must be >= 2: the first epoch traces, the steady time comes from the later ones")
    mode = mode_of(args)
    if mode == "smoke":
        args.epochs = 2
    name = f"study_hours_{data_tag(args, 'mosei') or 'mosei'}" + (
        "" if args.data is not None or args.scale == 1.0 else f"_x{args.scale:g}")
    out = result_path(name, mode, args.out)
    ws = args.workspace or Path(tempfile.mkdtemp(prefix="msatune-study-hours-"))
    try:
        data, data_rec = prepare_data(args, ws, mode)
        doc = base_doc("study_hours", mode, {"data": 0, "model": 0})
        doc["data"] = data_rec
        doc["epochs"], doc["threads"] = args.epochs, args.threads
        doc["presets"] = {}
        for preset in args.presets:
            print(f"{preset}: {args.epochs} epochs, {args.threads} threads ...", flush=True)
            doc["presets"][preset] = measure(ws, preset, data, args.epochs, args.threads)
            print(f"  {json.dumps({k: doc['presets'][preset].get(k) for k in ('epoch_seconds', 'peak_rss_mb', 'error')})}",
                  flush=True)
    finally:
        if args.workspace is None:
            shutil.rmtree(ws, ignore_errors=True)
    doc["projection"] = project(doc["presets"], args.trials, args.concurrency)
    write_json(out, doc)
    report(doc)
    return 0


def project(measured: Mapping[str, Mapping[str, Any]], trials: int, concurrency: int) -> dict[str, Any]:
    """Each measured preset's study under each survival scenario, at msatune's default ASHA settings."""
    from msatune.search.search_settings import SearchSettings  # a study's defaults; no TensorFlow

    settings = SearchSettings(trials=trials)
    rung_epochs = rungs(settings)
    per_preset: dict[str, dict[str, Any]] = {}
    for preset, rec in measured.items():
        if "steady_epoch_s" not in rec:
            continue
        per_preset[preset] = {
            scenario: study_hours(rec["steady_epoch_s"], rec["first_epoch_extra_s"], trials=trials,
                                  rung_epochs=rung_epochs, stop_fractions=s["stop_fractions"],
                                  max_epochs=settings.max_epochs, concurrency=concurrency)
            for scenario, s in SURVIVAL.items()}
    return {
        "trials": trials, "concurrency": concurrency,
        "asha": {"grace_period": settings.grace, "reduction_factor": settings.reduction_factor,
                 "max_epochs": settings.max_epochs, "rungs": rung_epochs},
        "survival": {k: {"stop_fractions": [round(f, 4) for f in s["stop_fractions"]],
                         "reach_budget": round(1 - sum(s["stop_fractions"]), 4), "source": s["source"]}
                     for k, s in SURVIVAL.items()},
        "model": " ".join((study_hours.__doc__ or "").split()),
        "per_preset": per_preset,
    }


def report(doc: Mapping[str, Any]) -> None:
    proj = doc["projection"]
    rows = [{"preset": p, **r, "error": "failed" if "error" in r else None} for p, r in doc["presets"].items()]
    print_table(rows, [("preset", "preset", 0), ("params", "params", 0), ("batch_size", "batch", 0),
                       ("first_epoch_s", "1st epoch s", 2), ("steady_epoch_s", "steady epoch s", 2),
                       ("first_epoch_extra_s", "1st extra s", 2), ("outside_epochs_s", "outside epochs s", 2),
                       ("peak_rss_mb", "peak RSS MB", 0), ("error", "error", 0)],
                title=f"{data_label(doc['data'])}; {doc['epochs']} epochs, {doc['threads']} threads, one preset at a time")
    for p, r in doc["presets"].items():
        print(f"  {p}: load average before {r['loadavg_before']}" + (f"; {r['error']}" if "error" in r else ""))
    asha = proj["asha"]
    print(f"\nASHA grace {asha['grace_period']}, reduction factor {asha['reduction_factor']}, max {asha['max_epochs']} "
          f"epochs (rungs {asha['rungs']}); {proj['trials']} trials, {proj['concurrency']} at a time")
    for k, s in proj["survival"].items():
        stops = ", ".join(f"{f:.3f} stopped at epoch {r}" for f, r in zip(s["stop_fractions"], asha["rungs"], strict=True))
        print(f"  {k}: {stops}, {s['reach_budget']:.3f} reach {asha['max_epochs']}\n    ({s['source']})")
    rows = [{"preset": p, **{f"{k}_{m}": v[m] for k, v in sc.items() for m in ("epochs", "hours")}}
            for p, sc in proj["per_preset"].items()]
    cols = [("preset", "preset", 0)]
    for k in SURVIVAL:
        cols += [(f"{k}_epochs", f"{k} epochs", 0), (f"{k}_hours", f"{k} hours", 2)]
    print_table(rows, cols, title=f"Projected study: {proj['trials']} trials, concurrency {proj['concurrency']}")


if __name__ == "__main__":
    sys.exit(main())
