"""Issue 2 items 4, 5, 8 and 9: routing, num_workers, return values, the end of a run, the stream's last
event, the store, collect_events, errors from steps, timeouts, concurrent runs, and parallelism.

Concurrency is observed through (start, end) timestamps that steps return in their events, never through
wall-clock thresholds.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import pid_gone, wait_until

from actors import (
    Context, Event, RemoteTraceback, StartEvent, StepStateChanged, StopEvent, Workflow,
    WorkflowCancelledByUser, WorkflowCancelledEvent, WorkflowFailedEvent, WorkflowRuntimeError,
    WorkflowTimedOutEvent, WorkflowTimeoutError, step,
)
from runtime import ProcessRuntime


class Span(Event):
    """When and where a step invocation ran."""

    name: str = ""
    pid: int = 0
    start: float
    end: float


class Started(Event):
    what: str = ""
    pid: int


class Late(Event):
    what: str


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The largest number of intervals open at one instant (an end and a start at the same instant do not
    overlap)."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = now = 0
    for _, delta in edges:
        now += delta
        best = max(best, now)
    return best


def test_max_overlap_counts_intervals_open_at_once() -> None:
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 1
    assert max_overlap([(0, 2), (1, 3), (1.5, 1.6), (4, 5)]) == 3


async def collect_stream(handler: Any, expose_internal: bool = False) -> list[Event]:
    return [ev async for ev in handler.stream_events(expose_internal=expose_internal)]


def running_counts(events: list[Event]) -> Counter[tuple[str, str]]:
    """(step, input event type) -> number of invocations started, from the internal events."""
    return Counter((ev.step, ev.input_event) for ev in events
                   if isinstance(ev, StepStateChanged) and ev.state == "running")


# --- routing ------------------------------------------------------------------------------------------------
class Base(Event):
    tag: str = ""


class Derived(Base):
    pass


class Seen(Event):
    step: str
    got: str


class RoutingFlow(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> Base | Derived | None:
        if ev.targeted:
            await ctx.store.set("expect", 2)
            ctx.send_event(Derived(), step="on_derived_1")
        else:
            await ctx.store.set("expect", 3)
            ctx.send_event(Derived())
        ctx.send_event(Base())
        return None

    @step
    async def on_base(self, ev: Base) -> Seen:
        return Seen(step="on_base", got=type(ev).__name__)

    @step
    async def on_derived_1(self, ev: Derived) -> Seen:
        return Seen(step="on_derived_1", got=type(ev).__name__)

    @step
    def on_derived_2(self, ev: Derived) -> Seen:
        return Seen(step="on_derived_2", got=type(ev).__name__)

    @step
    async def gather(self, ctx: Context, ev: Seen) -> StopEvent | None:
        got = ctx.collect_events(ev, [Seen] * await ctx.store.get("expect"))
        if got is None:
            return None
        return StopEvent(result=sorted((s.step, s.got) for s in got))


async def test_events_are_routed_by_exact_type_and_broadcast_to_every_accepting_step(
        rt: ProcessRuntime) -> None:
    handler = RoutingFlow(runtime=rt).run(targeted=False)
    events = await collect_stream(handler, expose_internal=True)
    assert await handler == [("on_base", "Base"), ("on_derived_1", "Derived"), ("on_derived_2", "Derived")]
    # Every invocation was dispatched before any Seen came back, so all of them are in the stream.
    counts = running_counts(events)
    assert counts[("on_base", "Derived")] == 0
    assert counts[("on_base", "Base")] == 1
    assert counts[("on_derived_1", "Derived")] == counts[("on_derived_2", "Derived")] == 1


async def test_send_event_to_a_named_step_reaches_only_that_step(rt: ProcessRuntime) -> None:
    handler = RoutingFlow(runtime=rt).run(targeted=True)
    events = await collect_stream(handler, expose_internal=True)
    assert await handler == [("on_base", "Base"), ("on_derived_1", "Derived")]
    assert running_counts(events)[("on_derived_2", "Derived")] == 0


# --- num_workers --------------------------------------------------------------------------------------------
class Tick(Event):
    i: int


async def _sleeping_span() -> Span:
    start = time.time()
    await asyncio.sleep(0.3)
    return Span(start=start, end=time.time())


class CapFlow(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> Tick | None:
        await ctx.store.set("n", ev.n)
        for i in range(ev.n):
            ctx.send_event(Tick(i=i))
        return None

    @step(num_workers=2)
    async def work(self, ev: Tick) -> Span:
        return await _sleeping_span()

    @step
    async def gather(self, ctx: Context, ev: Span) -> StopEvent | None:
        spans = ctx.collect_events(ev, [Span] * await ctx.store.get("n"))
        if spans is None:
            return None
        return StopEvent(result=[(s.start, s.end) for s in spans])


class DefaultCapFlow(CapFlow):
    @step
    async def work(self, ev: Tick) -> Span:
        return await _sleeping_span()


class DefCapFlow(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> Tick | None:
        for i in range(3):
            ctx.send_event(Tick(i=i))
        return None

    @step(num_workers=1)
    def work(self, ev: Tick) -> Span:
        start = time.time()
        time.sleep(0.1)
        return Span(start=start, end=time.time(), pid=os.getpid())

    @step
    async def gather(self, ctx: Context, ev: Span) -> StopEvent | None:
        spans = ctx.collect_events(ev, [Span] * 3)
        if spans is None:
            return None
        return StopEvent(result=[(s.start, s.end) for s in spans])


def test_num_workers_caps_concurrent_invocations_of_a_step_within_each_run(rt: ProcessRuntime) -> None:
    wf = CapFlow(runtime=rt)
    handlers = [wf.run(n=5), wf.run(n=5)]
    one, two = (h.result(timeout=30) for h in handlers)
    assert max_overlap(one) == 2 and max_overlap(two) == 2  # the rest queued
    assert max_overlap(one + two) > 2  # the cap is per run, not per step across runs


def test_num_workers_one_serialises_a_def_step_even_with_idle_workers(rt: ProcessRuntime) -> None:
    spans = DefCapFlow(runtime=rt).run().result(timeout=30)
    assert len(spans) == 3 and max_overlap(spans) == 1


def test_num_workers_defaults_to_four(rt: ProcessRuntime) -> None:
    assert max_overlap(DefaultCapFlow(runtime=rt).run(n=6).result(timeout=30)) == 4


# --- return values ------------------------------------------------------------------------------------------
class Go(Event):
    pass


class NoneFlow(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> Go | None:
        ctx.send_event(Go())
        return None

    @step
    def side(self, ev: Go) -> Go | None:
        return None

    @step
    async def finish(self, ev: Go) -> StopEvent:
        return StopEvent(result="done")


async def test_a_step_returning_none_emits_nothing(rt: ProcessRuntime) -> None:
    handler = NoneFlow(runtime=rt).run()
    events = await collect_stream(handler, expose_internal=True)
    assert await handler == "done"
    assert [type(ev) for ev in events if not isinstance(ev, StepStateChanged)] == [StopEvent]
    # Go reached side and finish once each: nobody emitted a second Go (or anything else).
    assert running_counts(events) == Counter({("begin", "StartEvent"): 1, ("side", "Go"): 1,
                                              ("finish", "Go"): 1})


class BadReturnFlow(Workflow):
    @step
    async def begin(self, ev: StartEvent) -> Go:
        return Go() if ev.where == "def" else 42  # type: ignore[return-value]

    @step
    def in_def(self, ev: Go) -> StopEvent:
        return "not an event"  # type: ignore[return-value]


@pytest.mark.parametrize("where,step_name,type_name", [("async", "begin", "int"), ("def", "in_def", "str")])
def test_returning_a_non_event_is_a_runtime_error_naming_the_step_and_the_type(
        rt: ProcessRuntime, where: str, step_name: str, type_name: str) -> None:
    handler = BadReturnFlow(runtime=rt).run(where=where)
    with pytest.raises(WorkflowRuntimeError) as info:
        handler.result(timeout=30)
    assert f"'{step_name}'" in str(info.value) and type_name in str(info.value)


# --- the first StopEvent ends the run -----------------------------------------------------------------------
class SlowDef(Event):
    pass


class SlowAsync(Event):
    marker: str


class RaceFlow(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> SlowDef | SlowAsync | Go | None:
        ctx.send_event(SlowDef())
        ctx.send_event(SlowAsync(marker=ev.marker))
        ctx.send_event(Go())
        return None

    @step
    def slow_def(self, ctx: Context, ev: SlowDef) -> StopEvent:
        ctx.write_event_to_stream(Started(what="def", pid=os.getpid()))
        ctx.store.set_sync("def_started", True)
        deadline = time.monotonic() + 50
        while time.monotonic() < deadline:
            time.sleep(0.02)
        ctx.write_event_to_stream(Late(what="def"))
        return StopEvent(result="slow_def")

    @step
    async def slow_async(self, ctx: Context, ev: SlowAsync) -> StopEvent:
        ctx.write_event_to_stream(Started(what="async", pid=os.getpid()))
        await ctx.store.set("async_started", True)
        try:
            await asyncio.sleep(50)
        except asyncio.CancelledError:
            ctx.write_event_to_stream(Late(what="async, while being cancelled"))
            Path(ev.marker).write_text("cancelled")
            raise
        return StopEvent(result="slow_async")

    @step
    async def referee(self, ctx: Context, ev: Go) -> StopEvent:
        while not (await ctx.store.get("def_started", default=False)
                   and await ctx.store.get("async_started", default=False)):
            await asyncio.sleep(0.01)
        return StopEvent(result="referee")


async def test_the_first_stop_event_ends_the_run_and_stops_its_other_steps(
        rt: ProcessRuntime, tmp_path: Path) -> None:
    marker = tmp_path / "cancelled"
    handler = RaceFlow(runtime=rt).run(marker=str(marker))
    assert await handler == "referee"
    # The async step is cancelled (it writes the marker after trying to stream a Late event), the def
    # step's worker is killed (its pid was streamed before the run ended), and the pool is refilled.
    assert await asyncio.to_thread(wait_until, marker.exists, 10)
    events = await collect_stream(handler)
    assert [type(ev) for ev in events] == [Started, Started, StopEvent]  # no Late: nothing after the end
    def_pid = next(ev.pid for ev in events if isinstance(ev, Started) and ev.what == "def")
    assert await asyncio.to_thread(wait_until, lambda: pid_gone(def_pid), 10)
    assert await asyncio.to_thread(
        wait_until, lambda: len(rt.worker_pids()) == 2 and def_pid not in rt.worker_pids(), 10)


# --- every stream ends with a StopEvent ---------------------------------------------------------------------
class Progress(Event):
    i: int


class EndingsFlow(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Progress(i=0))
        if ev.how == "fail":
            raise ValueError("boom in begin")
        await asyncio.sleep(50)
        return StopEvent(result="unreachable")


@pytest.mark.parametrize("how,last_type,error", [
    ("fail", WorkflowFailedEvent, ValueError),
    ("timeout", WorkflowTimedOutEvent, WorkflowTimeoutError),
    ("cancel", WorkflowCancelledEvent, WorkflowCancelledByUser),
])
async def test_every_stream_ends_with_a_stop_event_on_failure_timeout_and_cancel(
        rt: ProcessRuntime, how: str, last_type: type[StopEvent], error: type[Exception]) -> None:
    handler = EndingsFlow(runtime=rt, timeout=0.5 if how == "timeout" else 30).run(how=how)
    events = []
    async for ev in handler.stream_events():
        events.append(ev)
        if how == "cancel" and isinstance(ev, Progress):
            await handler.cancel_run()
    assert [type(ev) for ev in events] == [Progress, last_type]
    with pytest.raises(error):
        await handler
    assert handler.get_stop_event() is events[-1]
    last: Any = events[-1]
    if how == "fail":
        assert (last.step, last.error_type) == ("begin", "ValueError") and "boom in begin" in last.result
    elif how == "timeout":
        assert last.timeout == 0.5
    else:
        assert last.hard is False


# --- the store ----------------------------------------------------------------------------------------------
class Stored(Event):
    pid: int


class StoreFlow(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> Go | None:
        await ctx.store.set("cfg.model.name", "m1")  # dotted: creates the nested dicts
        await ctx.store.set("count", 1)
        ctx.send_event(Go())
        # Stay busy on this worker until the def step is done, so that it runs in another one.
        while not await ctx.store.get("def_done", default=False):
            await asyncio.sleep(0.01)
        return None

    @step
    def in_def(self, ctx: Context, ev: Go) -> Stored:
        name = ctx.store.get_sync("cfg.model.name")
        ctx.store.set_sync("count", ctx.store.get_sync("count") + 1)
        ctx.store.set_sync("from_def", {"name": name, "default": ctx.store.get_sync("nope", default=5)})
        try:
            ctx.store.get_sync("nope")
            missing = "no error"
        except ValueError:  # LlamaIndex Workflows' error for a missing path (it was KeyError)
            missing = "ValueError"
        ctx.store.set_sync("missing", missing)
        ctx.store.set_sync("def_done", True)
        return Stored(pid=os.getpid())

    @step
    async def finish(self, ctx: Context, ev: Stored) -> StopEvent:
        return StopEvent(result={
            "def_pid": ev.pid, "my_pid": os.getpid(), "cfg": await ctx.store.get("cfg"),
            "count": await ctx.store.get("count"), "from_def": await ctx.store.get("from_def"),
            "missing": await ctx.store.get("missing")})


async def test_the_store_is_shared_by_async_and_def_steps_in_different_workers(rt: ProcessRuntime) -> None:
    handler = StoreFlow(runtime=rt).run()
    events = await collect_stream(handler, expose_internal=True)
    out = await handler
    begin_pid = next(ev.worker_pid for ev in events
                     if isinstance(ev, StepStateChanged) and ev.step == "begin")
    assert begin_pid != out["def_pid"]
    assert out["cfg"] == {"model": {"name": "m1"}}
    assert out["count"] == 2
    assert out["from_def"] == {"name": "m1", "default": 5}
    assert out["missing"] == "ValueError"
    # The caller reads the run's final store through handler.ctx.
    assert await handler.ctx.store.get("cfg.model.name") == "m1"
    with pytest.raises(ValueError, match="nope"):
        await handler.ctx.store.get("nope")


# --- collect_events and write_event_to_stream ---------------------------------------------------------------
class Part(Event):
    i: int


class GatherSeen(Event):
    pid: int


class CollectFlow(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> Part | None:
        for i in range(4):
            ctx.send_event(Part(i=i))
        return None

    @step(num_workers=4)
    def gather(self, ctx: Context, ev: Part) -> StopEvent | None:
        ctx.write_event_to_stream(GatherSeen(pid=os.getpid()))
        time.sleep(0.2)  # keep two invocations in flight at once, one per worker
        parts = ctx.collect_events(ev, [Part] * 4)
        if parts is None:
            return None
        return StopEvent(result=sorted(p.i for p in parts))


def test_collect_events_gathers_events_arriving_in_different_workers(rt: ProcessRuntime) -> None:
    handler = CollectFlow(runtime=rt).run()
    events = list(handler.iter_events(timeout=30))
    assert handler.result(timeout=30) == [0, 1, 2, 3]
    assert len({ev.pid for ev in events if isinstance(ev, GatherSeen)}) == 2


class First(Event):
    pass


class Second(Event):
    pass


class OrderFlow(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> First | Second | None:
        ctx.send_event(Second())
        ctx.send_event(First())
        return None

    @step(num_workers=1)
    async def gather(self, ctx: Context, ev: First | Second) -> StopEvent | None:
        got = ctx.collect_events(ev, [First, Second], buffer_id="pair")
        if got is None:
            return None
        return StopEvent(result=[type(e).__name__ for e in got])


async def test_collect_events_returns_events_in_the_expected_order_not_arrival_order(
        rt: ProcessRuntime) -> None:
    assert await OrderFlow(runtime=rt).run() == ["First", "Second"]


class StreamFlow(Workflow):
    @step
    def begin(self, ctx: Context, ev: StartEvent) -> Go:
        for i in range(3):
            ctx.write_event_to_stream(Progress(i=i))
        return Go()

    @step
    async def finish(self, ctx: Context, ev: Go) -> StopEvent:
        ctx.write_event_to_stream(Progress(i=3))
        return StopEvent(result="ok")

    @step
    async def never(self, ev: Progress) -> None:
        raise AssertionError("events written to the stream must not be routed to steps")


async def test_write_event_to_stream_publishes_in_order_and_routes_to_no_step(rt: ProcessRuntime) -> None:
    # ``never`` takes an event no step produces, which validation refuses: it is there to catch a mis-route.
    handler = StreamFlow(runtime=rt, disable_validation=True).run()
    events = await collect_stream(handler)
    assert [ev.i for ev in events[:-1]] == [0, 1, 2, 3]  # type: ignore[attr-defined]
    assert type(events[-1]) is StopEvent
    assert await handler == "ok"


# --- exceptions from steps ----------------------------------------------------------------------------------
class BoomError(ValueError):
    pass


class ExplodeFlow(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> Go | None:
        ctx.write_event_to_stream(Started(pid=os.getpid()))
        if ev.where == "async":
            raise BoomError("bad input 7")
        return Go()

    @step
    def explode(self, ctx: Context, ev: Go) -> StopEvent:
        ctx.write_event_to_stream(Started(pid=os.getpid()))
        raise BoomError("bad input 7")


@pytest.mark.parametrize("where,step_name", [("async", "begin"), ("def", "explode")])
async def test_a_step_exception_keeps_its_type_with_a_note_and_the_remote_traceback(
        rt: ProcessRuntime, where: str, step_name: str) -> None:
    handler = ExplodeFlow(runtime=rt).run(where=where)
    events = await collect_stream(handler)
    with pytest.raises(BoomError) as info:
        await handler
    exc = info.value
    assert str(exc) == "bad input 7"
    pid = [ev for ev in events if isinstance(ev, Started)][-1].pid
    notes = getattr(exc, "__notes__", [])
    assert any(f"step '{step_name}'" in n and handler.run_id in n and f"worker pid {pid}" in n
               for n in notes), notes
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "BoomError: bad input 7" in exc.__cause__.tb and f"in {step_name}" in exc.__cause__.tb


# --- timeout ------------------------------------------------------------------------------------------------
class HangFlow(Workflow):
    @step
    def hang(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Started(pid=os.getpid()))
        while True:
            time.sleep(0.02)


class QuickFlow(Workflow):
    @step
    def only(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=os.getpid())


def test_a_timeout_fails_the_run_and_replaces_the_worker_of_a_def_step_still_running(
        rt: ProcessRuntime) -> None:
    handler = HangFlow(runtime=rt, timeout=1.5).run()
    events = list(handler.iter_events(timeout=30))
    assert [type(ev) for ev in events] == [Started, WorkflowTimedOutEvent]
    with pytest.raises(WorkflowTimeoutError):
        handler.result(timeout=30)
    pid = events[0].pid  # type: ignore[attr-defined]
    assert wait_until(lambda: pid_gone(pid), 10)
    assert wait_until(lambda: len(rt.worker_pids()) == 2 and pid not in rt.worker_pids(), 10)
    assert QuickFlow(runtime=rt).run().result(timeout=30) in rt.worker_pids()


# --- concurrent runs ----------------------------------------------------------------------------------------
class Piece(Event):
    tag: str
    stored: str
    i: int


class Tagged(Event):
    tag: str
    i: int


class IsolationFlow(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> Tagged | None:
        await ctx.store.set("tag", ev.tag)
        for i in range(2):
            ctx.send_event(Tagged(tag=ev.tag, i=i))
        return None

    @step
    async def piece(self, ctx: Context, ev: Tagged) -> Piece:
        await asyncio.sleep(0.05)
        return Piece(tag=ev.tag, stored=await ctx.store.get("tag"), i=ev.i)

    @step
    async def gather(self, ctx: Context, ev: Piece) -> StopEvent | None:
        got = ctx.collect_events(ev, [Piece, Piece])
        if got is None:
            return None
        return StopEvent(result=sorted((p.tag, p.stored, p.i) for p in got))


async def test_concurrent_runs_of_one_workflow_instance_are_isolated(rt: ProcessRuntime) -> None:
    wf = IsolationFlow(runtime=rt)
    tags = [f"run{k}" for k in range(6)]
    handlers = [wf.run(tag=t) for t in tags]
    assert len({h.run_id for h in handlers}) == 6
    results = await asyncio.gather(*handlers)
    assert results == [[(t, t, 0), (t, t, 1)] for t in tags]


class LimitFlow(Workflow):
    @step
    async def only(self, ev: StartEvent) -> StopEvent:
        start = time.time()
        await asyncio.sleep(0.25)
        return StopEvent(result=(start, time.time()))


def test_num_concurrent_runs_makes_extra_runs_wait(rt: ProcessRuntime) -> None:
    wf = LimitFlow(runtime=rt, num_concurrent_runs=2)
    handlers = [wf.run() for _ in range(5)]
    spans = [h.result(timeout=30) for h in handlers]
    assert max_overlap(spans) == 2
    unlimited = LimitFlow(runtime=rt)
    assert max_overlap([h.result(timeout=30) for h in [unlimited.run() for _ in range(3)]]) == 3


# --- parallelism --------------------------------------------------------------------------------------------
def _burn(name: str, units: int) -> Span:
    start = time.time()
    total = 0
    for i in range(units):
        total += i * i
    return Span(name=name, pid=os.getpid(), start=start, end=time.time())


class ParallelFlow(Workflow):
    @step
    def left(self, ev: StartEvent) -> Span:
        return _burn("left", ev.units)

    @step
    def right(self, ev: StartEvent) -> Span:
        return _burn("right", ev.units)

    @step
    async def gather(self, ctx: Context, ev: Span) -> StopEvent | None:
        spans = ctx.collect_events(ev, [Span, Span])
        if spans is None:
            return None
        return StopEvent(result=spans)


def test_two_cpu_bound_def_steps_of_one_run_execute_at_once_in_different_processes(
        rt: ProcessRuntime) -> None:
    # ~0.2 s of CPU each: long enough that a moment of other load on the machine (a test's child interpreter
    # still exiting) cannot push one step past the other's end.
    a, b = ParallelFlow(runtime=rt).run(units=6_000_000).result(timeout=50)
    assert {a.name, b.name} == {"left", "right"}
    assert a.pid != b.pid and {a.pid, b.pid} <= set(rt.worker_pids())
    assert a.pid != os.getpid() and b.pid != os.getpid()
    assert a.start < b.end and b.start < a.end, (a, b)  # the intervals overlap
