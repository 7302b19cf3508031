"""What a step author touches: events, ``@step``, ``Workflow``, the step-side ``Context``, and errors."""

from ._context import Context, Store
from ._errors import (
    PayloadError, RemoteTraceback, RuntimeBrokenError, WorkerCrashedError, WorkflowCancelledByUser,
    WorkflowError, WorkflowRuntimeError, WorkflowTimeoutError, WorkflowValidationError,
)
from ._events import (
    Event, InternalDispatchEvent, StartEvent, StepStateChanged, StopEvent, WorkflowCancelledEvent,
    WorkflowFailedEvent, WorkflowTimedOutEvent,
)
from ._step import step
from ._workflow import Workflow

__all__ = [
    "Context",
    "Event",
    "InternalDispatchEvent",
    "PayloadError",
    "RemoteTraceback",
    "RuntimeBrokenError",
    "StartEvent",
    "StepStateChanged",
    "StopEvent",
    "Store",
    "WorkerCrashedError",
    "Workflow",
    "WorkflowCancelledByUser",
    "WorkflowCancelledEvent",
    "WorkflowError",
    "WorkflowFailedEvent",
    "WorkflowRuntimeError",
    "WorkflowTimedOutEvent",
    "WorkflowTimeoutError",
    "WorkflowValidationError",
    "step",
]
