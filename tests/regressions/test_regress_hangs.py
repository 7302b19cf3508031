"""Regressions of the reliability issue: runs and runtimes that hang instead of ending with an error.

Defects 7, 8 and 9 of the issue (the number is in each test's comment): async work starved by the
"draining" flag, a step's own CancelledError, blocking store calls in an async step. Every wait is bounded
and what a test started is cleaned up (cancelled, its gates opened) in ``finally``.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from actors import (
    Context, Event, StartEvent, StopEvent, WorkflowCancelledByUser, WorkflowRuntimeError,
    WorkflowTimeoutError, Workflow, step,
)
from runtime import ProcessRuntime


# --- defect 7: the draining flag ---------------------------------------------------------------------
def _gate_open(path: str) -> bool:
    return os.path.exists(path)


class Started(Event):
    pid: int


class AsyncGate(Workflow):
    """An async step that waits (without blocking its worker) until its gate file exists."""

    @step
    async def wait(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Started(pid=os.getpid()))
        deadline = time.monotonic() + 30
        while not _gate_open(ev.gate) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return StopEvent(result=("async", ev.gate))


class DefGate(Workflow):
    """A def step (a worker to itself) that waits until its gate file exists."""

    @step
    def wait(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Started(pid=os.getpid()))
        deadline = time.monotonic() + 30
        while not _gate_open(ev.gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        return StopEvent(result=("def", ev.gate))


class Nap(Workflow):
    @step
    async def nap(self, ev: StartEvent) -> StopEvent:
        await asyncio.sleep(0)
        return StopEvent(result=ev.x * 3)


def _started(handler: Any) -> Started:
    for ev in handler.iter_events(timeout=20):
        if isinstance(ev, Started):
            return ev
    raise AssertionError("the run ended before its step started")


def _settle(handler: Any) -> None:
    """Let the supervisor take in everything asked of it so far (a round trip through it), then a moment."""
    handler.ctx.store.get_sync("nothing", default=None)
    time.sleep(0.2)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cancel", ["hard", "graceful"])
def test_cancelling_a_def_step_run_queued_for_the_only_worker_leaves_async_runs_served(
        tmp_path: Path, cancel: str) -> None:
    # defect 7: with one worker busy with an async step, a def-step run queues and marks that worker
    # "draining" (no new async work); cancelling the queued run left it draining for good, so every later
    # async run hung.
    gate = str(tmp_path / "a")
    with ProcessRuntime(workers=1) as rt:
        rt.start(wait=True)
        a = AsyncGate(runtime=rt, timeout=30).run(gate=gate)
        _started(a)
        b = DefGate(runtime=rt, timeout=30).run(gate=str(tmp_path / "never"))
        _settle(b)  # b is queued: no worker free for a def step
        if cancel == "hard":
            assert b.cancel() is True
        else:
            b.cancel_run_sync(timeout=10)
        assert b.cancelled()
        Path(gate).touch()
        assert a.result(timeout=20) == ("async", gate)
        c = Nap(runtime=rt, timeout=None).run(x=5)
        try:
            assert c.result(timeout=5) == 15
        except TimeoutError:
            pytest.fail("an async run on an idle worker did not start within 5 s: the worker stays draining")
        finally:
            c.cancel()


@pytest.mark.timeout(60)
def test_an_async_step_never_waits_behind_a_def_step_while_a_worker_idles(tmp_path: Path) -> None:
    # defect 7: worker 0 is marked draining for a def step that then lands on worker 1; worker 0, idle,
    # must take async work again while the def step runs.
    gates = {name: str(tmp_path / name) for name in ("a", "b", "d")}
    with ProcessRuntime(workers=2) as rt:
        rt.start(wait=True)
        a = AsyncGate(runtime=rt, timeout=30).run(gate=gates["a"])
        b = AsyncGate(runtime=rt, timeout=30).run(gate=gates["b"])
        if _started(a).pid == _started(b).pid:
            pytest.skip("both async runs landed on one worker; the scenario needs one per worker")
        d = DefGate(runtime=rt, timeout=30).run(gate=gates["d"])
        try:
            _settle(d)  # d is queued: both workers busy
            Path(gates["b"]).touch()
            assert b.result(timeout=20) == ("async", gates["b"])
            _started(d)  # d runs now, on b's worker
            Path(gates["a"]).touch()
            assert a.result(timeout=20) == ("async", gates["a"])
            e = Nap(runtime=rt, timeout=None).run(x=7)
            try:
                assert e.result(timeout=5) == 21  # a's worker is idle
            except TimeoutError:
                pytest.fail("an async run waited behind a running def step while the other worker idled")
            finally:
                e.cancel()
        finally:
            Path(gates["d"]).touch()
        assert d.result(timeout=20) == ("def", gates["d"])


# --- defect 8: a step's own CancelledError ------------------------------------------------------------
class OwnCancel(Workflow):
    @step
    async def inner(self, ev: StartEvent) -> StopEvent:
        if ev.how == "inner_task":
            task = asyncio.create_task(asyncio.sleep(30))
            await asyncio.sleep(0)
            task.cancel()
            await task  # raises CancelledError out of the step
        else:
            raise asyncio.CancelledError("the step's own")
        return StopEvent(result="unreachable")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["inner_task", "raised_directly"])
def test_a_steps_own_cancelled_error_fails_the_run_promptly(rt: ProcessRuntime, how: str) -> None:
    # defect 8: nobody cancelled the run; the step's CancelledError was taken for a requested cancel and
    # the run hung until its timeout. It must fail with that step's error, not time out, not "cancelled".
    h = OwnCancel(runtime=rt, timeout=4).run(how=how)
    exc = h.exception(timeout=30)
    assert exc is not None, "the run succeeded"
    assert not isinstance(exc, (WorkflowTimeoutError, WorkflowCancelledByUser)), (
        f"the step's own CancelledError was not reported: the run ended with {type(exc).__name__}: {exc}")
    assert not h.cancelled()
    assert isinstance(exc, asyncio.CancelledError) or (
        isinstance(exc, WorkflowRuntimeError) and "inner" in str(exc)), f"{type(exc).__name__}: {exc}"


# --- defect 9: blocking store calls inside an async step ---------------------------------------------
class Tally(BaseModel):
    n: int = 0


class SyncInAsync(Workflow):
    @step
    async def misuse(self, ctx: Context[Tally], ev: StartEvent) -> StopEvent:
        if ev.call == "get_sync":
            value = ctx.store.get_sync("n") + 1  # the typed state's default, 0, read back
        elif ev.call == "set_sync":
            ctx.store.set_sync("n", 1)
            value = 1
        else:
            with ctx.store.edit_state_sync() as state:
                state.n += 1
            value = state.n
        return StopEvent(result=value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", ["get_sync", "set_sync", "edit_state_sync"])
def test_a_blocking_store_call_in_an_async_step_fails_the_run_naming_it_or_works(call: str) -> None:
    # defect 9: ctx.store.get_sync / set_sync / edit_state_sync inside an async step deadlocked its worker
    # (the run timed out). The run must fail promptly with an error naming the call, or work.
    with ProcessRuntime(workers=1) as rt:
        rt.start(wait=True)
        h = SyncInAsync(runtime=rt, timeout=4).run(call=call)
        try:
            assert h.result(timeout=30) == 1
        except WorkflowTimeoutError as exc:
            pytest.fail(f"the async step calling {call} hung until the run's timeout: {exc}")
        except Exception as exc:
            assert call in str(exc), f"the error does not name {call}: {type(exc).__name__}: {exc}"
        assert Nap(runtime=rt, timeout=20).run(x=2).result(timeout=20) == 6
