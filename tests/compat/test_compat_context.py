"""Items 4 and 5: a Context before its run, and the Context API during and after one.

llama documents (``Context`` docstrings): ``ctx = Context(workflow)`` can be prepared before the run
(``await ctx.store.set/get``, ``async with ctx.store.edit_state()``) and the run started with
``workflow.run(ctx=ctx)`` starts from that store. Operations that need a running workflow raise
``workflows.errors.ContextStateError`` before it. ``ctx.is_running``, ``await ctx.running_steps()``,
``await ctx.store.clear()``, ``handler.ctx.stream_events()``, ``ctx.retry_info()`` in a step; state is a
``DictState`` (attribute and item access) or the pydantic model of ``Context[Model]`` (the most derived one when
steps annotate a base and a subclass); a missing key read without default raises ``ValueError``.
"""

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from ._support import Impl, aio, drain


class Profile(BaseModel):
    visits: int = 0
    name: str = "anon"


class VipProfile(Profile):
    level: str = "gold"


def echo_workflow(wf: Impl) -> Any:
    """Returns what the store holds at ``ev.key`` (default None), after adding 1 to ``runs``."""
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Context = wf.decorators.step, wf.workflow.Workflow, wf.context.Context

    class Echo(Workflow):
        @step
        async def echo(self, ctx: Context, ev: StartEvent) -> StopEvent:
            runs = await ctx.store.get("runs", default=0)
            await ctx.store.set("runs", runs + 1)
            return StopEvent(result=await ctx.store.get(ev.key, default=None))

    return Echo


# --- item 4: a Context before its run ----------------------------------------------------------------------
@aio
async def test_the_store_of_a_fresh_context_can_be_set_and_read_before_the_run(wf: Impl) -> None:
    ctx = wf.context.Context(wf.make(echo_workflow(wf)))
    await ctx.store.set("seed", 41)
    assert await ctx.store.get("seed") == 41


@aio
async def test_the_run_starts_from_a_store_prepared_before_it(wf: Impl) -> None:
    workflow = wf.make(echo_workflow(wf))
    ctx = wf.context.Context(workflow)
    await ctx.store.set("seed", 41)
    assert await workflow.run(ctx=ctx, key="seed") == 41


@aio
async def test_edit_state_works_on_a_fresh_context_and_the_run_sees_the_edit(wf: Impl) -> None:
    workflow = wf.make(echo_workflow(wf))
    ctx = wf.context.Context(workflow)
    async with ctx.store.edit_state() as state:
        state.greeting = "hello"
    assert await ctx.store.get("greeting") == "hello"
    assert await workflow.run(ctx=ctx, key="greeting") == "hello"


@aio
async def test_is_running_is_false_for_a_fresh_context(wf: Impl) -> None:
    ctx = wf.context.Context(wf.make(echo_workflow(wf)))
    assert ctx.is_running is False


def _pre_run_operations() -> dict[str, Any]:
    async def send_event(ctx: Any, wf: Impl) -> None:
        ctx.send_event(wf.events.Event())

    async def running_steps(ctx: Any, wf: Impl) -> None:
        await ctx.running_steps()

    async def stream_events(ctx: Any, wf: Impl) -> None:
        async for _ in ctx.stream_events():
            break

    async def write_event_to_stream(ctx: Any, wf: Impl) -> None:
        ctx.write_event_to_stream(wf.events.Event())

    async def collect_events(ctx: Any, wf: Impl) -> None:
        ctx.collect_events(wf.events.Event(), [wf.events.Event])

    async def wait_for_event(ctx: Any, wf: Impl) -> None:
        await asyncio.wait_for(ctx.wait_for_event(wf.events.HumanResponseEvent), 5)

    return {f.__name__: f for f in (send_event, running_steps, stream_events, write_event_to_stream,
                                    collect_events, wait_for_event)}


PRE_RUN_OPERATIONS = _pre_run_operations()


@pytest.mark.parametrize("operation", sorted(PRE_RUN_OPERATIONS))
@aio
async def test_an_operation_needing_a_run_raises_context_state_error_before_it(wf: Impl, operation: str) -> None:
    ctx = wf.context.Context(wf.make(echo_workflow(wf)))
    try:
        await PRE_RUN_OPERATIONS[operation](ctx, wf)
    except Exception as exc:  # noqa: BLE001 - checked below
        raised: Exception | None = exc
    else:
        raised = None
    expected = getattr(wf.errors, "ContextStateError", None)
    assert expected is not None and isinstance(raised, expected), (
        f"{wf.side}: ctx.{operation}(...) on a Context whose run has not started must raise "
        f"ContextStateError (workflows.errors.ContextStateError), got {raised!r}")


