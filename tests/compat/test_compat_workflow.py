"""Item 9: the Workflow API and its validation: what is rejected, with which exception, and *when*.

llama 2.26.1 rejects a bad workflow at one of four moments:

- definition (the ``@step`` / ``@catch_error`` decorator or ``add_step``): bad step signatures, ``num_workers < 1``,
  a free function without ``workflow=``, a free step whose name is taken: ``WorkflowValidationError``;
- construction (``Workflow(...)``): the start/stop event classes cannot be inferred (none, or two of them):
  ``WorkflowConfigurationError`` (not a subclass of ``WorkflowValidationError``); bad constructor values:
  ``WorkflowValidationError``;
- ``validate()`` and ``run()`` (synchronously, before a run starts): the event graph is wrong (a step accepting
  ``StopEvent``, an event consumed but never produced or produced but never consumed, an unreachable or dead-end
  step): ``WorkflowValidationError``.

``run(start_event=x)`` with ``x`` not a StartEvent raises ``ValueError``; keyword arguments that do not build the
start event raise ``WorkflowRuntimeError``.
"""

import asyncio
from typing import Any, Callable

import pytest

from ._support import Impl, aio


def _names(wf: Impl) -> Any:
    class N:
        Event, StartEvent, StopEvent = wf.events.Event, wf.events.StartEvent, wf.events.StopEvent
        step, Workflow = wf.decorators.step, wf.workflow.Workflow
    return N


# --- the invalid workflows ------------------------------------------------------------------------------------
# Each builder returns (workflow class, constructor keywords); a definition-time failure raises from the builder.
def two_stop_event_types(wf: Impl) -> Any:
    n = _names(wf)

    class StopA(n.StopEvent):
        pass

    class StopB(n.StopEvent):
        pass

    class Mid(n.Event):
        pass

    class W(n.Workflow):
        @n.step
        async def a(self, ev: n.StartEvent) -> StopA | Mid:
            return StopA()

        @n.step
        async def b(self, ev: Mid) -> StopB:
            return StopB()

    return W, {}


def two_start_event_types(wf: Impl) -> Any:
    n = _names(wf)

    class OtherStart(n.StartEvent):
        pass

    class W(n.Workflow):
        @n.step
        async def a(self, ev: n.StartEvent) -> n.StopEvent:
            return n.StopEvent()

        @n.step
        async def b(self, ev: OtherStart) -> n.StopEvent:
            return n.StopEvent()

    return W, {}


def no_step_accepts_a_start_event(wf: Impl) -> Any:
    n = _names(wf)

    class Mid(n.Event):
        pass

    class W(n.Workflow):
        @n.step
        async def a(self, ev: Mid) -> n.StopEvent:
            return n.StopEvent()

    return W, {}


def no_step_returns_a_stop_event(wf: Impl) -> Any:
    n = _names(wf)

    class Mid(n.Event):
        pass

    class W(n.Workflow):
        @n.step
        async def a(self, ev: n.StartEvent) -> Mid:
            return Mid()

        @n.step
        async def b(self, ev: Mid) -> None:
            return None

    return W, {}


def no_steps(wf: Impl) -> Any:
    class W(wf.workflow.Workflow):
        pass

    return W, {}


def num_concurrent_runs_zero(wf: Impl) -> Any:
    n = _names(wf)

    class W(n.Workflow):
        @n.step
        async def a(self, ev: n.StartEvent) -> n.StopEvent:
            return n.StopEvent()

    return W, {"num_concurrent_runs": 0}


def a_step_accepts_stop_event(wf: Impl) -> Any:
    n = _names(wf)

    class W(n.Workflow):
        @n.step
        async def a(self, ev: n.StartEvent) -> n.StopEvent:
            return n.StopEvent()

        @n.step
        async def b(self, ev: n.StopEvent) -> None:
            return None

    return W, {}


