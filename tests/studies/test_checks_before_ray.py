"""Bad input fails in one line, exit 2, before Ray starts, and creates or changes nothing.

Every case runs ``msatune`` in a subprocess with ``RAY_TMPDIR`` pointed at an empty directory:
a Ray start would create its session directory there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env, one_error_line, run_msatune
from tests.conftest import tree_digest as tree


def run(ws: Path, *args: str, ray_tmp: Path | None = None, extra_env: dict | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    """``msatune --workspace WS ARGS``, with Ray's temporary directory at ``ray_tmp`` (a Ray that
    started would leave its session there)."""
    env = cli_env(**(extra_env or {}), **({"RAY_TMPDIR": str(ray_tmp)} if ray_tmp is not None else {}))
    return run_msatune(*args, workspace=ws, timeout=timeout, env=env)


def test_launch_with_an_existing_name_fails_before_ray(study_copy: Path, tiny_data: Path, tmp_path: Path) -> None:
    ray_tmp = tmp_path / "raytmp"
    ray_tmp.mkdir()
    before = tree(study_copy)
    one_error_line(run(study_copy, "launch", "tiny", "--data", str(tiny_data), ray_tmp=ray_tmp),
                   "already exists", "msatune resume tiny")
    assert list(ray_tmp.iterdir()) == []  # no Ray session was started
    assert tree(study_copy) == before


def test_resume_of_a_used_budget_answers_without_ray(study_copy: Path, tmp_path: Path) -> None:
    ray_tmp = tmp_path / "raytmp"
    ray_tmp.mkdir()
    before = tree(study_copy)
    proc = run(study_copy, "resume", "tiny", "--json", ray_tmp=ray_tmp)
    assert proc.returncode == 0, proc.stderr
    assert "used its budget of 6 trials" in json.loads(proc.stdout)["message"]
    assert list(ray_tmp.iterdir()) == [] and tree(study_copy) == before


BAD_SPACES = [
    ("[dropout]\nlow = nan\nhigh = 0.3\n", "low must be a finite number"),
    ("[dropout]\nlow = 0.1\nhigh = 0.3\nstep = -0.1\n", "step must be > 0"),
    ("[n_layers_mod]\nlow = 1\nhigh = 3\nlog = true\nstep = 1\n", "step and log cannot be combined"),
    ("[n_layers_mod]\nlow = 1\nhigh = inf\n", "high must be a finite number"),
    ("[dropout]\nlow = 0.1\nhigh = 0.3\nstep = \"x\"\n", "step must be a number"),
    ("[dropout]\nlow = 1.5\nhigh = 3.0\n", "allowed values are numbers in [0, 1)"),
    ("[batch_size]\nchoices = [16, -4]\n", "batch_size"),
    ("[aug_noise]\nvalue = -1.0\n", "aug_noise"),
]


@pytest.mark.parametrize("text, needle", BAD_SPACES)
def test_bad_space_files_are_refused_before_anything_is_written(tmp_path: Path, tiny_data: Path,
                                                                text: str, needle: str) -> None:
    space = tmp_path / "space.toml"
    space.write_text(text)
    ws = tmp_path / "ws"
    one_error_line(run(ws, "launch", "s", "--data", str(tiny_data), "--space", str(space)), str(space), needle)
    assert not ws.exists()


def test_a_launch_refused_for_its_input_answers_without_importing_tensorflow_or_ray(
        tmp_path: Path, tiny_data: Path) -> None:
    """A typo in a space file or an option is answered at once (a third of a second here, where
    importing TensorFlow alone takes 2.4 s): the checks read settings, not models."""
    space = tmp_path / "space.toml"
    space.write_text(BAD_SPACES[0][0])
    ws = tmp_path / "ws"
    code = ("import sys\nfrom msatune.studies.cli import main\n"
            f"for args in ({['launch', 's', '--data', str(tiny_data), '--space', str(space)]!r},\n"
            f"             {['launch', 's', '--data', str(tiny_data), '--family', 'nosuch']!r},\n"
            f"             {['launch', 's', '--data', str(tiny_data), '--trials', '0']!r}):\n"
            f"    assert main(['--workspace', {str(ws)!r}, *args]) == 2, args\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'ray') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=cli_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("msatune: error: ") == 3, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout
    assert not ws.exists()


def test_a_non_utf8_space_file_is_one_line(tmp_path: Path, tiny_data: Path) -> None:
    space = tmp_path / "space.toml"
    space.write_bytes(b"[dropout]\nlow = 0.1 # \xff\xfe\nhigh = 0.2\n")
    ws = tmp_path / "ws"
    one_error_line(run(ws, "launch", "s", "--data", str(tiny_data), "--space", str(space)), "not UTF-8")
    assert not ws.exists()


@pytest.mark.parametrize("args, needle", [
    (["--seed", "-1"], "--seed"),
    (["--address", "not_a_host::99"], "is not a Ray address"),
    (["--data", "MISSING"], "no such directory"),
    (["--storage", "sqlite:////no/such/dir/s.db"], "does not exist"),
    ([".bad name"], "is not usable"),
])
def test_bad_launch_options_create_nothing(tmp_path: Path, tiny_data: Path, args: list[str], needle: str) -> None:
    ws = tmp_path / "ws"
    name = [] if args[0].startswith(".") else ["s"]
    data = [] if "--data" in args else ["--data", str(tiny_data)]
    one_error_line(run(ws, "launch", *name, *data, *args), needle)
    assert not ws.exists()


def test_resume_with_a_bad_address_changes_nothing(study_copy: Path) -> None:
    pid_file = study_copy / "studies" / "tiny" / "ray" / "ray-processes.json"
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(json.dumps({"driver_pid": 999999999, "session_dir": None, "pids": []}))
    before = tree(study_copy)
    one_error_line(run(study_copy, "resume", "tiny", "--trials", "2", "--address", "not_a_host::99"),
                   "is not a Ray address")
    assert tree(study_copy) == before  # budget not rewritten, pid file still there


def test_an_unreachable_cluster_fails_within_the_stated_timeout(tmp_path: Path, tiny_data: Path) -> None:
    ws = tmp_path / "ws"
    proc = run(ws, "launch", "s", "--data", str(tiny_data), "--address", "127.0.0.1:1",
               extra_env={"MSATUNE_CONNECT_TIMEOUT_S": "2"})
    one_error_line(proc, "cannot reach the Ray cluster at 127.0.0.1:1 within 2 s", "MSATUNE_CONNECT_TIMEOUT_S")
    assert not ws.exists()


def test_more_gpus_than_the_machine_has_fail_in_one_line(tmp_path: Path, tiny_data: Path) -> None:
    """Ray starts (it is what knows the GPUs), the request is refused, nothing is written."""
    ws = tmp_path / "ws"
    proc = run(ws, "launch", "s", "--data", str(tiny_data), "--gpus-per-trial", "4", "--cpus-per-trial", "1",
               extra_env={"CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    one_error_line(proc, "--gpus-per-trial 4", "GPU")
    assert not ws.exists()


def test_labels_out_of_range_say_clip_labels_and_launch_has_it(tmp_path: Path, tiny_data: Path) -> None:
    from msatune.studies.cli import main

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    import h5py

    with h5py.File(data / "y_valid.h5", "r+") as f:
        f["d1"][0] = 3.5
    ws = tmp_path / "ws"
    one_error_line(run(ws, "launch", "s", "--data", str(data)), "--clip-labels")
    assert not ws.exists()
    assert main(["launch", "--help"]) == 0  # the option the message names exists


def test_read_only_commands_on_a_mistyped_workspace_create_nothing(tmp_path: Path) -> None:
    ws = tmp_path / "typo"
    one_error_line(run(ws, "show", "x"), "no study store at", str(ws / "studies.db"))
    one_error_line(run(ws, "report", "x"), "no study store at")
    one_error_line(run(ws, "export", "x", "--out", str(tmp_path / "x.csv")), "no study store at")
    one_error_line(run(ws, "ensemble", "x"), "no study store at")
    one_error_line(run(ws, "studies", "--storage", f"sqlite:///{tmp_path / 'TYPO.db'}"), "no study store at")
    proc = run(ws, "studies")
    assert proc.returncode == 0 and "no studies yet" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_train_with_a_bad_value_leaves_no_run_directory(tmp_path: Path, tiny_data: Path) -> None:
    ws = tmp_path / "ws"
    one_error_line(run(ws, "train", "--data", str(tiny_data), "--set", "dropout=2"), "dropout")
    assert not ws.exists()


def test_analyze_refuses_a_duplicated_column_and_infinite_mae(tmp_path: Path) -> None:
    dup = tmp_path / "dup.csv"
    dup.write_text("epoch,val_mae,val_mae\n0,1.5,1.5\n1,1.4,1.4\n")
    one_error_line(run(tmp_path / "ws", "analyze", str(dup)), "val_mae more than once")
    inf = tmp_path / "inf.csv"
    inf.write_text("epoch,mae,val_mae\n0,1.2,1.5\n1,1.1,-inf\n")
    one_error_line(run(tmp_path / "ws", "analyze", str(inf), "--json"), "line 3", "not a finite MAE")
    assert not (tmp_path / "ws").exists()


def test_data_info_counts_float64_overflow_without_a_warning(tmp_path: Path, write_layout) -> None:
    import numpy as np

    from tests.conftest import make_tiny_arrays

    arrays = make_tiny_arrays()
    arrays["train"]["audio"] = arrays["train"]["audio"].astype(np.float64)
    arrays["train"]["audio"][0, 0, :2] = 1e300
    data = write_layout(tmp_path / "d", arrays)
    proc = run(tmp_path / "ws", "data", "info", str(data), "--json")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert json.loads(proc.stdout)["splits"]["train"]["nan_count"] == 2


def test_data_synth_makes_a_directory_with_the_umask_mode(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    proc = subprocess.run([sys.executable, "-c", "import os, sys; os.umask(0o022); "
                           "from msatune.studies.cli import main; sys.exit(main(sys.argv[1:]))",
                           "data", "synth", str(out), "--preset", "tiny"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_mode & 0o777 == 0o755