# --- item 5: the Context API during and after a run --------------------------------------------------------
def gated_workflow(wf: Impl) -> Any:
    """``work`` publishes Started, then waits (holding its worker, as a busy step) until the store's ``go`` is
    set by the caller; then returns."""
    Event, StartEvent, StopEvent = wf.events.Event, wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Context = wf.decorators.step, wf.workflow.Workflow, wf.context.Context

    class Started(Event):
        pass

    class Gated(Workflow):
        @step
        async def work(self, ctx: Context, ev: StartEvent) -> StopEvent:
            ctx.write_event_to_stream(Started())
            while not await ctx.store.get("go", default=False):
                await asyncio.sleep(0.01)
            return StopEvent(result="worked")

    return Gated, Started


@aio
async def test_is_running_is_true_during_the_run_and_false_after_it(wf: Impl) -> None:
    Gated, Started = gated_workflow(wf)
    handler = wf.make(Gated).run()
    during = None
    async for ev in handler.stream_events():
        if isinstance(ev, Started):
            try:
                during = handler.ctx.is_running
            finally:  # let the step finish whatever happened
                await handler.ctx.store.set("go", True)
    assert await handler == "worked"
    assert (during, handler.ctx.is_running) == (True, False), (
        f"{wf.side}: handler.ctx.is_running must be True while the run goes and False once it ended")


@aio
async def test_running_steps_names_the_step_in_progress(wf: Impl) -> None:
    Gated, Started = gated_workflow(wf)
    handler = wf.make(Gated).run()
    running = None
    async for ev in handler.stream_events():
        if isinstance(ev, Started):
            try:
                running = await handler.ctx.running_steps()
            finally:  # let the step finish whatever happened
                await handler.ctx.store.set("go", True)
    assert await handler == "worked"
    assert running == ["work"], f"{wf.side}: await ctx.running_steps() must be ['work'], got {running!r}"


@aio
async def test_store_clear_resets_the_state(wf: Impl) -> None:
    workflow = wf.make(echo_workflow(wf))
    handler = workflow.run(key="runs")
    assert await handler == 1
    await handler.ctx.store.clear()
    assert await handler.ctx.store.get("runs", default="cleared") == "cleared"
    assert await workflow.run(ctx=handler.ctx, key="runs") == 1, (
        f"{wf.side}: after store.clear() the next run with the same Context starts from an empty state")


@aio
async def test_handler_ctx_stream_events_yields_the_published_events(wf: Impl) -> None:
    Event, StartEvent, StopEvent = wf.events.Event, wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Context = wf.decorators.step, wf.workflow.Workflow, wf.context.Context

    class Note(Event):
        n: int

    class Notes(Workflow):
        @step
        async def write(self, ctx: Context, ev: StartEvent) -> StopEvent:
            for i in range(3):
                ctx.write_event_to_stream(Note(n=i))
            return StopEvent(result="written")

    handler = wf.make(Notes).run()
    notes = []
    async for ev in handler.ctx.stream_events():
        if isinstance(ev, Note):
            notes.append(ev.n)
        if isinstance(ev, StopEvent):
            break
    assert notes == [0, 1, 2]
    assert await handler == "written"


@aio
async def test_retry_info_reports_the_retry_number_and_the_last_exception(wf: Impl) -> None:
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Context = wf.decorators.step, wf.workflow.Workflow, wf.context.Context
    retry_policy, stop_after_attempt, wait_fixed = (
        wf.retry_policy.retry_policy, wf.retry_policy.stop_after_attempt, wf.retry_policy.wait_fixed)

    class Flaky(Workflow):
        @step(retry_policy=retry_policy(wait=wait_fixed(0), stop=stop_after_attempt(3)))
        async def flaky(self, ctx: Context, ev: StartEvent) -> StopEvent:
            info = ctx.retry_info()
            seen = await ctx.store.get("seen", default=[])
            last = info.last_exception
            seen.append((info.retry_number, type(last).__name__ if last else None, str(last) if last else None,
                         info.elapsed_seconds >= 0, info.last_failed_at is not None))
            await ctx.store.set("seen", seen)
            if info.retry_number < 2:
                raise ValueError(f"try {info.retry_number}")
            return StopEvent(result=seen)

    assert await wf.make(Flaky).run() == [
        (0, None, None, True, False),
        (1, "ValueError", "try 0", True, True),
        (2, "ValueError", "try 1", True, True),
    ]


