"""The workflows the benchmarks and the load test run, once for procflow and once for LlamaIndex Workflows.

Each procflow workflow has a LlamaIndex twin with the same steps and events, so that a figure and its
baseline measure the same program. The LlamaIndex twins exist only when the optional ``compare`` extra is
installed (``LLAMA`` is then the ``workflows`` package, else None).

This module is imported by reference in the workers (multiprocessing passes the parent's ``sys.path``,
which holds this directory when a script here is run), so its classes travel as names, as a user's
importable module would.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Awaitable, Callable

from actors import Context, Event, StartEvent, StopEvent, Workflow, step

try:
    import workflows as LLAMA
    from workflows import Context as LContext
    from workflows import Workflow as LWorkflow
    from workflows import step as lstep
    from workflows.events import Event as LEvent
    from workflows.events import StartEvent as LStartEvent
    from workflows.events import StopEvent as LStopEvent
except ImportError:  # the compare extra is not installed: LlamaIndex columns print "n/a"
    LLAMA = None


def cpu_unit(n: int) -> int:
    """Pure-Python CPU work holding the GIL the whole time (about 0.1 us per ``n``)."""
    return sum(i * i for i in range(n)) % 7


def calibrate_cpu_unit(seconds: float) -> int:
    """The ``n`` that makes ``cpu_unit(n)`` take about ``seconds`` of CPU. Timed in thread CPU time, so
    that other processes competing for the cores do not shrink the unit."""
    n = 200_000
    while True:
        took = min(_cpu_seconds(n) for _ in range(3))  # the least disturbed of three
        if took > 0.05:
            return max(1, int(n * seconds / took))
        n *= 4


def _cpu_seconds(n: int) -> float:
    t = time.thread_time()
    cpu_unit(n)
    return time.thread_time() - t


# --- events (shared by both frameworks' chains would be wrong: each framework has its own Event base) ----
class E1(Event): pass
class E2(Event): pass
class E3(Event): pass
class E4(Event): pass
class E5(Event): pass
class E6(Event): pass
class E7(Event): pass
class E8(Event): pass
class E9(Event): pass


class Chunk(Event):
    n: int


class Done(Event):
    value: int


class Tick(Event):
    i: int


class Started(Event):
    pid: int


class Spin(Event):
    i: int


class Blob(Event):
    """A large payload and when its sender let go of it (time.monotonic: one clock for every process)."""

    data: Any
    t: float


class Carry(Event):
    data: Any
    hops: int
    keep: bool = False


class Gap1(Event):
    t: float
    pid: int


class Gap2(Event):
    t: float
    pid: int
    gap: float


# --- procflow workflows -------------------------------------------------------------------------------
class Chain10(Workflow):
    """Ten trivial async steps in a line: per-hop overhead."""

    @step
    async def s0(self, ev: StartEvent) -> E1: return E1()
    @step
    async def s1(self, ev: E1) -> E2: return E2()
    @step
    async def s2(self, ev: E2) -> E3: return E3()
    @step
    async def s3(self, ev: E3) -> E4: return E4()
    @step
    async def s4(self, ev: E4) -> E5: return E5()
    @step
    async def s5(self, ev: E5) -> E6: return E6()
    @step
    async def s6(self, ev: E6) -> E7: return E7()
    @step
    async def s7(self, ev: E7) -> E8: return E8()
    @step
    async def s8(self, ev: E8) -> E9: return E9()
    @step
    async def s9(self, ev: E9) -> StopEvent: return StopEvent(result=10)


class Chain1(Workflow):
    """One trivial step: the fixed cost of a run, subtracted to get the marginal hop cost."""

    @step
    async def s0(self, ev: StartEvent) -> StopEvent: return StopEvent(result=1)


class Three(Workflow):
    """Three trivial async steps: the throughput workload."""

    @step
    async def a(self, ev: StartEvent) -> E1: return E1()
    @step
    async def b(self, ev: E1) -> E2: return E2()
    @step
    async def c(self, ev: E2) -> StopEvent: return StopEvent(result=3)


class FanOut(Workflow):
    """The issue's CPU pipeline: split into ``parts`` chunks, crunch each in a ``def`` step, gather."""

    @step
    async def split(self, ctx: Context, ev: StartEvent) -> Chunk | None:
        for _ in range(ev.parts):
            ctx.send_event(Chunk(n=ev.work))
        return None

    @step(num_workers=8)
    def crunch(self, ev: Chunk) -> Done:
        return Done(value=cpu_unit(ev.n))

    @step
    async def gather(self, ctx: Context, ev: Done) -> StopEvent | None:
        done = ctx.collect_events(ev, [Done] * 8)
        if done is None:
            return None
        return StopEvent(result=sum(d.value for d in done))


