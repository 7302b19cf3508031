"""Item 10: events (``workflows.events``).

llama documents events as pydantic models that also behave like a dict of their *extra* fields: keyword
arguments that are not declared fields are kept in a private mapping reachable by attribute and by
``keys()``/``values()``/``items()``/``len``/``iter``/``in``/``get``/``ev[key]``/``ev[key] = v``/``to_dict()``;
declared fields are attributes only. Private attributes (``PrivateAttr``) can be passed to the constructor. An
event is always truthy. ``StopEvent.result`` is a property over a private attribute, not a declared field:
``str(StopEvent(result=42)) == "42"``, and a subclass's ``model_dump()`` holds ``result`` only when one was given.

The terminal events (StopEvent subclasses published last on the stream) and internal events have these fields:
``WorkflowFailedEvent(step_name, exception, attempts, elapsed_seconds)``, ``WorkflowTimedOutEvent(timeout,
active_steps)``, ``WorkflowCancelledEvent()``, ``StepStateChanged(name, step_state: StepState, worker_id: str,
input_event_name: str, output_event_name: str | None)``; ``StepState`` values "preparing", "running",
"not_running". Internal events (``InternalDispatchEvent`` subclasses) reach the stream only with
``stream_events(expose_internal=True)``.
"""

import asyncio
from typing import Any

import pytest
from pydantic import PrivateAttr

from ._support import Impl, aio, drain, outcome


def tagged_event(wf: Impl) -> Any:
    class Tagged(wf.events.Event):
        declared: int = 0
        _secret: int = PrivateAttr(default=0)

    return Tagged


def test_extra_fields_read_like_a_dict(wf: Impl) -> None:
    ev = tagged_event(wf)(declared=1, a=2, b=3)
    assert (list(ev.keys()), list(ev.values()), list(ev.items())) == (["a", "b"], [2, 3], [("a", 2), ("b", 3)])
    assert (len(ev), list(ev), ev.to_dict()) == (2, ["a", "b"], {"a": 2, "b": 3})
    assert (ev["a"], ev.a, ev.get("b"), ev.get("zz", 7), "a" in ev) == (2, 2, 3, 7, True)


def test_item_and_attribute_assignment_add_extra_fields(wf: Impl) -> None:
    ev = tagged_event(wf)(declared=1)
    ev["c"] = 4
    ev.d = 5
    assert ev.to_dict() == {"c": 4, "d": 5} and (ev.c, ev["d"]) == (4, 5)


def test_declared_fields_are_attributes_not_mapping_keys(wf: Impl) -> None:
    ev = tagged_event(wf)(declared=1, extra=2)
    assert ev.declared == 1 and "declared" not in ev and list(ev.keys()) == ["extra"]
    with pytest.raises(KeyError):
        ev["declared"]


def test_reading_an_absent_field_raises_attribute_error(wf: Impl) -> None:
    with pytest.raises(AttributeError):
        tagged_event(wf)().absent


def test_private_attributes_can_be_passed_to_the_constructor(wf: Impl) -> None:
    ev = tagged_event(wf)(_secret=9, declared=1)
    assert ev._secret == 9 and ev.to_dict() == {}


def test_an_event_without_fields_is_truthy(wf: Impl) -> None:
    assert bool(wf.events.Event()) is True


def test_start_event_takes_arbitrary_keywords(wf: Impl) -> None:
    ev = wf.events.StartEvent(topic="x", n=2)
    assert (ev.topic, ev.n, ev.to_dict()) == ("x", 2, {"topic": "x", "n": 2})


def test_stop_event_result_is_not_a_declared_field(wf: Impl) -> None:
    class Done(wf.events.StopEvent):
        extra: int = 0

    assert Done(extra=1).model_dump() == {"extra": 1}, (
        f"{wf.side}: StopEvent.result is a property over a private attribute, so a subclass's model_dump() "
        f"holds only its own fields when no result was given; got {Done(extra=1).model_dump()}")
    assert Done(result=5, extra=1).model_dump() == {"extra": 1, "result": 5}
    assert Done(result=5).result == 5 and wf.events.StopEvent().result is None


def test_str_of_a_stop_event_is_str_of_its_result(wf: Impl) -> None:
    assert str(wf.events.StopEvent(result=42)) == "42"
    assert wf.events.StopEvent(result={"a": 1}).model_dump() == {"result": {"a": 1}}


def test_step_state_has_the_documented_members_and_values(wf: Impl) -> None:
    StepState = wf.events.StepState
    assert {s.name: s.value for s in StepState} == {
        "PREPARING": "preparing", "RUNNING": "running", "NOT_RUNNING": "not_running"}


def test_terminal_and_internal_events_declare_the_documented_fields(wf: Impl) -> None:
    ev = wf.events
    declared = {
        "WorkflowFailedEvent": set(ev.WorkflowFailedEvent.model_fields),
        "WorkflowTimedOutEvent": set(ev.WorkflowTimedOutEvent.model_fields),
        "StepStateChanged": set(ev.StepStateChanged.model_fields),
        "StepFailedEvent": set(ev.StepFailedEvent.model_fields),
    }
    expected = {
        "WorkflowFailedEvent": {"step_name", "exception", "attempts", "elapsed_seconds"},
        "WorkflowTimedOutEvent": {"timeout", "active_steps"},
        "StepStateChanged": {"name", "step_state", "worker_id", "input_event_name", "output_event_name"},
        "StepFailedEvent": {"step_name", "input_event", "exception", "attempts", "elapsed_seconds", "failed_at"},
    }
    missing = {name: sorted(fields - declared[name]) for name, fields in expected.items() if fields - declared[name]}
    assert not missing, f"{wf.side}: these events lack llama's fields: {missing}"
    hierarchy = [issubclass(ev.WorkflowFailedEvent, ev.StopEvent), issubclass(ev.WorkflowTimedOutEvent, ev.StopEvent),
                 issubclass(ev.WorkflowCancelledEvent, ev.StopEvent),
                 issubclass(ev.StepStateChanged, ev.InternalDispatchEvent),
                 issubclass(ev.WorkflowIdleEvent, ev.InternalDispatchEvent),
                 issubclass(ev.UnhandledEvent, ev.InternalDispatchEvent)]
    assert all(hierarchy), f"{wf.side}: {hierarchy}"


