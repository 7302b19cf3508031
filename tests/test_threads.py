"""Thread safety (issue 3, item 3): every handler method from any thread, concurrently, and every async
method awaited on any event loop, including loops in other threads than the caller of ``run()``: no deadlock,
no lost or duplicated event, no exception but the documented ones."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from actors import (
    Context, Event, HumanResponseEvent, StartEvent, StopEvent, Workflow, WorkflowCancelledByUser, WorkflowCancelledEvent,
    WorkflowRuntimeError, step,
)
from conftest import wait_until
from runtime import ProcessRuntime

WAIT = 30  # seconds a healthy run may take on a loaded machine before we call it a hang
PINGS = 3
TICKS = 20


class Tick(Event):
    run: int
    i: int


class Ping(HumanResponseEvent):  # sent from outside: no step produces it
    run: int
    n: int


class Pong(Event):
    run: int
    n: int


class Opened(Event):
    """All ticks are out."""


class Chatty(Workflow):
    """Streams TICKS ticks, answers each Ping from outside with a Pong, ends once the ticks are out and
    PINGS pings came."""

    @step
    async def open(self, ctx: Context, ev: StartEvent) -> Opened:
        for i in range(ev.ticks):
            ctx.write_event_to_stream(Tick(run=ev.run, i=i))
        return Opened()

    @step
    async def gather(self, ctx: Context, ev: Opened | Ping) -> StopEvent | None:
        if isinstance(ev, Ping):
            ctx.write_event_to_stream(Pong(run=ev.run, n=ev.n))
        got = ctx.collect_events(ev, [Opened] + [Ping] * PINGS)
        if got is None:
            return None
        return StopEvent(result=sum(p.n for p in got[1:]))


def key(ev: Event) -> tuple[Any, ...]:
    if isinstance(ev, (Tick, Pong)):
        return (type(ev).__name__, ev.run, ev.i if isinstance(ev, Tick) else ev.n)
    return (type(ev).__name__,)


def expected_keys(run: int, pongs: int, last: type[StopEvent]) -> Counter[tuple[Any, ...]]:
    keys = [("Tick", run, i) for i in range(TICKS)] + [("Pong", run, n) for n in range(1, pongs + 1)]
    return Counter([*keys, (last.__name__,)])


def on_new_loop(coro_fn: Callable[[], Any], use_uvloop: bool) -> Any:
    """Run a coroutine on a fresh loop in the calling thread (not the thread that called run())."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop if use_uvloop else None) as runner:
        return runner.run(coro_fn())


