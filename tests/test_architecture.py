"""The architecture as tests (stdlib ``ast``; nothing is imported but the last test's modules).

The top-level folders are the layers (DESIGN §2): ``studies`` over ``search`` and ``ensemble``, over
``models`` and ``augment``, over the shared core (the ``msatune`` folder itself). These tests read
every module of the installed tree (the package map of ``pyproject.toml``) and assert:

* arrows point down only: ``models`` and ``augment`` never import each other, ``ensemble`` never
  imports ``search``, nothing below ``studies`` imports it, the core imports no layer;
* nothing outside ``studies/cli/`` imports the CLI;
* the module graph has no circle (imports inside functions count too);
* no module takes another module's private name (``from x import _y``, ``x._y``);
* every use of a private Optuna, Ray or Keras API (a private module, a private attribute that
  msatune does not define itself, ``getattr(obj, "_x")``, a method overriding a private one) sits
  in one of the boundary modules of ``msatune/thirdparty/``;
* no module is over :data:`MAX_LINES` lines.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 400
#: Layer of each top-level package (the core is ``msatune`` itself): a module imports its own
#: package or lower layers only, never a sibling of its own layer.
LAYERS = {"msatune": 0, "msatune.augment": 1, "msatune.models": 1, "msatune.search": 2,
          "msatune.ensemble": 2, "msatune.studies": 3}
CLI = "msatune.studies.cli"
BOUNDARY = "msatune.thirdparty"
#: Third-party packages whose private APIs only the boundary modules may use.
THIRD_PARTY = ("optuna", "optuna_dashboard", "ray", "keras", "tensorflow")
#: Implementation packages of a library (not its public API), though their names are not private.
INTERNAL_PACKAGES = (["keras", "src"], ["tensorflow", "python"])
#: Documented public functions of the standard library whose names start with an underscore.
STDLIB_PUBLIC = {("os", "_exit")}
#: What Python's ``abc`` machinery sets on every subclass of an abstract base class.
ABC_ATTRS = ("_abc_impl",)


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    imports: list[tuple[str, int]] = field(default_factory=list)  # (module, line)

    @property
    def top(self) -> str:
        """The layer package this module belongs to."""
        for pkg in sorted(LAYERS, key=len, reverse=True):
            if self.name == pkg or self.name.startswith(pkg + "."):
                return pkg
        raise AssertionError(self.name)

    @property
    def is_boundary(self) -> bool:
        return self.name == BOUNDARY or self.name.startswith(BOUNDARY + ".")


def package_dirs() -> dict[str, Path]:
    """Each listed package's folder, as setuptools finds it: its own ``package-dir`` entry, else
    its nearest listed parent's folder and the rest of its name."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = config.get("package-dir", {})

    def folder(pkg: str) -> Path:
        if pkg in mapped:
            return REPO / mapped[pkg]
        parent, _, leaf = pkg.rpartition(".")
        return folder(parent) / leaf if parent else REPO / pkg

    return {pkg: folder(pkg) for pkg in config["packages"]}


