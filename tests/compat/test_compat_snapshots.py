"""Item 3: snapshots of a live run, the documented pause/resume recipe, and the value serializers.

llama documents (Human in the Loop page, ``Context.to_dict``/``from_dict`` docstrings): while a run waits for
input, ``handler.ctx.to_dict()`` is a JSON-serializable snapshot; ``await handler.cancel_run()`` ends the run;
later ``Context.from_dict(workflow, data)`` and ``workflow.run(ctx=ctx)`` continue it, and the caller sends the
answer. ``to_dict(serializer=...)`` / ``from_dict(..., serializer=...)`` take a ``JsonSerializer`` (the default)
or a ``PickleSerializer`` (JSON first, pickle for what JSON cannot hold).
"""

import json
from typing import Any

import pytest

from ._support import Impl, aio, drain, outcome


# The prompt event of the pause/resume tests, defined at module level as most programs do (one class per side).
# test_a_snapshot_restores_event_classes_defined_inside_a_function covers classes local to a function.
from actors import InputRequiredEvent as _ProcflowInputRequired  # noqa: E402


class ProcflowAsk(_ProcflowInputRequired):
    prefix: str


try:
    from workflows.events import InputRequiredEvent as _LlamaInputRequired
except ImportError:  # llama not installed: its side is skipped
    LlamaAsk: Any = None
else:
    class LlamaAsk(_LlamaInputRequired):  # type: ignore[no-redef]
        prefix: str


def module_level_ask(wf: Impl) -> Any:
    return LlamaAsk if wf.is_llama else ProcflowAsk


class Point:
    """A state value JSON cannot encode (a plain class), importable so that pickle can."""

    def __init__(self, x: int) -> None:
        self.x = x


def through_json(data: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(data))
    return loaded


FORMS = ["step_returns_input_required", "step_waits_for_event"]


def pausing_workflow(wf: Impl, form: str = FORMS[0], local_ask: bool = False) -> Any:
    """A run that stores a note, then waits for a HumanResponseEvent and returns (note, response); its prompt
    is ``Ask``, the module-level class, or one defined in here with ``local_ask``.

    ``step_returns_input_required``: ask returns Ask (an InputRequiredEvent), answer takes the response.
    ``step_waits_for_event``: one step awaits ``ctx.wait_for_event(HumanResponseEvent, waiter_event=Ask(...))``.
    """
    InputRequiredEvent = wf.events.InputRequiredEvent
    HumanResponseEvent = wf.events.HumanResponseEvent
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Context = wf.decorators.step, wf.workflow.Workflow, wf.context.Context

    if local_ask:
        class Ask(InputRequiredEvent):
            prefix: str
    else:
        Ask = module_level_ask(wf)

    class Approval(Workflow):
        @step
        async def ask(self, ctx: Context, ev: StartEvent) -> Ask:
            await ctx.store.set("note", ev.note)
            return Ask(prefix="approve? ")

        @step
        async def answer(self, ctx: Context, ev: HumanResponseEvent) -> StopEvent:
            return StopEvent(result=(await ctx.store.get("note"), ev.response))

    class WaitingApproval(Workflow):
        @step
        async def ask(self, ctx: Context, ev: StartEvent) -> StopEvent:
            await ctx.store.set("note", ev.note)
            answer = await ctx.wait_for_event(
                HumanResponseEvent, waiter_event=Ask(prefix="approve? "), waiter_id="approval")
            return StopEvent(result=(await ctx.store.get("note"), answer.response))

    return (Approval if form == FORMS[0] else WaitingApproval), Ask


async def run_until_asked(wf: Impl, workflow: Any, Ask: type) -> tuple[Any, dict[str, Any]]:
    """Start a run, stream until Ask, take the snapshot, cancel gracefully (the documented recipe)."""
    handler = workflow.run(note="n1")
    data = None
    async for ev in handler.stream_events():
        if isinstance(ev, Ask):
            data = handler.ctx.to_dict()
            await handler.cancel_run()
            break
    assert data is not None, f"{wf.side}: the run never published Ask"
    return handler, data


