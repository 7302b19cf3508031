"""Hard cancel (``handler.cancel()``) kills the workers running the run's ``def`` steps at once, whatever the
step does (a tight loop, ignoring SIGTERM, starting processes), heals the pool, and never touches another
run's step; graceful cancel (``cancel_run``) lets running ``def`` steps finish and kills nothing."""

from __future__ import annotations

import ctypes
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from actors import (
    Context, Event, StartEvent, StepStateChanged, StopEvent, Workflow, WorkflowCancelledByUser,
    WorkflowCancelledEvent, step,
)
from conftest import pid_gone, wait_until
from runtime import ProcessRuntime

WAIT = 30  # seconds a healthy run may take on a loaded machine before we call it a hang


class Started(Event):
    pid: int


class Spin(Workflow):
    @step
    def spin(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Started(pid=os.getpid()))
        while True:  # pure Python, never releases the GIL for long, never checks anything
            pass


class Stubborn(Workflow):
    @step
    def stubborn(self, ctx: Context, ev: StartEvent) -> StopEvent:
        # signal.signal() works only in the main thread and def steps run in a worker thread: ask libc.
        libc = ctypes.CDLL(None)
        libc.signal.restype = ctypes.c_void_p
        libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
        libc.signal(signal.SIGTERM, 1)  # SIG_IGN, for the whole process
        os.kill(os.getpid(), signal.SIGTERM)  # proof: we are still here
        ctx.write_event_to_stream(Started(pid=os.getpid()))
        while True:
            pass


class Forks(Workflow):
    @step
    def fork(self, ctx: Context, ev: StartEvent) -> StopEvent:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                 start_new_session=ev.new_session)
        ctx.write_event_to_stream(Started(pid=os.getpid(), child=child.pid))
        while True:
            time.sleep(0.01)


def first_started(handler: Any) -> Started:
    for ev in handler.iter_events(timeout=WAIT):
        if isinstance(ev, Started):
            return ev
    raise AssertionError("the run ended before its step started")


def assert_cancelled_hard(handler: Any) -> None:
    """What a hard cancel leaves, observable at once (no waiting)."""
    assert handler.done() and handler.is_done()
    assert handler.cancelled()
    with pytest.raises(WorkflowCancelledByUser):
        handler.result(timeout=0)
    assert isinstance(handler.exception(timeout=0), WorkflowCancelledByUser)
    stop = handler.get_stop_event()
    assert isinstance(stop, WorkflowCancelledEvent) and stop.hard


def assert_pool_healed(rt: ProcessRuntime, dead: int) -> None:
    assert wait_until(lambda: pid_gone(dead), 10), f"worker {dead} survived the hard cancel"
    assert wait_until(lambda: len(rt.worker_pids()) == 2 and dead not in rt.worker_pids(), 10), (
        rt.worker_pids())
    assert Double(timeout=WAIT, runtime=rt).run(i=21).result(timeout=WAIT) == 42


class Double(Workflow):
    @step
    def double(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.i * 2)


@pytest.mark.timeout(40)
def test_hard_cancel_of_a_tight_loop_resolves_at_once_and_kills_the_worker_that_ran_it(
        rt: ProcessRuntime) -> None:
    handler = Spin(timeout=WAIT, runtime=rt).run()
    events = handler.iter_events(timeout=WAIT)
    started = next(events)
    assert isinstance(started, Started) and started.pid in rt.worker_pids()
    assert handler.cancel() is True
    assert_cancelled_hard(handler)
    rest = list(events)  # the stream ends, with the cancel event last
    assert isinstance(rest[-1], WorkflowCancelledEvent) and rest[-1].hard
    assert handler.cancel() is False  # finished now
    assert_pool_healed(rt, started.pid)


async def test_awaiting_a_hard_cancelled_run_raises_and_its_stream_ends_with_the_cancel_event(
        rt: ProcessRuntime) -> None:
    handler = Spin(timeout=WAIT, runtime=rt).run()
    stream = handler.stream_events()
    started = await stream.__anext__()
    assert isinstance(started, Started)
    assert handler.cancel() is True
    with pytest.raises(WorkflowCancelledByUser):
        await handler
    rest = [ev async for ev in stream]
    assert isinstance(rest[-1], WorkflowCancelledEvent)
    assert wait_until(lambda: pid_gone(started.pid), 10)


