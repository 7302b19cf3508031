"""The one place where ``actors`` reaches up to the engine that runs workflows.

``actors`` knows nothing of the runtime or the handler (imports point handler -> runtime -> actors), yet
``Workflow.run()`` must start a run and return a ``WorkflowHandler``, and ``import actors`` starts the
engine's forkserver early (a program's first result waits for it: ``runtime/workers/process/forkserver.py``).
Both entry points are named here as strings and imported on use, as ``concurrent.futures`` resolves its lazy
names. A test walks the imports and fails on any static arrow pointing up; these dynamic ones are the
documented exception.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .context import Context
    from .events import StartEvent
    from .workflow import Workflow

ENTRY_POINT = "handler.launch:start_run"
PREWARM = "runtime.workers.process.forkserver:start_early"
_entry: Callable[..., Any] | None = None


def prewarm() -> None:
    """Start the engine's forkserver now, while the program goes on importing (called by ``import
    actors``; the engine decides whether this process should, and never raises). Nothing happens if the
    engine's packages are not importable (``actors`` used alone)."""
    module, _, name = PREWARM.partition(":")
    try:
        start = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return
    start()


def start_run(workflow: Workflow, ctx: Context[Any] | None, start_event: StartEvent | None,
              kwargs: dict[str, Any]) -> Any:
    global _entry
    if _entry is None:
        module, _, name = ENTRY_POINT.partition(":")
        try:
            _entry = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise _shadowed(module.partition(".")[0]) or exc
    return _entry(workflow, ctx, start_event, kwargs)


def _shadowed(package: str) -> Exception | None:
    """A clear error when a user's own ``handler.py`` (or ``handler/``) comes first on ``sys.path`` and
    hides procflow's package of that name; None when that is not what happened."""
    import importlib.util
    from pathlib import Path

    from .errors import WorkflowRuntimeError

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    ours = Path(__file__).resolve().parent.parent / package
    origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    if origin is None or origin.parent == ours or origin == ours:
        return None
    return WorkflowRuntimeError(
        f"{origin} shadows procflow's '{package}' package (it comes first on sys.path); rename your file")
