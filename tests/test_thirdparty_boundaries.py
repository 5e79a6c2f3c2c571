"""Each third-party boundary module still reaches what it reaches (msatune/thirdparty/).

An upgrade of Optuna, Ray, Keras or TensorFlow that moves one of the private names msatune uses
fails here, naming the name and the version the boundary was last checked against, instead of
failing somewhere in a study.
"""

from __future__ import annotations

import importlib

import pytest

BOUNDARIES = {
    "msatune.thirdparty.optuna_internals": ("optuna",),
    "msatune.thirdparty.ray_internals": ("ray",),
    "msatune.thirdparty.keras_internals": ("keras", "tensorflow"),
}


@pytest.mark.parametrize("module", sorted(BOUNDARIES))
def test_every_private_access_still_works(module: str) -> None:
    boundary = importlib.import_module(module)
    installed = {name: importlib.import_module(name).__version__ for name in BOUNDARIES[module]}
    problems = boundary.check()
    assert not problems, (f"{module} (checked against {boundary.CHECKED_AGAINST}, installed {installed}): "
                          + "; ".join(problems))


def test_importing_msatune_and_the_boundaries_imports_no_library() -> None:
    """The boundaries import their library only when called: ``import msatune`` stays instant."""
    import subprocess
    import sys

    code = ("import sys, msatune, msatune.thirdparty.optuna_internals, msatune.thirdparty.ray_internals, "
            "msatune.thirdparty.keras_internals; "
            "print(sorted(m for m in ('optuna', 'ray', 'keras', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