@pytest.mark.parametrize("form", FORMS)
@aio
async def test_to_dict_of_a_run_waiting_for_input_is_json_serializable(wf: Impl, form: str) -> None:
    Approval, Ask = pausing_workflow(wf, form)
    handler = wf.make(Approval).run(note="n1")
    async for ev in handler.stream_events():
        if isinstance(ev, Ask):
            data = handler.ctx.to_dict()
            assert isinstance(data, dict)
            json.dumps(data)  # must not raise
            assert handler.ctx.is_running is True, f"{wf.side}: ctx.is_running must be True while waiting"
            handler.ctx.send_event(wf.events.HumanResponseEvent(response="ok"))
    assert await handler == ("n1", "ok")


@pytest.mark.parametrize("form", FORMS)
@aio
async def test_a_snapshot_taken_while_waiting_restores_as_a_running_context(wf: Impl, form: str) -> None:
    Approval, Ask = pausing_workflow(wf, form)
    workflow = wf.make(Approval)
    _, data = await run_until_asked(wf, workflow, Ask)
    restored = wf.context.Context.from_dict(workflow, through_json(data))
    assert restored.is_running is True, (
        f"{wf.side}: Context.from_dict(...) of a snapshot taken mid-run must report is_running True "
        "(run(ctx=...) then resumes it instead of starting over)")


@pytest.mark.parametrize("form", FORMS)
@aio
async def test_cancel_run_ends_the_paused_run_with_workflow_cancelled_by_user(wf: Impl, form: str) -> None:
    Approval, Ask = pausing_workflow(wf, form)
    handler = wf.make(Approval).run(note="n1")
    async for ev in handler.stream_events():
        if isinstance(ev, Ask):
            await handler.cancel_run()
            break
    kind, value = await outcome(handler)
    assert kind == "raised" and isinstance(value, wf.errors.WorkflowCancelledByUser), (
        f"{wf.side}: awaiting a run ended by cancel_run() must raise WorkflowCancelledByUser, got {kind} {value!r}")


@pytest.mark.parametrize("form", FORMS)
@aio
async def test_the_pause_resume_recipe_continues_the_run_with_the_answer(wf: Impl, form: str) -> None:
    Approval, Ask = pausing_workflow(wf, form)
    workflow = wf.make(Approval)
    _, data = await run_until_asked(wf, workflow, Ask)
    ctx = wf.context.Context.from_dict(workflow, through_json(data))
    handler = workflow.run(ctx=ctx)
    handler.ctx.send_event(wf.events.HumanResponseEvent(response="approved"))
    assert await handler == ("n1", "approved"), (
        f"{wf.side}: the resumed run must continue (the store holds the note set before the pause; "
        "ask does not run again)")


@pytest.mark.parametrize("form", FORMS)
@aio
async def test_a_snapshot_taken_after_cancel_run_also_resumes_the_run(wf: Impl, form: str) -> None:
    Approval, Ask = pausing_workflow(wf, form)
    workflow = wf.make(Approval)
    handler = workflow.run(note="n2")
    async for ev in handler.stream_events():
        if isinstance(ev, Ask):
            await handler.cancel_run()
            break
    await outcome(handler)
    data = through_json(handler.ctx.to_dict())
    resumed = workflow.run(ctx=wf.context.Context.from_dict(workflow, data))
    resumed.ctx.send_event(wf.events.HumanResponseEvent(response="later"))
    assert await resumed == ("n2", "later")


@pytest.mark.parametrize("form", FORMS)
@aio
async def test_a_snapshot_restores_event_classes_defined_inside_a_function(wf: Impl, form: str) -> None:
    Approval, Ask = pausing_workflow(wf, form, local_ask=True)
    assert "<locals>" in Ask.__qualname__
    workflow = wf.make(Approval)
    handler = workflow.run(note="n3")
    async for ev in handler.stream_events():
        if isinstance(ev, Ask):
            await handler.cancel_run()
            break
    await outcome(handler)
    data = through_json(handler.ctx.to_dict())
    resumed = workflow.run(ctx=wf.context.Context.from_dict(workflow, data))
    resumed.ctx.send_event(wf.events.HumanResponseEvent(response="local"))
    assert await resumed == ("n3", "local"), (
        f"{wf.side}: llama resolves the event classes a workflow declares (its steps' annotations) by name "
        "when restoring a snapshot, also classes that cannot be imported")


