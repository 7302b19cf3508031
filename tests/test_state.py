"""Issue 4 item 1: typed state (``Context[State]``), ``edit_state`` atomic across workers, get/set_state,
dotted keys, and clear errors for values the store cannot take."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest
from pydantic import BaseModel

from actors import (
    Context, Event, HumanResponseEvent, PayloadError, StartEvent, StopEvent, Workflow, WorkflowRuntimeError, step,
)
from runtime import ProcessRuntime


class Inner(BaseModel):
    x: int = 0
    label: str = ""


class Counter(BaseModel):
    count: int = 0
    pids: list[int] = []
    inner: Inner = Inner()
    data: dict[str, Any] = {}
    order: list[str] = []


# --- typed state ----------------------------------------------------------------------------------------------
class TypedFlow(Workflow):
    @step
    async def begin(self, ctx: Context[Counter], ev: StartEvent) -> StopEvent:
        state = await ctx.store.get_state()
        was_model = type(state) is Counter
        async with ctx.store.edit_state() as state:
            state.count += 5
            state.inner.label = "edited"
        await ctx.store.set("inner.x", 7)
        await ctx.store.set("data.k", "v")  # a dotted key into a dict field of the model
        got = (await ctx.store.get("inner.x"), await ctx.store.get("data.k"), await ctx.store.get("count"))
        return StopEvent(result=(was_model, got, await ctx.store.get("nope.deeper", default="dflt")))


async def test_a_context_annotated_with_a_model_makes_the_store_an_instance_of_it(rt: ProcessRuntime) -> None:
    handler = TypedFlow(runtime=rt).run()
    assert await handler == (True, (7, "v", 5), "dflt")
    final = await handler.ctx.store.get_state()
    assert isinstance(final, Counter)
    assert final.count == 5 and final.inner == Inner(x=7, label="edited") and final.data == {"k": "v"}


class UntypedFlow(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> StopEvent:
        await ctx.store.set("a.b", 1)
        state = await ctx.store.get_state()
        async with ctx.store.edit_state() as st:
            st["a"]["c"] = 2
        await ctx.store.set_state({**await ctx.store.get_state(), "z": 3})
        return StopEvent(result=(type(state).__name__, await ctx.store.get_state()))


def test_without_a_state_type_the_store_is_a_dict_state_that_compares_as_a_dict(rt: ProcessRuntime) -> None:
    # LlamaIndex Workflows' untyped state is a DictState (dict-like model); it compares equal to a dict.
    assert UntypedFlow(runtime=rt).run().result(30) == ("DictState", {"a": {"b": 1, "c": 2}, "z": 3})


class SetStateFlow(Workflow):
    @step
    async def begin(self, ctx: Context[Counter], ev: StartEvent) -> StopEvent:
        await ctx.store.set_state(Counter(count=41, order=["set"]))
        wrong = None
        try:
            await ctx.store.set_state({"count": 1})
        except WorkflowRuntimeError as exc:
            wrong = str(exc)
        return StopEvent(result=((await ctx.store.get_state()).count, wrong))


def test_set_state_replaces_the_whole_state_and_refuses_another_type(rt: ProcessRuntime) -> None:
    count, wrong = SetStateFlow(runtime=rt).run().result(30)
    assert count == 41
    assert wrong is not None and "Counter" in wrong and "dict" in wrong


# --- errors ---------------------------------------------------------------------------------------------------
class BadTypeFlow(Workflow):
    @step
    async def begin(self, ctx: Context[Counter], ev: StartEvent) -> StopEvent:
        errors = []
        for key, value in (("count", "not a number"), ("inner.x", [1, 2])):
            try:
                await ctx.store.set(key, value)
            except WorkflowRuntimeError as exc:
                errors.append(str(exc))
        return StopEvent(result=(errors, (await ctx.store.get_state()).count))


async def test_setting_a_typed_field_to_a_wrong_type_is_an_error_naming_the_key(rt: ProcessRuntime) -> None:
    handler = BadTypeFlow(runtime=rt).run()
    errors, count = await handler
    assert len(errors) == 2
    assert "'count'" in errors[0] and "'inner.x'" in errors[1]
    assert count == 0  # the bad value was not stored
    with pytest.raises(WorkflowRuntimeError, match="'count'"):
        await handler.ctx.store.set("count", "nope")  # from the caller's side too
    assert (await handler.ctx.store.get_state()).count == 0


class UnpicklableFlow(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> StopEvent:
        await ctx.store.set("the_lock", threading.Lock())
        return StopEvent()


class UnpicklableDefFlow(Workflow):
    @step
    def begin(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.store.set_sync("fine", 1)
        ctx.store.set_sync("def_lock", threading.Lock())
        return StopEvent()


@pytest.mark.parametrize("flow, key", [(UnpicklableFlow, "the_lock"), (UnpicklableDefFlow, "def_lock")])
def test_an_unpicklable_value_in_store_set_is_a_payload_error_naming_the_key(
        rt: ProcessRuntime, flow: type[Workflow], key: str) -> None:
    handler = flow(runtime=rt).run()
    with pytest.raises(PayloadError, match=key):
        handler.result(30)
    # The run's store is intact and the pool still serves runs.
    assert UntypedFlow(runtime=rt).run().result(30)[0] == "DictState"


# --- edit_state ----------------------------------------------------------------------------------------------
class Bump(Event):
    i: int


class Tock(Event):
    i: int


class Counted(Event):
    pid: int


class Finish(HumanResponseEvent):  # sent by the caller: no step produces it
    pass


class ManyEditsFlow(Workflow):
    """``begin`` fans out ``n_async`` + ``n_def`` increments; each increment publishes ``Counted`` once its
    edit is saved; the caller counts them, then sends ``Finish`` to read the result."""

    @step(skip_graph_checks=["dead_end"])  # its events end in steps that only stream: on purpose
    async def begin(self, ctx: Context[Counter], ev: StartEvent) -> Bump | Tock | None:
        for i in range(ev.n_async):
            ctx.send_event(Bump(i=i))
        for i in range(ev.n_def):
            ctx.send_event(Tock(i=i))
        return None

    @step(num_workers=64)
    async def bump_async(self, ctx: Context[Counter], ev: Bump) -> None:
        async with ctx.store.edit_state() as state:
            seen = state.count
            await asyncio.sleep(0.001)  # widen the read-modify-write window
            state.count = seen + 1
            if os.getpid() not in state.pids:
                state.pids.append(os.getpid())
        ctx.write_event_to_stream(Counted(pid=os.getpid()))

    @step(num_workers=2)
    def bump_def(self, ctx: Context[Counter], ev: Tock) -> None:
        with ctx.store.edit_state_sync() as state:
            seen = state.count
            time.sleep(0.001)
            state.count = seen + 1
            if os.getpid() not in state.pids:
                state.pids.append(os.getpid())
        ctx.write_event_to_stream(Counted(pid=os.getpid()))

    @step
    async def finish(self, ctx: Context[Counter], ev: Finish) -> StopEvent:
        return StopEvent(result=await ctx.store.get_state())


@pytest.mark.timeout(90)
async def test_hundreds_of_concurrent_edit_state_increments_from_both_workers_lose_no_update(
        rt: ProcessRuntime) -> None:
    n_async, n_def = 200, 40
    handler = ManyEditsFlow(runtime=rt, timeout=60).run(n_async=n_async, n_def=n_def)
    pids: set[int] = set()
    counted = 0
    async for ev in handler.stream_events():
        if isinstance(ev, Counted):
            counted += 1
            pids.add(ev.pid)
            if counted == n_async + n_def:
                await handler.send_event(Finish())
    state = await handler
    assert counted == n_async + n_def
    assert state.count == n_async + n_def
    assert len(pids) == 2 and set(state.pids) == pids  # the edits came from both workers


class RaisingEditFlow(Workflow):
    @step
    async def begin(self, ctx: Context[Counter], ev: StartEvent) -> StopEvent:
        try:
            async with ctx.store.edit_state() as state:
                state.count = 100
                raise ValueError("changed my mind")
        except ValueError:
            pass
        # The lock was released, so this edit goes through.
        async with ctx.store.edit_state() as state:
            state.order.append("after")
        return StopEvent(result=await ctx.store.get_state())


class RaisingEditDefFlow(Workflow):
    @step
    def begin(self, ctx: Context[Counter], ev: StartEvent) -> StopEvent:
        try:
            with ctx.store.edit_state_sync() as state:
                state.count = 100
                raise ValueError("changed my mind")
        except ValueError:
            pass
        with ctx.store.edit_state_sync() as state:
            state.order.append("after")
        return StopEvent(result=ctx.store.get_sync("count"))


def test_an_edit_block_that_raises_drops_its_changes_and_releases_the_lock(rt: ProcessRuntime) -> None:
    state = RaisingEditFlow(runtime=rt).run().result(30)
    assert state.count == 0 and state.order == ["after"]
    assert RaisingEditDefFlow(runtime=rt).run().result(30) == 0


class Second(Event):
    pass


class AbandonFlow(Workflow):
    """``grab`` enters edit_state and returns without leaving it: the lock must not outlive the step."""

    @step
    async def grab(self, ctx: Context[Counter], ev: StartEvent) -> Second:
        cm = ctx.store.edit_state()
        state = await cm.__aenter__()
        state.count = 99  # never saved: the block was not exited
        return Second()

    @step
    async def after(self, ctx: Context[Counter], ev: Second) -> StopEvent:
        async with ctx.store.edit_state() as state:
            state.order.append("after")
        return StopEvent(result=await ctx.store.get_state())


async def test_an_invocation_ending_while_holding_the_state_lock_releases_it(rt: ProcessRuntime) -> None:
    state = await asyncio.wait_for(AbandonFlow(runtime=rt).run(), 30)
    assert state.order == ["after"]
    assert state.count == 0


class Go(HumanResponseEvent):  # sent by the caller: no step produces it
    pass


class HolderFlow(Workflow):
    @step
    async def hold(self, ctx: Context[Counter], ev: StartEvent) -> None:
        async with ctx.store.edit_state() as state:
            state.order.append("holder")
            ctx.write_event_to_stream(Go())
            while not await ctx.store.get("data.go", default=False):
                await asyncio.sleep(0.01)
        return None

    @step
    async def end(self, ctx: Context[Counter], ev: Go) -> StopEvent:
        return StopEvent(result=await ctx.store.get_state())


async def test_edit_state_waiters_are_granted_the_lock_in_fifo_order(rt: ProcessRuntime) -> None:
    handler = HolderFlow(runtime=rt).run()

    async def edit(tag: str) -> None:
        async with handler.ctx.store.edit_state() as state:
            state.order.append(tag)

    async for ev in handler.stream_events():
        if isinstance(ev, Go):
            break
    # Each task asks for the lock before its first suspension, so they queue in creation order.
    tasks = [asyncio.create_task(edit(tag)) for tag in ("c1", "c2", "c3")]
    await asyncio.sleep(0)
    await handler.ctx.store.set("data.go", True)  # a plain set does not wait for the lock
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    await handler.send_event(Go())
    state = await asyncio.wait_for(handler, 30)
    # The holder saved its copy (taken before data.go was set) over the plain set, then c1..c3 in order.
    assert state.order == ["holder", "c1", "c2", "c3"]


class UnpicklableEditFlow(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> StopEvent:
        try:
            async with ctx.store.edit_state() as state:
                state["bad"] = threading.Lock()
        except PayloadError as exc:
            error = str(exc)
        try:
            async with asyncio.timeout(2):  # the failed save must not leave the lock held
                async with ctx.store.edit_state() as state:
                    state["good"] = 1
        except TimeoutError:
            return StopEvent(result=(error, "the state lock is still held"))
        return StopEvent(result=(error, await ctx.store.get_state()))


def test_an_edit_whose_state_cannot_be_pickled_is_a_payload_error_and_releases_the_lock(
        rt: ProcessRuntime) -> None:
    error, state = UnpicklableEditFlow(runtime=rt).run().result(30)
    assert "pickle" in error
    assert state == {"good": 1}


class Hold(Event):
    pass


class HoldUntilReleased(Workflow):
    @step
    async def hold(self, ctx: Context, ev: StartEvent) -> StopEvent:
        async with ctx.store.edit_state() as state:
            ctx.write_event_to_stream(Hold())
            while not await ctx.store.get("release", default=False):
                await asyncio.sleep(0.01)
            state["held"] = True
        async with ctx.store.edit_state() as state:
            state["again"] = True
        return StopEvent(result=await ctx.store.get_state())


def test_a_caller_that_stops_waiting_for_the_state_lock_does_not_break_the_holder(
        rt: ProcessRuntime) -> None:
    handler = HoldUntilReleased(runtime=rt).run()

    async def give_up_then_release() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                async with handler.ctx.store.edit_state() as state:
                    state["caller"] = True
        await handler.ctx.store.set("release", True)

    for ev in handler.iter_events(timeout=30):
        if isinstance(ev, Hold):
            asyncio.run(give_up_then_release())
    # The holder's copy predates the plain set of "release", so its save drops that key.
    assert handler.result(30) == {"held": True, "again": True}
