"""Smoke test of ``benchmarks/train_throughput.py``: it runs end to end and writes its JSON.

Tiny synthetic data, a small model, two epochs, the users' setup and the service's loop; about
30 s on two CPU cores. No timing assertions: the machine is shared.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "train_throughput.py"

RESULT_KEYS = {
    "model", "setup", "batch_size", "epochs", "threads", "jit_compile", "samples_per_epoch",
    "steps_per_epoch", "epoch_s", "train_s", "startup_s", "first_epoch_s", "trace_overhead_s",
    "steady_epoch_s", "train_samples_per_s", "epoch_samples_per_s", "loadavg_before",
}


def test_train_throughput_smoke(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x users" in proc.stdout  # the table was printed

    doc = json.loads(out.read_text())
    for key in ("machine", "versions", "seeds", "results", "ratios", "goal_ratio", "mode"):
        assert key in doc, key
    assert doc["mode"] == "smoke"
    assert {"cpu_count", "platform"} <= set(doc["machine"])
    assert {"python", "tensorflow", "keras", "numpy"} <= set(doc["versions"])
    assert doc["seeds"] == {"data": 0, "model": 0}

    setups = {r["setup"]: r for r in doc["results"]}
    assert set(setups) == {"users", "service"}
    for r in setups.values():
        assert RESULT_KEYS <= set(r), RESULT_KEYS - set(r)
        assert len(r["epoch_s"]) == r["epochs"] == 2
        assert r["train_samples_per_s"] > 0 and r["first_epoch_s"] > 0
    # The users' setup is pinned to one thread of each kind; the service is not.
    assert setups["users"]["threads"] == {"intra_op": 1, "inter_op": 1}
    assert setups["service"]["threads"] == {"intra_op": 0, "inter_op": 0}
    assert setups["users"]["jit_compile"] is False

    (ratio,) = doc["ratios"]
    assert ratio["model"] == "improved" and ratio["batch_size"] == 16
    assert ratio["service_ratio"] > 0 and isinstance(ratio["meets_goal"], bool)
