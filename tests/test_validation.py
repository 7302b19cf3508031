"""Issue 2 item 3 (validation before a run starts) and the start-event rule of item 9.

Rejections happen at LlamaIndex Workflows' moments: a bad step signature at the class statement, a start or
stop event class that cannot be inferred at construction (``WorkflowConfigurationError``), a bad event graph
in ``run()``. Workflows run on a ``RecordingEngine``: nothing invalid may reach the engine.
"""

from __future__ import annotations

from typing import Any

import pytest

from actors import (
    Context, Event, StartEvent, StopEvent, Workflow, WorkflowConfigurationError, WorkflowError,
    WorkflowRuntimeError, WorkflowValidationError, step,
)
from runtime import Engine, ProcessRuntime


class RecordingEngine(Engine):
    """An engine that records every run it is asked to start and refuses it."""

    def __init__(self) -> None:
        self.calls: list[StartEvent] = []

    def start_run(self, workflow: Workflow, start_event: StartEvent, ctx: Context[Any] | None) -> Any:
        self.calls.append(start_event)
        raise AssertionError("run() reached the engine")

    def shutdown(self) -> None:
        pass


class Ping(Event):
    pass


class Orphan(Event):
    pass


class StartA(StartEvent):
    pass


class StartB(StartEvent):
    pass


# --- one workflow per rule, rejected when LlamaIndex Workflows rejects it ---------------------------------------
# A bad step signature is rejected when the class statement runs (the decorator reads it): each builder
# defines its workflow inside a function, so the rejection is seen by the test.
def no_event_param() -> type[Workflow]:
    class NoEventParamFlow(Workflow):
        @step
        async def begin(self, ctx: Context) -> StopEvent:
            return StopEvent()
    return NoEventParamFlow


def unannotated_event() -> type[Workflow]:
    class UnannotatedEventFlow(Workflow):
        @step
        async def begin(self, ev) -> StopEvent:  # type: ignore[no-untyped-def]
            return StopEvent()
    return UnannotatedEventFlow


def stray_param() -> type[Workflow]:
    class StrayParamFlow(Workflow):
        @step
        async def begin(self, ev: StartEvent, limit: int) -> StopEvent:
            return StopEvent()
    return StrayParamFlow


def no_return() -> type[Workflow]:
    class NoReturnFlow(Workflow):
        @step
        async def begin(self, ev: StartEvent):  # type: ignore[no-untyped-def]
            return StopEvent()
    return NoReturnFlow


def non_event_return() -> type[Workflow]:
    class NonEventReturnFlow(Workflow):
        @step
        async def begin(self, ev: StartEvent) -> int:
            return 1
    return NonEventReturnFlow


class FreeBadFlow(Workflow):
    @step
    async def begin(self, ev: StartEvent) -> StopEvent:
        return StopEvent()


def free_without_return() -> type[Workflow]:
    @step(workflow=FreeBadFlow)
    async def free_without_return(ev: StartEvent):  # type: ignore[no-untyped-def]
        return None
    return FreeBadFlow


BAD_SIGNATURES = [
    # (builder, substrings the message must contain)
    pytest.param(no_event_param, ["'begin'", "event parameter"], id="no-event-parameter"),
    pytest.param(unannotated_event, ["'begin'", "event parameter"], id="unannotated-event-parameter"),
    pytest.param(stray_param, ["'begin'", "'limit'"], id="parameter-neither-event-nor-context"),
    pytest.param(no_return, ["'begin'", "return annotation"], id="no-return-annotation"),
    pytest.param(non_event_return, ["'begin'", "int"], id="return-annotation-not-an-event"),
    pytest.param(free_without_return, ["'free_without_return'", "return annotation"], id="free-function-step"),
]


@pytest.mark.parametrize("build,words", BAD_SIGNATURES)
def test_a_bad_step_signature_is_a_validation_error_at_the_class_statement_naming_the_step(
        build: Any, words: list[str]) -> None:
    with pytest.raises(WorkflowValidationError) as info:
        build()
    for word in words:
        assert word in str(info.value)


# The start and stop event classes are inferred when the workflow is constructed.
class NoStepsFlow(Workflow):
    pass


class NoStartFlow(Workflow):
    @step
    async def work(self, ev: Ping) -> StopEvent:
        return StopEvent()


class NoStopFlow(Workflow):
    @step
    async def begin(self, ev: StartEvent) -> Ping:
        return Ping()

    @step
    async def pong(self, ev: Ping) -> None:
        return None


class TwoStartsFlow(Workflow):
    @step
    async def a(self, ev: StartA) -> StopEvent:
        return StopEvent()

    @step
    async def b(self, ev: StartB) -> StopEvent:
        return StopEvent()


class StartAndSubclassFlow(Workflow):
    @step
    async def a(self, ev: StartEvent) -> StopEvent:
        return StopEvent()

    @step
    async def b(self, ev: StartA) -> StopEvent:
        return StopEvent()


