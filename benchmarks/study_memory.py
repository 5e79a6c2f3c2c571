"""The machine's memory during a study's first minutes: in use above the start, and each process's own.

Runs ``msatune launch`` (the two presets, 1 CPU each: 2 trials at once on 2 cores) in a fresh
workspace on ``--data`` and samples every 2 s for ``--seconds``: the machine's memory in use above
what it was before (``MemAvailable``), and each msatune or Ray worker process's RSS, PSS and USS
(its own pages: ``/proc/PID/smaps_rollup``), keeping each one's peak. Then stops the launch with
Ctrl-C (SIGINT) and waits for it. ``--label`` names the run in its result
(``benchmarks/results/study_memory_DATA_LABEL.json``); compare only runs made one after the other
on a quiet machine. Never asserts.

    python benchmarks/study_memory.py --data /tmp/mosei --label now --seconds 240
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import RESULTS, base_doc, data_record, loadavg, write_json  # noqa: E402


def _meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":")
        out[key] = int(value.split()[0]) * 1024
    return out


def _processes() -> dict[str, dict[str, int]]:
    """msatune and Ray worker processes: ``name:pid`` -> rss, pss, uss bytes."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
            if "ray::" not in cmd and "msatune" not in cmd:
                continue
            got = {}
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                    got[key] = int(rest.split()[0]) * 1024
        except (OSError, ValueError):
            continue  # ended meanwhile
        out[f"{cmd.split()[0]}:{pid}"] = {"rss": got.get("Rss", 0), "pss": got.get("Pss", 0),
                                          "uss": got.get("Private_Clean", 0) + got.get("Private_Dirty", 0)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, metavar="DIR", help="msa-tf2 data directory (only read)")
    parser.add_argument("--label", required=True, help="names this run in its result file")
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    record = data_record(args.data)
    msatune = Path(sys.executable).with_name("msatune")
    load = loadavg()
    with tempfile.TemporaryDirectory() as ws:
        base = _meminfo()["MemAvailable"]
        proc = subprocess.Popen([str(msatune), "--workspace", ws, "launch", "mem", "--data", str(args.data),
                                 "--trials", "2", "--max-epochs", "3"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        t0, peak_used, peaks, samples = time.time(), 0, {}, []
        while time.time() - t0 < args.seconds and proc.poll() is None:
            used = base - _meminfo()["MemAvailable"]
            peak_used = max(peak_used, used)
            for name, mem in _processes().items():
                old = peaks.get(name, {})
                peaks[name] = {k: max(v, old.get(k, 0)) for k, v in mem.items()}
            samples.append((round(time.time() - t0, 1), used))
            time.sleep(2.0)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
    workers = {name: {f"{k}_GB": v / 1e9 for k, v in mem.items()} for name, mem in peaks.items()
               if mem["rss"] > 2e8}
    doc = {**base_doc("study_memory", "full", {"launch": 0}), "label": args.label, "data": record,
           "load_before": load, "seconds": args.seconds, "peak_used_over_start_GB": peak_used / 1e9,
           "processes": workers, "samples": samples[::5]}
    out = args.out or RESULTS / f"study_memory_{Path(record['path']).name}_{args.label}.json"
    write_json(out, doc)
    print(json.dumps({k: doc[k] for k in ("label", "load_before", "peak_used_over_start_GB", "processes")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
