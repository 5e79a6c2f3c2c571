"""Shared fixtures: synthetic datasets written once per session, and a raw layout writer.

* ``tiny_data``: path of a ``tiny`` synthetic dataset (48/24/24 samples, T=8, dims 16/8/6).
* ``mosi_data``: path of a ``mosi`` synthetic dataset, seed 1 (about a second to make).
* ``write_layout``: writes raw HDF5 files in the msa-tf2 layout *without* validation, so tests
  can build broken datasets.
* ``tiny_arrays``: fresh valid raw arrays (split -> kind -> array) in the tiny shapes.
* ``mmsa_dict``: ``mmsa_dict(seed=0, t_audio=None)`` makes a tiny dict in the structure of MMSA's
  ``aligned_50.pkl`` (``t_audio`` != 6 makes it unaligned).
* ``ray_session``, ``tiny_study``, ``study_copy``: the test session's one Ray, one small real
  study shared by the tests that only read it, and a private copy of its store.

And the one way tests run the ``msatune`` command as users do, in a subprocess
(:func:`run_msatune`, :func:`msatune_argv`, :func:`cli_env`), with the checks of its error
contract (:func:`one_line_error`) and of "nothing changed" (:func:`file_digest`,
:func:`tree_digest`, :func:`tree_paths`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


# --- two workers, one Ray: how pytest-xdist shares the tests out (``-n 2``) ---------------------

#: The fixtures that are (or need) the test session's in-process Ray.
RAY_FIXTURES = ("ray_session", "tiny_study", "study_copy")


@functools.cache
def uses_session_ray(test_file: Path) -> bool:
    """Whether a test file asks for the in-process Ray (by a fixture's name, as pytest does)."""
    text = test_file.read_text(encoding="utf-8")
    return any(re.search(rf"\b{name}\b", text) for name in RAY_FIXTURES)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Whole files to workers, and every file that uses the in-process Ray to one worker: no
    module fixture (a real study, a refit, the benchmarks' smoke runs) is built twice, and a
    test session starts one Ray and one ``tiny_study``, not one per worker.

    xdist's ``--dist loadgroup`` would do this with marks, but on pytest 9.2 it silently stops
    grouping (pytest-xdist#1386), so the scope is chosen here, from the test's file."""
    from xdist.scheduler import LoadScopeScheduling

    class OneRayPerSession(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::")[0]
            return "session-ray" if uses_session_ray(Path(config.rootpath) / path) else path

    return OneRayPerSession(config, log)


def pytest_itemcollected(item: pytest.Item) -> None:
    """The scheduler above finds a file's use of Ray by name; a test that reaches Ray another way
    would start a second one in the other worker, so it fails here instead."""
    if "ray_session" in getattr(item, "fixturenames", ()) and not uses_session_ray(Path(item.path)):
        raise pytest.UsageError(
            f"{item.nodeid} uses the session's Ray without naming one of {RAY_FIXTURES} in its file; "
            "name it (tests/conftest.py: pytest_xdist_make_scheduler groups files by those names)")


# --- the msatune command, run as users run it ------------------------------------------------

def msatune_argv(*args: str | Path, workspace: Path | None = None) -> list[str]:
    """The command line of ``msatune [--workspace WS] ARGS`` with this test session's Python."""
    ws = ["--workspace", str(workspace)] if workspace is not None else []
    return [sys.executable, "-m", "msatune.studies.cli", *ws, *map(str, args)]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment a test runs msatune in: quiet TensorFlow, wide tables, never a Ray cluster
    the test machine happens to know (``RAY_ADDRESS``); ``extra`` on top."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "250", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


@contextlib.contextmanager
def ctrl_c_reaches_children() -> Iterator[None]:
    """Commands started inside take Ctrl-C (SIGINT) as a terminal's foreground command does, even
    when this test session itself ignores SIGINT: a background job of a script (``ci &``, ``nohup``)
    starts with it ignored, every child inherits that across exec and Python keeps it, so a
    ``msatune train`` would train on through the test's Ctrl-C and exit 0. A handler, unlike
    SIG_IGN, is reset to the default across exec."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_msatune(*args: str | Path, workspace: Path | None = None, timeout: float = 300,
                env: Mapping[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``msatune ARGS`` to its end; stdout and stderr captured as text."""
    return subprocess.run(msatune_argv(*args, workspace=workspace), capture_output=True, text=True,
                          timeout=timeout, env=dict(env) if env is not None else cli_env(), cwd=cwd or REPO)


def run_in(workspace: Path, *args: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """``msatune --workspace WORKSPACE ARGS`` (:func:`run_msatune` with the workspace first)."""
    return run_msatune(*args, workspace=workspace, **kwargs)  # type: ignore[arg-type]


#: What TensorFlow's C++ side prints on import whatever TF_CPP_MIN_LOG_LEVEL says (absl messages
#: before InitializeLog); only commands that build models import TensorFlow.
TF_NOISE = re.compile(r"^(WARNING: All log messages before absl|[IWE]\d{4} \d\d:\d\d:)")


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str, alone: bool = True,
                   tf_noise: bool = False) -> str:
    """The error contract: exit status 2, no traceback, exactly one ``msatune: error:`` line that
    holds every needle; ``alone``: nothing else on stderr and nothing on stdout (``tf_noise``: but
    TensorFlow's native start-up notes, for commands that build models). Returns the line."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if not (tf_noise and TF_NOISE.match(ln))]
    errors = [ln for ln in lines if ln.startswith("msatune: error: ")]
    assert len(errors) == 1, proc.stderr
    if alone:
        assert lines == errors, proc.stderr
        assert proc.stdout == "", proc.stdout
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """:func:`one_line_error` for commands that may print before they fail (a run's progress
    lines on stdout, a warning): one ``msatune: error:`` line among what they printed."""
    return one_line_error(proc, *needles, alone=False)


def kill_9(driver: subprocess.Popen, pid_file: Path) -> dict:
    """``kill -9`` a driver that started a local Ray, after checking its pid file names it; then
    wait up to 60 s for its watchdog to end that Ray's processes. Returns the pid file's record."""
    import json
    import signal
    import time

    from msatune.processes import alive
    from msatune.search.ray_orphans import session_processes

    ray_info = json.loads(Path(pid_file).read_text())
    assert ray_info["driver_pid"] == driver.pid
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    deadline = time.time() + 60
    while time.time() < deadline and (
            [p for p in ray_info["pids"] if alive(p)] or session_processes(ray_info["session_dir"])):
        time.sleep(0.5)
    return ray_info


def ray_left(ray_info: dict) -> list[int]:
    """What is still alive of the Ray processes a driver's pid file listed (its session's too)."""
    from msatune.processes import alive
    from msatune.search.ray_orphans import session_processes

    return [p for p in ray_info["pids"] if alive(p)] + session_processes(ray_info["session_dir"])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content hash (what "nothing changed" compares)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): file_digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


def tree_paths(root: Path) -> list[str]:
    """Every file and directory under ``root`` (what "nothing created" compares)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- datasets ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from msatune.augment.synth import synthesize

    out = tmp_path_factory.mktemp("data") / "tiny"
    synthesize(out, preset="tiny", seed=0)
    return out


@pytest.fixture(scope="session")
def mosi_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from msatune.augment.synth import synthesize

    out = tmp_path_factory.mktemp("data") / "mosi"
    synthesize(out, preset="mosi", seed=1)
    return out


def make_tiny_arrays(
    seed: int = 0, sizes: tuple[int, int, int] = (6, 4, 4), seq_len: int = 5,
    dims: tuple[int, int, int] = (4, 3, 2),
) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, np.ndarray]] = {}
    for split, n in zip(("train", "valid", "test"), sizes, strict=True):
        out[split] = {
            m: rng.standard_normal((n, seq_len, d)).astype(np.float32)
            for m, d in zip(("text", "audio", "video"), dims, strict=True)
        }
        out[split]["labels"] = rng.uniform(-3, 3, (n, 1)).astype(np.float32)
    return out


@pytest.fixture
def tiny_arrays() -> dict[str, dict[str, np.ndarray]]:
    return make_tiny_arrays()


RAW_FILES = {
    "text": "text_{split}_emb.h5",
    "audio": "audio_{split}.h5",
    "video": "video_{split}.h5",
    "labels": "y_{split}.h5",
    "oracle": "oracle_{split}.h5",
    "ids": "id_{split}.h5",
}


def _write_raw(root: Path, arrays: Mapping[str, Mapping[str, np.ndarray | None]]) -> Path:
    import h5py

    root.mkdir(parents=True, exist_ok=True)
    for split, kinds in arrays.items():
        for kind, arr in kinds.items():
            if arr is None:  # None: leave the file out
                continue
            with h5py.File(root / RAW_FILES[kind].format(split=split), "w") as f:
                if np.asarray(arr).dtype.kind in "OU":
                    f.create_dataset("d1", data=[str(v) for v in np.asarray(arr).ravel()],
                                     dtype=h5py.string_dtype("utf-8"))
                else:
                    f.create_dataset("d1", data=arr)
    return root


@pytest.fixture
def write_layout() -> Callable[[Path, Mapping[str, Mapping[str, np.ndarray | None]]], Path]:
    """``write_layout(dir, {split: {kind: array or None}})`` writes raw files, no validation."""
    return _write_raw


def make_mmsa(seed: int = 0, t_audio: int | None = None) -> dict:
    """A tiny dict in the structure of MMSA's aligned_50.pkl (plus the keys the import ignores)."""
    rng = np.random.default_rng(seed)
    data = {}
    for k, (split, n) in enumerate(zip(("train", "valid", "test"), (5, 3, 4), strict=True)):
        t = 6
        audio = rng.standard_normal((n, t_audio or t, 5)).astype(np.float32)
        audio[0, 0, 0] = -np.inf  # real MMSA audio holds -inf
        data[split] = {
            "raw_text": np.array([f"sentence {i}" for i in range(n)], dtype=object),
            "text": rng.standard_normal((n, t, 768)).astype(np.float32),
            "text_bert": rng.integers(0, 100, (n, 3, t)).astype(np.float32),
            "audio": audio,
            "vision": rng.standard_normal((n, t, 20)).astype(np.float32),
            "audio_lengths": [t] * n,
            "vision_lengths": [t] * n,
            "id": np.array([f"clip{k}$_${i}" for i in range(n)], dtype=object),
            "regression_labels": rng.uniform(-3, 3, n).astype(np.float32),
            "classification_labels": rng.integers(0, 3, n).astype(np.float32),
            "annotations": ["Positive"] * n,
        }
    return data


@pytest.fixture
def mmsa_dict() -> Callable[..., dict]:
    return make_mmsa


# --- studies: one Ray session per test session, one small real study shared by read-only tests ---

#: A search space of tiny models (seconds per trial on 2 cores); learning rate and dropout searched.
TINY_SPACE = """
replace = true
[learning_rate]
low = 1e-3
high = 1e-2
log = true
[dropout]
low = 0.0
high = 0.3
[model_dim]
value = 16
[ff_dim]
value = 32
[num_heads]
value = 2
[n_layers_mod]
value = 1
[n_layers_fuse]
value = 1
[batch_size]
value = 16
"""


@pytest.fixture(scope="session")
def tiny_space_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("space") / "tiny.toml"
    path.write_text(TINY_SPACE)
    return path


@pytest.fixture(scope="session")
def ray_session():
    """The test session's one local Ray instance: 2 CPUs and 4 declared (fake) GPUs."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from msatune.search.ray_session import WORKER_ENV, lean_local_ray_environment

    for key, value in WORKER_ENV.items():  # workers inherit the driver's environment
        os.environ.setdefault(key, value)
    lean_local_ray_environment()  # the tests' Ray starts as msatune's local one does
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, tiny_space_file: Path,
               ray_session) -> dict:
    """A finished real study (Ray Tune + Optuna TPE + ASHA, SQLite store) on the tiny dataset.

    6 trials x up to 4 epochs (ASHA grace 1, reduction 2), so it holds COMPLETE and PRUNED
    trials, the two presets, per-trial checkpoints with predictions. Read it, never write it.
    Keys: ``workspace`` (Path), ``storage_url``, ``name``, ``data`` (Path), ``summary``,
    ``sigint_before_and_after`` (the SIGINT handler before and after the run).
    """
    from msatune.search.search_settings import SearchSettings
    from msatune.studies.runs import launch
    from msatune.studies.store.connect import open_storage
    from msatune.studies.store.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("study-ws")).ensure()
    storage = open_storage(ws.storage_url)
    opts = SearchSettings(trials=6, max_epochs=4, grace_period=1, reduction_factor=2,
                         cpus_per_trial=1.0, seed=0)
    sigint = signal.getsignal(signal.SIGINT)
    summary = launch(ws, storage, "tiny", opts, data_dir=tiny_data, space_file=tiny_space_file)
    return {"workspace": ws.root, "storage_url": ws.storage_url, "name": "tiny", "data": tiny_data,
            "summary": summary, "sigint_before_and_after": (sigint, signal.getsignal(signal.SIGINT))}


@pytest.fixture
def study_copy(tiny_study: dict, tmp_path: Path) -> Path:
    """A private copy of the finished tiny study's workspace store (so tests may try to write)."""
    import shutil

    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(Path(tiny_study["workspace"]) / "studies.db", ws / "studies.db")
    return ws