# --- terminal and internal events of real runs ----------------------------------------------------------------
def failing_workflow(wf: Impl) -> Any:
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    step, Workflow = wf.decorators.step, wf.workflow.Workflow

    class Fails(Workflow):
        @step
        async def explode(self, ev: StartEvent) -> StopEvent:
            raise ValueError("exploded")

    return Fails


@aio
async def test_a_failed_run_ends_its_stream_with_workflow_failed_event(wf: Impl) -> None:
    handler = wf.make(failing_workflow(wf)).run()
    events = await drain(handler)
    await outcome(handler)
    last = events[-1]
    assert isinstance(last, wf.events.WorkflowFailedEvent), f"{wf.side}: stream ended with {last!r}"
    assert (last.step_name, type(last.exception), str(last.exception), last.attempts) == (
        "explode", ValueError, "exploded", 1)
    assert isinstance(last.elapsed_seconds, float) and last.elapsed_seconds >= 0


@aio
async def test_a_timed_out_run_ends_its_stream_with_workflow_timed_out_event(wf: Impl) -> None:
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    step, Workflow = wf.decorators.step, wf.workflow.Workflow

    class Sleeper(Workflow):
        @step
        async def sleepy(self, ev: StartEvent) -> StopEvent:
            await asyncio.sleep(30)
            return StopEvent(result="woke")

    handler = wf.make(Sleeper, timeout=0.5).run()
    events = await drain(handler)
    kind, value = await outcome(handler)
    assert kind == "raised" and isinstance(value, wf.errors.WorkflowTimeoutError)
    last = events[-1]
    assert isinstance(last, wf.events.WorkflowTimedOutEvent), f"{wf.side}: stream ended with {last!r}"
    assert (last.timeout, last.active_steps) == (0.5, ["sleepy"])


@aio
async def test_a_cancelled_run_ends_its_stream_with_workflow_cancelled_event(wf: Impl) -> None:
    Event, StartEvent, StopEvent = wf.events.Event, wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Context = wf.decorators.step, wf.workflow.Workflow, wf.context.Context

    class Begun(Event):
        pass

    class Sleeper(Workflow):
        @step
        async def sleepy(self, ctx: Context, ev: StartEvent) -> StopEvent:
            ctx.write_event_to_stream(Begun())
            await asyncio.sleep(30)
            return StopEvent(result="woke")

    handler = wf.make(Sleeper).run()
    names = []
    async for ev in handler.stream_events():
        names.append(type(ev).__name__)
        if isinstance(ev, Begun):
            await handler.cancel_run()
    kind, value = await outcome(handler)
    assert names == ["Begun", "WorkflowCancelledEvent"], f"{wf.side}: {names}"
    assert kind == "raised" and isinstance(value, wf.errors.WorkflowCancelledByUser)


def two_step_workflow(wf: Impl) -> Any:
    Event, StartEvent, StopEvent = wf.events.Event, wf.events.StartEvent, wf.events.StopEvent
    step, Workflow = wf.decorators.step, wf.workflow.Workflow

    class Mid(Event):
        pass

    class TwoSteps(Workflow):
        @step
        async def first(self, ev: StartEvent) -> Mid:
            return Mid()

        @step
        async def second(self, ev: Mid) -> StopEvent:
            return StopEvent(result="done")

    return TwoSteps


@aio
async def test_internal_events_reach_the_stream_only_when_exposed(wf: Impl) -> None:
    TwoSteps = two_step_workflow(wf)
    hidden = await drain(wf.make(TwoSteps).run())
    exposed = await drain(wf.make(TwoSteps).run(), expose_internal=True)
    Internal = wf.events.InternalDispatchEvent
    assert not any(isinstance(ev, Internal) for ev in hidden)
    assert any(isinstance(ev, wf.events.StepStateChanged) for ev in exposed)


@aio
async def test_step_state_changed_reports_each_invocation_running_then_not_running(wf: Impl) -> None:
    events = await drain(wf.make(two_step_workflow(wf)).run(), expose_internal=True)
    changes = [ev for ev in events if isinstance(ev, wf.events.StepStateChanged)]
    StepState = wf.events.StepState
    got = [(c.name, c.step_state) for c in changes]
    assert got == [("first", StepState.RUNNING), ("first", StepState.NOT_RUNNING),
                   ("second", StepState.RUNNING), ("second", StepState.NOT_RUNNING)], f"{wf.side}: {got}"
    second_done = changes[3]
    assert isinstance(second_done.worker_id, str)
    assert "Mid" in second_done.input_event_name and "StopEvent" in (second_done.output_event_name or "")
    assert changes[2].output_event_name is None, "a step still running has no output event yet"
