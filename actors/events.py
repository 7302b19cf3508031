"""Events: the typed messages steps consume and emit.

Events are pydantic models. Like LlamaIndex Workflows' events they accept extra keyword fields (readable as
attributes), and fields can also be read as ``ev["x"]`` or ``ev.get("x")``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Event(BaseModel):
    """Base class of every event. Subclass it and declare fields as on any pydantic model."""

    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True)

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        """The field ``key``, or ``default`` when the event has no such field."""
        return getattr(self, key, default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and hasattr(self, key)


class StartEvent(Event):
    """The event a run starts with. ``Workflow.run(**kwargs)`` builds it from the keyword arguments."""


class StopEvent(Event):
    """The event that ends a run. ``await handler`` gives ``.result`` for a plain StopEvent, and the event
    itself for a subclass."""

    result: Any = None


class WorkflowFailedEvent(StopEvent):
    """Published last on the stream of a run that failed; ``result`` is the error message."""

    step: str | None = None
    error_type: str = ""


class WorkflowTimedOutEvent(StopEvent):
    """Published last on the stream of a run that exceeded its timeout."""

    timeout: float = 0.0


class WorkflowCancelledEvent(StopEvent):
    """Published last on the stream of a run that was cancelled."""

    hard: bool = False


class InputRequiredEvent(Event):
    """Written to the stream by a step that needs input (``ctx.wait_for_event(..., waiter_event=...)``)."""


class HumanResponseEvent(Event):
    """The answer to an ``InputRequiredEvent``, sent with ``handler.send_event``."""


class InternalDispatchEvent(Event):
    """Base of the events the runtime publishes about itself; streamed only with ``expose_internal=True``."""


class StepStateChanged(InternalDispatchEvent):
    """A step invocation changed state: "pending" (waiting for a worker), "running", "done", "failed",
    "waiting" (in ``wait_for_event``) or "cancelled". ``t`` is the parent's ``time.monotonic()`` then."""

    step: str
    state: str
    worker_pid: int | None = None
    input_event: str = ""
    invocation: int = 0
    t: float = 0.0


class StepQueueChanged(InternalDispatchEvent):
    """A step's queue changed: ``queued`` events wait for one of its ``num_workers`` slots, ``active`` run."""

    step: str
    queued: int
    active: int