@aio
async def test_the_resumed_run_does_not_run_the_step_before_the_pause_again(wf: Impl) -> None:
    Approval, Ask = pausing_workflow(wf)
    workflow = wf.make(Approval)
    _, data = await run_until_asked(wf, workflow, Ask)
    handler = workflow.run(ctx=wf.context.Context.from_dict(workflow, through_json(data)))
    handler.ctx.send_event(wf.events.HumanResponseEvent(response="x"))
    events = await drain(handler)
    assert await handler == ("n1", "x")
    asks = [ev for ev in events if isinstance(ev, Ask)]
    assert not asks, f"{wf.side}: the resumed run published Ask again: the step before the pause re-ran"


def storing_workflow(wf: Impl) -> Any:
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Context = wf.decorators.step, wf.workflow.Workflow, wf.context.Context

    class Store(Workflow):
        @step
        async def keep(self, ctx: Context, ev: StartEvent) -> StopEvent:
            await ctx.store.set(ev.key, ev.value)
            return StopEvent(result="kept")

    return Store


@aio
async def test_a_json_serializer_round_trip_keeps_the_state(wf: Impl) -> None:
    Store = storing_workflow(wf)
    workflow = wf.make(Store)
    handler = workflow.run(key="k", value={"a": [1, 2], "b": "s"})
    assert await handler == "kept"
    data = through_json(handler.ctx.to_dict(serializer=wf.context.JsonSerializer()))
    ctx = wf.context.Context.from_dict(workflow, data, serializer=wf.context.JsonSerializer())
    assert await ctx.store.get("k") == {"a": [1, 2], "b": "s"}


@aio
async def test_a_pickle_serializer_round_trip_keeps_a_value_json_cannot_encode(wf: Impl) -> None:
    Store = storing_workflow(wf)
    workflow = wf.make(Store)
    handler = workflow.run(key="p", value=Point(3))
    assert await handler == "kept"
    data = through_json(handler.ctx.to_dict(serializer=wf.context.PickleSerializer()))
    ctx = wf.context.Context.from_dict(workflow, data, serializer=wf.context.PickleSerializer())
    value = await ctx.store.get("p")
    assert isinstance(value, Point) and value.x == 3


@aio
async def test_to_dict_of_state_json_cannot_encode_raises_value_error(wf: Impl) -> None:
    Store = storing_workflow(wf)
    handler = wf.make(Store).run(key="p", value=Point(3))
    assert await handler == "kept"
    with pytest.raises(ValueError):  # llama: "Failed to serialize state value for key p: ..."
        handler.ctx.to_dict()


def test_the_serializers_encode_to_strings_and_decode_back(wf: Impl) -> None:
    json_s, pickle_s = wf.context.JsonSerializer(), wf.context.PickleSerializer()
    value = {"x": [1, 2, {"y": "z"}]}
    assert isinstance(json_s.serialize(value), str) and json_s.deserialize(json_s.serialize(value)) == value
    encoded = pickle_s.serialize(Point(5))
    assert isinstance(encoded, str) and pickle_s.deserialize(encoded).x == 5
    with pytest.raises(ValueError):
        json_s.serialize(Point(5))
    assert isinstance(json_s, wf.context.BaseSerializer) and isinstance(pickle_s, wf.context.BaseSerializer)


def test_from_dict_of_a_malformed_snapshot_raises_context_serde_error(wf: Impl) -> None:
    Store = storing_workflow(wf)
    with pytest.raises(wf.errors.ContextSerdeError):
        wf.context.Context.from_dict(wf.make(Store), {"state": 5, "is_running": "not a bool"})


@aio
async def test_one_context_passed_to_two_runs_carries_the_state(wf: Impl) -> None:
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Context = wf.decorators.step, wf.workflow.Workflow, wf.context.Context

    class Counter(Workflow):
        @step
        async def count(self, ctx: Context, ev: StartEvent) -> StopEvent:
            n = await ctx.store.get("n", default=0) + 1
            await ctx.store.set("n", n)
            return StopEvent(result=n)

    workflow = wf.make(Counter)
    ctx = wf.context.Context(workflow)
    assert await workflow.run(ctx=ctx) == 1
    assert await workflow.run(ctx=ctx) == 2
    restored = wf.context.Context.from_dict(workflow, through_json(ctx.to_dict()))
    assert await workflow.run(ctx=restored) == 3
