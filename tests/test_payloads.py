"""Large payloads through shared memory, and their lifetimes (issue 13).

Buffers of 128 KiB and more (bytes, bytearray, memoryview, numpy arrays) travel out of band: written once into
a shared memory segment (a file in /dev/shm named ``procflow.<parent pid>.<start time>.<runtime>....``) and
mapped by whoever reads them. These tests check that what arrives is right (type, value, read-only views for
arrays), that small payloads stay in the pipes, and that no segment outlives what refers to it, however a
run, a worker, the runtime or the parent process ends.

Lifetime scenarios run in a child interpreter and look for the child's own names in /dev/shm.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actors import Context, Event, StartEvent, StopEvent, Workflow, step
from runtime import ProcessRuntime

REPO = Path(__file__).resolve().parent.parent
SHM = Path("/dev/shm")
MB = 1 << 20

pytestmark = pytest.mark.skipif(not SHM.is_dir(), reason="needs /dev/shm")


def child_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(REPO))


def segments_of(pid: int) -> list[str]:
    return sorted(n for n in os.listdir(SHM) if n.startswith(f"procflow.{pid}."))


def wait_until(cond: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return bool(cond())


def held(rt: ProcessRuntime) -> dict[str, int]:
    gc.collect()
    return rt.stats().shared_memory


def released(rt: ProcessRuntime) -> bool:
    """Whether the runtime holds no segment, within a few seconds: the supervisor thread lets go of an
    invocation's input a moment after the caller sees the run's result."""
    return wait_until(lambda: held(rt)["segments"] == 0 and held(rt)["bytes"] == 0, 5.0)


# --- workflows ---------------------------------------------------------------------------------------------
class Blob(Event):
    data: Any
    pid: int


class Echo(Event):
    data: Any


class Hop(Workflow):
    """def step -> def step: the payload the first sends arrives in the second."""

    @step
    def make(self, ev: StartEvent) -> Blob:
        return Blob(data=ev.data, pid=os.getpid())

    @step
    def take(self, ev: Blob) -> StopEvent:
        data = ev.data
        info = {"type": type(data).__name__, "pid": ev.pid}
        if isinstance(data, np.ndarray):
            info.update(writeable=bool(data.flags.writeable), sum=int(data.sum()), dtype=str(data.dtype),
                        shape=data.shape)
        elif isinstance(data, memoryview):
            info.update(readonly=data.readonly, format=data.format, shape=data.shape,
                        digest=hashlib.sha256(data.tobytes()).hexdigest())
        else:
            info.update(length=len(data), digest=hashlib.sha256(bytes(data)).hexdigest())
        return StopEvent(result=info)


class PassAlong(Workflow):
    """A numpy array passed through three def steps unchanged, then returned."""

    @step
    def a(self, ev: StartEvent) -> Echo:
        return Echo(data=np.arange(ev.n, dtype=np.int64))

    @step
    def b(self, ev: Echo) -> Blob:
        return Blob(data=ev.data, pid=os.getpid())

    @step
    def c(self, ev: Blob) -> StopEvent:
        return StopEvent(result=ev.data)


class StoreRead(Workflow):
    @step
    async def put(self, ctx: Context, ev: StartEvent) -> Echo:
        await ctx.store.set("big", b"s" * ev.n)
        await ctx.store.set("arr", np.full(ev.n // 8, 7, dtype=np.int64))
        return Echo(data=None)

    @step
    async def get(self, ctx: Context, ev: Echo) -> StopEvent:
        big = await ctx.store.get("big")
        arr = await ctx.store.get("arr")
        return StopEvent(result=(len(big), big[:1], int(arr.sum()), arr.dtype.name))


class Progress(Event):
    chunk: Any
    i: int


class StreamBig(Workflow):
    @step
    async def produce(self, ctx: Context, ev: StartEvent) -> StopEvent:
        for i in range(ev.count):
            ctx.write_event_to_stream(Progress(chunk=bytes([i]) * ev.size, i=i))
        return StopEvent(result=ev.count)


class Small(Workflow):
    @step
    def a(self, ev: StartEvent) -> Echo:
        return Echo(data=b"x" * 1000)

    @step
    def b(self, ev: Echo) -> StopEvent:
        return StopEvent(result=len(ev.data))


@pytest.fixture(scope="module")
def rt() -> Any:
    runtime = ProcessRuntime(workers=2).start(wait=True)
    try:
        yield runtime
    finally:
        runtime.shutdown()


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Any:
    yield  # the module's runtime lives across tests; the lifetime tests check their children themselves


def make_bytes() -> bytes:
    return bytes(range(256)) * (8 * MB // 256)


# --- what arrives -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bytes", "bytearray", "numpy", "memoryview"])
def test_a_large_payload_arrives_whole_and_of_its_own_type_in_the_next_def_step(rt: ProcessRuntime,
                                                                                kind: str) -> None:
    payload: Any = make_bytes()
    if kind == "bytearray":
        payload = bytearray(payload)
    elif kind == "numpy":
        payload = np.arange(MB, dtype=np.float64)
    elif kind == "memoryview":
        payload = memoryview(np.arange(MB, dtype=np.int32))

    info = Hop(runtime=rt, timeout=60).run(data=payload).result(60)
    if kind == "numpy":
        assert info["type"] == "ndarray" and info["dtype"] == "float64" and info["shape"] == (MB,)
        assert info["sum"] == int(np.arange(MB, dtype=np.float64).sum())
        assert info["writeable"] is False  # a read-only view of the shared segment
    elif kind == "memoryview":
        assert info["type"] == "memoryview" and info["readonly"] and info["format"] == "i"
        assert info["shape"] == (MB,) and info["digest"] == hashlib.sha256(np.arange(MB, dtype=np.int32).tobytes()).hexdigest()
    else:
        assert info["type"] == kind
        assert info["length"] == len(payload) and info["digest"] == hashlib.sha256(bytes(payload)).hexdigest()
    assert released(rt)


def test_a_numpy_array_passed_along_three_steps_comes_back_equal_and_read_only(rt: ProcessRuntime) -> None:
    handler = PassAlong(runtime=rt, timeout=60).run(n=2 * MB)
    out = handler.result(60)
    assert isinstance(out, np.ndarray) and out.dtype == np.int64
    assert np.array_equal(out, np.arange(2 * MB, dtype=np.int64))
    assert not out.flags.writeable
    assert held(rt)["segments"] >= 1  # the result still refers to its segment
    del out, handler
    assert released(rt)


def test_large_store_values_set_in_one_step_are_read_whole_in_another(rt: ProcessRuntime) -> None:
    n = 4 * MB
    length, first, total, dtype = StoreRead(runtime=rt, timeout=60).run(n=n).result(60)
    assert (length, first, total, dtype) == (n, b"s", 7 * (n // 8), "int64")
    handler = StoreRead(runtime=rt, timeout=60).run(n=n)
    handler.result(60)
    assert held(rt)["bytes"] > 0  # the ended run's store still holds its values
    del handler
    assert released(rt)


def test_large_streamed_events_reach_the_reader_in_order_even_when_the_stream_spills(rt: ProcessRuntime
                                                                                    ) -> None:
    count, size = 12, 4 * MB  # 48 MB unread at the end: past the stream's 32 MB in memory, some spill

    async def main() -> list[Any]:
        handler = StreamBig(runtime=rt, timeout=60).run(count=count, size=size)
        await handler
        got = []
        async for ev in handler.stream_events():
            if isinstance(ev, Progress):
                got.append((ev.i, len(ev.chunk), ev.chunk[:1], ev.chunk[-1:]))
        return got

    got = asyncio.run(main())
    assert got == [(i, size, bytes([i]), bytes([i])) for i in range(count)]
    assert released(rt)


def test_small_payloads_stay_in_the_pipes(rt: ProcessRuntime) -> None:
    before = held(rt)["created"] + held(rt)["adopted"]
    assert Small(runtime=rt, timeout=30).run().result(30) == 1000
    assert held(rt)["created"] + held(rt)["adopted"] == before


def test_a_large_start_event_is_held_while_its_handler_lives_and_released_after(rt: ProcessRuntime) -> None:
    arr = np.ones(MB, dtype=np.float64)
    handler = Hop(runtime=rt, timeout=60).run(data=arr)
    info = handler.result(60)
    assert info["sum"] == MB and info["writeable"] is False
    stats = held(rt)
    assert stats["segments"] >= 1 and stats["bytes"] >= arr.nbytes  # the run's StartEvent, for ctx reuse
    del handler
    assert released(rt)


# --- classes defined where no worker can import them ------------------------------------------------------
def test_streamed_events_of_classes_from_main_and_from_functions_arrive_as_those_classes() -> None:
    out = child_python("""
        import asyncio
        from actors import Context, Event, StartEvent, StopEvent, Workflow, step
        from runtime import ProcessRuntime

        class Token(Event):          # in __main__, in no step signature
            text: str
            n: int

        def make(label):
            class Note(Event):       # inside a function, one class per call
                i: int
            class Talk(Workflow):
                @step
                async def go(self, ctx: Context, ev: StartEvent) -> StopEvent:
                    for i in range(200):
                        ctx.write_event_to_stream(Token(text=label, n=i))
                        ctx.write_event_to_stream(Note(i=i, label=label))
                    return StopEvent(result=label)
            return Talk, Note

        async def main(rt):
            for label in ("one", "two", "three"):
                Talk, Note = make(label)
                handler = Talk(runtime=rt, timeout=30).run()
                tokens, notes = [], []
                async for ev in handler.stream_events():
                    if type(ev) is Token:
                        tokens.append((ev.text, ev.n))
                    elif type(ev) is Note:
                        notes.append((ev.i, ev.label))
                assert await handler == label
                assert tokens == [(label, i) for i in range(200)], tokens[:3]
                assert notes == [(i, label) for i in range(200)], notes[:3]
            print("OK")

        with ProcessRuntime(workers=2) as rt:
            asyncio.run(main(rt))
    """)
    assert "OK" in out.stdout, out.stderr[-3000:]


# --- lifetimes ---------------------------------------------------------------------------------------------
_LIFETIME_HEADER = """
    import gc, os, signal, sys, time
    import numpy as np
    from actors import Context, Event, StartEvent, StopEvent, Workflow, step
    from runtime import ProcessRuntime

    class Big(Event):
        data: object

    def mine():
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"procflow.{os.getpid()}."))
"""

# A run holding a segment: its first step returns a 1 MB array, its second streams it on and sleeps; the
# caller has read the streamed event (``ev``) when the script goes on.
_HOLDING = _LIFETIME_HEADER + """
    class Holds(Workflow):
        @step
        def a(self, ev: StartEvent) -> Big:
            return Big(data=np.ones(1 << 20))
        @step
        def b(self, ctx: Context, ev: Big) -> StopEvent:
            ctx.write_event_to_stream(Big(data=ev.data))
            time.sleep(60)

    rt = ProcessRuntime(workers=2).start(wait=True)
    h = Holds(runtime=rt, timeout=60).run()
    for ev in h.iter_events(timeout=30):
        if isinstance(ev, Big):
            break
