"""The step-side ``Context``: send events, stream events, collect events, and a run-wide store.

A Context is a thin face over a *backend*: inside a worker the actor host provides one that talks to the
supervisor over the worker's channels; outside (``handler.ctx``) the handler provides one that talks to the
run's adapter. The run's state (store, collect buffers, stream) lives in the supervisor, so every step sees the
same store wherever it runs.

Async steps use ``await ctx.store.get(...)``; plain ``def`` steps, which run in a thread of their worker, use
the blocking twins ``ctx.store.get_sync(...)`` / ``set_sync(...)``.

A Context made by the caller (``Context(workflow)``, ``Context.from_dict(workflow, data)``) starts *before* its
run: its store works (it lives in the caller's process until the run starts, see ``staging``), and what needs a
running workflow raises ``ContextStateError``. ``workflow.run(ctx=ctx)`` starts the run from it, and from then on
the Context follows that run (``ctx.is_running``, ``ctx.to_dict()`` of the live run, ...).
"""


from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..errors import WorkflowRuntimeError
from ..events import Event
from .backend import ContextBackend, WaitRequest
from .serializers import BaseSerializer, JsonSerializer
from .snapshot import SnapshotImage, decode_snapshot
from .staging import StagingBackend
from .state_store import new_state
from .store import Store

if TYPE_CHECKING:
    from ..retry_policy import RetryInfo
    from ..workflow import Workflow

StateT = TypeVar("StateT")


class Context(Generic[StateT]):
    """A run's context, as seen by a step (its ``ctx`` parameter) or by the caller (``handler.ctx``, or a
    ``Context(workflow)`` made before the run).

    ``Context(workflow, previous_context=None, serializer=None)``: ``previous_context`` is a ``to_dict()``
    snapshot to start from (as ``from_dict``); ``serializer`` encodes and decodes its state values
    (default: the workflow's ``serializer``, else ``JsonSerializer()``)."""

    _backend: ContextBackend

    def __init__(self, workflow: Workflow | None = None, previous_context: dict[str, Any] | None = None,
                 serializer: BaseSerializer | None = None) -> None:
        self._workflow = workflow
        self._serializer = serializer
        self._store = Store(self)
        state_type = None
        if workflow is not None:
            spec = workflow._spec()
            state_type, name, declared = spec.state_type, spec.name, spec.event_types()
        else:
            name, declared = "?", set()
        if previous_context is not None:
            image = decode_snapshot(previous_context, name, declared, state_type, self.serializer)
        else:
            image = SnapshotImage(name, "new", False, new_state(state_type))
        self._backend = StagingBackend(image, state_type)

    @classmethod
    def _bound(cls, backend: ContextBackend, workflow: Workflow | None = None) -> Context[Any]:
        ctx: Context[Any] = object.__new__(cls)
        ctx._workflow, ctx._serializer, ctx._backend = workflow, None, backend
        ctx._store = Store(ctx)
        return ctx

    def _backend_or_raise(self) -> ContextBackend:
        return self._backend

    @property
    def serializer(self) -> BaseSerializer:
        """What encodes this Context's state in ``to_dict()``: the one given, else the workflow's, else JSON."""
        return self._serializer or getattr(self._workflow, "serializer", None) or JsonSerializer()

    @property
    def store(self) -> Store:
        """The run-wide store, shared by every step of the run wherever it runs."""
        return self._store

    @property
    def is_running(self) -> bool:
        """Whether the run this Context belongs to is going: False before it starts (unless the Context was
        restored from a snapshot of a run still going) and once it ended; True inside a step."""
        return self._backend.is_running()

    async def running_steps(self) -> list[str]:
        """The names of the steps with an invocation in progress (from the caller's side of a run)."""
        return await asyncio.wrap_future(self._backend.running_steps())

    def stream_events(self) -> AsyncIterator[Event]:
        """The run's published events, internal ones included, ending with its StopEvent (from the caller's
        side; it consumes the same stream as ``handler.stream_events()``)."""
        return self._backend.stream_events()

    def retry_info(self) -> RetryInfo:
        """Inside a step: which attempt this is (``retry_number`` 0 on the first), the seconds since the first
        attempt, and the previous attempt's exception and failure time (UTC)."""
        return self._backend.retry_info()

    def send_event(self, event: Event, step: str | None = None) -> None:
        """Emit ``event`` into the run: every step accepting its type receives it, or only ``step``."""
        if not isinstance(event, Event):
            raise WorkflowRuntimeError(f"send_event() takes an Event, not {type(event).__name__}")
        self._backend.send_event(event, step)

    def write_event_to_stream(self, event: Event) -> None:
        """Publish ``event`` to the run's stream (``handler.stream_events()``), not to steps."""
        if not isinstance(event, Event):
            raise WorkflowRuntimeError(
                f"write_event_to_stream() takes an Event, not {type(event).__name__}")
        self._backend.write_event_to_stream(event)

    def collect_events(self, ev: Event, expected: list[type[Event]], buffer_id: str | None = None
                       ) -> list[Event] | None:
        """Buffer ``ev``; once events of every type in ``expected`` have arrived (with multiplicity),
        return them in ``expected``'s order and clear them from the buffer, else return None.

        The buffer is run-wide (kept by the supervisor), keyed by ``buffer_id`` (default: the step name), so
        invocations running in different workers collect into one buffer, atomically.
        """
        return self._backend.collect_events(ev, list(expected), buffer_id)

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
        return self._backend.wait_for_event(
            WaitRequest(event_type, waiter_event, waiter_id, dict(requirements or {}), timeout))

    def to_dict(self, serializer: BaseSerializer | None = None, *, include_state: bool = True
                ) -> dict[str, Any]:
        """A JSON-serializable snapshot: before the run, of what it will start from; during the run, of the
        live run (taken consistently where the run lives: its state, collect buffers, waiting steps and the
        work not done yet); after it, of how it ended. ``Context.from_dict(workflow, data)`` and
        ``workflow.run(ctx=...)`` continue from it. ``serializer`` encodes the state's values (default: this
        Context's); a value it cannot encode raises ``ValueError``. ``include_state=False`` leaves the state
        out (the restored run starts with a fresh one)."""
        return self._backend.snapshot(serializer or self.serializer, include_state)

    def _carry(self) -> tuple[Any, SnapshotImage | None]:
        """What a run started with ``run(ctx=self)`` continues from: the engine's record of the run this
        Context last followed, or (before its first run) the image it holds."""
        if isinstance(self._backend, StagingBackend):
            return None, self._backend.image
        return self._backend.previous_run(), None

    @classmethod
    def from_dict(cls, workflow: Workflow, data: dict[str, Any], serializer: BaseSerializer | None = None
                  ) -> Context[Any]:
        """A Context that makes ``workflow.run(ctx=...)`` continue from ``data`` (what ``to_dict()``
        returned): the run goes on where it was when the snapshot was taken mid-run (``is_running`` is then
        True), or a new run starts with the snapshot's state. ``ContextSerdeError`` when ``data`` is not such
        a snapshot or does not fit ``workflow``."""
        return cls(workflow, previous_context=data, serializer=serializer)