def _modules() -> dict[str, Module]:
    dirs = package_dirs()
    mods: dict[str, Module] = {}
    for pkg, directory in dirs.items():
        for path in sorted(directory.glob("*.py")):
            name = pkg if path.stem == "__init__" else f"{pkg}.{path.stem}"
            mods[name] = Module(name, path, ast.parse(path.read_text(), str(path)))
    for mod in mods.values():
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.Import):
                mod.imports += [(a.name, node.lineno) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level:  # relative: resolve against the package
                    pkg = mod.name if mod.path.stem == "__init__" else mod.name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{base}"
                for a in node.names:
                    full = f"{base}.{a.name}"
                    mod.imports.append((full if full in mods else base, node.lineno))
    return mods


MODULES = _modules()


def internal_imports(mod: Module) -> Iterator[tuple[str, int]]:
    """The msatune modules ``mod`` imports (the nearest known module of each import)."""
    for target, line in mod.imports:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != mod.name:
            yield target, line


def where(mod: Module, line: int) -> str:
    return f"{mod.path.relative_to(REPO)}:{line}"


def test_the_package_map_covers_every_package_folder() -> None:
    """Every folder with an ``__init__.py`` under a mapped folder is a listed package (a nested
    package missing from pyproject.toml would be left out of the wheel)."""
    dirs = package_dirs()
    listed = {d.resolve() for d in dirs.values()}
    for directory in dirs.values():
        for init in directory.rglob("__init__.py"):
            assert init.parent.resolve() in listed, f"{init.parent} is not in pyproject.toml's packages"


def test_arrows_point_down_only() -> None:
    wrong = []
    for mod in MODULES.values():
        for target, line in internal_imports(mod):
            other = MODULES[target].top
            if other == mod.top:
                continue
            if LAYERS[other] >= LAYERS[mod.top]:
                wrong.append(f"{where(mod, line)}: {mod.name} imports {target}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_nothing_outside_the_cli_imports_it() -> None:
    wrong = [f"{where(mod, line)}: {mod.name} imports {target}"
             for mod in MODULES.values() if not mod.name.startswith(CLI)
             for target, line in internal_imports(mod) if target == CLI or target.startswith(CLI + ".")]
    assert not wrong, "\n".join(sorted(wrong))


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = {name: sorted({t for t, _ in internal_imports(mod)}) for name, mod in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle() -> None:
    assert not cycles(), f"import circles: {cycles()}"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_private_name_is_taken_from_another_module() -> None:
    wrong = []
    for mod in MODULES.values():
        aliases: dict[str, str] = {}
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("msatune"):
                for a in node.names:
                    if _private(a.name):
                        wrong.append(f"{where(mod, node.lineno)}: from {node.module} import {a.name}")
                    if f"{node.module}.{a.name}" in MODULES:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("msatune") and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(mod.tree):
            if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases):
                wrong.append(f"{where(mod, node.lineno)}: {aliases[node.value.id]}.{node.attr}")
    assert not wrong, "private names used across modules:\n" + "\n".join(wrong)


def own_names() -> set[str]:
    """Every name msatune defines: functions, classes, class-level and module-level names, and
    attributes it assigns on ``self``/``cls`` (an augmented assignment defines nothing)."""
    names: set[str] = set()
    for mod in MODULES.values():
        for node in ast.walk(mod.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for sub in ast.walk(target):
                        if isinstance(sub, ast.Name):
                            names.add(sub.id)
                        elif (isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name)
                              and sub.value.id in ("self", "cls")):
                            names.add(sub.attr)
            elif isinstance(node, ast.alias) and node.asname:
                names.add(node.asname)
    return names


def private_third_party_uses(mod: Module, own: set[str]) -> Iterator[str]:
    for node in ast.walk(mod.tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [f"{node.module}.{a.name}" for a in node.names] if node.module and not node.level else [])
            for name in names:
                parts = name.split(".")
                if parts[0] in THIRD_PARTY and (any(_private(p) for p in parts) or parts[:2] in INTERNAL_PACKAGES):
                    yield f"{where(mod, node.lineno)}: imports {name}"
        elif (isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own
              and not (isinstance(node.value, ast.Name) and (node.value.id, node.attr) in STDLIB_PUBLIC)):
            yield f"{where(mod, node.lineno)}: .{node.attr}"
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr", "delattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value)):
            yield f"{where(mod, node.lineno)}: {node.func.id}(..., {node.args[1].value!r})"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            parts = node.value.split(".")
            if len(parts) > 1 and parts[0] in THIRD_PARTY and any(_private(p) for p in parts):
                yield f"{where(mod, node.lineno)}: names {node.value!r}"


def test_private_third_party_apis_only_in_the_boundary_modules() -> None:
    own = own_names()
    wrong = [use for mod in MODULES.values() if not mod.is_boundary for use in private_third_party_uses(mod, own)]
    assert not wrong, ("private Optuna/Ray/Keras APIs outside msatune/thirdparty/ (move each into its "
                       "boundary module):\n" + "\n".join(wrong))


def test_no_module_is_over_the_line_limit() -> None:
    long = {str(m.path.relative_to(REPO)): n for m in MODULES.values()
            if (n := len(m.path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.slow
def test_no_class_overrides_a_private_third_party_method_outside_the_boundary() -> None:
    """A class of msatune that defines a private name its third-party base classes also have
    (e.g. a Keras optimizer's ``_backend_apply_gradients``) reaches into their internals."""
    wrong = set()
    for name in MODULES:
        if name.endswith(".__main__"):
            continue
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != name:
                continue
            foreign = [b for b in cls.__mro__[1:] if b.__module__.split(".")[0] in THIRD_PARTY]
            # every msatune class above it that is not a boundary's (a mixin counts too)
            ours = [c for c in cls.__mro__ if c.__module__.startswith("msatune")
                    and not c.__module__.startswith(BOUNDARY)]
            for own in ours:
                for attr in vars(own):
                    if _private(attr) and attr not in ABC_ATTRS and any(attr in vars(b) for b in foreign):
                        base = next(b for b in foreign if attr in vars(b))
                        wrong.add(f"{own.__module__}.{own.__qualname__}.{attr} overrides {base}")
    assert not wrong, "\n".join(sorted(wrong))
