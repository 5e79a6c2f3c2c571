"""Smoke test of the benchmarks: each runs end to end at ``--smoke`` size and writes its JSON with
the expected keys. No timing assertions: the machine is shared.

The four start at once, each in its own process (``train_throughput.py`` pins its own threads;
the three that search start their own Ray): most of their time is process, TensorFlow and Ray
start-up and the trials' waits, not CPU, so together they take about as long as the longest.
Measured on 2 cores: 583 s one after another on one shared Ray, 369 s for the three that search
at once plus 88 s for the throughput smoke after them.

``test_data_dir_recorded`` runs on its own: the cheapest benchmark (one preset's
``msatune train`` of 2 epochs) on a ``--data`` directory, which it records and never writes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"
SCRIPTS = ("harness_overhead", "search_efficiency", "slots_scaling", "train_throughput")
COMMON_KEYS = {"benchmark", "mode", "machine", "versions", "seeds", "timestamp", "total_s", "data"}
DATA_KEYS = {"path", "fingerprint", "synthetic_preset", "seed", "sizes"}


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
            stdout, stderr = proc.communicate(timeout=900)
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
    _tiny_data(doc["data"])


def _tiny_data(record: dict) -> None:
    """Without --data a smoke run trains on synthetic tiny, recorded as such."""
    assert DATA_KEYS <= set(record), DATA_KEYS - set(record)
    assert record["synthetic_preset"] == "tiny" and record["seed"] == 0 and len(record["fingerprint"]) == 64
    assert record["sizes"] == {"train": 48, "valid": 24, "test": 24}


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


RESULT_KEYS = {
    "model", "setup", "batch_size", "epochs", "threads", "jit_compile", "samples_per_epoch",
    "steps_per_epoch", "epoch_s", "train_s", "startup_s", "first_epoch_s", "trace_overhead_s",
    "steady_epoch_s", "train_samples_per_s", "epoch_samples_per_s", "loadavg_before",
}


@pytest.mark.slow
def test_train_throughput_smoke(smoke_docs: dict[str, dict]) -> None:
    doc = smoke_docs["train_throughput"]
    assert "x users" in doc["_stdout"]  # the table was printed
    for key in ("machine", "versions", "seeds", "results", "ratios", "goal_ratio", "mode"):
        assert key in doc, key
    assert doc["mode"] == "smoke"
    assert {"cpu_count", "platform"} <= set(doc["machine"])
    assert {"python", "tensorflow", "keras", "numpy"} <= set(doc["versions"])
    assert doc["seeds"] == {"data": 0, "model": 0}
    _tiny_data(doc["data"])

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


@pytest.mark.slow
def test_data_dir_recorded(tmp_path: Path) -> None:
    from msatune.augment.dataset import load_dataset

    data = tmp_path / "tiny-data"
    subprocess.run([sys.executable, "-m", "msatune.studies.cli", "data", "synth", str(data), "--preset", "tiny"],
                   check=True, capture_output=True, text=True, cwd=REPO)
    fingerprint = load_dataset(data).fingerprint
    files = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in data.iterdir()}
    out = tmp_path / "study_hours.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "study_hours.py"), "--smoke", "--presets", "improved", "--data", str(data),
         "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "study_hours" and doc["mode"] == "smoke"
    assert doc["data"] == {"path": str(data.resolve()), "fingerprint": fingerprint, "synthetic_preset": None,
                           "seed": None, "sizes": {"train": 48, "valid": 24, "test": 24}}
    assert doc["presets"]["improved"]["data_fingerprint"] == fingerprint  # it trained on that directory
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in data.iterdir()} == files  # only read