@aio
async def test_untyped_state_takes_attribute_and_item_assignment_in_edit_state(wf: Impl) -> None:
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Context = wf.decorators.step, wf.workflow.Workflow, wf.context.Context

    class Untyped(Workflow):
        @step
        async def edit(self, ctx: Context, ev: StartEvent) -> StopEvent:
            async with ctx.store.edit_state() as state:
                state.x = 1
                state["y"] = 2
            async with ctx.store.edit_state() as state:
                read = (state.x, state["y"], state.get("z", "none"))
            return StopEvent(result=(read, await ctx.store.get("x"), await ctx.store.get("y")))

    assert await wf.make(Untyped).run() == ((1, 2, "none"), 1, 2)


@aio
async def test_typed_state_is_the_declared_pydantic_model(wf: Impl) -> None:
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Context = wf.decorators.step, wf.workflow.Workflow, wf.context.Context

    class Typed(Workflow):
        @step
        async def visit(self, ctx: Context[Profile], ev: StartEvent) -> StopEvent:
            async with ctx.store.edit_state() as state:
                state.visits += 1
                state.name = ev.name
            state = await ctx.store.get_state()
            return StopEvent(result=(type(state).__name__, state.visits, await ctx.store.get("name")))

    assert await wf.make(Typed).run(name="ann") == ("Profile", 1, "ann")


@aio
async def test_a_step_annotated_with_a_subclass_state_narrows_the_state_type(wf: Impl) -> None:
    Event, StartEvent, StopEvent = wf.events.Event, wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Context = wf.decorators.step, wf.workflow.Workflow, wf.context.Context

    class Next(Event):
        pass

    class Narrowed(Workflow):
        @step
        async def base(self, ctx: Context[Profile], ev: StartEvent) -> Next:
            async with ctx.store.edit_state() as state:
                state.visits += 1
            return Next()

        @step
        async def vip(self, ctx: Context[VipProfile], ev: Next) -> StopEvent:
            state = await ctx.store.get_state()
            return StopEvent(result=(type(state).__name__, state.visits, state.level))

    assert await wf.make(Narrowed).run() == ("VipProfile", 1, "gold"), (
        f"{wf.side}: steps annotating Context[Profile] and Context[VipProfile] share one state of the most "
        "derived type (VipProfile)")


@aio
async def test_the_state_type_of_a_fresh_context_is_inferred_from_the_steps(wf: Impl) -> None:
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Context = wf.decorators.step, wf.workflow.Workflow, wf.context.Context

    class Typed(Workflow):
        @step
        async def visit(self, ctx: Context[Profile], ev: StartEvent) -> StopEvent:
            return StopEvent(result=(await ctx.store.get_state()).name)

    workflow = wf.make(Typed)
    ctx = wf.context.Context(workflow)
    state = await ctx.store.get_state()
    assert isinstance(state, Profile), f"{wf.side}: Context(wf).store.get_state() must be a Profile: {state!r}"
    async with ctx.store.edit_state() as state:
        state.name = "pre"
    assert await workflow.run(ctx=ctx) == "pre"


@aio
async def test_reading_a_missing_key_without_a_default_raises_value_error(wf: Impl) -> None:
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Context = wf.decorators.step, wf.workflow.Workflow, wf.context.Context

    class Missing(Workflow):
        @step
        async def read(self, ctx: Context, ev: StartEvent) -> StopEvent:
            try:
                await ctx.store.get("absent")
            except Exception as exc:  # noqa: BLE001 - reported
                return StopEvent(result=type(exc).__name__)
            return StopEvent(result="no error")

    assert await wf.make(Missing).run() == "ValueError", (
        f"{wf.side}: await ctx.store.get('absent') must raise ValueError (llama: \"Path 'absent' not found in "
        "state\")")


@aio
async def test_dotted_keys_read_and_write_nested_values(wf: Impl) -> None:
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Context = wf.decorators.step, wf.workflow.Workflow, wf.context.Context

    class Nested(Workflow):
        @step
        async def nest(self, ctx: Context, ev: StartEvent) -> StopEvent:
            await ctx.store.set("user", {"name": "ann"})
            await ctx.store.set("user.age", 3)
            return StopEvent(result=(await ctx.store.get("user.name"), await ctx.store.get("user")))

    assert await wf.make(Nested).run() == ("ann", {"name": "ann", "age": 3})


@aio
async def test_the_store_is_readable_from_the_handler_after_the_run(wf: Impl) -> None:
    handler = wf.make(echo_workflow(wf)).run(key="runs")
    events = await drain(handler)
    assert isinstance(events[-1], wf.events.StopEvent)
    assert await handler == 1
    assert await handler.ctx.store.get("runs") == 1
