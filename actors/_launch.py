"""The one place where ``actors`` reaches up to the engine that runs workflows.

``actors`` knows nothing of the runtime or the handler (imports point handler -> runtime -> actors), yet
``Workflow.run()`` must start a run and return a ``WorkflowHandler``. The entry point is named here as a
string and imported on first use, as ``concurrent.futures`` resolves its lazy names. A test walks the imports
and fails on any static arrow pointing up; this dynamic one is the documented exception.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .context import Context
    from .events import StartEvent
    from .workflow import Workflow

ENTRY_POINT = "handler.launch:start_run"
_entry: Callable[..., Any] | None = None


def start_run(workflow: Workflow, ctx: Context[Any] | None, start_event: StartEvent | None,
              kwargs: dict[str, Any]) -> Any:
    global _entry
    if _entry is None:
        module, _, name = ENTRY_POINT.partition(":")
        _entry = getattr(importlib.import_module(module), name)
    return _entry(workflow, ctx, start_event, kwargs)
