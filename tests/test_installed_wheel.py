"""msatune as users install it: a regular wheel, used from inside a project with its own packages.

The users' own project (msa-tf2) has top-level ``models/`` and ``utils/`` packages, and Ray's
workers put the launch directory first on their path. So the wheel must install nothing but
``msatune``, and everything (CLI, Ray trial workers, ``.keras`` loading) must import msatune's
own parts, never the user's. One wheel is built per test session; it goes into a fresh venv that
borrows the test venv's dependencies (a ``.pth`` line: their ``.pth`` files, among them the
editable install's finder, are not processed there) and has no msatune but the wheel's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_SPACE
from tests.test_architecture import package_dirs

REPO = Path(__file__).resolve().parents[1]
#: Every package pyproject.toml lists, nested ones (msatune.studies.cli, ...) included.
PACKAGES = sorted(package_dirs())
USER_PACKAGES = ("models", "search", "utils")
#: The suite's tiny models, learning faster: on the tiny set, 4 epochs put trials ahead of the
#: constant predictor, so there is something to ensemble.
FAST_SPACE = (TINY_SPACE.replace("low = 1e-3", "low = 5e-3").replace("high = 1e-2", "high = 2e-2")
              .replace("[batch_size]\nvalue = 16", "[batch_size]\nvalue = 8"))


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": "", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def user_project(project: Path) -> Path:
    """A project directory whose own ``models/``, ``search/`` and ``utils/`` packages refuse to be
    imported (a top-level install of msatune's parts would be shadowed by them)."""
    for pkg in USER_PACKAGES:
        (project / pkg).mkdir(parents=True)
        (project / pkg / "__init__.py").write_text(f"raise ImportError('the user project\\'s own {pkg} was imported')\n")
    return project


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with msatune installed from a regular (non-editable) wheel of this checkout."""
    import sysconfig

    root = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(REPO)], cwd=root)
    wheels = list((root / "dist").glob("msatune-*.whl"))
    assert len(wheels) == 1, wheels
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=root)
    python = venv / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
    Path(site.stdout.strip(), "test-venv-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheels[0])], cwd=root)
    return venv


@pytest.mark.slow
def test_wheel_installs_only_msatune(wheel_venv: Path, tmp_path: Path) -> None:
    python = str(wheel_venv / "bin" / "python")
    files = _run([python, "-m", "pip", "show", "-f", "msatune"], cwd=tmp_path).stdout
    listed = [ln.strip() for ln in files.split("Files:", 1)[1].splitlines() if ln.strip()]
    modules = [f for f in listed if f.endswith(".py")]
    assert modules and all(f.startswith("msatune/") for f in modules), modules
    for package in PACKAGES:
        assert f"{package.replace('.', '/')}/__init__.py" in listed, package
    modules_in_repo = {f"{pkg.replace('.', '/')}/{py.name}" for pkg, folder in package_dirs().items()
                       for py in folder.glob("*.py")}
    assert modules_in_repo <= set(listed), sorted(modules_in_repo - set(listed))
    for name in ("models", "search", "studies", "augment", "ensemble"):
        proc = subprocess.run([python, "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, name


@pytest.mark.slow
def test_a_study_beside_the_users_own_packages(wheel_venv: Path, tmp_path: Path) -> None:
    """launch (Ray workers included), ensemble, predict and a bare .keras load, run from a
    directory whose own models/, search/ and utils/ packages would shadow a top-level install."""
    project = user_project(tmp_path / "user-project")
    msatune = str(wheel_venv / "bin" / "msatune")
    python = str(wheel_venv / "bin" / "python")
    ws = ["--workspace", str(project / "runs")]
    (project / "space.toml").write_text(FAST_SPACE)
    _run([msatune, "data", "synth", "data", "--preset", "tiny"], cwd=project)
    _run([msatune, *ws, "launch", "t", "--data", "data", "--trials", "3", "--max-epochs", "4",
          "--grace-period", "4", "--space", "space.toml", "--json"], cwd=project)
    _run([msatune, *ws, "ensemble", "t", "--json"], cwd=project)
    ens = project / "runs" / "studies" / "t" / "ensembles" / "greedy"
    _run([msatune, *ws, "predict", str(ens), "--data", "data", "--out", "p.csv"], cwd=project)
    lines = (project / "p.csv").read_text().splitlines()
    assert lines[0].startswith("index") and len(lines) > 1
    loaded = _run([python, "-c", "import sys, msatune, keras; m = keras.saving.load_model(sys.argv[1]); "
                   "print(type(m).__name__, len(m.inputs))", str(ens / "ensemble.keras")], cwd=project)
    assert loaded.stdout.split()[-2:] == ["Functional", "3"], loaded.stdout


@pytest.mark.slow
def test_ray_workers_import_every_package_from_the_wheel(wheel_venv: Path, tmp_path: Path) -> None:
    """A Ray worker started from a project with its own ``models/`` imports every msatune package,
    nested ones included, from the installed wheel."""
    project = user_project(tmp_path / "user-project")
    script = (
        "import importlib, json, sys, ray\n"
        "ray.init(address='local', num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
        "@ray.remote\n"
        "def where(names):\n"
        "    return {n: importlib.import_module(n).__file__ for n in names}\n"
        "print(json.dumps(ray.get(where.remote(sys.argv[1:]))))\n"
        "ray.shutdown()\n"
    )
    out = _run([str(wheel_venv / "bin" / "python"), "-c", script, *PACKAGES], cwd=project, timeout=300)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted(found) == PACKAGES
    site = _run([str(wheel_venv / "bin" / "python"), "-c",
                 "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=project).stdout.strip()
    assert all(path.startswith(site) for path in found.values()), found