def an_event_consumed_but_never_produced(wf: Impl) -> Any:
    n = _names(wf)

    class Orphan(n.Event):
        pass

    class W(n.Workflow):
        @n.step
        async def a(self, ev: n.StartEvent) -> n.StopEvent:
            return n.StopEvent()

        @n.step
        async def b(self, ev: Orphan) -> n.StopEvent:
            return n.StopEvent()

    return W, {}


def an_event_produced_but_never_consumed(wf: Impl) -> Any:
    n = _names(wf)

    class Lost(n.Event):
        pass

    class W(n.Workflow):
        @n.step
        async def a(self, ev: n.StartEvent) -> n.StopEvent | Lost:
            return n.StopEvent()

    return W, {}


def an_unreachable_step(wf: Impl) -> Any:
    n = _names(wf)

    class Ping(n.Event):
        pass

    class Pong(n.Event):
        pass

    class W(n.Workflow):
        @n.step
        async def a(self, ev: n.StartEvent) -> n.StopEvent:
            return n.StopEvent()

        @n.step
        async def b(self, ev: Ping) -> Pong:
            return Pong()

        @n.step
        async def c(self, ev: Pong) -> Ping:
            return Ping()

    return W, {}


def a_dead_end_step(wf: Impl) -> Any:
    n = _names(wf)

    class Ping(n.Event):
        pass

    class Pong(n.Event):
        pass

    class W(n.Workflow):
        @n.step
        async def a(self, ev: n.StartEvent) -> n.StopEvent | Ping:
            return n.StopEvent()

        @n.step
        async def b(self, ev: Ping) -> Pong:
            return Pong()

        @n.step
        async def c(self, ev: Pong) -> Ping:
            return Ping()

    return W, {}


def a_free_step_without_workflow(wf: Impl) -> Any:
    n = _names(wf)

    @n.step
    async def orphan(ev: n.StartEvent) -> n.StopEvent:
        return n.StopEvent()

    return None, {}


def a_free_step_named_like_a_method(wf: Impl) -> Any:
    n = _names(wf)

    class W(n.Workflow):
        @n.step
        async def a(self, ev: n.StartEvent) -> n.StopEvent:
            return n.StopEvent()

    @n.step(workflow=W)
    async def a(ev: n.StartEvent) -> n.StopEvent:  # noqa: F811 - the clash is the point
        return n.StopEvent()

    return W, {}


def a_step_without_return_annotation(wf: Impl) -> Any:
    n = _names(wf)

    class W(n.Workflow):
        @n.step
        async def a(self, ev: n.StartEvent):  # type: ignore[no-untyped-def]
            return n.StopEvent()

    return W, {}


def a_step_without_event_parameter(wf: Impl) -> Any:
    n = _names(wf)

    class W(n.Workflow):
        @n.step
        async def a(self, x: int) -> n.StopEvent:
            return n.StopEvent()

    return W, {}


def num_workers_zero(wf: Impl) -> Any:
    n = _names(wf)

    class W(n.Workflow):
        @n.step(num_workers=0)
        async def a(self, ev: n.StartEvent) -> n.StopEvent:
            return n.StopEvent()

    return W, {}


CASES: dict[str, tuple[Callable[[Impl], Any], str, str]] = {
    f.__name__: (f, phase, error) for f, phase, error in [
        (two_stop_event_types, "construction", "WorkflowConfigurationError"),
        (two_start_event_types, "construction", "WorkflowConfigurationError"),
        (no_step_accepts_a_start_event, "construction", "WorkflowConfigurationError"),
        (no_step_returns_a_stop_event, "construction", "WorkflowConfigurationError"),
        (no_steps, "construction", "WorkflowConfigurationError"),
        (num_concurrent_runs_zero, "construction", "WorkflowValidationError"),
        (a_step_accepts_stop_event, "validate", "WorkflowValidationError"),
        (an_event_consumed_but_never_produced, "validate", "WorkflowValidationError"),
        (an_event_produced_but_never_consumed, "validate", "WorkflowValidationError"),
        (an_unreachable_step, "validate", "WorkflowValidationError"),
        (a_dead_end_step, "validate", "WorkflowValidationError"),
        (a_free_step_without_workflow, "definition", "WorkflowValidationError"),
        (a_free_step_named_like_a_method, "definition", "WorkflowValidationError"),
        (a_step_without_return_annotation, "definition", "WorkflowValidationError"),
        (a_step_without_event_parameter, "definition", "WorkflowValidationError"),
        (num_workers_zero, "definition", "WorkflowValidationError"),
    ]
}


