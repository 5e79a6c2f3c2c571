"""Monitoring's cost: the same training with and without :mod:`msatune.models.monitoring`.

For each model (the ``improved`` and ``seqlevel`` presets at their batch sizes), on the synthetic
mosi set (or ``--data DIR``, ``--synth NAME``), ``train_model`` runs ``--epochs`` epochs with
monitoring on (gradient norms summed in the train step, the attention probe on validation at every
epoch's end, the event file written) and off, alternating on/off ``--repeat`` times in one process
(this includes the epoch-end probe). First, the train step alone: two copies of the model in one
process, one with the gradient norms, trained epoch by epoch in turns (``--rounds``), so the
machine's other load slows both alike; its slowdown is the median of the per-round time ratios. The
steady training step rate excludes the first epoch (tracing): steps of epochs 2..k over their
training time (epoch begin to validation begin). The epoch-end cost (validation + probe + event
file) is reported apart. Goal: monitoring slows a training step by at most 5%. Records the load
average around every run (the machine is shared); never asserts times.

    python benchmarks/monitoring_overhead.py              # improved + seqlevel, 4 epochs, 3 repeats
    python benchmarks/monitoring_overhead.py --quick      # improved only, 3 epochs, 2 repeats
    python benchmarks/monitoring_overhead.py --data DIR   # any msa-tf2 directory (recorded)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    add_data_args,
    base_doc,
    data_label,
    data_tag,
    loadavg,
    median,
    mode_of,
    print_table,
    resolve_data,
    result_path,
    write_json,
)


def _run(preset: str, data: Any, epochs: int, monitor: bool, log_dir: Path) -> dict[str, Any]:
    import keras

    from msatune.models.training import train_model
    from msatune.search.trial import build_pipelines
    from msatune.search.trial_config import resolve_config

    keras.backend.clear_session()
    config = resolve_config(preset, [f"patience={epochs}"], epochs)
    datasets = build_pipelines(config, data)
    steps = int(datasets["train"].cardinality().numpy())
    reports: list[Any] = []
    load_before = loadavg()
    t0 = time.perf_counter()
    train_model(config, datasets, data.dims, seq_len=data.seq_len, on_epoch=reports.append,
                monitor=monitor, monitor_dir=log_dir if monitor else None)
    train = [r.seconds - r.validation_seconds for r in reports]
    return {
        "preset": preset, "monitor": monitor, "batch_size": int(config["batch_size"]), "steps_per_epoch": steps,
        "steady_steps_per_s": steps * (len(train) - 1) / sum(train[1:]),
        "first_epoch_s": reports[0].seconds,
        "epoch_end_s": statistics.median(r.validation_seconds for r in reports[1:]),
        "wall_s": time.perf_counter() - t0, "load_before": load_before, "load_after": loadavg(),
    }


def _interleaved(preset: str, data: Any, rounds: int) -> dict[str, Any]:
    """Two copies of the model in one process, one monitored, trained one epoch at a time in
    turns (``fit(epochs=1)`` on the traced train function): whatever else loads the machine
    slows both alike. Returns each copy's epoch train times (after the first, tracing, epoch)."""
    import keras

    from msatune.models.build import build_model
    from msatune.models.monitoring import GradientNorms
    from msatune.models.recipe import make_loss, make_optimizer, training_settings
    from msatune.models.training import MAX_STEPS_PER_EXECUTION
    from msatune.search.trial import build_pipelines
    from msatune.search.trial_config import resolve_config

    keras.backend.clear_session()
    config = resolve_config(preset, [], rounds + 1)
    settings = training_settings(config)
    datasets = build_pipelines(config, data)
    steps = int(datasets["train"].cardinality().numpy())
    copies: dict[bool, Any] = {}
    norms = None
    for monitor in (False, True):
        model = build_model(config, data.dims, data.seq_len)
        optimizer = make_optimizer(settings)
        model.compile(optimizer=optimizer, loss=make_loss(settings), metrics=["mae", "mse"],
                      steps_per_execution=min(steps, MAX_STEPS_PER_EXECUTION))
        if monitor:
            norms = GradientNorms(model.trainable_variables)
            norms.attach(optimizer)
        copies[monitor] = model
    times: dict[bool, list[float]] = {False: [], True: []}
    loads = [loadavg()]
    for i in range(rounds + 1):
        for monitor in ((False, True) if i % 2 == 0 else (True, False)):
            if monitor:
                norms.reset()
            t0 = time.perf_counter()
            copies[monitor].fit(datasets["train"], epochs=1, verbose=0, shuffle=False)
            if monitor:
                norms.values()  # the epoch-end read
            if i > 0:
                times[monitor].append(time.perf_counter() - t0)
        loads.append(loadavg())
    on, off = statistics.median(times[True]), statistics.median(times[False])
    ratios = [a / b for a, b in zip(times[True], times[False], strict=True)]
    return {"preset": preset, "steps_per_epoch": steps, "epochs_on_s": times[True], "epochs_off_s": times[False],
            "steps_per_s_on": steps / on, "steps_per_s_off": steps / off,
            "slowdown_pct_median_epoch": 100.0 * (on / off - 1),
            "slowdown_pct_median_pair": 100.0 * (statistics.median(ratios) - 1),
            "slowdown_pct_fastest": 100.0 * (min(times[True]) / min(times[False]) - 1), "loads": loads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--presets", nargs="+", default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved epochs per copy (after tracing)")
    parser.add_argument("--skip-runs", action="store_true", help="only the interleaved measurement")
    add_data_args(parser, "mosi", smoke_preset=None)
    args = parser.parse_args()
    mode = mode_of(args)
    epochs = args.epochs or (3 if args.quick else 4)
    repeat = args.repeat or (2 if args.quick else 3)
    presets = args.presets or (["improved"] if args.quick else ["improved", "seqlevel"])
    from msatune.augment.dataset import load_dataset

    doc = base_doc("monitoring_overhead", mode, {"data": 0, "model": "preset seed"})
    rounds = args.rounds or (4 if args.quick else 8)
    runs: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data_path, doc["data"] = resolve_data(args, Path(tmp), "mosi", 0)
        data = load_dataset(data_path)
        for preset in presets:
            pairs.append(_interleaved(preset, data, rounds))
            p = pairs[-1]
            print(f"{preset} interleaved: {p['steps_per_s_off']:.1f} -> {p['steps_per_s_on']:.1f} steps/s, "
                  f"slowdown {p['slowdown_pct_median_pair']:.1f}% (median of pairs), loads {p['loads']}", flush=True)
            for i in range(0 if args.skip_runs else repeat):
                order = (True, False) if i % 2 == 0 else (False, True)
                for monitor in order:
                    run = _run(preset, data, epochs, monitor, Path(tmp) / f"{preset}-{i}-monitor")
                    runs.append(run)
                    print(f"{preset} monitor={monitor}: {run['steady_steps_per_s']:.1f} steps/s, "
                          f"load {run['load_before']} -> {run['load_after']}", flush=True)
    print_table(pairs, [("preset", "preset", 0), ("steps_per_s_off", "steps/s off", 1),
                        ("steps_per_s_on", "steps/s on", 1), ("slowdown_pct_median_pair", "slowdown % (pairs)", 1),
                        ("slowdown_pct_median_epoch", "slowdown % (medians)", 1),
                        ("slowdown_pct_fastest", "slowdown % (fastest)", 1)],
                title=f"Train step with and without gradient norms, interleaved epochs ({rounds} each)")
    rows = []
    for preset in [] if args.skip_runs else presets:
        on = [r["steady_steps_per_s"] for r in runs if r["preset"] == preset and r["monitor"]]
        off = [r["steady_steps_per_s"] for r in runs if r["preset"] == preset and not r["monitor"]]
        end_on = median(r["epoch_end_s"] for r in runs if r["preset"] == preset and r["monitor"])
        end_off = median(r["epoch_end_s"] for r in runs if r["preset"] == preset and not r["monitor"])
        rows.append({"preset": preset, "on": median(on), "off": median(off), "best_on": max(on), "best_off": max(off),
                     "slowdown_pct": 100.0 * (1 - median(on) / median(off)),
                     "slowdown_best_pct": 100.0 * (1 - max(on) / max(off)),
                     "epoch_end_on_s": end_on, "epoch_end_off_s": end_off})
    print_table(rows, [("preset", "preset", 0), ("off", "steps/s off (median)", 1), ("on", "steps/s on (median)", 1),
                       ("slowdown_pct", "slowdown % (median)", 1), ("slowdown_best_pct", "slowdown % (best)", 1),
                       ("epoch_end_off_s", "epoch end off s", 2), ("epoch_end_on_s", "epoch end on s", 2)],
                title=f"Monitoring overhead ({data_label(doc['data'])}; {epochs} epochs, {repeat} repeats; "
                      "goal: slowdown <= 5%)")
    doc.update(epochs=epochs, repeat=repeat, rounds=rounds, interleaved=pairs, runs=runs, summary=rows)
    tag = data_tag(args, "mosi")
    write_json(result_path("monitoring_overhead" + (f"_{tag}" if tag else ""), mode, args.out), doc)


if __name__ == "__main__":
    main()
