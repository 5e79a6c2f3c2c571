"""What Ray runs beside a study, and the CPU its processes take while trials train.

Starts Ray the way ``msatune launch`` does (``search.ray_session.start_ray``: a new local instance,
``include_dashboard=False``), waits for it to settle, then samples every Ray process's CPU time
(``/proc/PID/stat`` utime + stime) over ``--seconds`` of idling, and prints each process with its
share of one core. Writes ``benchmarks/results/ray_idle.json``; never asserts. Hold the machine
lock (``/work/locks/exclusive``): other processes' load does not change the share, but this
process's measurement must not be starved.

    python benchmarks/ray_idle.py --seconds 60
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import base_doc, result_path, write_json  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def _name(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(c.decode(errors="replace") for c in cmd if c)
    for key in ("raylet", "gcs_server", "dashboard_agent", "runtime_env_agent", "log_monitor", "monitor.py",
                "dashboard.py", "default_worker", "ray::"):
        if key in text:
            return key if key != "ray::" else text.split()[0]
    return text[:60]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=10.0, help="seconds to wait after ray.init")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    import ray

    from msatune.search.ray_orphans import session_processes
    from msatune.search.ray_session import quiet_ray_environment, start_ray

    quiet_ray_environment()
    with tempfile.TemporaryDirectory(prefix="msatune-ray-idle-") as tmp:
        start_ray(address=None, verbose=False, work_dir=Path(tmp))
        try:
            time.sleep(args.settle)
            session = ray._private.worker._global_node.get_session_dir_path()
            pids = sorted(set(session_processes(session)))
            before = {pid: _cpu_seconds(pid) for pid in pids}
            t0 = time.perf_counter()
            time.sleep(args.seconds)
            wall = time.perf_counter() - t0
            after = {pid: _cpu_seconds(pid) for pid in pids}
            rows = []
            for pid in pids:
                if before[pid] is None or after[pid] is None:
                    continue
                rows.append({"pid": pid, "process": _name(pid),
                             "cpu_share_of_one_core": (after[pid] - before[pid]) / wall})
        finally:
            ray.shutdown()
    rows.sort(key=lambda r: -r["cpu_share_of_one_core"])
    total = sum(r["cpu_share_of_one_core"] for r in rows)
    for r in rows:
        print(f"{r['process']:<40} {100 * r['cpu_share_of_one_core']:6.2f} % of one core")
    print(f"{'total (' + str(len(rows)) + ' processes)':<40} {100 * total:6.2f} % of one core")
    doc = base_doc("ray_idle", "full", {})
    doc.update({"seconds": args.seconds, "settle_s": args.settle, "include_dashboard": False,
                "processes": rows, "total_cpu_share_of_one_core": total})
    write_json(result_path("ray_idle", "full", args.out), doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