class RunProbe:
    """The threads that hammer one run, and what they saw."""

    def __init__(self, rt: ProcessRuntime, run: int, fate: str) -> None:
        self.run, self.fate = run, fate  # fate: "complete", "cancel" (hard) or "cancel_run" (graceful)
        self.flip = run % 2 == 1  # odd runs use the async twins, on loops of their own (uvloop)
        self.handler = Chatty(timeout=WAIT, runtime=rt).run(ticks=TICKS, run=run)
        self.lock = threading.Lock()
        self.seen: list[Event] = []
        self.outcome: Any = None
        self.callbacks: list[Any] = []
        self.late_streamers = 0
        self.streamers_ready = threading.Barrier(3)  # two streamers and the sender
        self.sent = threading.Event()
        self.handler.add_done_callback(self.callbacks.append)
        self.pongs = PINGS if fate == "complete" else PINGS - 1  # so that a cancelled run cannot finish

    def threads(self) -> list[Callable[[], None]]:
        roles = [self.wait, self.stream_sync, self.stream_async, self.send]
        if self.fate != "complete":
            roles.append(self.cancel)
        return roles

    def record(self, ev: Event) -> None:
        with self.lock:
            self.seen.append(ev)

    def wait(self) -> None:
        try:
            if self.flip:
                async def awaiter() -> Any:
                    return await self.handler

                self.outcome = on_new_loop(awaiter, use_uvloop=True)
            else:
                self.outcome = self.handler.result(timeout=WAIT)
        except WorkflowCancelledByUser as exc:
            self.outcome = exc

    def stream_sync(self) -> None:
        self.streamers_ready.wait(WAIT)
        try:
            for ev in self.handler.iter_events(timeout=WAIT):
                self.record(ev)
        except WorkflowRuntimeError:  # documented: began after the StopEvent had been consumed
            self.late_streamers += 1

    def stream_async(self) -> None:
        async def consume() -> None:
            self.streamers_ready.wait(WAIT)
            try:
                async for ev in self.handler.stream_events():
                    self.record(ev)
            except WorkflowRuntimeError:  # documented: began after the StopEvent had been consumed
                self.late_streamers += 1

        on_new_loop(consume, use_uvloop=self.flip)

    def send(self) -> None:
        self.streamers_ready.wait(WAIT)
        for n in range(1, self.pongs + 1):
            ping = Ping(run=self.run, n=n)
            if self.flip:
                on_new_loop(lambda: self.handler.send_event(ping), use_uvloop=False)
            else:
                self.handler.send_event_sync(ping)
        self.sent.set()

    def cancel(self) -> None:
        # Cancel once every event the run can publish has been published and seen, so that what the
        # streams must contain is exact.
        assert self.sent.wait(WAIT)
        want = expected_keys(self.run, self.pongs, WorkflowCancelledEvent)
        want.pop(("WorkflowCancelledEvent",))

        def all_seen() -> bool:
            with self.lock:
                return Counter(key(ev) for ev in self.seen) == want

        assert wait_until(all_seen, WAIT), (Counter(key(ev) for ev in self.seen), want)
        if self.fate == "cancel":
            assert self.handler.cancel() is True
        else:
            self.handler.cancel_run_sync(timeout=WAIT)
        assert self.handler.cancelled()

    def check(self) -> None:
        if self.fate == "complete":
            assert self.outcome == sum(range(1, PINGS + 1)), self.outcome
            want = expected_keys(self.run, PINGS, StopEvent)
        else:
            assert isinstance(self.outcome, WorkflowCancelledByUser), self.outcome
            want = expected_keys(self.run, self.pongs, WorkflowCancelledEvent)
        assert Counter(key(ev) for ev in self.seen) == want, "an event was lost or duplicated"
        assert self.late_streamers <= 1
        assert wait_until(lambda: len(self.callbacks) == 1, 5), self.callbacks
        assert self.callbacks == [self.handler]


def hammer(rt: ProcessRuntime, fates: list[str]) -> None:
    """Start one run per fate from threads of their own, then set every role of every run loose at once."""
    probes: list[RunProbe] = []
    problems: list[str] = []
    starters = [threading.Thread(target=lambda r=r, f=f: probes.append(RunProbe(rt, r, f)))
                for r, f in enumerate(fates)]
    for t in starters:
        t.start()
    for t in starters:
        t.join(WAIT)
    assert len(probes) == len(fates)

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 -- reported below, with its role
                problems.append(f"{fn.__qualname__}: {type(exc).__name__}: {exc}")
        return run

    threads = [threading.Thread(target=guarded(role)) for p in probes for role in p.threads()]
    assert len(threads) >= 32
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t for t in threads if t.is_alive()]
    assert not stuck, f"{len(stuck)} threads deadlocked; problems so far: {problems}"
    assert not problems, problems
    for p in probes:
        p.check()


@pytest.mark.timeout(90)
def test_many_threads_wait_stream_send_and_cancel_many_runs_at_once_without_deadlock_or_lost_events(
        rt: ProcessRuntime) -> None:
    for _ in range(5):  # ~50 threads a round; rounds give the interleavings more chances
        hammer(rt, ["complete"] * 9 + ["cancel", "cancel", "cancel_run"])


