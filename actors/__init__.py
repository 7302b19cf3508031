"""What a step author touches: events, ``@step``, ``Workflow``, the step-side ``Context``, and errors."""

from .context import Context, Store
from .errors import (
    PayloadError, RemoteTraceback, RuntimeBrokenError, WorkerCrashedError, WorkflowCancelledByUser,
    WorkflowError, WorkflowRuntimeError, WorkflowTimeoutError, WorkflowValidationError,
)
from .events import (
    Event, HumanResponseEvent, InputRequiredEvent, InternalDispatchEvent, StartEvent, StepQueueChanged,
    StepStateChanged, StopEvent, WorkflowCancelledEvent, WorkflowFailedEvent, WorkflowTimedOutEvent,
)
from .placement import ResourceRequest
from .retry_policy import ConstantDelayRetryPolicy, ExponentialBackoffRetryPolicy, RetryPolicy
from .decorators import step
from .workflow import Workflow

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
    "ResourceRequest",
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
