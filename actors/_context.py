"""The step-side ``Context``: send events, stream events, collect events, and a run-wide store.

A Context is a thin face over a *backend*: inside a worker the actor host provides one that talks to the
supervisor over the worker's channels; outside (``handler.ctx``) the handler provides one that talks to the
run's adapter. The run's state (store, collect buffers, stream) lives in the supervisor, so every step sees the
same store wherever it runs.

Async steps use ``await ctx.store.get(...)``; plain ``def`` steps, which run in a thread of their worker, use
the blocking twins ``ctx.store.get_sync(...)`` / ``set_sync(...)``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ._errors import WorkflowRuntimeError
from ._events import Event

if TYPE_CHECKING:
    from ._workflow import Workflow

StateT = TypeVar("StateT")


class _Missing:
    """The "no default" marker; pickles as the module's singleton so it survives the trip to the parent."""

    def __reduce__(self) -> str:
        return "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class ContextBackend(Protocol):
    """What a Context needs from wherever it lives."""

    def send_event(self, event: Event, step: str | None) -> None: ...
    def write_event_to_stream(self, event: Event) -> None: ...
    def collect_events(self, event: Event, expected: list[type[Event]], buffer_id: str | None
                       ) -> list[Event] | None: ...
    def store_call(self, op: str, *args: Any) -> concurrent.futures.Future[Any]: ...


class Store:
    """The run-wide key/value store. Values are copied (pickled) on every get and set, because steps run
    in other processes: mutate a value you got, then ``set`` it back."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: Context[Any]) -> None:
        self._ctx = ctx

    async def get(self, key: str, default: Any = MISSING) -> Any:
        """The value at ``key`` (dotted keys reach into nested dicts); ``default`` or KeyError if absent."""
        return await asyncio.wrap_future(self._ctx._backend_or_raise().store_call("get", key, default))

    async def set(self, key: str, value: Any) -> None:
        """Store ``value`` at ``key`` for every step of this run."""
        await asyncio.wrap_future(self._ctx._backend_or_raise().store_call("set", key, value))

    def get_sync(self, key: str, default: Any = MISSING) -> Any:
        """Blocking twin of ``get``, for plain ``def`` steps."""
        return self._ctx._backend_or_raise().store_call("get", key, default).result()

    def set_sync(self, key: str, value: Any) -> None:
        """Blocking twin of ``set``, for plain ``def`` steps."""
        self._ctx._backend_or_raise().store_call("set", key, value).result()


class Context(Generic[StateT]):
    """A run's context, as seen by a step (its ``ctx`` parameter) or by the caller (``handler.ctx``)."""

    def __init__(self, workflow: Workflow | None = None) -> None:
        self._workflow = workflow
        self._backend: ContextBackend | None = None
        self._store = Store(self)
        self._seed: dict[str, Any] = {}  # store contents to start a run with (``run(ctx=...)``)

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