class StreamAsync(Workflow):
    """An async step writing ``count`` events to the stream."""

    @step
    async def produce(self, ctx: Context, ev: StartEvent) -> StopEvent:
        for i in range(ev.count):
            ctx.write_event_to_stream(Tick(i=i))
        return StopEvent(result=ev.count)


class StreamDef(Workflow):
    """The same from a plain ``def`` step (its own thread in its worker)."""

    @step
    def produce(self, ctx: Context, ev: StartEvent) -> StopEvent:
        for i in range(ev.count):
            ctx.write_event_to_stream(Tick(i=i))
        return StopEvent(result=ev.count)


def touch(data: Any) -> None:
    """Read one byte of every page of ``data`` (what using it costs at least: a view maps lazily)."""
    view = memoryview(data).cast("B")
    sum(view[::4096])


class PayloadHop(Workflow):
    """A def step hands a large payload to the next def step: from its return to the next one holding it."""

    @step
    def send(self, ev: StartEvent) -> Blob:
        return Blob(data=ev.data, t=time.monotonic())

    @step
    def recv(self, ev: Blob) -> StopEvent:
        touch(ev.data)
        return StopEvent(result=time.monotonic() - ev.t)


class FreshHop(Workflow):
    """``PayloadHop`` with a payload the sender makes (a writable copy of what it was given), timed from its
    return: what sending a new array costs, rather than passing one on."""

    @step
    def send(self, ev: StartEvent) -> Blob:
        data = ev.data.copy()
        return Blob(data=data, t=time.monotonic())

    @step
    def recv(self, ev: Blob) -> StopEvent:
        touch(ev.data)
        return StopEvent(result=time.monotonic() - ev.t)


class BigChain(Workflow):
    """A large payload through a chain of ``def`` steps (each hands it on unchanged)."""

    @step
    def first(self, ev: StartEvent) -> Carry:
        return Carry(data=ev.data, hops=1, keep=ev.get("keep", False))

    @step
    def middle(self, ev: Carry) -> Carry | StopEvent:
        if ev.hops < 3:
            return Carry(data=ev.data, hops=ev.hops + 1, keep=ev.keep)
        return StopEvent(result=ev.data if ev.keep else len(ev.data))


class BackToBack(Workflow):
    """Three trivial def steps in a line: the gap between one finishing and the next starting."""

    @step
    def a(self, ev: StartEvent) -> Gap1:
        return Gap1(t=time.monotonic(), pid=os.getpid())

    @step
    def b(self, ev: Gap1) -> Gap2:
        t = time.monotonic()
        return Gap2(t=time.monotonic(), pid=os.getpid(), gap=t - ev.t, pid0=ev.pid)

    @step
    def c(self, ev: Gap2) -> StopEvent:
        t = time.monotonic()
        return StopEvent(result=(ev.gap, t - ev.t, {ev.pid0, ev.pid, os.getpid()}))


def _ignore_sigterm_from_any_thread() -> None:
    # signal.signal() only works in the main thread, and def steps run in a step thread: ask libc.
    import ctypes
    import signal

    ctypes.CDLL(None).signal(int(signal.SIGTERM), ctypes.c_void_p(1))  # 1 == SIG_IGN