UNCONFIGURED = [
    pytest.param(NoStepsFlow, ["NoStepsFlow", "no steps"], id="no-steps"),
    pytest.param(NoStartFlow, ["NoStartFlow", "StartEvent"], id="no-step-accepts-the-start-event"),
    pytest.param(NoStopFlow, ["NoStopFlow", "StopEvent"], id="no-step-returns-a-stop-event"),
    pytest.param(TwoStartsFlow, ["StartA", "StartB"], id="two-start-event-types"),
    pytest.param(StartAndSubclassFlow, ["StartA", "StartEvent"], id="start-event-and-a-subclass"),
]


@pytest.mark.parametrize("flow,words", UNCONFIGURED)
def test_a_workflow_whose_start_or_stop_event_cannot_be_inferred_is_a_configuration_error_at_construction(
        flow: type[Workflow], words: list[str]) -> None:
    engine = RecordingEngine()
    with pytest.raises(WorkflowConfigurationError) as info:
        flow(runtime=engine)
    for word in words:
        assert word in str(info.value)
    assert engine.calls == []


# The event graph is checked by validate() and run(), before anything starts.
class OrphanFlow(Workflow):
    @step
    async def begin(self, ev: StartEvent) -> Orphan | StopEvent:
        return StopEvent(result="never emitted the orphan")


def test_run_raises_a_validation_error_naming_the_step_and_event_before_starting() -> None:
    engine = RecordingEngine()
    with pytest.raises(WorkflowValidationError) as info:
        OrphanFlow(runtime=engine).run()
    assert "'begin'" in str(info.value) and "Orphan" in str(info.value)
    assert engine.calls == []


def test_validation_errors_are_workflow_errors() -> None:
    assert issubclass(WorkflowValidationError, WorkflowError)
    assert issubclass(WorkflowRuntimeError, WorkflowError)
    assert issubclass(WorkflowConfigurationError, WorkflowError)
    assert not issubclass(WorkflowConfigurationError, WorkflowValidationError)


def test_a_workflow_stays_invalid_on_every_run_attempt() -> None:
    engine = RecordingEngine()
    for _ in range(2):
        with pytest.raises(WorkflowValidationError):
            OrphanFlow(runtime=engine).run()


# --- step and Workflow arguments ----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_step_rejects_a_num_workers_that_is_not_a_positive_int(bad: Any) -> None:
    with pytest.raises(WorkflowValidationError, match="num_workers"):
        step(num_workers=bad)


@pytest.mark.parametrize("kwargs", [{"timeout": 0}, {"timeout": -1.0}, {"num_concurrent_runs": 0}])
def test_workflow_rejects_a_non_positive_timeout_or_run_limit(kwargs: dict[str, Any]) -> None:
    with pytest.raises(WorkflowValidationError):
        OrphanFlow(**kwargs)


# --- building the start event -------------------------------------------------------------------------------
class NeedsN(StartEvent):
    n: int


class NeedsNFlow(Workflow):
    @step
    async def begin(self, ev: NeedsN) -> StopEvent:
        return StopEvent(result=ev.n)


@pytest.mark.parametrize("call", [
    pytest.param(lambda wf: wf.run(), id="required-field-missing"),
    pytest.param(lambda wf: wf.run(n="not a number"), id="field-of-the-wrong-type"),
    pytest.param(lambda wf: wf.run(start_event=NeedsN(n=1), n=2), id="start-event-and-kwargs"),
    pytest.param(lambda wf: wf.run(start_event=StartEvent(n=1)), id="start-event-of-the-wrong-type"),
])
def test_run_that_cannot_build_the_start_event_raises_workflow_runtime_error(call: Any) -> None:
    engine = RecordingEngine()
    with pytest.raises(WorkflowRuntimeError) as info:
        call(NeedsNFlow(runtime=engine))
    assert "NeedsN" in str(info.value) or "start_event" in str(info.value)
    assert engine.calls == []


# --- disable_validation -------------------------------------------------------------------------------------
class Ping2(Event):
    pass


class Pong2(Event):
    pass


class DeadBranchFlow(Workflow):
    """``bounce`` and ``back`` can never run (nothing reaches them): only the validator objects."""

    @step
    async def begin(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result="ran anyway")

    @step
    async def bounce(self, ev: Ping2) -> Pong2:
        return Pong2()

    @step
    async def back(self, ev: Pong2) -> Ping2:
        return Ping2()


class ReallyOrphanFlow(Workflow):
    @step
    async def begin(self, ev: StartEvent) -> Orphan | StopEvent:
        return Orphan()


def test_disable_validation_runs_a_workflow_the_validator_rejects(rt: ProcessRuntime) -> None:
    with pytest.raises(WorkflowValidationError):
        DeadBranchFlow(runtime=rt).run()
    with pytest.raises(WorkflowValidationError):
        OrphanFlow(runtime=rt).run()
    assert DeadBranchFlow(runtime=rt, disable_validation=True).run().result(timeout=30) == "ran anyway"
    assert OrphanFlow(runtime=rt, disable_validation=True).run().result(timeout=30) == \
        "never emitted the orphan"


def test_with_validation_disabled_an_event_nobody_accepts_fails_the_run_naming_step_and_event(
        rt: ProcessRuntime) -> None:
    handler = ReallyOrphanFlow(runtime=rt, disable_validation=True).run()
    with pytest.raises(WorkflowRuntimeError) as info:
        handler.result(timeout=30)
    assert "'begin'" in str(info.value) and "Orphan" in str(info.value)