def where_it_fails(wf: Impl, build: Callable[[Impl], Any]) -> tuple[str, BaseException | None, str]:
    """The first moment (definition, construction, validate, run) at which the workflow is rejected, the
    exception, and a note (when the workflow has no ``validate()``, that moment is skipped and noted)."""
    try:
        cls, kw = build(wf)
    except Exception as exc:  # noqa: BLE001 - reported
        return "definition", exc, ""
    if cls is None:
        return "never", None, ""
    try:
        workflow = wf.make(cls, **kw)
    except Exception as exc:  # noqa: BLE001
        return "construction", exc, ""
    note = ""
    if hasattr(workflow, "validate"):
        try:
            workflow.validate()
        except Exception as exc:  # noqa: BLE001
            return "validate", exc, ""
    else:
        note = " (Workflow.validate() does not exist)"

    async def start() -> None:
        handler = workflow.run()
        await handler

    try:
        asyncio.run(start())
    except Exception as exc:  # noqa: BLE001
        return "run", exc, note
    return "never", None, note


@pytest.mark.parametrize("case", list(CASES))
def test_an_invalid_workflow_is_rejected_at_the_documented_moment_with_the_documented_error(wf: Impl, case: str) -> None:
    build, phase, error = CASES[case]
    expected = getattr(wf.errors, error, None)
    observed_phase, exc, note = where_it_fails(wf, build)
    ok = observed_phase == phase and expected is not None and type(exc) is expected
    assert ok, (f"{wf.side}: {case.replace('_', ' ')} must raise {error} at {phase}; "
                f"got {type(exc).__name__ if exc else 'nothing'} at {observed_phase}{note}: {exc}")


VALIDATE_CASES = [name for name, (_, phase, _) in CASES.items() if phase == "validate"]


@pytest.mark.parametrize("case", VALIDATE_CASES)
@aio
async def test_run_raises_the_validation_error_before_the_run_starts(wf: Impl, case: str) -> None:
    cls, kw = CASES[case][0](wf)
    workflow = wf.make(cls, **kw)
    with pytest.raises(wf.errors.WorkflowValidationError):
        workflow.run()  # raises here, synchronously: no handler is returned


@aio
async def test_disable_validation_lets_run_skip_the_graph_checks(wf: Impl) -> None:
    cls, _ = an_event_produced_but_never_consumed(wf)
    assert await wf.make(cls, disable_validation=True).run() is None


@aio
async def test_skip_graph_checks_lets_unreachable_and_dead_end_steps_pass(wf: Impl) -> None:
    cls, _ = an_unreachable_step(wf)
    workflow = wf.make(cls, skip_graph_checks={"reachability", "dead_end"})
    assert workflow.validate() is False
    assert await workflow.run() is None


def test_an_unknown_graph_check_name_is_rejected_at_construction(wf: Impl) -> None:
    cls, _ = an_unreachable_step(wf)
    with pytest.raises(wf.errors.WorkflowValidationError):
        wf.make(cls, skip_graph_checks={"no such check"})


# --- the Workflow API ---------------------------------------------------------------------------------------
def linear_workflow(wf: Impl) -> Any:
    n = _names(wf)

    class Topic(n.StartEvent):
        topic: str

    class Draft(n.Event):
        text: str

    class Published(n.StopEvent):
        text: str

    class Writer(n.Workflow):
        @n.step
        async def draft(self, ev: Topic) -> Draft:
            return Draft(text=f"about {ev.topic}")

        @n.step
        async def publish(self, ev: Draft) -> Published:
            return Published(text=ev.text.upper())

    return Writer, Topic, Draft, Published


