"""msatune's Keras classes, registered whenever Keras is loaded, so ``import msatune`` is enough
to load any msatune ``.keras`` file (a trial model or an exported ensemble).

Keras 3 finds custom classes only in its registry, filled when their modules are imported.
Importing them from ``msatune/__init__`` would import TensorFlow with every ``msatune`` command
(seconds, also for ``msatune --help``), so :func:`register_when_keras_loads` defers it: the
classes are registered right after Keras itself is imported, by whoever imports it first.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys
from typing import Any

log = logging.getLogger(__name__)

#: The modules that register msatune's Keras classes (package names ``msatune`` and
#: ``msatune_ensemble``).
KERAS_MODULES: tuple[str, ...] = (
    "msatune.models.networks",
    "msatune.models.seqlevel",
    "msatune.ensemble.layers",
)

#: What to tell a user whose ``.keras`` file names classes Keras cannot find.
IMPORT_HINT = "import msatune (before keras.saving.load_model)"


def register() -> None:
    """Import the modules that register msatune's Keras classes (imports Keras)."""
    for name in KERAS_MODULES:
        importlib.import_module(name)


class _RegisterAfterKeras(importlib.abc.MetaPathFinder):
    """A one-shot finder: lets the real finder load ``keras``, then calls :func:`register`."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "keras":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec("keras")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        load = loader.exec_module

        def exec_module(module: Any) -> None:
            load(module)
            try:
                register()
            except Exception as exc:  # noqa: BLE001 - never break the user's own Keras import
                log.warning("msatune's Keras classes are not registered: %s", exc)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def register_when_keras_loads() -> None:
    """Register now if Keras is loaded, else right after it is (once)."""
    if "keras" in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterAfterKeras) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterKeras())