class Spinner(Workflow):
    """``width`` def steps in a tight pure-Python loop that never ends: the hard-cancel target."""

    @step
    async def fan(self, ctx: Context, ev: StartEvent) -> Spin | None:
        for i in range(ev.width):
            ctx.send_event(Spin(i=i, stubborn=ev.get("stubborn", False)))
        return None

    @step(num_workers=8)
    def spin(self, ctx: Context, ev: Spin) -> StopEvent:
        if ev.stubborn:
            _ignore_sigterm_from_any_thread()
        ctx.write_event_to_stream(Started(pid=os.getpid()))
        x = 0
        while True:
            x += 1


class MemoryMix(Workflow):
    """A small mixed run for the memory benchmark: store, stream, an async step and a def step."""

    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> E1:
        await ctx.store.set("seen", ev.i)
        ctx.write_event_to_stream(Tick(i=ev.i))
        return E1()

    @step
    def work(self, ev: E1) -> E2:
        return E2(payload=cpu_unit(200))

    @step
    async def end(self, ctx: Context, ev: E2) -> StopEvent:
        return StopEvent(result=await ctx.store.get("seen"))


# --- the LlamaIndex twins ------------------------------------------------------------------------------
if LLAMA is not None:
    class LE1(LEvent): pass
    class LE2(LEvent): pass
    class LE3(LEvent): pass
    class LE4(LEvent): pass
    class LE5(LEvent): pass
    class LE6(LEvent): pass
    class LE7(LEvent): pass
    class LE8(LEvent): pass
    class LE9(LEvent): pass

    class LChunk(LEvent):
        n: int

    class LDone(LEvent):
        value: int

    class LTick(LEvent):
        i: int

    class LChain10(LWorkflow):
        @lstep
        async def s0(self, ev: LStartEvent) -> LE1: return LE1()
        @lstep
        async def s1(self, ev: LE1) -> LE2: return LE2()
        @lstep
        async def s2(self, ev: LE2) -> LE3: return LE3()
        @lstep
        async def s3(self, ev: LE3) -> LE4: return LE4()
        @lstep
        async def s4(self, ev: LE4) -> LE5: return LE5()
        @lstep
        async def s5(self, ev: LE5) -> LE6: return LE6()
        @lstep
        async def s6(self, ev: LE6) -> LE7: return LE7()
        @lstep
        async def s7(self, ev: LE7) -> LE8: return LE8()
        @lstep
        async def s8(self, ev: LE8) -> LE9: return LE9()
        @lstep
        async def s9(self, ev: LE9) -> LStopEvent: return LStopEvent(result=10)

    class LChain1(LWorkflow):
        @lstep
        async def s0(self, ev: LStartEvent) -> LStopEvent: return LStopEvent(result=1)

    class LThree(LWorkflow):
        @lstep
        async def a(self, ev: LStartEvent) -> LE1: return LE1()
        @lstep
        async def b(self, ev: LE1) -> LE2: return LE2()
        @lstep
        async def c(self, ev: LE2) -> LStopEvent: return LStopEvent(result=3)

    class LFanOut(LWorkflow):
        @lstep
        async def split(self, ctx: LContext, ev: LStartEvent) -> LChunk | None:
            for _ in range(ev.parts):
                ctx.send_event(LChunk(n=ev.work))
            return None

        @lstep(num_workers=8)
        def crunch(self, ev: LChunk) -> LDone:
            return LDone(value=cpu_unit(ev.n))

        @lstep
        async def gather(self, ctx: LContext, ev: LDone) -> LStopEvent | None:
            done = ctx.collect_events(ev, [LDone] * 8)
            if done is None:
                return None
            return LStopEvent(result=sum(d.value for d in done))

    class LBlob(LEvent):
        data: Any
        t: float

    class LPayloadHop(LWorkflow):
        @lstep
        def send(self, ev: LStartEvent) -> LBlob:
            return LBlob(data=ev.data, t=time.monotonic())

        @lstep
        def recv(self, ev: LBlob) -> LStopEvent:
            touch(ev.data)
            return LStopEvent(result=time.monotonic() - ev.t)

    class LStreamAsync(LWorkflow):
        @lstep
        async def produce(self, ctx: LContext, ev: LStartEvent) -> LStopEvent:
            for i in range(ev.count):
                ctx.write_event_to_stream(LTick(i=i))
            return LStopEvent(result=ev.count)


