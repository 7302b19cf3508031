"""What a step author touches: events, ``@step``, ``Workflow``, the step-side ``Context``, and errors."""

from ._context import Context, Store
from ._errors import (
    PayloadError, RemoteTraceback, RuntimeBrokenError, WorkerCrashedError, WorkflowCancelledByUser,
    WorkflowError, WorkflowRuntimeError, WorkflowTimeoutError, WorkflowValidationError,
)
from ._events import (
    Event, HumanResponseEvent, InputRequiredEvent, InternalDispatchEvent, StartEvent, StepQueueChanged,
    StepStateChanged, StopEvent, WorkflowCancelledEvent, WorkflowFailedEvent, WorkflowTimedOutEvent,
)
from ._retry import ConstantDelayRetryPolicy, ExponentialBackoffRetryPolicy, RetryPolicy
from ._step import step
from ._workflow import Workflow

__all__ = [
    "ConstantDelayRetryPolicy",
    "Context",
    "Event",
    "ExponentialBackoffRetryPolicy",
    "HumanResponseEvent",
    "InputRequiredEvent",
    "InternalDispatchEvent",
    "PayloadError",
    "RemoteTraceback",
    "RetryPolicy",
    "RuntimeBrokenError",
    "StartEvent",
    "StepQueueChanged",
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
