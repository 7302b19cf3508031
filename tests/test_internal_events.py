"""Issue 4 item 5: internal events (``StepStateChanged``, ``StepQueueChanged``) on the stream with
``expose_internal=True``, and ``Workflow(verbose=True)`` printing step activity."""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

import pytest

from actors import (
    ConstantDelayRetryPolicy, Context, Event, HumanResponseEvent, InputRequiredEvent, InternalDispatchEvent,
    StartEvent, StepQueueChanged, StepState, StepStateChanged, StopEvent, Workflow, step,
)
from actors.events import WorkflowIdleEvent
from runtime import ProcessRuntime


class Work(Event):
    i: int


class Result(Event):
    i: int
    pid: int


class Fan(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> Work | None:
        await ctx.store.set("n", ev.n)
        for i in range(ev.n):
            ctx.send_event(Work(i=i))
        return None

    @step(num_workers=1)
    async def work(self, ev: Work) -> Result:
        await asyncio.sleep(0.02)
        return Result(i=ev.i, pid=os.getpid())

    @step
    def gather(self, ctx: Context, ev: Result) -> StopEvent | None:
        got = ctx.collect_events(ev, [Result] * ctx.store.get_sync("n"))
        if got is None:
            return None
        return StopEvent(result=sorted((r.i, r.pid) for r in got))


def _check_step_states(events: list[Event], worker_pids: list[int]) -> list[StepStateChanged]:
    states = [ev for ev in events if isinstance(ev, StepStateChanged)]
    by_inv: dict[int, list[str]] = {}
    for ev in states:
        by_inv.setdefault(ev.invocation, []).append(ev.state)
        if ev.state == "pending":  # waiting for a worker: it has none yet
            assert ev.worker_pid is None
            continue
        assert ev.worker_pid in worker_pids
    # "pending" only when the invocation could not get a worker at once (the pool was busy or starting).
    assert all(seq in (["running", "done"], ["pending", "running", "done"]) for seq in by_inv.values())
    return states


async def test_stream_events_with_expose_internal_says_which_step_ran_where_on_what(
        rt: ProcessRuntime) -> None:
    handler = Fan(runtime=rt).run(n=3)
    events = [ev async for ev in handler.stream_events(expose_internal=True)]
    result = await handler
    states = _check_step_states(events, rt.worker_pids())
    running = sorted((ev.step, ev.input_event) for ev in states if ev.state == "running")
    assert running == sorted([("begin", "StartEvent")] + [("work", "Work")] * 3
                             + [("gather", "Result")] * 3)
    work_pids = {ev.worker_pid for ev in states if ev.step == "work" and ev.state != "pending"}
    assert work_pids == {pid for _, pid in result}  # the reported pid is where the step ran
    assert isinstance(events[-1], StopEvent)


def test_iter_events_with_expose_internal_yields_them_too_and_the_default_stream_hides_them(
        rt: ProcessRuntime) -> None:
    wf = Fan(runtime=rt)
    handler = wf.run(n=3)
    events = list(handler.iter_events(expose_internal=True, timeout=30))
    _check_step_states(events, rt.worker_pids())
    assert any(isinstance(ev, StepQueueChanged) for ev in events)
    plain = wf.run(n=3)
    assert not any(isinstance(ev, InternalDispatchEvent) for ev in plain.iter_events(timeout=30))
    assert len(plain.result(30)) == 3


async def test_step_queue_changed_reports_a_queue_growing_beyond_num_workers_and_draining(
        rt: ProcessRuntime) -> None:
    handler = Fan(runtime=rt).run(n=4)
    queue = [(ev.queued, ev.active) for ev in
             [e async for e in handler.stream_events(expose_internal=True)]
             if isinstance(ev, StepQueueChanged) and ev.step == "work"]
    await handler
    # num_workers=1: the first Work runs, the other three queue up, then leave one by one.
    assert [q for q, _ in queue] == [1, 2, 3, 2, 1, 0]
    assert all(active == 1 for _, active in queue)


class Boom(Workflow):
    @step
    async def begin(self, ev: StartEvent) -> StopEvent:
        raise ValueError("boom")


def test_a_failing_step_reports_the_failed_state(rt: ProcessRuntime) -> None:
    handler = Boom(runtime=rt).run()
    events = list(handler.iter_events(expose_internal=True, timeout=30))
    states = [(ev.step, ev.state) for ev in events if isinstance(ev, StepStateChanged)]
    assert [s for s in states if s[1] != "pending"] == [("begin", "running"), ("begin", "failed")]
    with pytest.raises(ValueError, match="boom"):
        handler.result(30)


def test_verbose_prints_each_step_activity_to_stdout(rt: ProcessRuntime, capsys: Any) -> None:
    result = Fan(runtime=rt, verbose=True).run(n=2).result(30)
    Fan(runtime=rt, verbose=False).run(n=2).result(30)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[Fan ")]
    # 1 begin + 2 work + 2 gather invocations, each running then done; the quiet workflow printed nothing.
    assert len(lines) == 10
    assert sum(" work running " in ln for ln in lines) == 2
    assert sum(" gather done " in ln for ln in lines) == 2
    pids = {int(m.group(1)) for ln in lines if (m := re.search(r"worker (\d+)", ln))}
    assert {pid for _, pid in result} <= pids


class CrashOnce(Workflow):
    @step(retry_policy=ConstantDelayRetryPolicy(maximum_attempts=2, delay=0.01))  # two attempts in all
    def crashy(self, ctx: Context, ev: StartEvent) -> StopEvent:
        tries = ctx.store.get_sync("tries", default=0) + 1
        ctx.store.set_sync("tries", tries)
        if tries == 1:
            os._exit(3)
        return StopEvent(result=tries)


def test_an_invocation_whose_worker_died_is_reported_failed(rt: ProcessRuntime) -> None:
    handler = CrashOnce(runtime=rt).run()
    events = list(handler.iter_events(expose_internal=True, timeout=30))
    assert handler.result(30) == 2
    by_inv: dict[int, list[str]] = {}
    for ev in events:
        if isinstance(ev, StepStateChanged):
            by_inv.setdefault(ev.invocation, []).append(ev.state)
    assert sorted([s for s in seq if s != "pending"] for seq in by_inv.values()) == [
        ["running", "done"], ["running", "failed"]]


class WaitsForReply(Workflow):
    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> StopEvent:
        reply = await ctx.wait_for_event(HumanResponseEvent, waiter_event=InputRequiredEvent(prefix="?"))
        return StopEvent(result=reply.response)


async def test_a_run_left_waiting_for_input_publishes_one_workflow_idle_event(rt: ProcessRuntime) -> None:
    handler = WaitsForReply(runtime=rt).run()
    seen = []
    async for ev in handler.stream_events(expose_internal=True):
        if isinstance(ev, StepStateChanged):
            seen.append((ev.name, ev.step_state))
        else:
            seen.append(type(ev).__name__)
        if isinstance(ev, WorkflowIdleEvent):
            await handler.send_event(HumanResponseEvent(response="hi"))
    assert await handler == "hi"
    seen = [s for s in seen if s != ("ask", StepState.PREPARING)]  # only if no worker was free at once
    assert seen == [("ask", StepState.RUNNING), ("ask", StepState.NOT_RUNNING), "InputRequiredEvent",
                    "WorkflowIdleEvent", ("ask", StepState.RUNNING), ("ask", StepState.NOT_RUNNING), "StopEvent"]


class Busy(Workflow):
    @step(num_workers=4)
    def spin(self, ev: StartEvent) -> StopEvent:
        import time

        time.sleep(0.3)
        return StopEvent(result=ev.i)


def test_an_invocation_that_waits_for_a_worker_is_reported_preparing_then_running(rt: ProcessRuntime) -> None:
    # Two workers, four def runs at once: two wait for a worker, and say so before they run.
    handlers = [Busy(runtime=rt, timeout=30).run(i=i) for i in range(4)]
    assert sorted(h.result(timeout=30) for h in handlers) == [0, 1, 2, 3]
    waited = 0
    for h in handlers:
        states = [(ev.state, ev.step_state) for ev in h.iter_events(expose_internal=True, timeout=5)
                  if isinstance(ev, StepStateChanged)]
        if states[0] == ("pending", StepState.PREPARING):
            waited += 1
            assert states[1:] == [("running", StepState.RUNNING), ("done", StepState.NOT_RUNNING)]
        else:
            assert states == [("running", StepState.RUNNING), ("done", StepState.NOT_RUNNING)]
    assert waited >= 2
