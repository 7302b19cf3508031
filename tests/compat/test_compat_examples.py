"""Basic examples from llama's documentation ("Managing events", "Concurrent execution", "Streaming"): fan-out with
``ctx.send_event`` and ``@step(num_workers=N)``, fan-in with ``ctx.collect_events``, streaming with
``ctx.write_event_to_stream``, and ``send_event(ev, step=name)`` to one step (a missing step, or one that does not
accept the event, raises ``WorkflowRuntimeError``). Timeouts are in ``test_compat_events.py``.
"""

import asyncio
from typing import Any

import pytest

from ._support import Impl, aio, drain


def fan_out_workflow(wf: Impl) -> Any:
    """start sends ``ev.count`` Query events; answer (num_workers=2) runs them, recording its peak concurrency in
    the state (item access: attribute access is test_compat_context's); gather collects every Answer."""
    Event, StartEvent, StopEvent = wf.events.Event, wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Context = wf.decorators.step, wf.workflow.Workflow, wf.context.Context

    class Query(Event):
        q: int

    class Answer(Event):
        a: int

    class FanOut(Workflow):
        @step
        async def start(self, ctx: Context, ev: StartEvent) -> Query | None:
            await ctx.store.set("count", ev.count)
            for i in range(ev.count):
                ctx.send_event(Query(q=i))
            return None

        @step(num_workers=2)
        async def answer(self, ctx: Context, ev: Query) -> Answer:
            async with ctx.store.edit_state() as state:
                state["active"] = state.get("active", 0) + 1
                state["peak"] = max(state.get("peak", 0), state["active"])
            await asyncio.sleep(0.05)
            async with ctx.store.edit_state() as state:
                state["active"] -= 1
            return Answer(a=ev.q * 10)

        @step
        async def gather(self, ctx: Context, ev: Answer) -> StopEvent | None:
            answers = ctx.collect_events(ev, [Answer] * await ctx.store.get("count"))
            if answers is None:
                return None
            return StopEvent(result=(sorted(a.a for a in answers), await ctx.store.get("peak")))

    return FanOut


@aio
async def test_fan_out_with_send_event_and_fan_in_with_collect_events(wf: Impl) -> None:
    answers, _ = await wf.make(fan_out_workflow(wf)).run(count=5)
    assert answers == [0, 10, 20, 30, 40]


@aio
async def test_num_workers_caps_the_concurrent_invocations_of_a_step(wf: Impl) -> None:
    _, peak = await wf.make(fan_out_workflow(wf)).run(count=6)
    assert 1 <= peak <= 2, f"{wf.side}: @step(num_workers=2) ran {peak} invocations at once"


@aio
async def test_collect_events_returns_the_events_in_the_order_asked_for(wf: Impl) -> None:
    Event, StartEvent, StopEvent = wf.events.Event, wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Context = wf.decorators.step, wf.workflow.Workflow, wf.context.Context

    class QueryEvent(Event):
        query: str

    class RetrieveEvent(Event):
        nodes: list[str]

    class Synthesize(Workflow):
        @step
        async def split(self, ctx: Context, ev: StartEvent) -> QueryEvent | RetrieveEvent | None:
            ctx.send_event(RetrieveEvent(nodes=["n1", "n2"]))
            ctx.send_event(QueryEvent(query="q"))
            return None

        @step
        async def synthesize(self, ctx: Context, ev: QueryEvent | RetrieveEvent) -> StopEvent | None:
            data = ctx.collect_events(ev, [QueryEvent, RetrieveEvent])
            if data is None:
                return None
            query, retrieved = data
            return StopEvent(result=(type(query).__name__, query.query, retrieved.nodes))

    assert await wf.make(Synthesize).run() == ("QueryEvent", "q", ["n1", "n2"])


@aio
async def test_events_written_to_the_stream_arrive_in_order_before_the_stop_event(wf: Impl) -> None:
    Event, StartEvent, StopEvent = wf.events.Event, wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Context = wf.decorators.step, wf.workflow.Workflow, wf.context.Context

    class Progress(Event):
        msg: str

    class Streaming(Workflow):
        @step
        async def work(self, ctx: Context, ev: StartEvent) -> StopEvent:
            for i in range(3):
                ctx.write_event_to_stream(Progress(msg=f"step {i}"))
            return StopEvent(result="finished")

    handler = wf.make(Streaming).run()
    events = await drain(handler)
    assert [ev.msg for ev in events[:-1]] == ["step 0", "step 1", "step 2"]
    assert isinstance(events[-1], StopEvent) and events[-1].result == "finished"
    assert await handler == "finished"


@aio
async def test_send_event_with_a_step_name_reaches_only_that_step(wf: Impl) -> None:
    Event, StartEvent, StopEvent = wf.events.Event, wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Context = wf.decorators.step, wf.workflow.Workflow, wf.context.Context

    class Ping(Event):
        pass

    class Router(Workflow):
        @step
        async def route(self, ctx: Context, ev: StartEvent) -> Ping | None:
            ctx.send_event(Ping(), step=ev.target)
            return None

        @step
        async def left(self, ev: Ping) -> StopEvent:
            return StopEvent(result="left")

        @step
        async def right(self, ev: Ping) -> StopEvent:
            return StopEvent(result="right")

    workflow = wf.make(Router)
    assert (await workflow.run(target="right"), await workflow.run(target="left")) == ("right", "left")


def waiting_workflow(wf: Impl) -> Any:
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    HumanResponseEvent, InputRequiredEvent = wf.events.HumanResponseEvent, wf.events.InputRequiredEvent
    step, Workflow, Context = wf.decorators.step, wf.workflow.Workflow, wf.context.Context

    class Waits(Workflow):
        @step
        async def wait(self, ctx: Context, ev: StartEvent) -> StopEvent:
            reply = await ctx.wait_for_event(
                HumanResponseEvent, waiter_event=InputRequiredEvent(prefix="?"), waiter_id="reply")
            return StopEvent(result=reply.response)

    return Waits


@pytest.mark.parametrize("target", ["no_such_step", "wait"])
@aio
async def test_send_event_to_a_missing_or_non_accepting_step_raises_workflow_runtime_error(
        wf: Impl, target: str) -> None:
    handler = wf.make(waiting_workflow(wf)).run()
    raised = None
    async for ev in handler.stream_events():
        if isinstance(ev, wf.events.InputRequiredEvent):
            try:
                handler.ctx.send_event(wf.events.HumanResponseEvent(response="x"), step=target)
            except Exception as exc:  # noqa: BLE001 - checked below
                raised = exc
            handler.ctx.send_event(wf.events.HumanResponseEvent(response="ok"))
    assert await handler == "ok"
    assert isinstance(raised, wf.errors.WorkflowRuntimeError), (
        f"{wf.side}: handler.ctx.send_event(ev, step={target!r}) must raise WorkflowRuntimeError at once "
        f"(the step {'does not exist' if target != 'wait' else 'does not accept HumanResponseEvent'}), "
        f"got {raised!r}")
