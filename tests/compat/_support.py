"""The two implementations behind one namespace, for the compat suite.

``Impl("llama")`` exposes ``llama-index-workflows`` (package ``workflows``); ``Impl("procflow")`` exposes procflow
under the names a user gets by renaming ``workflows`` to ``actors`` in import lines (``workflows.handler`` maps to
procflow's ``handler`` package, a documented exception). Attributes: ``events``, ``errors``, ``context``,
``decorators``, ``retry_policy``, ``resource``, ``testing``, ``workflow``, ``top`` (the top-level package) and
``handler``.

While a procflow submodule (``actors.events``, ...) does not exist yet, its attribute falls back to the top-level
``actors`` package, so that behaviour tests report the missing *behaviour* or *name* (with a message naming
llama's import path) rather than all failing on the missing module; ``test_compat_modules.py`` checks the module
paths themselves.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import os
import types
from collections.abc import Awaitable, Callable
from typing import Any

SUBMODULES = ("events", "errors", "context", "decorators", "retry_policy", "resource", "testing", "workflow")

# Long enough for any healthy run of this suite on a loaded machine, short enough that a run that would wait
# forever (an event that never comes) ends, with WorkflowTimeoutError, well inside the test's own timeout.
RUN_TIMEOUT = 10.0


def module_path(side: str, module: str) -> str:
    """The import path a user writes for ``module`` ("events", ..., "handler", "" for the top level)."""
    if side == "llama":
        return "workflows" + (f".{module}" if module else "")
    if module == "handler":
        return "handler"
    return "actors" + (f".{module}" if module else "")


def import_user_module(side: str, module: str) -> types.ModuleType:
    """Import what ``import <module_path(side, module)>`` gives a user; ImportError when it does not exist.

    A procflow submodule must live in its package's own directory: with procflow installed in editable mode from
    another checkout, ``actors.<name>`` missing here would otherwise be found in that checkout (the editable
    finder comes after the path finder), which is not the code under test. Such a module is reported missing,
    and not executed."""
    path = module_path(side, module)
    if side == "procflow" and "." in path:
        parent_name = path.rpartition(".")[0]
        parent = importlib.import_module(parent_name)
        spec = importlib.util.find_spec(path)
        if spec is None:
            raise ImportError(f"No module named {path!r}")
        origin = os.path.realpath(spec.origin or "")
        homes = [os.path.realpath(p) + os.sep for p in getattr(parent, "__path__", [])]
        if not any(origin.startswith(home) for home in homes):
            raise ImportError(f"No module named {path!r} in {homes} (found only elsewhere, in {origin})")
    return importlib.import_module(path)


class _Fallback:
    """Stands for a procflow submodule that does not exist yet: looks names up on ``actors``."""

    def __init__(self, module: str, top: types.ModuleType) -> None:
        self._module, self._top = module, top

    def __getattr__(self, name: str) -> Any:
        try:
            return getattr(self._top, name)
        except AttributeError:
            raise AttributeError(
                f"procflow lacks actors.{self._module}.{name} "
                f"(llama: workflows.{self._module}.{name}); module actors.{self._module} does not exist "
                f"and actors.{name} does not either") from None

    def __reduce__(self) -> Any:  # a step body that closes over a module stand-in still pickles
        return (_fallback, (self._module,))


def _fallback(module: str) -> _Fallback:
    return _Fallback(module, importlib.import_module("actors"))


class Impl:
    """One implementation: its modules, and ``make(cls, **kw)`` to build a workflow the way that side needs."""

    def __init__(self, side: str, runtime: Any = None) -> None:
        self.side = side
        self.runtime = runtime
        self.top = importlib.import_module(module_path(side, ""))
        self.handler = importlib.import_module(module_path(side, "handler"))
        self.missing_modules: list[str] = []
        for name in SUBMODULES:
            try:
                mod: Any = import_user_module(side, name)
            except ImportError:
                if side == "llama":
                    raise
                self.missing_modules.append(name)
                mod = _Fallback(name, self.top)
            setattr(self, name, mod)

    @property
    def is_llama(self) -> bool:
        return self.side == "llama"

    def make(self, wf_cls: type, **kw: Any) -> Any:
        """An instance of ``wf_cls``: on procflow on the suite's shared runtime, on llama as users write it."""
        kw.setdefault("timeout", RUN_TIMEOUT)
        if self.side == "procflow":
            kw.setdefault("runtime", self.runtime)
        return wf_cls(**kw)

    def __repr__(self) -> str:
        return f"<{self.side}>"

    def __reduce__(self) -> Any:
        raise TypeError("do not close over the `wf` namespace in a step body; bind the classes you need first")


def aio(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    """Run an ``async def`` test on a fresh asyncio loop.

    The suite's root conftest runs every ``async def`` test twice (asyncio and uvloop); the loop is not what this
    suite compares, so its tests are plain functions that run their coroutine once."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(fn(*args, **kwargs))

    return run


async def drain(handler: Any, expose_internal: bool = False) -> list[Any]:
    """Every event of the run's stream, in order (the last is a StopEvent)."""
    return [ev async for ev in handler.stream_events(expose_internal=expose_internal)]


async def outcome(handler: Any) -> tuple[str, Any]:
    """("ok", result) or ("raised", exception) of awaiting the handler."""
    try:
        return "ok", await handler
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return "raised", exc
