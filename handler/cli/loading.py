"""Loading the workflow a command names, and everything that can be checked before a process starts.

    FILE.py[:Class]        a file (its directory goes on ``sys.path``, for the file's sibling imports)
    package.module:Class   an importable module

Workers unpickle the file's classes by module name when they can import it: the file's stem, when the stem
is free and finds the file (workers inherit ``sys.path``). Otherwise (``json.py``, ``my-flow.py``, a stem
already imported) the file is imported under a private name and registered with
``cloudpickle.register_pickle_by_value``: its classes and functions then travel by value (the engine's codec
honours that registry for payloads too, and ships event classes once, by key).

Shadowing: a user's ``handler.py`` (or ``actors.py``, ``runtime.py``, or a package of those names) in a
directory on ``sys.path`` ahead of procflow would be what the workers import instead of procflow; the loader
refuses with one line naming the file.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import cloudpickle

from actors import StartEvent, Workflow, WorkflowError, WorkflowValidationError
from actors.errors import WorkflowConfigurationError
from actors.host import WorkflowSpec, spec_of, validate, validated_spec

from ..launch import start_event_for

OWN_PACKAGES = ("actors", "runtime", "handler")


class UsageError(Exception):
    """Something the user gave is wrong; printed as one line, exit code 2."""


# --- --kw --------------------------------------------------------------------------------------------
def parse_kw(items: list[str]) -> dict[str, Any]:
    """``["n=3", "name=x"]`` -> ``{"n": 3, "name": "x"}``: JSON when the value parses, else the string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"bad --kw {item!r}: expected KEY=VALUE with KEY a Python identifier")
        if key in out:
            raise UsageError(f"bad --kw: {key!r} is given twice")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def one_line_error(exc: BaseException) -> str:
    """A pydantic ``ValidationError`` as ``field: message (got 'x'); ...``; anything else on one line."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            parts = []
            for err in errors():
                loc = ".".join(str(p) for p in err.get("loc", ())) or "value"
                got = f" (got {err['input']!r})" if "input" in err and err.get("type") != "missing" else ""
                parts.append(f"{loc}: {err.get('msg', '')}{got}")
            if parts:
                return "; ".join(parts)
        except Exception:  # noqa: BLE001 -- fall back to the plain text below
            pass
    return " ".join(str(exc).split())


# --- shadowing ---------------------------------------------------------------------------------------
def shadowing(path_entries: list[str]) -> str | None:
    """One line naming the first file on ``path_entries`` that a fresh interpreter (a worker) would import
    instead of procflow's own ``actors``/``runtime``/``handler``; None when there is none."""
    for name in OWN_PACKAGES:
        ours = importlib.import_module(name)
        our_dir = Path(ours.__file__ or "").resolve().parent
        try:
            found = importlib.machinery.PathFinder.find_spec(name, path_entries)
        except (ImportError, ValueError):
            continue
        origin = found.origin if found is not None else None
        if origin is None or origin in ("built-in", "frozen"):
            continue  # not found on that path at all, or only a namespace portion: procflow's wins
        theirs = Path(origin).resolve()
        if theirs.parent != our_dir:
            shown = theirs.parent if theirs.name == "__init__.py" else theirs
            return (f"{shown} shadows procflow's own '{name}' package (it comes first on the import path, "
                    f"so the workers would import it instead); rename it")
    return None


# --- loading the workflow class ----------------------------------------------------------------------
def load_workflow_class(target: str) -> tuple[type[Workflow], str]:
    """The Workflow class named by ``FILE.py[:Class]`` or ``module:Class``, with a short description of
    where it came from; ``UsageError`` when it cannot be had."""
    where, _, class_name = target.rpartition(":") if ":" in target else (target, "", "")
    path = Path(where)
    if path.is_file():
        module = _load_file(path)
    elif where.endswith(".py") or "/" in where or "\\" in where:
        raise UsageError(f"no such file: {where}")
    elif where.replace(".", "_").isidentifier():
        module = _import(where)
    else:
        raise UsageError(f"no such file or module: {where}")
    if not class_name:
        return _only_workflow(module, where), where
    obj: Any = module
    for part in class_name.split("."):
        if not hasattr(obj, part):
            found = ", ".join(c.__qualname__ for c in _workflows_in(module)) or "none"
            raise UsageError(f"{where} has no class {class_name!r} (Workflow classes there: {found})")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Workflow)):
        what = (f"a class based on {', '.join(b.__name__ for b in obj.__bases__)}"
                if isinstance(obj, type) else f"a {type(obj).__name__}")
        raise UsageError(f"{where}:{class_name} is not a Workflow subclass (it is {what})")
    return obj, where


