"""Issue 7 item 4: one conformance suite, run against every engine (the process runtime and the Ray runtime).

Each test takes ``rt``, a fresh two-worker runtime of the engine under test; the same user code must give the
same results on both. The Ray engine runs on one local Ray instance started by this module (skipped when the
``ray`` extra is not installed) and shut down after its last test, when no Ray process may be left.

Ray's own processes (gcs_server, raylet, its agents and worker processes, including the actors that host our
workers) are children of this process while Ray runs, so this module overrides the per-test leak check to
ignore them; whether a killed worker's process is gone is asserted where it matters, with ``pid_gone``.

Large payloads (issue 13): a 50 MB ``bytes`` and a 50 MB numpy payload through a chain of ``def`` steps arrive
whole on both engines, and nothing of them is held once the runs end (shared memory segments; on Ray, the
object store back to its baseline, read with Ray's memory API); small payloads stay in band; on Ray, a payload
already routed when the actor that produced it is SIGKILLed or hard-cancelled is still read whole, and a
buffer Ray lost fails its reader with a ``PayloadError`` that says so.

Two Ray-only tests run in a child interpreter, each with a Ray of its own: a ``RayRuntime`` without an address
starts a local Ray and ends it (and ``import runtime`` does not import ray), and a node of a (simulated,
``ray.cluster_utils.Cluster``) cluster lost mid-step fails the run clearly while the pool moves on to another
node.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from conftest import pid_gone, wait_until

from actors import (
    ConstantDelayRetryPolicy, Context, Event, HumanResponseEvent, InputRequiredEvent, PayloadError,
    RemoteTraceback, StartEvent, StopEvent, WorkerCrashedError, Workflow, WorkflowCancelledByUser,
    WorkflowCancelledEvent, WorkflowTimedOutEvent, WorkflowTimeoutError, step,
)
from runtime import ProcessRuntime

WAIT = 60  # seconds a healthy run may take on a loaded machine before we call it a hang
HERE = Path(__file__).resolve().parent


# --- engines, and the leak check that knows Ray's processes --------------------------------------------------
def _ray_owned(cmdline: str) -> bool:
    return "ray::" in cmdline or f"{os.sep}ray{os.sep}" in cmdline


def _children() -> dict[int, str]:
    """Child processes that are neither multiprocessing's helpers nor Ray's."""
    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if not _ray_owned(cmd) and "forkserver" not in cmd and "resource_tracker" not in cmd:
            out[p.pid] = cmd
    return out


def _ray_processes() -> list[str]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            if _ray_owned(cmd) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {cmd[:100]}")
        except psutil.Error:
            continue
    return out


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """conftest's leak check, blind to Ray's processes (the engine fixture checks those at the end)."""
    before = set(_children())
    yield
    leaked: dict[int, str] = {}
    for _ in range(30):
        leaked = {pid: cmd for pid, cmd in _children().items() if pid not in before}
        if not leaked:
            return
        time.sleep(0.1)
    pytest.fail(f"test leaked {len(leaked)} child process(es): {list(leaked.values())}")


@pytest.fixture(scope="module", params=["process", "ray"])
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "process":
        yield "process"
        return
    ray = pytest.importorskip("ray")
    # Logical CPUs: a runtime's two actors plus room for the ones a hard cancel or a crash respawns
    # while the dead one's CPU is being released.
    # The store holds the large-payload tests' 50 MB buffers (a start event and the hops' results at once).
    ray.init(include_dashboard=False, log_to_driver=False, num_cpus=4,
             object_store_memory=300 * 1024 * 1024)
    try:
        yield "ray"
        assert wait_until(lambda: not [p for p in _ray_processes() if "RayWorker" in p], 15), (
            f"worker actors outlived their runtimes: {_ray_processes()}")
    finally:
        ray.shutdown()
    assert wait_until(lambda: not _ray_processes(), 30), f"Ray left processes: {_ray_processes()}"


@pytest.fixture
def rt(engine: str) -> Iterator[ProcessRuntime]:
    """A warm two-worker runtime of the engine under test."""
    if engine == "ray":
        from runtime import RayRuntime

        runtime: ProcessRuntime = RayRuntime(workers=2, restart_window=5.0)
    else:
        runtime = ProcessRuntime(workers=2, restart_window=5.0)
    runtime.start(wait=True)
    try:
        yield runtime
    finally:
        runtime.shutdown()


def ran_in(engine: str, pid: int) -> bool:
    """Whether ``pid`` is a worker of ``engine``: a Ray actor's process is titled ``ray::RayWorker...``."""
    cmd = " ".join(psutil.Process(pid).cmdline())
    return ("ray::RayWorker" in cmd) == (engine == "ray")