@pytest.mark.timeout(40)
def test_a_step_that_ignores_sigterm_still_dies_by_sigkill_escalation(rt: ProcessRuntime) -> None:
    handler = Stubborn(timeout=WAIT, runtime=rt).run()
    started = first_started(handler)
    assert handler.cancel() is True
    assert_cancelled_hard(handler)
    assert_pool_healed(rt, started.pid)


@pytest.mark.timeout(40)
@pytest.mark.parametrize("new_session", [False, True], ids=["same group", "own session"])
def test_processes_a_cancelled_step_started_die_with_it(rt: ProcessRuntime, new_session: bool) -> None:
    handler = Forks(timeout=WAIT, runtime=rt).run(new_session=new_session)
    started = first_started(handler)
    assert not pid_gone(started.child)
    assert handler.cancel() is True
    assert_cancelled_hard(handler)
    assert wait_until(lambda: pid_gone(started.child), 10), "the step's child outlived the cancel"
    assert_pool_healed(rt, started.pid)


@pytest.mark.timeout(30)
def test_cancel_of_a_finished_run_is_a_no_op_returning_false(rt: ProcessRuntime) -> None:
    before = rt.worker_pids()
    handler = Double(timeout=WAIT, runtime=rt).run(i=4)
    assert handler.result(timeout=WAIT) == 8
    assert handler.cancel() is False
    assert not handler.cancelled()
    assert handler.result(timeout=0) == 8
    assert type(handler.get_stop_event()) is StopEvent
    assert rt.worker_pids() == before


class Tally(Event):
    value: int


class AsyncChain(Workflow):
    @step
    async def first(self, ev: StartEvent) -> Tally:
        import asyncio

        await asyncio.sleep(0.2)
        return Tally(value=ev.x + 1)

    @step
    async def second(self, ev: Tally) -> StopEvent:
        import asyncio

        await asyncio.sleep(0.2)
        return StopEvent(result=ev.value * 10)


def step_starts(handler: Any) -> int:
    """How many step invocations the (finished) run started, read from its unconsumed stream."""
    return sum(1 for ev in handler.iter_events(expose_internal=True, timeout=WAIT)
               if isinstance(ev, StepStateChanged) and ev.state == "running")


@pytest.mark.timeout(40)
def test_runs_sharing_the_pool_complete_correctly_when_another_run_is_hard_cancelled(
        rt: ProcessRuntime) -> None:
    doomed = Spin(timeout=WAIT, runtime=rt).run()
    chains = [AsyncChain(timeout=WAIT, runtime=rt).run(x=i) for i in range(5)]
    doubles = [Double(timeout=WAIT, runtime=rt).run(i=i) for i in range(5)]
    started = first_started(doomed)
    assert doomed.cancel() is True
    assert_cancelled_hard(doomed)
    for i, h in enumerate(chains):
        assert h.result(timeout=WAIT) == (i + 1) * 10
        assert step_starts(h) == 2  # no step of theirs was restarted
    for i, h in enumerate(doubles):
        assert h.result(timeout=WAIT) == 2 * i
        assert step_starts(h) == 1
    assert_pool_healed(rt, started.pid)


class Hold(Workflow):
    @step
    def hold(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Started(pid=os.getpid()))
        flag = Path(ev.flag)
        while not flag.exists():
            time.sleep(0.005)
        return StopEvent(result="survived")