def _import(name: str) -> ModuleType:
    """Import ``name`` as ``python -m`` would: from the current directory first."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    problem = shadowing(sys.path)
    if problem:
        raise UsageError(problem)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise UsageError(f"no such file or module: {name}") from exc
        raise UsageError(f"cannot import {name}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise UsageError(f"cannot import {name}: {type(exc).__name__}: {exc}") from exc


def _load_file(path: Path) -> ModuleType:
    """Import ``path`` with its directory first on ``sys.path``, under a name the workers can import."""
    path = path.resolve()
    entries = [str(path.parent)] + [p for p in sys.path if p != str(path.parent)]
    problem = shadowing(entries)
    if problem:
        raise UsageError(problem)
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    name = path.stem
    by_value = "." in name or name in sys.modules or not _finds(name, path)
    if by_value:
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
        name = f"_procflow_file_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[name]
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise UsageError(f"cannot import {path}: {type(exc).__name__}: {one_line_error(exc)}") from exc
    if by_value:  # no worker can import it under this name: its definitions travel by value
        cloudpickle.register_pickle_by_value(module)
    return module


def _finds(name: str, path: Path) -> bool:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None and Path(spec.origin).resolve() == path


def _workflows_in(module: ModuleType) -> list[type[Workflow]]:
    return [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, Workflow)
            and v is not Workflow and v.__module__ == module.__name__]


def _only_workflow(module: ModuleType, where: str) -> type[Workflow]:
    found = _workflows_in(module)
    if len(found) != 1:
        names = ", ".join(c.__qualname__ for c in found) or "none"
        raise UsageError(f"{where} defines {len(found)} Workflow classes ({names}); "
                         f"name one as {where}:Class")
    return found[0]


# --- checks before the run ---------------------------------------------------------------------------
# The graph is wrong: LlamaIndex raises the first at validate()/run(), the second at construction.
INVALID = (WorkflowValidationError, WorkflowConfigurationError)


def invalid(cls: type[Workflow], exc: WorkflowError) -> UsageError:
    text = str(exc)
    prefix = "" if text.startswith(f"workflow {cls.__qualname__}") else f"workflow {cls.__qualname__}: "
    return UsageError(f"invalid {prefix}{one_line_error(exc)}")


def checked_spec(cls: type[Workflow]) -> WorkflowSpec:
    """The class's validated graph (``UsageError`` when it is invalid), without instantiating it."""
    try:
        spec = spec_of(cls)
        validate(spec)
    except INVALID as exc:
        raise invalid(cls, exc) from exc
    return spec


def make_workflow(cls: type[Workflow], timeout: float | None | Literal[False], kw: dict[str, Any]
                  ) -> tuple[Workflow, WorkflowSpec, StartEvent]:
    """Instantiate and check everything that can be checked before a process starts: the graph, and
    that the start event accepts ``kw``."""
    try:
        wf = cls()
    except INVALID as exc:
        raise invalid(cls, exc) from exc
    except WorkflowError as exc:
        raise UsageError(f"cannot create {cls.__qualname__}(): {one_line_error(exc)}") from exc
    except Exception as exc:
        raise UsageError(f"cannot create {cls.__qualname__}(): {type(exc).__name__}: "
                         f"{one_line_error(exc)}") from exc
    if timeout is not False:  # False: --timeout not given, the workflow's own stands
        wf.timeout = timeout
    try:
        spec = validated_spec(wf)
    except INVALID as exc:
        raise invalid(cls, exc) from exc
    try:  # built by the one builder every run goes through (handler.launch)
        start = start_event_for(spec, None, kw)
    except Exception as exc:
        name = (spec.start_event_type or StartEvent).__name__
        raise UsageError(f"bad --kw for {name}: {one_line_error(exc.__cause__ or exc)}") from exc
    return wf, spec, start
