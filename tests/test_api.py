"""Issue 2 item 2, the step author's API: events, ``@step`` on methods and free functions, ``async def`` and
``def`` steps, and the optional ``Context`` parameter found by its annotation."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pydantic
import pytest

from actors import Context, Event, StartEvent, StopEvent, Workflow, step
from runtime import ProcessRuntime


# --- events ----------------------------------------------------------------------------------------------
class Item(Event):
    name: str
    qty: int = 1


class Topic(StartEvent):
    topic: str
    n: int = 2


class Echo(StopEvent):
    topic: str
    n: int


def test_declared_event_fields_are_attributes_and_not_mapping_keys() -> None:
    # LlamaIndex Workflows' events: declared fields are attributes only; the mapping holds the extra fields.
    ev = Item(name="a", qty=2)
    assert (ev.name, ev.qty) == ("a", 2)
    assert "name" not in ev and ev.get("name") is None and list(ev.keys()) == []
    with pytest.raises(KeyError):
        ev["name"]


def test_an_event_accepts_extra_fields_readable_every_way() -> None:
    ev = Item(name="a", colour="red")
    assert (ev.colour, ev["colour"], ev.get("colour")) == ("red", "red", "red")  # type: ignore[attr-defined]
    assert "colour" in ev and "size" not in ev and ev.to_dict() == {"colour": "red"}


def test_a_missing_field_is_a_key_error_as_an_item_and_the_default_with_get() -> None:
    ev = Event()
    with pytest.raises(KeyError):
        ev["nope"]
    assert ev.get("nope") is None
    assert ev.get("nope", 7) == 7


def test_declared_event_fields_are_validated_by_pydantic() -> None:
    with pytest.raises(pydantic.ValidationError):
        Item(name="a", qty="many")
    with pytest.raises(pydantic.ValidationError):
        Item(qty=1)
    assert isinstance(Item(name="a"), pydantic.BaseModel)


def test_start_event_takes_arbitrary_keyword_fields() -> None:
    ev = StartEvent(topic="t", n=3, nested={"k": [1, 2]})
    assert ev.topic == "t"  # type: ignore[attr-defined]
    assert ev["n"] == 3 and ev.get("nested") == {"k": [1, 2]}


def test_stop_event_carries_any_result_defaulting_to_none() -> None:
    assert StopEvent().result is None
    assert StopEvent(result={"a": [1]}).result == {"a": [1]}
    marker = object()
    assert StopEvent(result=marker).result is marker


def test_user_subclasses_of_the_three_event_bases_keep_their_fields_and_bases() -> None:
    start, stop = Topic(topic="t"), Echo(topic="t", n=1, result="r")
    assert isinstance(start, StartEvent) and isinstance(start, Event) and start.n == 2
    assert isinstance(stop, StopEvent) and stop.result == "r" and stop.topic == "t"
    assert isinstance(Item(name="x"), Event)


# --- the start event and run(**kwargs) ----------------------------------------------------------------------
class KwargsFlow(Workflow):
    @step
    async def begin(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=(ev.topic, ev["n"], ev.get("missing", "default")))


class TypedStartFlow(Workflow):
    @step
    async def begin(self, ev: Topic) -> Echo:
        return Echo(topic=ev.topic, n=ev.n, result=type(ev).__name__)


async def test_run_keyword_arguments_become_fields_of_the_start_event(rt: ProcessRuntime) -> None:
    assert await KwargsFlow(runtime=rt).run(topic="t", n=3) == ("t", 3, "default")


async def test_a_start_event_subclass_is_built_from_run_kwargs_with_its_defaults(rt: ProcessRuntime) -> None:
    echo = await TypedStartFlow(runtime=rt).run(topic="t")
    assert isinstance(echo, Echo)
    assert (echo.topic, echo.n, echo.result) == ("t", 2, "Topic")


async def test_run_accepts_a_ready_made_start_event(rt: ProcessRuntime) -> None:
    echo = await TypedStartFlow(runtime=rt).run(start_event=Topic(topic="u", n=5))
    assert (echo.topic, echo.n) == ("u", 5)


# --- @step forms -------------------------------------------------------------------------------------------
class Half(Event):
    value: int


class Quarter(Event):
    value: int


class FreeFlow(Workflow):
    @step
    async def begin(self, ev: StartEvent) -> Half:
        return Half(value=ev.x // 2)


@step(workflow=FreeFlow, num_workers=2)
def halve_again(ctx: Context, ev: Half) -> Quarter:
    ctx.store.set_sync("free_def_ran", True)
    return Quarter(value=ev.value // 2)


@step(workflow=FreeFlow)
async def finish(ctx: Context, ev: Quarter) -> StopEvent:
    return StopEvent(result=(ev.value, await ctx.store.get("free_def_ran")))


def test_step_bare_and_with_arguments_returns_the_function_itself() -> None:
    class Holder:  # a method (a free function needs workflow=, as in LlamaIndex Workflows)
        async def f(self: Any, ev: StartEvent) -> StopEvent:
            return StopEvent()

    f = Holder.f
    assert step(f) is f
    assert step(num_workers=3)(f) is f


async def test_free_functions_join_a_workflow_with_step_workflow_cls(rt: ProcessRuntime) -> None:
    assert await FreeFlow(runtime=rt).run(x=40) == (10, True)


class Mid(Event):
    trail: list[str]


class Last(Event):
    trail: list[str]


class MixedFlow(Workflow):
    """async -> def -> async; each step records whether it runs on an event loop."""

    @step
    async def first(self, ev: StartEvent) -> Mid:
        return Mid(trail=[f"first:{_on_loop()}"])

    @step(num_workers=2)
    def second(self, ev: Mid) -> Last:
        return Last(trail=[*ev.trail, f"second:{_on_loop()}"])

    @step
    async def third(self, ev: Last) -> StopEvent:
        return StopEvent(result=[*ev.trail, f"third:{_on_loop()}"])


def _on_loop() -> str:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return f"blocking-thread={threading.current_thread() is not threading.main_thread()}"
    return "loop"


async def test_async_and_plain_def_steps_chain_and_def_steps_run_off_the_loop(rt: ProcessRuntime) -> None:
    assert await MixedFlow(runtime=rt).run() == [
        "first:loop", "second:blocking-thread=True", "third:loop"]


# --- the Context parameter ----------------------------------------------------------------------------------
class CtxFlow(Workflow):
    @step
    async def first(self, ev: StartEvent, c: Context) -> Mid:  # after the event, any name
        await c.store.set("seen", ["first"])
        return Mid(trail=[])

    @step
    def second(self, ev: Mid) -> Last:  # no Context at all
        return Last(trail=["second"])

    @step
    async def third(self, context: Context[dict[str, Any]], ev: Last) -> StopEvent:  # parametrized
        return StopEvent(result=[*await context.store.get("seen"), *ev.trail])


async def test_the_context_parameter_is_optional_and_found_by_its_annotation(rt: ProcessRuntime) -> None:
    assert await CtxFlow(runtime=rt).run() == ["first", "second"]


# --- unions, None, inheritance ------------------------------------------------------------------------------
class Left(Event):
    pass


class Right(Event):
    pass


class UnionFlow(Workflow):
    @step
    async def begin(self, ev: StartEvent) -> Left | Right | None:
        return Left() if ev.side == "left" else Right()

    @step
    def end(self, ev: Left | Right) -> StopEvent:
        return StopEvent(result=type(ev).__name__)


@pytest.mark.parametrize("side,expected", [("left", "Left"), ("right", "Right")])
def test_unions_in_event_and_return_annotations_route_each_member(rt: ProcessRuntime, side: str,
                                                                 expected: str) -> None:
    assert UnionFlow(runtime=rt).run(side=side).result(timeout=30) == expected


class BaseFlow(Workflow):
    @step
    async def begin(self, ev: StartEvent) -> Mid:
        return Mid(trail=["base-begin"])

    @step
    async def end(self, ev: Mid) -> StopEvent:
        return StopEvent(result=[*ev.trail, "base-end"])


class ChildFlow(BaseFlow):
    @step
    async def end(self, ev: Mid) -> StopEvent:
        return StopEvent(result=[*ev.trail, "child-end"])


def test_a_workflow_subclass_inherits_steps_and_overrides_them_by_name(rt: ProcessRuntime) -> None:
    assert ChildFlow(runtime=rt).run().result(timeout=30) == ["base-begin", "child-end"]
    assert BaseFlow(runtime=rt).run().result(timeout=30) == ["base-begin", "base-end"]
