"""Every error procflow raises, in one place.

    Exception
    └── WorkflowError                   base of everything below
        ├── WorkflowValidationError     the workflow's shape is wrong; raised by run() before anything starts
        ├── WorkflowRuntimeError        the run broke (bad return value, unpicklable event, ...)
        │   ├── WorkerCrashedError      the worker process running a step died (exit code or signal)
        │   ├── PayloadError            an event, result or value could not be pickled or unpickled
        │   └── RuntimeBrokenError      the runtime gave up (restart budget spent, or shut down)
        ├── WorkflowTimeoutError        the run exceeded Workflow(timeout=...)
        └── WorkflowCancelledByUser     the run was cancelled (cancel_run() or cancel())

An exception raised *by a step* is not wrapped: it reaches the caller as its own type, with a note naming the
step and the worker, and the worker's formatted traceback as ``__cause__`` (a ``RemoteTraceback``).

Every class here survives a pickle round trip, because they cross process boundaries.
"""

from __future__ import annotations


class WorkflowError(Exception):
    """Base class of every error procflow raises itself."""


class WorkflowValidationError(WorkflowError):
    """Raised by ``Workflow.run()`` when the workflow's steps and events do not form a valid graph."""


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