@pytest.mark.timeout(90)
def test_a_cancel_racing_with_completion_never_kills_another_runs_step(tmp_path: Path) -> None:
    flag = tmp_path / "release"
    with ProcessRuntime(workers=3, restart_window=5.0) as rt:
        rt.wait_ready()
        long = Hold(timeout=None, runtime=rt).run(flag=str(flag))
        held = first_started(long)
        tiny = Double(timeout=WAIT, runtime=rt)
        problems: list[str] = []

        def race(seed: int) -> None:
            rng = random.Random(seed)
            for i in range(15):
                h = tiny.run(i=i)
                mode, starts = i % 3, 0
                if mode == 0:  # cancel right after the result: a no-op
                    got = h.result(timeout=WAIT)
                    cancelled = h.cancel()
                    if cancelled or got != 2 * i:
                        problems.append(f"late cancel returned {cancelled}, result {got}")
                    continue
                if mode == 2:  # once the step runs: races with its completion (it takes microseconds)
                    for ev in h.iter_events(expose_internal=True, timeout=WAIT):
                        if isinstance(ev, StepStateChanged) and ev.state == "running":
                            starts += 1
                            break
                    time.sleep(rng.uniform(0, 0.002))
                cancelled = h.cancel()  # mode 1: at once, racing with placement
                try:
                    got = h.result(timeout=WAIT)
                except WorkflowCancelledByUser:
                    got = "cancelled"
                if cancelled != (got == "cancelled") or got not in ("cancelled", 2 * i):
                    problems.append(f"cancel() returned {cancelled} but the run gave {got!r}")
                if got != "cancelled" and (starts := starts + step_starts(h)) != 1:
                    problems.append(f"an uncancelled run's step started {starts} times (killed under it)")

        threads = [threading.Thread(target=race, args=(seed,)) for seed in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "the race loop hung"
        assert not problems, problems
        assert not long.done() and not pid_gone(held.pid) and held.pid in rt.worker_pids()
        flag.touch()
        assert long.result(timeout=WAIT) == "survived"
        assert step_starts(long) == 0  # its one start was read above: it never started again


class Patient(Workflow):
    @step
    def first(self, ctx: Context, ev: StartEvent) -> Tally:
        ctx.write_event_to_stream(Started(pid=os.getpid()))
        go = Path(ev.go)
        while not go.exists():
            time.sleep(0.005)
        Path(ev.done).write_text("finished")
        return Tally(value=1)

    @step
    def second(self, ev: Tally) -> StopEvent:
        Path(ev.second).write_text("ran")  # must never happen: no new steps after a graceful cancel
        return StopEvent(result="unreachable")


@pytest.mark.timeout(40)
def test_graceful_cancel_lets_a_running_def_step_finish_starts_nothing_new_and_kills_no_worker(
        rt: ProcessRuntime, tmp_path: Path) -> None:
    before = rt.worker_pids()
    go, done, second = tmp_path / "go", tmp_path / "done", tmp_path / "second"
    handler = Patient(timeout=WAIT, runtime=rt).run(go=str(go), done=str(done), second=str(second))
    started = first_started(handler)
    handler.cancel_run_sync(timeout=0)  # asks, and returns once the runtime took the request
    assert not handler.done()  # the def step is still running: the run waits for it
    go.touch()
    handler.cancel_run_sync(timeout=WAIT)  # idempotent; waits for the end this time
    assert handler.done() and handler.cancelled()
    with pytest.raises(WorkflowCancelledByUser):
        handler.result(timeout=0)
    stop = handler.get_stop_event()
    assert isinstance(stop, WorkflowCancelledEvent) and not stop.hard
    assert done.read_text() == "finished"
    assert not second.exists()
    assert not pid_gone(started.pid)
    assert rt.worker_pids() == before


class Sleeper(Workflow):
    @step
    async def sleep(self, ctx: Context, ev: StartEvent) -> StopEvent:
        import asyncio

        ctx.write_event_to_stream(Started(pid=os.getpid()))
        await asyncio.sleep(600)
        return StopEvent(result="unreachable")


async def test_graceful_cancel_cancels_an_awaiting_async_step_without_killing_its_worker(
        rt: ProcessRuntime) -> None:
    before = rt.worker_pids()
    handler = Sleeper(timeout=WAIT, runtime=rt).run()
    stream = handler.stream_events()
    started = await stream.__anext__()
    assert isinstance(started, Started)
    await handler.cancel_run(timeout=WAIT)
    assert handler.cancelled()
    with pytest.raises(WorkflowCancelledByUser):
        await handler
    assert isinstance([ev async for ev in stream][-1], WorkflowCancelledEvent)
    assert rt.worker_pids() == before
