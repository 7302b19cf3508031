"""``WorkflowTestRunner``: run a workflow end to end and keep what it streamed (LlamaIndex's
``workflows.testing``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from .context import Context
from .events import Event, EventType, StartEvent
from .workflow import Workflow


@dataclass
class WorkflowTestResult:
    """What a run streamed (``collected``, in order), how many events of each class (``event_types``), what
    awaiting it gave (``result``), and its Context (``ctx``)."""

    collected: list[Event]
    event_types: dict[EventType, int]
    result: Any
    ctx: Context[Any]


class WorkflowTestRunner:
    """``await WorkflowTestRunner(workflow).run(start_event=StartEvent(...))`` runs the workflow once."""

    def __init__(self, workflow: Workflow) -> None:
        self._workflow = workflow

    async def run(self, start_event: StartEvent | None = None, ctx: Context[Any] | None = None,
                  expose_internal: bool = True, exclude_events: list[EventType] | None = None
                  ) -> WorkflowTestResult:
        """Run the workflow from ``start_event`` (a plain ``StartEvent()`` by default), with ``ctx`` if given,
        collecting every streamed event (internal ones too unless ``expose_internal`` is False) except those of
        the ``exclude_events`` classes."""
        handler = self._workflow.run(start_event=start_event if start_event is not None else StartEvent(),
                                     ctx=ctx)
        excluded = tuple(exclude_events or ())
        collected = [ev async for ev in handler.stream_events(expose_internal=expose_internal)
                     if type(ev) not in excluded]
        result = await handler
        return WorkflowTestResult(collected, dict(Counter(type(ev) for ev in collected)), result, handler.ctx)


__all__ = ["WorkflowTestResult", "WorkflowTestRunner"]