# --- workflows (module-level: workers import this module by name) -------------------------------------------
class Mid(Event):
    x: int


class Pipeline(Workflow):
    @step
    async def first(self, ctx: Context, ev: StartEvent) -> Mid:
        await ctx.store.set("async_pid", os.getpid())
        return Mid(x=ev.x * 10)

    @step
    def second(self, ctx: Context, ev: Mid) -> StopEvent:
        return StopEvent(result={"x": ev.x + 1, "async_pid": ctx.store.get_sync("async_pid"),
                                 "def_pid": os.getpid()})


class Item(Event):
    i: int


class Result(Event):
    i: int


class Capped(Workflow):
    @step
    async def fan(self, ctx: Context, ev: StartEvent) -> Item | None:
        await ctx.store.set("n", ev.n)
        for i in range(ev.n):
            ctx.send_event(Item(i=i))
        return None

    @step(num_workers=2)
    async def work(self, ctx: Context, ev: Item) -> Result:
        async with ctx.store.edit_state() as state:
            state["running"] = state.get("running", 0) + 1
            state["peak"] = max(state.get("peak", 0), state["running"])
        await asyncio.sleep(0.02)
        async with ctx.store.edit_state() as state:
            state["running"] -= 1
        return Result(i=ev.i)

    @step
    async def gather(self, ctx: Context, ev: Result) -> StopEvent | None:
        got = ctx.collect_events(ev, [Result] * await ctx.store.get("n"))
        if got is None:
            return None
        return StopEvent(result=(sorted(e.i for e in got), await ctx.store.get("peak")))


class Part(Event):
    who: str