"""


def test_no_segment_is_left_once_a_run_ends_and_its_handler_is_dropped() -> None:
    out = child_python(_LIFETIME_HEADER + """
    class Fails(Workflow):
        @step
        def a(self, ev: StartEvent) -> Big:
            return Big(data=np.ones(1 << 20))
        @step
        def b(self, ev: Big) -> StopEvent:
            raise ValueError("late failure with a large input")

    class Works(Workflow):
        @step
        def a(self, ev: StartEvent) -> Big:
            return Big(data=b"z" * (3 << 20))
        @step
        def b(self, ev: Big) -> StopEvent:
            return StopEvent(result=ev.data)

    with ProcessRuntime(workers=2) as rt:
        h = Fails(runtime=rt, timeout=30).run()
        try:
            h.result(30)
        except ValueError:
            pass
        h2 = Works(runtime=rt, timeout=30).run()
        assert h2.result(30) == b"z" * (3 << 20)
        during = rt.stats().shared_memory["segments"]
        del h, h2
        for _ in range(100):
            gc.collect()
            if rt.stats().shared_memory["segments"] == 0:
                break
            time.sleep(0.05)
        print("HELD", during, rt.stats().shared_memory["segments"], len(mine()))
    print("AFTER", len(mine()))
    """)
    assert "AFTER 0" in out.stdout, out.stdout + out.stderr[-3000:]
    held_during, held_after, files_after = map(int, out.stdout.split("HELD")[1].split()[:3])
    assert (held_after, files_after) == (0, 0), out.stdout


def test_no_segment_is_left_when_the_worker_writing_one_dies() -> None:
    out = child_python(_LIFETIME_HEADER + """
    import threading

    class Dies(Workflow):
        @step
        def a(self, ctx: Context, ev: StartEvent) -> StopEvent:
            # Killed while it writes (or just after it wrote) a 400 MB event for the parent.
            big = Big(data=np.ones(50 << 20))
            threading.Timer(ev.delay, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
            ctx.send_event(big)
            time.sleep(30)

        @step
        def b(self, ev: Big) -> StopEvent:
            return StopEvent(result="never")

    with ProcessRuntime(workers=1) as rt:
        for delay in (0.0, 0.02, 0.08, 0.5):
            try:
                Dies(runtime=rt, timeout=30).run(delay=delay).result(30)
            except Exception as exc:
                print("FAILED AS EXPECTED", type(exc).__name__)
            for _ in range(100):
                gc.collect()
                if not mine() and rt.stats().shared_memory["segments"] == 0:
                    break
                time.sleep(0.05)
            print("LEFT", len(mine()), rt.stats().shared_memory["segments"])
    print("AFTER", len(mine()))
    """, timeout=120)
    assert out.stdout.count("FAILED AS EXPECTED") == 4, out.stdout + out.stderr[-3000:]
    assert out.stdout.count("LEFT 0 0") == 4, out.stdout + out.stderr[-3000:]
    assert "AFTER 0" in out.stdout


def test_no_segment_is_left_when_the_runtime_shuts_down_during_a_run_holding_them() -> None:
    out = child_python(_HOLDING + """
    print("DURING", len(mine()) > 0, rt.stats().shared_memory["segments"] > 0)
    rt.shutdown()
    print("AFTER", len(mine()))
    print("STILL READABLE", float(ev.data.sum()))
    """)
    assert "DURING True True" in out.stdout, out.stdout + out.stderr[-3000:]
    assert "AFTER 0" in out.stdout, out.stdout + out.stderr[-3000:]
    assert f"STILL READABLE {float(1 << 20)}" in out.stdout  # a view held by the caller outlives the name


def test_no_segment_is_left_when_the_parent_is_sigkilled() -> None:
    code = textwrap.dedent(_HOLDING + """
    print("READY", len(mine()), flush=True)
    time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env, cwd=str(REPO))
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("READY") and int(line.split()[1]) > 0, line + child.stderr.read()[-3000:]
        assert segments_of(child.pid)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        # The reaper (which outlives the parent) ends the workers, then unlinks the parent's segments.
        assert wait_until(lambda: not segments_of(child.pid), 15), segments_of(child.pid)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