def llama(name: str) -> Any:
    """The LlamaIndex twin class ``name``, or None without the compare extra."""
    return globals().get(name) if LLAMA is not None else None


# --- the load test's mixed workflow --------------------------------------------------------------------
GRANDCHILD_MARK = "997.25"  # `sleep 997.25`: a process a step starts; it must die with a hard-cancelled step


class InjectedFailure(Exception):
    """Raised on purpose by the load test's failing steps."""


class Job(Event):
    n: int
    fail: bool = False
    spin_s: float = 0.0
    grandchild: bool = False
    stream: int = 0


class JobDone(Event):
    value: int


class Io(Event):
    delay: float
    fail: bool = False


class IoDone(Event):
    value: int


class Progress(Event):
    what: str


class LoadMix(Workflow):
    """CPU ``def`` steps, async steps, the store, streaming, collect_events; failures on demand.

    StartEvent fields: parts, n (cpu_unit size per part), delay (async step sleep), stream (events per part),
    fail_def, fail_async, spin_s (the first part spins this long first: a cancel target), grandchild.
    """

    @step
    async def plan(self, ctx: Context, ev: StartEvent) -> Io | Job:  # sends Job too
        await ctx.store.set("plan", {"parts": ev.parts})
        for i in range(ev.parts):
            ctx.send_event(Job(n=ev.n, fail=ev.fail_def and i == 0, spin_s=ev.spin_s if i == 0 else 0.0,
                               grandchild=ev.grandchild and i == 0, stream=ev.stream))
        ctx.write_event_to_stream(Progress(what="planned"))
        return Io(delay=ev.delay, fail=ev.fail_async)

    @step(num_workers=4)
    def crunch(self, ctx: Context, ev: Job) -> JobDone:
        if ev.grandchild:
            import subprocess

            subprocess.Popen(["sleep", GRANDCHILD_MARK], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + ev.spin_s
        while time.monotonic() < deadline:
            cpu_unit(2_000)
        value = cpu_unit(ev.n)
        if ev.fail:
            raise InjectedFailure("injected failure in a def step")
        for k in range(ev.stream):
            ctx.write_event_to_stream(Progress(what=f"crunch {k}"))
        return JobDone(value=value)

    @step
    async def io(self, ctx: Context, ev: Io) -> IoDone:
        import asyncio

        await asyncio.sleep(ev.delay)
        if ev.fail:
            raise InjectedFailure("injected failure in an async step")
        plan = await ctx.store.get("plan")
        return IoDone(value=plan["parts"])

    @step
    async def gather(self, ctx: Context, ev: JobDone | IoDone) -> StopEvent | None:
        parts = await ctx.store.get("plan.parts")
        got = ctx.collect_events(ev, [JobDone] * parts + [IoDone])
        if got is None:
            return None
        return StopEvent(result=sum(e.value for e in got))


# --- measurement helpers (bench.py, bench_ray.py) ----------------------------------------------------------
async def latencies(start: Callable[[], Awaitable[Any]], n: int, warmup: int) -> list[float]:
    """Seconds each of ``n`` sequential ``await start()`` took, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        await start()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await start()
        out.append(time.perf_counter() - t)
    return out


async def throughput(start: Callable[[], Awaitable[Any]], inflight: int, total: int) -> float:
    """Runs/s of ``total`` ``await start()`` calls kept ``inflight`` at a time."""
    todo = iter(range(total))

    async def lane() -> None:
        for _ in todo:
            await start()

    t = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(inflight)))
    return total / (time.perf_counter() - t)
