"""Every error procflow raises, in one place.

    Exception
    └── WorkflowError                   base of everything below
        ├── WorkflowValidationError     a step's signature or the event graph is wrong (definition, validate(), run())
        ├── WorkflowConfigurationError  the start/stop event classes cannot be inferred (Workflow(...))
        ├── WorkflowRuntimeError        the run broke (bad return value, unpicklable event, ...)
        │   ├── WorkerCrashedError      the worker process running a step died (exit code or signal)
        │   ├── PayloadError            an event, result or value could not be pickled or unpickled
        │   ├── RuntimeBrokenError      the runtime gave up (restart budget spent, or shut down)
        │   ├── ContextStateError       a Context operation called in the wrong state (before its run, ...)
        │   ├── ContextSerdeError       Context.to_dict()/from_dict() could not encode or decode a snapshot
        │   └── WorkflowStepDoesNotExistError   an event addressed to a step the workflow lacks
        ├── WorkflowTimeoutError        the run exceeded Workflow(timeout=...)
        └── WorkflowCancelledByUser     the run was cancelled (cancel_run() or cancel())

The names and import paths are LlamaIndex Workflows' (``workflows.errors``); procflow roots them in
``WorkflowError`` so that one ``except WorkflowError`` catches everything procflow raises itself.

An exception raised *by a step* is not wrapped: it reaches the caller as its own type, with a note naming the
step and the worker, and the worker's formatted traceback as ``__cause__`` (a ``RemoteTraceback``).

Every class here survives a pickle round trip, because they cross process boundaries.
"""

from __future__ import annotations


class WorkflowError(Exception):
    """Base class of every error procflow raises itself."""


class WorkflowValidationError(WorkflowError):
    """Raised by ``Workflow.run()`` when the workflow's steps and events do not form a valid graph."""


class WorkflowConfigurationError(WorkflowError):
    """Raised by ``Workflow(...)`` when the start or stop event class cannot be inferred from the steps (no
    step, no step taking a StartEvent or returning a StopEvent, or two such classes). Not a
    ``WorkflowValidationError``, as in LlamaIndex Workflows."""


class WorkflowRuntimeError(WorkflowError):
    """Raised when a run breaks for a reason other than an exception in user code, timeout or cancel."""


class WorkerCrashedError(WorkflowRuntimeError):
    """Raised when the worker process running a step died (``os._exit``, a signal, a segfault)."""

    def __init__(self, message: str, *, step: str = "", pid: int = 0, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.pid = pid
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_crash, (str(self), self.step, self.pid, self.exitcode))


def _rebuild_crash(message: str, step: str, pid: int, exitcode: int | None) -> WorkerCrashedError:
    return WorkerCrashedError(message, step=step, pid=pid, exitcode=exitcode)


class PayloadError(WorkflowRuntimeError):
    """Raised when an event, a result or a stored value cannot be pickled or unpickled on its way
    between processes. The message names the step and the event type."""


class RuntimeBrokenError(WorkflowRuntimeError):
    """Raised when the runtime cannot run steps any more: it was shut down, or its workers died more often
    than its restart budget allows."""


class ContextStateError(WorkflowRuntimeError):
    """Raised when a ``Context`` operation is called in the wrong state: one that needs a running workflow
    (``send_event``, ``running_steps``, ``stream_events``, ...) on a Context whose run has not started, or
    one that belongs to steps (``retry_info``) from the caller's side."""


class ContextSerdeError(WorkflowRuntimeError):
    """Raised when ``Context.from_dict`` is given data that ``Context.to_dict`` did not make (or cannot be
    decoded), or when a snapshot cannot be encoded."""


class WorkflowStepDoesNotExistError(WorkflowRuntimeError):
    """Raised when an event is addressed to a step the workflow does not have."""


class WorkflowTimeoutError(WorkflowError):
    """Raised when a run did not finish within ``Workflow(timeout=...)`` seconds."""


class WorkflowCancelledByUser(WorkflowError):
    """Raised by ``await handler`` / ``handler.result()`` when the run was cancelled, gracefully or hard."""


class RemoteTraceback(Exception):
    """Carries the formatted traceback of an exception raised in a worker process; set as ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'