def test_the_next_runtime_removes_segments_whose_parent_is_gone() -> None:
    # A name as a procflow parent would have made it, for a pid that names no process (or another one).
    stale = SHM / "procflow.999999999.12345.1.3.1"
    stale.write_bytes(b"left by a parent SIGKILLed while no reaper ran")
    try:
        out = child_python("""
            from actors import Event, StartEvent, StopEvent, Workflow, step
            from runtime import ProcessRuntime

            class One(Workflow):
                @step
                async def a(self, ev: StartEvent) -> StopEvent:
                    return StopEvent(result=1)

            with ProcessRuntime(workers=1) as rt:
                print("RESULT", One(runtime=rt, timeout=30).run().result(30))
        """)
        assert "RESULT 1" in out.stdout, out.stderr[-3000:]
        assert not stale.exists()
    finally:
        stale.unlink(missing_ok=True)


# --- class keys are per runtime ----------------------------------------------------------------------------
class Reply(Event):
    text: str


class Replies(Workflow):
    @step
    async def start(self, ev: StartEvent) -> Reply:
        return Reply(text="keyed by this workflow's definition")

    @step
    async def end(self, ev: Reply) -> StopEvent:
        return StopEvent(result=ev.text)


class WaitsForReply(Workflow):
    """Names ``Reply`` in no signature: its workers learn no key for it."""

    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> StopEvent:
        reply = await ctx.wait_for_event(Reply, waiter_event=Progress(chunk=b"", i=0))
        return StopEvent(result=reply.text)


def test_a_class_keyed_by_one_runtime_reaches_another_runtimes_workers_whole() -> None:
    with ProcessRuntime(workers=1) as first:
        assert Replies(runtime=first, timeout=30).run().result(30) == "keyed by this workflow's definition"
    with ProcessRuntime(workers=1) as second:
        handler = WaitsForReply(runtime=second, timeout=30).run()
        for ev in handler.iter_events(timeout=30):
            if isinstance(ev, Progress):
                handler.send_event_sync(Reply(text="answered"))
        assert handler.result(30) == "answered"
