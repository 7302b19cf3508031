"""What a step author touches: events, ``@step``, ``@catch_error``, ``Workflow``, the step-side ``Context``, and
errors. The modules mirror LlamaIndex Workflows' (``workflows.events`` is ``actors.events``, ...).

Importing it first starts the engine's forkserver (``_launch.prewarm``), which then imports the worker's
modules on another core while this process imports the rest; ``PROCFLOW_PREWARM=0`` turns that off."""

from . import _launch

_launch.prewarm()

from .context import Context, Store
from .errors import (
    ContextSerdeError, ContextStateError, PayloadError, RemoteTraceback, RuntimeBrokenError, WorkerCrashedError,
    WorkflowCancelledByUser, WorkflowConfigurationError, WorkflowError, WorkflowRuntimeError,
    WorkflowStepDoesNotExistError, WorkflowTimeoutError, WorkflowValidationError,
)
from .events import (
    Event, HumanResponseEvent, InputRequiredEvent, InternalDispatchEvent, StartEvent, StepFailedEvent,
    StepQueueChanged, StepState, StepStateChanged, StopEvent, WorkflowCancelledEvent, WorkflowFailedEvent,
    WorkflowTimedOutEvent,
)
from .placement import ResourceRequest
from .retry_policy import ConstantDelayRetryPolicy, ExponentialBackoffRetryPolicy, RetryPolicy
from .decorators import catch_error, step
from .workflow import Workflow

__all__ = [
    "ConstantDelayRetryPolicy",
    "Context",
    "ContextSerdeError",
    "ContextStateError",
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
    "StepFailedEvent",
    "StepQueueChanged",
    "StepState",
    "StepStateChanged",
    "StopEvent",
    "Store",
    "WorkerCrashedError",
    "Workflow",
    "WorkflowCancelledByUser",
    "WorkflowCancelledEvent",
    "WorkflowConfigurationError",
    "WorkflowError",
    "WorkflowFailedEvent",
    "WorkflowRuntimeError",
    "WorkflowStepDoesNotExistError",
    "WorkflowTimedOutEvent",
    "WorkflowTimeoutError",
    "WorkflowValidationError",
    "catch_error",
    "step",
]
