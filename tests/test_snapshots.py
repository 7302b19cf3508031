"""Issue 4 item 6: ``handler.ctx.to_dict()`` snapshots, ``Context.from_dict`` + ``run(ctx=...)`` to continue
a run (state, collected events, pending events, waiters), and reusing one Context across runs.

Every snapshot goes through ``json.dumps``/``json.loads`` before it is used, as it would through a file."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import time
from typing import Any

import pytest
from pydantic import BaseModel

from actors import (
    Context, ContextSerdeError, Event, HumanResponseEvent, InputRequiredEvent, StartEvent, StepStateChanged,
    StopEvent, Workflow, WorkflowCancelledByUser, WorkflowRuntimeError, step,
)
from actors.context import PickleSerializer
from runtime import ProcessRuntime


def through_json(data: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(data))
    return loaded


class Tally(BaseModel):
    runs: int = 0
    history: list[str] = []


class TypedCounter(Workflow):
    @step
    async def count(self, ctx: Context[Tally], ev: StartEvent) -> StopEvent:
        async with ctx.store.edit_state() as state:
            state.runs += 1
            state.history.append(ev.tag)
        return StopEvent(result=(await ctx.store.get_state()).runs)


class DictCounter(Workflow):
    @step
    def count(self, ctx: Context, ev: StartEvent) -> StopEvent:
        runs = ctx.store.get_sync("runs", default=0) + 1
        ctx.store.set_sync("runs", runs)
        return StopEvent(result=runs)


async def test_a_finished_runs_snapshot_is_json_with_state_buffers_waiters_and_leftovers(
        rt: ProcessRuntime) -> None:
    handler = TypedCounter(runtime=rt).run(tag="a")
    assert await handler == 1
    data = through_json(handler.ctx.to_dict())
    assert {"state", "buffers", "waiters", "leftovers", "is_running"} <= set(data)
    assert data["is_running"] is False and data["waiters"] == [] and data["leftovers"] == []
    # The state is encoded by the serializer (JSON by default); it reads back as the model.
    state = await Context.from_dict(TypedCounter(runtime=rt), data).store.get_state()
    assert isinstance(state, Tally) and (state.runs, state.history) == (1, ["a"])


@pytest.mark.parametrize("flow", [TypedCounter, DictCounter])
def test_from_dict_carries_the_state_into_a_new_run_of_a_new_workflow_object(
        rt: ProcessRuntime, flow: type[Workflow]) -> None:
    first = flow(runtime=rt).run(tag="a")
    assert first.result(30) == 1
    data = through_json(first.ctx.to_dict())
    wf = flow(runtime=rt)  # as if in another process: a fresh workflow object
    second = wf.run(ctx=Context.from_dict(wf, data), tag="b")
    assert second.result(30) == 2
    third = wf.run(ctx=Context.from_dict(wf, through_json(second.ctx.to_dict())), tag="c")
    assert third.result(30) == 3
    if flow is TypedCounter:
        assert asyncio.run(third.ctx.store.get_state()).history == ["a", "b", "c"]


@pytest.mark.parametrize("flow", [TypedCounter, DictCounter])
def test_reusing_one_context_across_runs_keeps_the_state(rt: ProcessRuntime, flow: type[Workflow]) -> None:
    wf = flow(runtime=rt)
    ctx = Context(wf)
    assert wf.run(ctx=ctx, tag="a").result(30) == 1
    assert wf.run(ctx=ctx, tag="b").result(30) == 2
    # The handler's ctx of a finished run works the same way.
    handler = wf.run(ctx=ctx, tag="c")
    assert handler.result(30) == 3
    assert wf.run(ctx=handler.ctx, tag="d").result(30) == 4


def test_to_dict_of_a_run_still_going_is_a_snapshot_of_the_live_run(rt: ProcessRuntime) -> None:
    # LlamaIndex Workflows' to_dict() works while the run goes (it used to raise here).
    handler = AskFlow(runtime=rt).run()
    for ev in handler.iter_events(timeout=30):
        if isinstance(ev, Ask):
            data = through_json(handler.ctx.to_dict())
            assert data["is_running"] is True and [w["step"] for w in data["waiters"]] == ["ask"]
            handler.send_event_sync(Reply(response="ok"))
    assert handler.result(30)[0] == "ok"


def test_from_dict_refuses_what_to_dict_did_not_make(rt: ProcessRuntime) -> None:
    wf = DictCounter(runtime=rt)
    with pytest.raises(ContextSerdeError, match="to_dict"):
        Context.from_dict(wf, {"nope": 1})
    # As in LlamaIndex Workflows, from_dict itself reads the whole snapshot: a state that does not fit the
    # workflow's state type is refused there, not when the run starts.
    with pytest.raises(ContextSerdeError, match="runs"):
        Context.from_dict(TypedCounter(runtime=rt), {"state": {"runs": "many"}})
    assert issubclass(ContextSerdeError, WorkflowRuntimeError)


# --- human in the loop across a stop and a resume -------------------------------------------------------------
class Ask(InputRequiredEvent):
    question: str = ""


class Reply(HumanResponseEvent):
    response: str = ""


class AskFlow(Workflow):
    @step
    async def ask(self, ctx: Context[Tally], ev: StartEvent) -> StopEvent:
        async with ctx.store.edit_state() as state:
            state.runs += 1  # before the wait: once per execution
        reply = await ctx.wait_for_event(Reply, waiter_event=Ask(question="name?"))
        return StopEvent(result=(reply.response, (await ctx.store.get_state()).runs))


class DefAskFlow(Workflow):
    @step
    def ask(self, ctx: Context[Tally], ev: StartEvent) -> StopEvent:
        with ctx.store.edit_state_sync() as state:
            state.runs += 1
        reply = ctx.wait_for_event_sync(Reply, waiter_event=Ask(question="name?"))
        return StopEvent(result=(reply.response, ctx.store.get_sync("runs")))


@pytest.mark.parametrize("flow", [AskFlow, DefAskFlow])
async def test_a_run_cancelled_while_waiting_resumes_from_its_snapshot_and_finishes_when_answered(
        rt: ProcessRuntime, flow: type[Workflow]) -> None:
    handler = flow(runtime=rt).run()
    async for ev in handler.stream_events():
        if isinstance(ev, Ask):
            await handler.cancel_run()
    with pytest.raises(WorkflowCancelledByUser):
        await handler
    data = through_json(handler.ctx.to_dict())
    assert [w["step"] for w in data["waiters"]] == ["ask"]
    assert (await Context.from_dict(flow(runtime=rt), data).store.get_state()).runs == 1

    wf = flow(runtime=rt)
    resumed = wf.run(ctx=Context.from_dict(wf, data))
    await resumed.send_event(Reply(response="Ada"))
    # The step ran once before the stop and once with the answer; it did not start over from scratch.
    assert await asyncio.wait_for(resumed, 30) == ("Ada", 2)
    assert through_json(resumed.ctx.to_dict())["waiters"] == []


# --- collected and pending events -----------------------------------------------------------------------------
class Item(Event):
    i: int


class Collector(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> Item | None:
        if not await ctx.store.get("sent", default=False):
            await ctx.store.set("sent", True)
            ctx.send_event(Item(i=1))
            ctx.send_event(Item(i=2))
        return None

    @step
    async def gather(self, ctx: Context, ev: Item) -> StopEvent | None:
        got = ctx.collect_events(ev, [Item] * 3)
        if got is None:
            ctx.write_event_to_stream(Event(buffered=ev.i))
            return None
        return StopEvent(result=sorted(e.i for e in got))


async def test_collected_events_are_in_the_snapshot_and_in_the_resumed_run(rt: ProcessRuntime) -> None:
    handler = Collector(runtime=rt).run()
    buffered = 0
    async for ev in handler.stream_events():
        if ev.get("buffered"):
            buffered += 1
            if buffered == 2:
                await handler.cancel_run()
    with pytest.raises(WorkflowCancelledByUser):
        await handler
    data = through_json(handler.ctx.to_dict())
    assert sorted(e["data"]["i"] for e in data["buffers"]["gather"]) == [1, 2]

    wf = Collector(runtime=rt)
    resumed = wf.run(ctx=Context.from_dict(wf, data))
    await resumed.send_event(Item(i=3))
    assert await asyncio.wait_for(resumed, 30) == [1, 2, 3]


class Mid(Event):
    pid: int


class Slow(Workflow):
    """``work`` runs long the first time; a graceful cancel lets a ``def`` step finish and keeps its output
    for the resumed run, while an async step is cancelled and runs again on resume."""

    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> Item:
        await ctx.store.set("use_def", ev.use_def)
        return Item(i=0)

    @step
    def work_def(self, ctx: Context, ev: Item) -> Mid | None:
        if not ctx.store.get_sync("use_def"):
            return None
        ctx.write_event_to_stream(Event(started=True))
        while not ctx.store.get_sync("release", default=False):
            time.sleep(0.01)  # a graceful cancel must let this step finish
        return Mid(pid=os.getpid())

    @step
    async def work_async(self, ctx: Context, ev: Item) -> Mid | None:
        if await ctx.store.get("use_def"):
            return None
        attempt = await ctx.store.get("attempt", default=0) + 1
        await ctx.store.set("attempt", attempt)
        if attempt == 1:
            ctx.write_event_to_stream(Event(started=True))
            await asyncio.sleep(60)
        return Mid(pid=os.getpid())

    @step
    async def end(self, ctx: Context, ev: Mid) -> StopEvent:
        return StopEvent(result=(await ctx.store.get("attempt", default=0), ev.pid > 0))


@pytest.mark.parametrize("use_def", [True, False])
async def test_a_graceful_cancel_keeps_pending_work_and_the_resumed_run_finishes_it(
        rt: ProcessRuntime, use_def: bool) -> None:
    handler = Slow(runtime=rt).run(use_def=use_def)
    ends = 0
    async for ev in handler.stream_events(expose_internal=True):
        if ev.get("started"):
            cancel = asyncio.ensure_future(handler.cancel_run(timeout=20))
            if use_def:
                await handler.ctx.store.set("release", True)
            await cancel
        if isinstance(ev, StepStateChanged) and ev.step == "end":
            ends += 1
    with pytest.raises(WorkflowCancelledByUser):
        await handler
    assert ends == 0  # nothing ran after the cancel
    data = through_json(handler.ctx.to_dict())
    assert data["leftovers"], data

    wf = Slow(runtime=rt)
    resumed = wf.run(ctx=Context.from_dict(wf, data))
    attempt, ok = await asyncio.wait_for(resumed, 30)
    assert ok
    assert attempt == (0 if use_def else 2)  # the async step ran again; the def step's output was kept


# --- reusing the context of a completed run ---------------------------------------------------------------
class Work(Event):
    i: int


class Waits(Event):
    pass


class EarlyStop(Workflow):
    """``begin`` returns the StopEvent while ``work`` still has queued events and ``wait`` still waits."""

    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> StopEvent | Waits | Work:
        runs = await ctx.store.get("runs", default=0) + 1
        await ctx.store.set("runs", runs)
        if runs == 1:
            for i in range(3):
                ctx.send_event(Work(i=i))
            ctx.send_event(Waits())
            while not await ctx.store.get("waiting", default=False):
                await asyncio.sleep(0.01)
        return StopEvent(result=runs)

    @step(num_workers=1)
    async def work(self, ev: Work) -> None:
        await asyncio.sleep(30)

    @step
    async def wait(self, ctx: Context, ev: Waits) -> None:
        await ctx.store.set("waiting", True)
        await ctx.wait_for_event(Reply)


def test_reusing_the_context_of_a_run_that_completed_with_work_left_starts_a_new_run(
        rt: ProcessRuntime) -> None:
    wf = EarlyStop(runtime=rt, timeout=3)
    ctx = Context(wf)
    assert wf.run(ctx=ctx).result(30) == 1
    assert wf.run(ctx=ctx).result(30) == 2


class Opaque:
    """Picklable, not JSON."""

    def __init__(self, v: int) -> None:
        self.v = v


class RichState(Workflow):
    @step
    async def count(self, ctx: Context, ev: StartEvent) -> StopEvent:
        runs = await ctx.store.get("runs", default=0) + 1
        if runs == 1:
            await ctx.store.set("when", datetime.datetime(2024, 5, 1, 12, 0))
            await ctx.store.set("pair", (1, 2))
            await ctx.store.set("opaque", Opaque(7))
        await ctx.store.set("runs", runs)
        when, pair, opaque = [await ctx.store.get(k) for k in ("when", "pair", "opaque")]
        return StopEvent(result=(runs, type(when).__name__, type(pair).__name__, opaque.v))


def test_reusing_a_context_keeps_store_values_that_json_cannot_hold(rt: ProcessRuntime) -> None:
    wf = RichState(runtime=rt)
    ctx = Context(wf)
    assert wf.run(ctx=ctx).result(30) == (1, "datetime", "tuple", 7)
    assert wf.run(ctx=ctx).result(30) == (2, "datetime", "tuple", 7)


# --- snapshots of a live run ----------------------------------------------------------------------------------
class Busy(Event):
    pass


class BusyFlow(Workflow):
    """``work`` (a def step) runs until the store's ``release`` is set; a snapshot taken meanwhile holds it as
    work to do again."""

    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> Busy:
        await ctx.store.set("began", await ctx.store.get("began", default=0) + 1)
        return Busy()

    @step
    def work(self, ctx: Context, ev: Busy) -> StopEvent:
        ctx.store.set_sync("works", ctx.store.get_sync("works", default=0) + 1)
        ctx.write_event_to_stream(Event(working=True))
        while not ctx.store.get_sync("release", default=False):
            time.sleep(0.01)
        return StopEvent(result=(ctx.store.get_sync("began"), ctx.store.get_sync("works")))


async def test_a_snapshot_of_a_live_run_holds_the_step_in_progress_and_the_resumed_run_runs_it_again(
        rt: ProcessRuntime) -> None:
    handler = BusyFlow(runtime=rt).run()
    data = None
    async for ev in handler.stream_events():
        if ev.get("working"):
            data = through_json(handler.ctx.to_dict())  # taken by the supervisor while `work` runs
            assert await handler.ctx.running_steps() == ["work"]
            await handler.ctx.store.set("release", True)
    assert await handler == (1, 1)
    assert data is not None and data["is_running"] is True
    assert [(item["kind"], item["step"]) for item in data["leftovers"]] == [("invoke", "work")]
    wf = BusyFlow(runtime=rt)
    restored = Context.from_dict(wf, data)
    assert restored.is_running is True
    await restored.store.set("release", True)  # the snapshot's state is the resumed run's
    # `begin` does not run again; `work` does, from its start, on the state of the snapshot.
    assert await asyncio.wait_for(wf.run(ctx=restored), 30) == (1, 2)


def test_a_pickle_serializer_snapshot_keeps_a_typed_state_field_json_cannot_hold(rt: ProcessRuntime) -> None:
    wf = OpaqueTyped(runtime=rt)
    handler = wf.run()
    assert handler.result(30) == 7
    with pytest.raises(ValueError):
        handler.ctx.to_dict()  # JSON cannot hold it: LlamaIndex's error type
    data = through_json(handler.ctx.to_dict(serializer=PickleSerializer()))
    restored = Context.from_dict(wf, data, serializer=PickleSerializer())
    assert wf.run(ctx=restored).result(30) == 14


class OpaqueState(BaseModel):
    model_config = {"arbitrary_types_allowed": True}
    thing: Opaque | None = None


class OpaqueTyped(Workflow):
    @step
    async def double(self, ctx: Context[OpaqueState], ev: StartEvent) -> StopEvent:
        async with ctx.store.edit_state() as state:
            state.thing = Opaque(state.thing.v * 2 if state.thing else 7)
        return StopEvent(result=(await ctx.store.get_state()).thing.v)
