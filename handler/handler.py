"""``WorkflowHandler``: the user's face of a run, async and blocking, usable from any thread.

It speaks only to a ``RunAdapter``. Async methods may be awaited on any event loop (they wait on the
adapter's ``concurrent.futures.Future`` without ever cancelling it, so a caller's timeout never cancels the
run); the blocking twins wait on the same futures in the calling thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from actors import (
    Context, ContextStateError, Event, InternalDispatchEvent, StopEvent, WorkflowCancelledByUser,
    WorkflowRuntimeError,
)
from actors.host import WaitRequest, bind_context
from runtime import END, RunAdapter

from .callbacks import callbacks

if TYPE_CHECKING:
    from actors import Workflow
    from actors.context.serializers import BaseSerializer
    from actors.host import WorkflowSpec
    from actors.retry_policy import RetryInfo

T = TypeVar("T")


async def wait_future(fut: concurrent.futures.Future[T]) -> T:
    """Await a concurrent future on the running loop. Cancelling the awaiter never cancels ``fut`` (the
    run's result, a supervisor call): nothing is passed back to it.

    What ``asyncio.shield(asyncio.wrap_future(fut))`` does, with one loop future settled by one hand-off from
    the thread that resolves ``fut`` (that took three loop iterations and four callbacks on every run's
    result); a future already done answers at once. The answer is read on the awaiting loop's thread, as
    ``wrap_future`` reads it (a ``PackedFuture`` unpickles it there)."""
    if fut.done():
        return _outcome(fut)
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[T] = loop.create_future()
    fut.add_done_callback(functools.partial(_hand_over, loop, waiter))
    return await waiter


def _outcome(fut: concurrent.futures.Future[T]) -> T:
    if fut.cancelled():
        raise asyncio.CancelledError()
    exc = fut.exception()
    if exc is not None:
        raise exc
    return fut.result()


def _hand_over(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[Any],
               fut: concurrent.futures.Future[Any]) -> None:
    """``fut`` is done (any thread): settle ``waiter`` on its loop."""
    try:
        loop.call_soon_threadsafe(_settle, waiter, fut)
    except RuntimeError:
        pass  # that loop is closed: nobody awaits there any more


def _settle(waiter: asyncio.Future[Any], fut: concurrent.futures.Future[Any]) -> None:
    if waiter.done():
        return  # the awaiter was cancelled meanwhile
    if fut.cancelled():
        waiter.cancel()
        return
    try:
        exc = fut.exception()
        value = fut.result() if exc is None else None
    except Exception as err:  # noqa: BLE001 -- reading the answer failed: the awaiter gets why
        exc = err
    if exc is not None:
        waiter.set_exception(exc)
    else:
        waiter.set_result(value)


class _CallerBackend:
    """``handler.ctx``'s backend: the caller's side of the run, through the adapter. Every call waits for
    the supervisor's answer, so its error reaches the caller (nothing is fired and forgotten)."""

    def __init__(self, adapter: RunAdapter, wspec: WorkflowSpec, guard: Callable[[], bool],
                 stream: Callable[[], AsyncIterator[Event]]) -> None:
        self.adapter, self.wspec, self._guard, self._stream = adapter, wspec, guard, stream

    def wait(self, fut: concurrent.futures.Future[T]) -> T:
        if self._guard() and not fut.done():
            raise RuntimeError("a blocking call on handler.ctx would block the runtime's own thread "
                               "(a deadlock); use the async API there")
        return fut.result()

    def send_event(self, event: Event, step: str | None) -> None:
        self.wait(self.adapter.send_event(event, step))

    def write_event_to_stream(self, event: Event) -> None:
        self.wait(self.adapter.write_event_to_stream(event))

    def collect_events(self, event: Event, expected: list[type[Event]], buffer_id: str | None
                       ) -> list[Event] | None:
        return self.wait(self.adapter.store_call("collect", buffer_id or "_caller", event, expected))

    def store_call(self, op: str, *args: Any) -> concurrent.futures.Future[Any]:
        return self.adapter.store_call(op, *args)

    def wait_for_event(self, wait: WaitRequest) -> Event:
        raise WorkflowRuntimeError("wait_for_event() is for steps; from outside, stream the run's events")

    def snapshot(self, serializer: BaseSerializer | None, include_state: bool) -> dict[str, Any]:
        return self.adapter.snapshot(serializer, include_state)

    def previous_run(self) -> Any:
        if not self.adapter.result.done():
            raise ContextStateError(f"run {self.adapter.run_id} is still going: this Context can start a new "
                                    "run once its run has ended")
        return self.adapter.previous_run()

    def is_running(self) -> bool:
        return not self.adapter.result.done()

    def running_steps(self) -> concurrent.futures.Future[list[str]]:
        return self.adapter.running_steps()

    def stream_events(self) -> AsyncIterator[Event]:
        return self._stream()

    def retry_info(self) -> RetryInfo:
        raise ContextStateError("retry_info() is for steps (their ctx), not for the caller's handler.ctx")


class WorkflowHandler(Awaitable[Any]):
    """A running workflow: await it, stream it, send it events, cancel it; or block on it from sync code.

    Made by ``Workflow.run()``; there is no public constructor.
    """

    run_id: str
    _workflow: Workflow
    _adapter: RunAdapter
    _on_engine_thread: Callable[[], bool]
    _ctx: Context[Any]
    _backend: _CallerBackend
    _stream_lock: threading.Lock
    _all_events_consumed: bool

    def __init__(self) -> None:
        raise TypeError("WorkflowHandler objects are made by Workflow.run(), not constructed directly")

    @classmethod
    def _create(cls, workflow: Workflow, adapter: RunAdapter, wspec: WorkflowSpec,
                guard: Callable[[], bool]) -> WorkflowHandler:
        self = object.__new__(cls)
        self._workflow = workflow
        self._adapter = adapter
        self._on_engine_thread = guard
        self.run_id = adapter.run_id
        self._backend = _CallerBackend(adapter, wspec, guard, lambda: self.stream_events(expose_internal=True))
        self._ctx = bind_context(self._backend, workflow)
        self._stream_lock = threading.Lock()
        self._all_events_consumed = False
        return self

    # --- awaiting ---------------------------------------------------------------------------------------
    def __await__(self) -> Generator[Any, None, Any]:
        return self._await_result().__await__()

    async def _await_result(self) -> Any:
        return _unwrap(await wait_future(self._adapter.result))

    async def stop_event_result(self) -> StopEvent:
        """The run's StopEvent (raises what ended the run otherwise)."""
        return await wait_future(self._adapter.result)

    @property
    def ctx(self) -> Context[Any]:
        """The run's Context, from the caller's side: store, send_event, write_event_to_stream."""
        return self._ctx

    def get_stop_event(self) -> StopEvent | None:
        """The run's last published StopEvent once it is done (a ``Workflow*Event`` when it failed, timed
        out or was cancelled); None while it runs."""
        return self._adapter.stop_event if self._adapter.result.done() else None

    def is_done(self) -> bool:
        """True once the run has ended, however it ended."""
        return self._adapter.result.done()

    def __str__(self) -> str:
        return (f"WorkflowHandler(workflow={self._workflow.workflow_name}, run_id={self.run_id}, "
                f"result={self.get_stop_event()})")

    __repr__ = __str__

    # --- streaming --------------------------------------------------------------------------------------
    def _begin_stream(self) -> None:
        with self._stream_lock:
            if self._all_events_consumed:
                raise WorkflowRuntimeError("All the streamed events have already been consumed.")

    def _accept(self, ev: Any, expose_internal: bool) -> bool | None:
        """None at the end of the stream; else whether to yield ``ev``."""
        if ev is END:
            return None
        if isinstance(ev, StopEvent):
            with self._stream_lock:
                self._all_events_consumed = True
        return expose_internal or not isinstance(ev, InternalDispatchEvent)

    async def stream_events(self, expose_internal: bool = False) -> AsyncGenerator[Event, None]:
        """Yield the run's published events as they come, ending with its StopEvent.

        Raises WorkflowRuntimeError if a previous call already consumed the stream. Several concurrent
        consumers split the events between them.
        """
        self._begin_stream()
        while True:
            ev = await self._adapter.events.aget()
            keep = self._accept(ev, expose_internal)
            if keep is None:
                return
            if keep:
                yield ev
            if isinstance(ev, StopEvent):
                return

    def iter_events(self, expose_internal: bool = False, timeout: float | None = None) -> Iterator[Event]:
        """Blocking twin of ``stream_events``; ``timeout`` bounds the wait for each event
        (``TimeoutError``)."""
        self._check_thread("iter_events")
        self._begin_stream()
        while True:
            ev = self._adapter.events.get(timeout)
            keep = self._accept(ev, expose_internal)
            if keep is None:
                return
            if keep:
                yield ev
            if isinstance(ev, StopEvent):
                return

    # --- sending and cancelling (async) -------------------------------------------------------------------
    async def send_event(self, event: Event, step: str | None = None) -> None:
        """Send ``event`` into the run (to ``step`` only, if given)."""
        await wait_future(self._adapter.send_event(event, step))

    async def cancel_run(self, *, timeout: float = 5.0) -> None:
        """Graceful cancel: no new steps start, async steps are cancelled, running ``def`` steps finish;
        then the run ends as cancelled. Waits up to ``timeout`` for that; never raises for the run."""
        await wait_future(self._adapter.cancel())
        try:
            await asyncio.wait_for(wait_future(self._adapter.result), timeout)
        except (asyncio.TimeoutError, Exception):
            pass

    # --- the blocking API (concurrent.futures.Future's names) ---------------------------------------------
    def _check_thread(self, what: str) -> None:
        # A finished run never blocks, so done callbacks (run on the runtime's thread) may call result().
        if self._on_engine_thread() and not self._adapter.result.done():
            raise RuntimeError(f"handler.{what}() would block the runtime's own thread (a deadlock); "
                               "use the async API there")

    def result(self, timeout: float | None = None) -> Any:
        """Block until the run ends and return what ``await handler`` gives; raise what ended it.
        ``TimeoutError`` if ``timeout`` passes first (the run goes on)."""
        self._check_thread("result")
        return _unwrap(self._adapter.result.result(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Block until the run ends; the exception that ended it, or None."""
        self._check_thread("exception")
        return self._adapter.result.exception(timeout)

    def done(self) -> bool:
        """True once the run has ended (same as ``is_done()``)."""
        return self._adapter.result.done()

    def cancelled(self) -> bool:
        """True when the run ended by a cancel (graceful or hard)."""
        fut = self._adapter.result
        return fut.done() and isinstance(fut.exception(), WorkflowCancelledByUser)

    def cancel(self) -> bool:
        """Hard cancel: end the run now as cancelled, killing the worker processes running its steps
        (they are replaced). False when the run had already ended."""
        self._check_thread("cancel")
        return self._adapter.abort().result()

    def add_done_callback(self, fn: Callable[[WorkflowHandler], object]) -> None:
        """Call ``fn(handler)`` once when the run has ended: at once in this thread if it has (as
        ``concurrent.futures.Future`` does), else later on procflow's callback thread (never the runtime's
        own), where it may block and may raise (what it raises is logged). See ``handler.callbacks``."""
        if self._adapter.result.done():
            callbacks.call_now(fn, self)
            return
        self._adapter.result.add_done_callback(lambda _: callbacks.submit(fn, self))

    def send_event_sync(self, event: Event, step: str | None = None) -> None:
        """Blocking twin of ``send_event``."""
        self._check_thread("send_event_sync")
        self._adapter.send_event(event, step).result()  # raises what the supervisor refused

    def cancel_run_sync(self, timeout: float = 5.0) -> None:
        """Blocking twin of ``cancel_run``."""
        self._check_thread("cancel_run_sync")
        self._adapter.cancel().result()
        try:
            self._adapter.result.exception(timeout)
        except concurrent.futures.TimeoutError:
            pass


def _unwrap(stop: StopEvent) -> Any:
    return stop.result if type(stop) is StopEvent else stop
