"""The step-side ``Context``: send events, stream events, collect events, and a run-wide store.

A Context is a thin face over a *backend*: inside a worker the actor host provides one that talks to the
supervisor over the worker's channels; outside (``handler.ctx``) the handler provides one that talks to the
run's adapter. The run's state (store, collect buffers, stream) lives in the supervisor, so every step sees the
same store wherever it runs.

Async steps use ``await ctx.store.get(...)``; plain ``def`` steps, which run in a thread of their worker, use
the blocking twins ``ctx.store.get_sync(...)`` / ``set_sync(...)``.
"""


from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..errors import WorkflowRuntimeError
from ..events import Event
from .backend import ContextBackend, WaitRequest
from .store import Store

if TYPE_CHECKING:
    from ..workflow import Workflow

StateT = TypeVar("StateT")


class Context(Generic[StateT]):
    """A run's context, as seen by a step (its ``ctx`` parameter) or by the caller (``handler.ctx``)."""

    def __init__(self, workflow: Workflow | None = None) -> None:
        self._workflow = workflow
        self._backend: ContextBackend | None = None
        self._store = Store(self)
        self._seed: dict[str, Any] = {}  # a to_dict() snapshot to start the next run from

    @classmethod
    def _bound(cls, backend: ContextBackend, workflow: Workflow | None = None) -> Context[Any]:
        ctx: Context[Any] = cls(workflow)
        ctx._backend = backend
        return ctx

    def _backend_or_raise(self) -> ContextBackend:
        if self._backend is None:
            raise WorkflowRuntimeError(
                "this Context is not attached to a run; pass it to Workflow.run(ctx=...) first")
        return self._backend

    @property
    def store(self) -> Store:
        """The run-wide store, shared by every step of the run wherever it runs."""
        return self._store

    def send_event(self, event: Event, step: str | None = None) -> None:
        """Emit ``event`` into the run: every step accepting its type receives it, or only ``step``."""
        if not isinstance(event, Event):
            raise WorkflowRuntimeError(f"send_event() takes an Event, not {type(event).__name__}")
        self._backend_or_raise().send_event(event, step)

    def write_event_to_stream(self, event: Event) -> None:
        """Publish ``event`` to the run's stream (``handler.stream_events()``), not to steps."""
        if not isinstance(event, Event):
            raise WorkflowRuntimeError(
                f"write_event_to_stream() takes an Event, not {type(event).__name__}")
        self._backend_or_raise().write_event_to_stream(event)

    def collect_events(self, ev: Event, expected: list[type[Event]], buffer_id: str | None = None
                       ) -> list[Event] | None:
        """Buffer ``ev``; once events of every type in ``expected`` have arrived (with multiplicity),
        return them in ``expected``'s order and clear them from the buffer, else return None.

        The buffer is run-wide (kept by the supervisor), keyed by ``buffer_id`` (default: the step name), so
        invocations running in different workers collect into one buffer, atomically.
        """
        return self._backend_or_raise().collect_events(ev, list(expected), buffer_id)

    async def wait_for_event(self, event_type: type[Event], waiter_event: Event | None = None,
                             waiter_id: str | None = None, requirements: dict[str, Any] | None = None,
                             timeout: float | None = 2000.0) -> Event:
        """Return the first event of ``event_type`` whose fields match ``requirements``, sent by the caller
        (``handler.send_event``) or by another step.

        ``waiter_event`` is written to the stream once, to say what input is needed. The wait holds no
        worker: the step's invocation ends here and **the step runs again from its start** when the event
        arrives, and this call then returns it (as in LlamaIndex Workflows). Keep side effects after the
        wait, or make them idempotent. A wait longer than ``timeout`` raises ``WorkflowTimeoutError`` here.
        """
        return self._wait(event_type, waiter_event, waiter_id, requirements, timeout)

    def wait_for_event_sync(self, event_type: type[Event], waiter_event: Event | None = None,
                            waiter_id: str | None = None, requirements: dict[str, Any] | None = None,
                            timeout: float | None = 2000.0) -> Event:
        """``wait_for_event`` for plain ``def`` steps (same re-run semantics)."""
        return self._wait(event_type, waiter_event, waiter_id, requirements, timeout)

    def _wait(self, event_type: type[Event], waiter_event: Event | None, waiter_id: str | None,
              requirements: dict[str, Any] | None, timeout: float | None) -> Event:
        if not (isinstance(event_type, type) and issubclass(event_type, Event)):
            raise WorkflowRuntimeError(f"wait_for_event() takes an Event class, not {event_type!r}")
        return self._backend_or_raise().wait_for_event(
            WaitRequest(event_type, waiter_event, waiter_id, dict(requirements or {}), timeout))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable snapshot of a finished (or gracefully cancelled) run: state, collected
        events, pending events and waiters. ``Context.from_dict(workflow, data)`` and
        ``workflow.run(ctx=...)`` continue from it."""
        if self._backend is None:
            return dict(self._seed)
        return self._backend.snapshot()

    def _carry(self) -> tuple[Any, dict[str, Any]]:
        """What a run started with ``run(ctx=self)`` continues from: the engine's record of the run this
        Context last followed (if it has one), else the snapshot given to ``from_dict``."""
        if self._backend is None:
            return None, self._seed
        return self._backend.previous_run(), {}

    @classmethod
    def from_dict(cls, workflow: Workflow, data: dict[str, Any]) -> Context[Any]:
        """A Context that makes ``workflow.run(ctx=...)`` continue the run ``data`` was taken from."""
        if not isinstance(data, dict) or "state" not in data:
            raise WorkflowRuntimeError("Context.from_dict() takes what Context.to_dict() returned")
        ctx: Context[Any] = cls(workflow)
        ctx._seed = dict(data)
        return ctx
