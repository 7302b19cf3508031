"""The package shape of STYLE.md: imports point one way (handler -> runtime -> actors), and each package's
``__all__`` is sorted and names exactly what the package exports (as httpx's ``test_exported_members``)."""

from __future__ import annotations

import ast
import importlib
import re
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
    package = importlib.import_module(name)
    public = sorted(member for member in vars(package) if not member.startswith("_"))
    assert package.__all__ == sorted(package.__all__)
    assert package.__all__ == public
    for member in package.__all__:
        assert getattr(package, member) is not None