def test_workflow_name_is_the_name_given_to_the_constructor(wf: Impl) -> None:
    Writer, *_ = linear_workflow(wf)
    assert wf.make(Writer, workflow_name="writer-v2").workflow_name == "writer-v2"


def test_the_default_workflow_name_is_module_and_qualified_class_name(wf: Impl) -> None:
    Writer, *_ = linear_workflow(wf)
    assert wf.make(Writer).workflow_name == f"{Writer.__module__}.{Writer.__qualname__}"


def test_validate_returns_false_for_a_workflow_without_human_in_the_loop(wf: Impl) -> None:
    Writer, *_ = linear_workflow(wf)
    assert wf.make(Writer).validate() is False


def test_events_lists_every_event_class_of_the_steps(wf: Impl) -> None:
    Writer, Topic, Draft, Published = linear_workflow(wf)
    events = wf.make(Writer).events
    assert isinstance(events, list) and set(events) == {Topic, Draft, Published}


def test_start_and_stop_event_classes_are_inferred_from_the_steps(wf: Impl) -> None:
    Writer, Topic, _, Published = linear_workflow(wf)
    workflow = wf.make(Writer)
    assert (workflow.start_event_class, workflow.stop_event_class) == (Topic, Published)


@aio
async def test_run_keywords_build_the_custom_start_event_and_a_custom_stop_event_is_the_result(wf: Impl) -> None:
    Writer, _, _, Published = linear_workflow(wf)
    result = await wf.make(Writer).run(topic="tea")
    assert isinstance(result, Published) and result.text == "ABOUT TEA", (
        f"{wf.side}: awaiting a run ended by a StopEvent subclass gives the event itself, got {result!r}")


@aio
async def test_run_takes_a_start_event_instance(wf: Impl) -> None:
    Writer, Topic, _, _ = linear_workflow(wf)
    result = await wf.make(Writer).run(start_event=Topic(topic="jam"))
    assert result.text == "ABOUT JAM"


@aio
async def test_run_with_a_start_event_that_is_not_a_start_event_raises_value_error(wf: Impl) -> None:
    Writer, _, Draft, _ = linear_workflow(wf)
    with pytest.raises(ValueError):
        wf.make(Writer).run(start_event=Draft(text="x"))


@aio
async def test_run_keywords_that_do_not_build_the_start_event_raise_workflow_runtime_error(wf: Impl) -> None:
    Writer, *_ = linear_workflow(wf)
    with pytest.raises(wf.errors.WorkflowRuntimeError):
        wf.make(Writer).run(subject="missing the topic field")


def test_the_constructor_takes_the_documented_keyword_arguments(wf: Impl) -> None:
    Writer, *_ = linear_workflow(wf)
    workflow = wf.make(Writer, timeout=5.0, disable_validation=False, verbose=False,
                       resource_manager=wf.resource.ResourceManager(), num_concurrent_runs=None,
                       workflow_name="w", skip_graph_checks=set(), serializer=wf.context.JsonSerializer())
    assert workflow.workflow_name == "w"


@aio
async def test_step_workflow_keyword_adds_a_free_function_as_a_step(wf: Impl) -> None:
    n = _names(wf)

    class Mid(n.Event):
        value: int

    class Host(n.Workflow):
        @n.step
        async def begin(self, ev: n.StartEvent) -> Mid:
            return Mid(value=20)

    @n.step(workflow=Host)
    async def finish(ev: Mid) -> n.StopEvent:
        return n.StopEvent(result=ev.value + 1)

    assert await wf.make(Host).run() == 21


def test_add_step_rejects_a_function_without_the_step_decorator(wf: Impl) -> None:
    n = _names(wf)

    class Host(n.Workflow):
        @n.step
        async def begin(self, ev: n.StartEvent) -> n.StopEvent:
            return n.StopEvent()

    async def plain(ev: n.StartEvent) -> n.StopEvent:
        return n.StopEvent()

    with pytest.raises(wf.errors.WorkflowValidationError):
        Host.add_step(plain)