class Gather(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> Part | None:
        ctx.send_event(Part(who="step"))
        return None

    @step
    def join(self, ctx: Context, ev: Part) -> StopEvent | None:
        got = ctx.collect_events(ev, [Part, Part])
        if got is None:
            return None
        return StopEvent(result=sorted(p.who for p in got))


class Tick(Event):
    i: int


class Ticker(Workflow):
    @step
    def tick(self, ctx: Context, ev: StartEvent) -> StopEvent:
        for i in range(ev.n):
            ctx.write_event_to_stream(Tick(i=i))
        return StopEvent(result="ticked")


class Answer(HumanResponseEvent):
    response: str = ""


class Ask(InputRequiredEvent):
    prefix: str = ""


class AskFlow(Workflow):
    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> StopEvent:
        answer = await ctx.wait_for_event(Answer, waiter_event=Ask(prefix="your name?"))
        return StopEvent(result=answer.response)


class Started(Event):
    pid: int


class Sleepy(Workflow):
    @step
    def nap(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Started(pid=os.getpid()))
        time.sleep(120)
        return StopEvent(result="woke")


class Spin(Workflow):
    @step
    def spin(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Started(pid=os.getpid()))
        while True:  # pure Python: never releases the GIL for long, never checks anything
            pass


class Slow(Workflow):
    @step
    async def slow(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Started(pid=os.getpid()))
        await asyncio.sleep(ev.seconds)
        return StopEvent(result="slow done")


class Flaky(Workflow):
    @step(retry_policy=ConstantDelayRetryPolicy(maximum_attempts=3, delay=0.01))
    def flaky(self, ctx: Context, ev: StartEvent) -> StopEvent:
        attempt = ctx.store.get_sync("attempts", default=0) + 1
        ctx.store.set_sync("attempts", attempt)
        if attempt == 1 and ev.crash:
            os._exit(3)  # the worker is lost mid-step
        if attempt < 3 and not ev.crash:
            raise ValueError(f"attempt {attempt} failed")
        return StopEvent(result=attempt)


class Boom(Workflow):
    @step
    def boom(self, ev: StartEvent) -> StopEvent:
        raise KeyError("no such thing")


class Double(Workflow):
    @step
    def double(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.i * 2)


class Payload(Event):
    data: Any


class Forwarded(Event):
    data: Any


class Hold(Event):
    gate: str


def describe(data: Any) -> dict[str, Any]:
    """What a step received: its type, size, content digest and, for arrays and views, writability."""
    out: dict[str, Any] = {"type": type(data).__name__, "pid": os.getpid()}
    if isinstance(data, np.ndarray):
        out.update(dtype=str(data.dtype), shape=data.shape, writeable=bool(data.flags.writeable))
    elif isinstance(data, memoryview):
        out.update(readonly=data.readonly)
    out["digest"] = hashlib.sha256(memoryview(data).cast("B")).hexdigest()
    out["nbytes"] = memoryview(data).nbytes
    return out


class PayloadChain(Workflow):
    """def -> def -> def: the payload of the start event sent on, forwarded, then described."""

    @step
    def first(self, ev: StartEvent) -> Payload:
        return Payload(data=ev.data)

    @step
    def second(self, ev: Payload) -> Forwarded:
        return Forwarded(data=ev.data)

    @step
    def third(self, ev: Forwarded) -> StopEvent:
        return StopEvent(result=describe(ev.data))


class QueuedPayload(Workflow):
    """``make`` (def) says where it runs, sends ``Hold`` and returns a large payload; ``take`` (one at a time)
    is held up by ``Hold`` until the gate file exists, so the payload waits, routed, in its queue."""

    @step
    def make(self, ctx: Context, ev: StartEvent) -> Payload | Hold:
        ctx.write_event_to_stream(Started(pid=os.getpid()))
        ctx.send_event(Hold(gate=ev.gate))
        return Payload(data=bytes(range(256)) * (ev.size // 256))

    @step(num_workers=1)
    def take(self, ev: Hold | Payload) -> StopEvent | None:
        if isinstance(ev, Hold):
            deadline = time.monotonic() + WAIT
            while not os.path.exists(ev.gate) and time.monotonic() < deadline:
                time.sleep(0.02)
            return None
        return StopEvent(result=describe(ev.data))


class Chunk(Event):
    data: Any
    i: int


class Reuses(Workflow):
    """A def step sends one array three times, changing it in between and after."""

    @step
    def send(self, ctx: Context, ev: StartEvent) -> Chunk | None:
        buf = np.zeros(ev.n, dtype=np.int64)
        for i in range(3):
            buf[:] = i
            ctx.send_event(Chunk(data=buf, i=i))
        buf[:] = 99
        return None

    @step
    def gather(self, ctx: Context, ev: Chunk) -> StopEvent | None:
        got = ctx.collect_events(ev, [Chunk] * 3)
        if got is None:
            return None
        return StopEvent(result=sorted((c.i, int(c.data.min()), int(c.data.max())) for c in got))


class StreamsArray(Workflow):
    @step
    def make(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Payload(data=np.arange(ev.n, dtype=np.int64)))
        return StopEvent(result="streamed")


class StreamsPayload(Workflow):
    """A def step streams a large payload, then spins until it is killed."""

    @step
    def spin(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Payload(data=np.arange(ev.n, dtype=np.int64)))
        while True:
            pass


def first_started(handler: Any) -> Started:
    for ev in handler.iter_events(timeout=WAIT):
        if isinstance(ev, Started):
            return ev
    raise AssertionError("the run ended before its step started")


def assert_pool_healed(rt: ProcessRuntime, dead: int) -> None:
    assert wait_until(lambda: pid_gone(dead), 15), f"worker {dead} survived"
    assert wait_until(lambda: len(rt.worker_pids()) == 2 and dead not in rt.worker_pids(), 30), (
        rt.worker_pids())
    assert Double(timeout=WAIT, runtime=rt).run(i=21).result(timeout=WAIT) == 42


# --- the suite -----------------------------------------------------------------------------------------------
def test_async_and_def_steps_run_in_the_engines_workers_and_share_the_store(
        rt: ProcessRuntime, engine: str) -> None:
    out = Pipeline(timeout=WAIT, runtime=rt).run(x=3).result(timeout=WAIT)
    assert out["x"] == 31
    assert {out["async_pid"], out["def_pid"]} <= set(rt.worker_pids())
    assert ran_in(engine, out["async_pid"]) and ran_in(engine, out["def_pid"])


def test_classes_defined_inside_a_function_travel_by_value(rt: ProcessRuntime) -> None:
    class Box:
        def __init__(self, word: str) -> None:
            self.word = word

    class LocalFlow(Workflow):  # local: not importable, so cloudpickled with its steps
        @step
        async def a(self, ev: StartEvent) -> Mid:
            assert isinstance(ev, StartEvent)
            return Mid(x=len(ev.word))

        @step
        def b(self, ev: Mid) -> StopEvent:
            assert isinstance(ev, Mid)
            return StopEvent(result=Box("x" * ev.x))

    box = LocalFlow(timeout=WAIT, runtime=rt).run(word="hi!").result(timeout=WAIT)
    assert type(box).__name__ == "Box" and box.word == "xxx"


def test_a_local_workflow_whose_annotations_name_classes_its_bodies_do_not_use_runs(
        rt: ProcessRuntime) -> None:
    saved = Workflow._steps_version

    class Other(Workflow):
        pass

    @step(workflow=Other)  # a free step the workers never see: the parent's _steps_version moves on
    async def free(ev: StartEvent) -> StopEvent:
        return StopEvent()

    class LocalFlow(Workflow):
        @step
        async def a(self, ev: StartEvent) -> Mid:
            return Mid(x=1)

        @step
        def b(self, ev: Mid) -> StopEvent:
            return StopEvent(result=ev.x)

    try:
        assert LocalFlow(timeout=WAIT, runtime=rt).run().result(timeout=WAIT) == 1
    finally:
        Workflow._steps_version = saved


def test_num_workers_caps_a_step_and_edit_state_and_collect_events_see_every_invocation(
        rt: ProcessRuntime) -> None:
    items, peak = Capped(timeout=WAIT, runtime=rt).run(n=6).result(timeout=WAIT)
    assert items == list(range(6))
    assert 1 <= peak <= 2


def test_events_sent_by_a_step_and_by_the_caller_are_collected_together(rt: ProcessRuntime) -> None:
    handler = Gather(timeout=WAIT, runtime=rt).run()
    handler.send_event_sync(Part(who="caller"))
    assert handler.result(timeout=WAIT) == ["caller", "step"]


def test_streamed_events_arrive_in_order_and_the_stop_event_comes_last(rt: ProcessRuntime) -> None:
    handler = Ticker(timeout=WAIT, runtime=rt).run(n=300)
    events = list(handler.iter_events(timeout=WAIT))
    assert [e.i for e in events if isinstance(e, Tick)] == list(range(300))
    assert type(events[-1]) is StopEvent and handler.result(timeout=WAIT) == "ticked"


def test_the_blocking_handler_waits_answers_a_human_and_calls_back(rt: ProcessRuntime) -> None:
    handler = AskFlow(timeout=WAIT, runtime=rt).run()
    with pytest.raises(TimeoutError):
        handler.result(timeout=0.05)  # the wait timed out, the run goes on
    assert not handler.done()
    called = threading.Event()
    handler.add_done_callback(lambda h: called.set())
    for ev in handler.iter_events(timeout=WAIT):
        if isinstance(ev, Ask):
            assert ev.prefix == "your name?"
            handler.send_event_sync(Answer(response="Robert"))
    assert handler.result(timeout=WAIT) == "Robert"
    assert called.wait(10) and handler.done() and handler.exception(timeout=0) is None
    assert handler.run_id in str(handler)


async def test_the_async_handler_streams_answers_a_human_and_awaits_the_result(rt: ProcessRuntime) -> None:
    handler = AskFlow(timeout=WAIT, runtime=rt).run()
    asked = 0
    async for ev in handler.stream_events():
        if isinstance(ev, Ask):
            asked += 1
            await handler.send_event(Answer(response="Amelia"))
    assert asked == 1 and await handler == "Amelia"


def test_a_steps_exception_reaches_the_caller_with_the_workers_traceback(rt: ProcessRuntime) -> None:
    with pytest.raises(KeyError) as info:
        Boom(timeout=WAIT, runtime=rt).run().result(timeout=WAIT)
    assert any("raised in step 'boom'" in note for note in info.value.__notes__)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "no such thing" in info.value.__cause__.tb


def test_a_retry_policy_runs_a_failing_step_again_until_it_succeeds(rt: ProcessRuntime) -> None:
    assert Flaky(timeout=WAIT, runtime=rt).run(crash=False).result(timeout=WAIT) == 3


@pytest.mark.timeout(90)
def test_a_worker_lost_mid_step_is_retried_per_the_steps_retry_policy(rt: ProcessRuntime) -> None:
    assert Flaky(timeout=WAIT, runtime=rt).run(crash=True).result(timeout=WAIT) == 2


@pytest.mark.timeout(90)
def test_a_worker_lost_mid_step_fails_the_run_clearly(rt: ProcessRuntime, engine: str) -> None:
    handler = Sleepy(timeout=WAIT, runtime=rt).run()
    started = first_started(handler)
    os.kill(started.pid, signal.SIGKILL)  # as when its machine goes away
    with pytest.raises(WorkerCrashedError) as info:
        handler.result(timeout=WAIT)
    err = info.value
    assert err.step == "nap" and err.pid == started.pid
    assert f"(pid {started.pid}) running step 'nap'" in str(err) and "died" in str(err)
    if engine == "ray":
        assert "Ray actor died" in str(err)
    assert_pool_healed(rt, started.pid)


@pytest.mark.timeout(90)
def test_a_timeout_fails_the_run_and_stops_its_def_step(rt: ProcessRuntime) -> None:
    handler = Sleepy(timeout=3.0, runtime=rt).run()
    started = first_started(handler)
    with pytest.raises(WorkflowTimeoutError):
        handler.result(timeout=WAIT)
    assert isinstance(handler.get_stop_event(), WorkflowTimedOutEvent)
    assert_pool_healed(rt, started.pid)


@pytest.mark.timeout(90)
def test_hard_cancel_stops_a_cpu_bound_def_step_at_once_and_other_runs_continue(rt: ProcessRuntime) -> None:
    spinning = Spin(timeout=WAIT, runtime=rt).run()
    spinner = first_started(spinning)
    other = Slow(timeout=WAIT, runtime=rt).run(seconds=1.0)
    first_started(other)  # the other run is mid-step on the other worker
    assert spinning.cancel() is True
    assert spinning.done() and spinning.cancelled()
    with pytest.raises(WorkflowCancelledByUser):
        spinning.result(timeout=0)
    stop = spinning.get_stop_event()
    assert isinstance(stop, WorkflowCancelledEvent) and stop.hard
    assert other.result(timeout=WAIT) == "slow done"
    assert_pool_healed(rt, spinner.pid)


def test_graceful_cancel_ends_a_run_of_async_steps_as_cancelled(rt: ProcessRuntime) -> None:
    handler = Slow(timeout=WAIT, runtime=rt).run(seconds=120.0)
    first_started(handler)
    handler.cancel_run_sync(timeout=WAIT)
    with pytest.raises(WorkflowCancelledByUser):
        handler.result(timeout=WAIT)
    assert isinstance(handler.get_stop_event(), WorkflowCancelledEvent)


def test_many_concurrent_runs_all_complete(rt: ProcessRuntime) -> None:
    handlers = [Pipeline(timeout=WAIT, runtime=rt).run(x=i) for i in range(40)]
    assert [h.result(timeout=WAIT)["x"] for h in handlers] == [i * 10 + 1 for i in range(40)]


# --- large payloads (issue 13) -------------------------------------------------------------------------------
def object_store_used() -> int:
    """Bytes in Ray's object store now (Ray's memory API: what ``ray memory --stats-only`` reads)."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address))
    return int(reply.store_stats.object_store_bytes_used)


def held_now(rt: ProcessRuntime) -> dict[str, int]:
    gc.collect()
    return rt.stats().shared_memory


def released(rt: ProcessRuntime, engine: str, baseline: int) -> bool:
    """Whether the runtime holds no large buffer any more and, on Ray, the object store is back to what it
    held before the test (Ray frees an object a moment after its last reference goes)."""
    def done() -> bool:
        now = held_now(rt)
        if engine == "ray":
            return now["objects"] == 0 and now["bytes"] == 0 and object_store_used() <= baseline
        return now["segments"] == 0 and now["bytes"] == 0

    return wait_until(done, 20)


def store_baseline(engine: str) -> int:
    return object_store_used() if engine == "ray" else 0


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["bytes", "numpy"])
def test_a_50_mb_payload_through_a_chain_of_def_steps_arrives_whole_and_is_released_after(
        rt: ProcessRuntime, engine: str, kind: str) -> None:
    baseline = store_baseline(engine)
    if kind == "bytes":
        payload: Any = bytes(range(256)) * (50 * 2**20 // 256)
    else:
        payload = np.arange(50 * 2**20 // 8, dtype=np.float64)
    handler = PayloadChain(timeout=WAIT, runtime=rt).run(data=payload)
    info = handler.result(timeout=WAIT)
    assert info["digest"] == hashlib.sha256(memoryview(payload).cast("B")).hexdigest()
    assert info["nbytes"] == 50 * 2**20 and info["pid"] in rt.worker_pids()
    if kind == "bytes":
        assert info["type"] == "bytes"  # a private copy, of its own type
    else:
        assert info["type"] == "ndarray" and info["dtype"] == "float64" and info["shape"] == (payload.size,)
        assert info["writeable"] is False  # a read-only view of the segment / the Ray object, no copy
    stats = held_now(rt)
    if engine == "ray":
        # The start event put once by the driver; bytes arrive as copies, so each hop stores its own; a numpy
        # array is a view of the object it came in, and is sent on as that object (no copy, no new object).
        assert stats["put"] == 1 and stats["fetched"] == (2 if kind == "bytes" else 0), stats
    del handler, info
    assert released(rt, engine, baseline), (held_now(rt), engine == "ray" and object_store_used())


@pytest.mark.timeout(120)
def test_small_payloads_stay_in_band(rt: ProcessRuntime, engine: str) -> None:
    baseline = store_baseline(engine)
    before = held_now(rt)
    small = PayloadChain(timeout=WAIT, runtime=rt).run(data=b"x" * 100_000).result(timeout=WAIT)
    assert small["type"] == "bytes" and small["nbytes"] == 100_000
    assert held_now(rt) == before  # no segment, no Ray object made, adopted or fetched
    if engine == "ray":
        assert object_store_used() <= baseline


@pytest.mark.timeout(120)
def test_a_large_buffer_changed_after_it_was_sent_arrives_as_it_was_when_sent(
        rt: ProcessRuntime, engine: str) -> None:
    baseline = store_baseline(engine)
    got = Reuses(timeout=WAIT, runtime=rt).run(n=2**17).result(timeout=WAIT)
    assert got == [(0, 0, 0), (1, 1, 1), (2, 2, 2)]
    assert released(rt, engine, baseline), held_now(rt)


@pytest.mark.timeout(180)
def test_a_payload_routed_before_the_actor_that_made_it_was_killed_is_read_whole(
        rt: ProcessRuntime, engine: str, tmp_path: Path) -> None:
    if engine != "ray":
        pytest.skip("Ray's ownership: an object dies with its owner (the process runtime's parent owns all)")
    baseline = store_baseline(engine)
    gate, size = tmp_path / "gate", 20 * 2**20
    handler = QueuedPayload(timeout=WAIT, runtime=rt).run(gate=str(gate), size=size)
    maker = first_started(handler)
    # The payload reached the driver and waits in take's queue (the start event carries no large buffer).
    assert wait_until(lambda: held_now(rt)["objects"] >= 1, WAIT), held_now(rt)
    os.kill(maker.pid, signal.SIGKILL)
    assert wait_until(lambda: pid_gone(maker.pid), 15)
    assert wait_until(lambda: rt.stats().crashes >= 1, 30)  # Ray told the pool: the actor is dead
    time.sleep(2)  # and Ray has had time to drop what the dead process owned (it would, were it the owner)
    gate.touch()
    info = handler.result(timeout=WAIT)
    assert info["digest"] == hashlib.sha256(bytes(range(256)) * (size // 256)).hexdigest()
    assert info["pid"] != maker.pid
    del handler, info
    assert released(rt, engine, baseline), (held_now(rt), object_store_used())


@pytest.mark.timeout(180)
def test_a_streamed_payload_is_read_whole_after_a_hard_cancel_killed_its_producer(
        rt: ProcessRuntime, engine: str) -> None:
    baseline = store_baseline(engine)
    n = 2**20  # 8 MB: kept in memory by the stream (past 32 MB unread it would spill to disk)
    handler = StreamsPayload(timeout=WAIT, runtime=rt).run(n=n)
    key = "objects" if engine == "ray" else "segments"
    assert wait_until(lambda: held_now(rt)[key] >= 1, WAIT), held_now(rt)  # streamed, not yet read
    pids = rt.worker_pids()
    assert handler.cancel() is True  # hard: the actor running the spinning def step is killed
    assert wait_until(lambda: any(pid_gone(p) for p in pids), 15)
    time.sleep(2)  # Ray has had time to drop what the dead process owned (it would, were it the owner)
    got = [ev for ev in handler.iter_events(timeout=WAIT) if isinstance(ev, Payload)]
    assert len(got) == 1 and np.array_equal(got[0].data, np.arange(n, dtype=np.int64))
    assert got[0].data.flags.writeable is False
    with pytest.raises(WorkflowCancelledByUser):
        handler.result(timeout=WAIT)
    del handler, got
    assert released(rt, engine, baseline), held_now(rt)


@pytest.mark.timeout(120)
def test_a_buffer_ray_lost_fails_its_reader_with_a_payload_error_that_says_so(engine: str) -> None:
    if engine != "ray":
        pytest.skip("Ray only")
    import ray

    from runtime.wire.codec import Codec
    from runtime.workers.ray.objects import RayBuffer

    @ray.remote(num_cpus=0)
    class Owner:
        def put(self, n: int) -> list[Any]:
            return [ray.put(bytes(n))]

    owner = Owner.remote()  # type: ignore[attr-defined]
    (ref,) = ray.get(owner.put.remote(1 << 20))
    ray.kill(owner, no_restart=True)  # the owner of the object dies: Ray drops it

    def lost() -> bool:  # Ray learns of the owner's death a moment after the kill
        try:
            ray.get(ref, timeout=5)
            return False
        except ray.exceptions.OwnerDiedError:
            return True

    assert wait_until(lost, 30)

    class Lost:  # an out-of-band store whose every buffer is that lost object
        threshold = 1 << 16

        def place(self, buffers: list[tuple[Any, int]]) -> list[Any]:
            return [RayBuffer(ref, 1 << 20) for _ in buffers]

    codec = Codec()
    codec.oob = Lost()
    packed = codec.pack(Payload(data=np.zeros(1 << 17, dtype=np.int64)))
    assert len(packed.buffers) == 1
    with pytest.raises(PayloadError, match="not in Ray's object store") as err:
        codec.unpack(packed)
    assert "Payload cannot be unpickled" in str(err.value)


_READ_AFTER_SHUTDOWN = textwrap.dedent("""
    import json, time
    import numpy as np
    from runtime import RayRuntime
    from test_conformance import Payload, StreamsArray

    rt = RayRuntime(address="local", workers=1)
    handler = StreamsArray(runtime=rt, timeout=120).run(n=2**20)
    assert handler.result(120) == "streamed"  # its stream not read yet: the event is still pickled
    held = rt.stats().shared_memory["objects"]
    rt.shutdown()  # ends the Ray it started: what the driver still refers to is copied out of Ray first
    got = [ev.data for ev in handler.iter_events(timeout=30) if isinstance(ev, Payload)]
    print(json.dumps({"held": held, "equal": [bool(np.array_equal(a, np.arange(2**20))) for a in got]}))
""")


@pytest.mark.timeout(150)
def test_a_large_streamed_event_is_read_whole_after_the_runtime_that_started_ray_shut_it_down() -> None:
    pytest.importorskip("ray")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", _READ_AFTER_SHUTDOWN], capture_output=True, text=True,
                          env=env, timeout=140, cwd=HERE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"held": 1, "equal": [True]}


# --- the Ray runtime's own life ------------------------------------------------------------------------------
_OWN_RAY = textwrap.dedent("""
    import json, os, sys, time
    import psutil
    import runtime
    lazy = "ray" not in sys.modules  # importing procflow's runtime does not import ray
    from runtime import RayRuntime
    import ray
    from test_conformance import Pipeline

    rt = RayRuntime(workers=1)
    before_start = ray.is_initialized()  # constructing a local runtime does not start Ray yet
    result = Pipeline(runtime=rt, timeout=120).run(x=1).result(120)
    started = ray.is_initialized()
    rt.shutdown()
    deadline = time.monotonic() + 30
    while psutil.Process().children(recursive=True) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [" ".join(p.cmdline())[:80] for p in psutil.Process().children(recursive=True)]
    print(json.dumps({"lazy": lazy, "before_start": before_start, "started": started,
                      "x": result["x"], "after": ray.is_initialized(), "left": left}))
""")


@pytest.mark.timeout(150)
def test_a_ray_runtime_without_an_address_starts_a_local_ray_and_shutdown_ends_it() -> None:
    pytest.importorskip("ray")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", _OWN_RAY], capture_output=True, text=True, env=env,
                          timeout=140, cwd=HERE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"lazy": True, "before_start": False, "started": True, "x": 11, "after": False,
                      "left": []}


_NODE_LOST = textwrap.dedent("""
    import json, time
    import psutil
    import ray
    from ray.cluster_utils import Cluster
    from runtime import RayRuntime
    from actors import WorkerCrashedError
    from test_conformance import Double, Sleepy, first_started

    # A head that runs nothing (no CPUs) and one worker node: the worker actor can only live there.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    node = cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False)
    rt = RayRuntime(address=cluster.address, workers=1).start(wait=True)
    handler = Sleepy(runtime=rt, timeout=120).run()
    started = first_started(handler)
    cluster.remove_node(node)  # the machine running the step goes away
    try:
        handler.result(120)
        error = None
    except WorkerCrashedError as exc:
        error = {"step": exc.step, "pid": exc.pid == started.pid, "message": str(exc)}
    cluster.add_node(num_cpus=2)  # the pool's replacement worker can be placed again
    healed = Double(runtime=rt, timeout=120).run(i=21).result(120)
    rt.shutdown()
    ray.shutdown()
    cluster.shutdown()
    deadline = time.monotonic() + 30
    while psutil.Process().children(recursive=True) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [" ".join(p.cmdline())[:80] for p in psutil.Process().children(recursive=True)]
    print(json.dumps({"error": error, "healed": healed, "left": left}))
""")


@pytest.mark.timeout(150)
def test_a_node_lost_mid_step_fails_the_run_clearly_and_the_pool_moves_to_another_node() -> None:
    pytest.importorskip("ray")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", _NODE_LOST], capture_output=True, text=True, env=env,
                          timeout=140, cwd=HERE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["error"] is not None, "the run did not fail when its node went away"
    assert report["error"]["step"] == "nap" and report["error"]["pid"]
    assert "running step 'nap'" in report["error"]["message"]
    assert "Ray actor died" in report["error"]["message"] and "node" in report["error"]["message"]
    assert report["healed"] == 42 and report["left"] == []