@pytest.mark.timeout(30)
def test_result_with_a_timeout_raises_timeout_error_while_the_run_goes_on(rt: ProcessRuntime) -> None:
    handler = Chatty(timeout=WAIT, runtime=rt).run(ticks=TICKS, run=0)
    with pytest.raises(TimeoutError):
        handler.result(timeout=0.2)
    with pytest.raises(TimeoutError):
        handler.exception(timeout=0.05)
    events = handler.iter_events(timeout=WAIT)
    ticks = [next(events) for _ in range(TICKS)]
    assert [ev.i for ev in ticks] == list(range(TICKS))
    with pytest.raises(TimeoutError):
        handler.iter_events(timeout=0.2).__next__()  # nothing more comes until we ping
    assert not handler.done()
    for n in range(1, PINGS + 1):
        handler.send_event_sync(Ping(run=0, n=n))
    assert handler.result(timeout=WAIT) == sum(range(1, PINGS + 1))


async def test_an_awaiter_timing_out_does_not_cancel_the_run(rt: ProcessRuntime) -> None:
    handler = Chatty(timeout=WAIT, runtime=rt).run(ticks=1, run=0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(handler, 0.2)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(handler.stop_event_result(), 0.05)
    for n in range(1, PINGS + 1):
        await handler.send_event(Ping(run=0, n=n))
    assert await handler == sum(range(1, PINGS + 1))


@pytest.mark.timeout(30)
def test_async_methods_work_on_a_loop_in_another_thread_than_the_one_that_called_run(
        rt: ProcessRuntime) -> None:
    handler = Chatty(timeout=WAIT, runtime=rt).run(ticks=3, run=0)
    out: dict[str, Any] = {}

    async def drive() -> None:
        stream = handler.stream_events()
        out["ticks"] = [(await stream.__anext__()).i for _ in range(3)]
        for n in range(1, PINGS + 1):
            await handler.send_event(Ping(run=0, n=n))
        out["rest"] = [type(ev).__name__ async for ev in stream]
        out["result"] = await handler

    for use_uvloop in (False, True):
        if use_uvloop:
            handler = Chatty(timeout=WAIT, runtime=rt).run(ticks=3, run=0)
        t = threading.Thread(target=on_new_loop, args=(drive, use_uvloop))
        t.start()
        t.join(WAIT)
        assert not t.is_alive()
        assert out.pop("ticks") == [0, 1, 2]
        assert out.pop("rest") == ["Pong"] * PINGS + ["StopEvent"]
        assert out.pop("result") == sum(range(1, PINGS + 1))


class Quick(Workflow):
    @step
    async def go(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.x + 1)


@pytest.mark.timeout(30)
def test_a_done_callback_is_called_once_also_when_added_after_the_end(rt: ProcessRuntime) -> None:
    handler = Quick(timeout=WAIT, runtime=rt).run(x=1)
    before: list[Any] = []
    handler.add_done_callback(before.append)
    assert handler.result(timeout=WAIT) == 2
    assert wait_until(lambda: before == [handler], 5)
    after: list[tuple[Any, int]] = []
    handler.add_done_callback(lambda h: after.append((h, threading.get_ident())))
    assert after == [(handler, threading.get_ident())]  # at once, in the caller's thread
    time.sleep(0.1)
    assert before == [handler] and len(after) == 1


@pytest.mark.timeout(30)
def test_a_done_callback_may_read_the_finished_handler_with_the_blocking_api(rt: ProcessRuntime) -> None:
    seen: list[Any] = []

    def callback(h: Any) -> None:
        try:
            seen.append((h.done(), h.result(timeout=0), h.exception(timeout=0), h.cancel()))
        except BaseException as exc:  # noqa: BLE001 -- asserted on below
            seen.append(exc)

    handler = Quick(timeout=WAIT, runtime=rt).run(x=1)
    handler.add_done_callback(callback)
    assert handler.result(timeout=WAIT) == 2
    assert wait_until(lambda: bool(seen), 5)
    assert seen == [(True, 2, None, False)]
