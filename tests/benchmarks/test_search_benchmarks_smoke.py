"""Smoke test of the search benchmarks (issue 6): each runs end to end at ``--smoke`` size and
writes its JSON with the expected keys.

``harness_overhead.py``, ``search_efficiency.py`` and ``slots_scaling.py`` each start their own
Ray instance in a subprocess; the three run at the same time (most of their time is process and
TensorFlow start-up, not CPU). No timing assertions: the machine is shared.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"
SCRIPTS = ("harness_overhead", "search_efficiency", "slots_scaling")
COMMON_KEYS = {"benchmark", "mode", "machine", "versions", "seeds", "timestamp", "total_s"}


@pytest.fixture(scope="module")
def smoke_docs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("bench")
    procs = {}
    for name in SCRIPTS:
        out = tmp / f"{name}.json"
        procs[name] = (out, subprocess.Popen(
            [sys.executable, str(BENCH / f"{name}.py"), "--smoke", "--out", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        ))
    docs, failures = {}, []
    for name, (out, proc) in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=480)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            failures.append(f"{name}: timed out\n{stderr[-2000:]}")
            continue
        if proc.returncode != 0:
            failures.append(f"{name}: exit {proc.returncode}\n{stderr[-3000:]}")
            continue
        assert "wrote" in stdout, stdout[-2000:]
        docs[name] = json.loads(out.read_text())
        docs[name]["_stdout"] = stdout
    assert not failures, "\n\n".join(failures)
    return docs


def _common(doc: dict, name: str) -> None:
    assert COMMON_KEYS <= set(doc), COMMON_KEYS - set(doc)
    assert doc["benchmark"] == name and doc["mode"] == "smoke"
    assert {"cpu_count", "platform", "loadavg"} <= set(doc["machine"])
    assert {"python", "tensorflow", "keras", "optuna", "ray"} <= set(doc["versions"])


@pytest.mark.slow
def test_harness_overhead_smoke(smoke_docs: dict[str, dict]) -> None:
    doc = smoke_docs["harness_overhead"]
    _common(doc, "harness_overhead")
    assert doc["seeds"]["config_seeds"] == [0, 1]
    assert "efficiency" in doc["_stdout"]
    for setup in ("plain", "study"):
        r = doc["results"][setup]
        for key in ("wall_s", "epoch_s", "efficiency", "median_overhead_s", "median_startup_s", "rss",
                    "rss_creep_mb", "trials", "epochs"):
            assert key in r, (setup, key)
        assert r["trials"] == 2 and r["epochs"] == 2 * doc["configs"]["epochs"]
        assert 0 < r["epoch_s"] < r["wall_s"]
        assert len(r["rss"]) == 2 and all(x["rss_end_mb"] > 0 for x in r["rss"])
    study = doc["results"]["study"]
    assert study["trained_the_enqueued_configs"] is True
    assert len(study["worker_pids"]) == 1  # one reused worker
    assert {"efficiency", "median_overhead_s"} <= set(doc["goals"])


@pytest.mark.slow
def test_search_efficiency_smoke(smoke_docs: dict[str, dict]) -> None:
    doc = smoke_docs["search_efficiency"]
    _common(doc, "search_efficiency")
    assert doc["seeds"]["search"] == [0]
    assert [r["method"] for r in doc["summary"]] == ["random", "tpe", "tpe_asha"]
    for r in doc["runs"]:
        for key in ("epochs", "wall_s", "best_val_mae", "test_mae", "curve", "trials"):
            assert key in r, (r["method"], key)
        assert r["trials"] == doc["size"]["trials"] and r["epochs"] == len(r["curve"]) > 0
        assert r["test_mae"] is not None and r["test_mae"] > 0
        bests = [c[1] for c in r["curve"]]
        assert bests == sorted(bests, reverse=True)  # best so far never rises
    assert {"median_fraction_of_random_epochs", "fraction_goal_met", "no_worse_goal_met"} <= set(
        doc["comparison"])
    png = Path(smoke_docs["search_efficiency"]["_stdout"].split("curves: ")[1].split()[0])
    assert png.exists() and png.stat().st_size > 1000


@pytest.mark.slow
def test_slots_scaling_smoke(smoke_docs: dict[str, dict]) -> None:
    doc = smoke_docs["slots_scaling"]
    _common(doc, "slots_scaling")
    assert [r["slots"] for r in doc["sleeping"]] == [1, 2]
    assert [r["slots"] for r in doc["real"]] == [1]
    for r in doc["sleeping"] + doc["real"]:
        for key in ("trials_per_min_wall", "trials_per_min_steady", "scaling_wall", "scaling_steady",
                    "wall_s", "workers"):
            assert key in r, key
        assert r["complete"] > 0
    # Not asserted: 2 workers at 2 slots (with 0.4 s trials one reused worker may take them all).
    assert 1 <= doc["sleeping"][1]["workers"] <= 2
    assert {"goal", "steady", "wall", "met"} <= set(doc["goal"])
