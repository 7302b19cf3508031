"""The package shape of STYLE.md: imports point one way (handler -> runtime -> actors), and each package's
``__all__`` is sorted and names exactly what the package exports (as httpx's ``test_exported_members``)."""

from __future__ import annotations

import ast
import importlib
import re
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"actors": 0, "runtime": 1, "handler": 2}  # a package may import only lower or equal layers

# ``Workflow.run()`` reaches the handler through one documented late binding: a string naming the entry
# point, imported with importlib. It is the only module of a lower layer allowed to name a higher one.
DYNAMIC_IMPORT_ALLOWED = {"actors/_launch.py"}


def modules() -> list[Path]:
    return sorted(p for pkg in LAYERS for p in (ROOT / pkg).rglob("*.py"))


def imported_packages(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in the module, wherever it sits (functions,
    ``TYPE_CHECKING`` blocks included); relative imports resolve to the module's own package."""
    tree = ast.parse(source if source is not None else path.read_text(), filename=str(path))
    own = path.relative_to(ROOT).parts[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            top = own if node.level else (node.module or "").split(".")[0]
            found.append((node.lineno, top))
    return found


def upward_imports(path: Path, source: str | None = None) -> list[str]:
    own = path.relative_to(ROOT).parts[0]
    return [f"{path.relative_to(ROOT)}:{line} imports {pkg}"
            for line, pkg in imported_packages(path, source)
            if pkg in LAYERS and LAYERS[pkg] > LAYERS[own]]


def upward_module_strings(path: Path) -> list[str]:
    """String constants naming a module of a higher layer ("handler._launch:start_run"): the targets of a
    dynamic import that the static check cannot see."""
    own = LAYERS[path.relative_to(ROOT).parts[0]]
    uppers = [pkg for pkg, layer in LAYERS.items() if layer > own]
    # A dotted or colon path only: a bare "runtime" is as likely an attribute name as a module.
    pattern = re.compile(rf"^({'|'.join(uppers)})[.:]\w") if uppers else None
    return [f"{path.relative_to(ROOT)}:{node.lineno} names {node.value!r}"
            for node in ast.walk(ast.parse(path.read_text()))
            if pattern and isinstance(node, ast.Constant) and isinstance(node.value, str)
            and pattern.match(node.value)]


def test_every_package_has_modules_to_check() -> None:
    for pkg in LAYERS:
        assert (ROOT / pkg / "__init__.py").exists()
    assert len(modules()) > 10


def test_no_import_points_up_from_actors_to_runtime_or_handler_or_from_runtime_to_handler() -> None:
    violations = [v for path in modules() for v in upward_imports(path)]
    assert violations == []


def test_the_checker_catches_upward_imports_in_every_form() -> None:
    fake = ROOT / "actors" / "_fake.py"
    source = ("import runtime\nfrom handler import WorkflowHandler\nfrom runtime._pool import Pool\n"
              "def f():\n    import handler._handler\n"
              "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from runtime import Engine\n"
              "from . import _events\nimport actors\n")
    assert [v.split(":")[1] for v in upward_imports(fake, source)] == [
        "1 imports runtime", "2 imports handler", "3 imports runtime", "5 imports handler",
        "8 imports runtime"]
    relative = ROOT / "runtime" / "_fake.py"
    assert upward_imports(relative, "from ._supervisor import Supervisor\nfrom actors import step\n") == []


def test_the_only_dynamic_arrow_up_is_the_documented_late_binding() -> None:
    found = [d for path in modules() for d in upward_module_strings(path)]
    assert {d.split(":")[0] for d in found} == DYNAMIC_IMPORT_ALLOWED, found


@pytest.mark.parametrize("name", list(LAYERS))
def test_all_is_sorted_and_names_exactly_the_public_attributes(name: str) -> None:
    package = importlib.import_module(name)  # dir(): a package may resolve its names lazily (PEP 562)
    public = sorted(member for member in dir(package)
                    if not member.startswith("_") and not isinstance(getattr(package, member), types.ModuleType))
    assert package.__all__ == sorted(package.__all__)
    assert package.__all__ == public
    for member in package.__all__:
        assert getattr(package, member) is not None


# --- contracts between packages: public modules and names only ---------------------------------------------
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def cross_package_private_imports(path: Path, source: str | None = None) -> list[str]:
    """Imports of another package's private module (a ``_`` segment) or private name."""
    tree = ast.parse(source if source is not None else path.read_text(), filename=str(path))
    own = path.relative_to(ROOT).parts[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            targets = [(_absolute(path, node), alias.name) for alias in node.names]
        else:
            continue
        for module, name in targets:
            if module.split(".")[0] not in LAYERS or module.split(".")[0] == own:
                continue
            if any(part.startswith("_") for part in module.split(".")) or (name or "x").startswith("_"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {module}:{name}")
    return found


def test_no_package_imports_a_private_module_or_name_of_another() -> None:
    violations = [v for path in modules() for v in cross_package_private_imports(path)]
    assert violations == []


def test_the_private_import_checker_sees_modules_and_names() -> None:
    fake = ROOT / "runtime" / "_fake.py"
    source = "from actors._context import MISSING\nfrom actors.host import _secret\nimport handler._x\n" \
             "from actors.host import Packed\nfrom . import _own\n"
    assert [v.split(":", 1)[1] for v in cross_package_private_imports(fake, source)] == [
        "1 imports actors._context:MISSING", "2 imports actors.host:_secret", "3 imports handler._x:None"]


def _private_names_defined(pkg: str) -> set[str]:
    names: set[str] = set()
    for path in (ROOT / pkg).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    node.value.id in ("self", "cls") and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def private_attribute_reaches(path: Path, foreign: set[str], own: set[str]) -> list[str]:
    """``obj._name`` where ``_name`` is private to a lower package (and not a name of this package's own)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [f"{path.relative_to(ROOT)}:{node.lineno} reaches .{node.attr}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in foreign and node.attr not in own]


def test_no_package_reaches_into_private_attributes_of_a_lower_one() -> None:
    private = {pkg: _private_names_defined(pkg) for pkg in LAYERS}
    violations = []
    for path in modules():
        own = path.relative_to(ROOT).parts[0]
        lower = set().union(*(private[p] for p, layer in LAYERS.items() if layer < LAYERS[own]))
        violations += private_attribute_reaches(path, lower, private[own])
    assert violations == []


def module_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports when it is imported (module level, outside
    ``TYPE_CHECKING``; imports inside functions run later and cannot make a circle at import time)."""
    graph: dict[str, set[str]] = {}
    names = {_module_name(p) for p in modules()}
    for path in modules():
        tree = ast.parse(path.read_text())
        deps: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                  ast.ClassDef)) else []:
                if isinstance(sub, ast.Import):
                    deps.update(alias.name for alias in sub.names)
                elif isinstance(sub, ast.ImportFrom):
                    base = _absolute(path, sub)
                    deps.add(base)
                    deps.update(f"{base}.{alias.name}" for alias in sub.names)
        graph[_module_name(path)] = {d for d in deps if d in names and d != _module_name(path)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` re-exports its modules; a module importing a sibling through the
    package name is not a circle of ideas. Keep only module -> module arrows."""
    inits = {p for p in graph if (ROOT / p.replace(".", "/") / "__init__.py").exists()}
    return {m: {d for d in deps if d not in inits} for m, deps in graph.items() if m not in inits}


def test_there_is_no_import_circle_between_modules() -> None:
    assert find_cycle(_without_package_inits(module_graph())) == []


def test_the_circle_finder_finds_circles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
