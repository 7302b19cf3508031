"""Item 7: ``@catch_error`` and ``StepFailedEvent`` (``workflows.decorators.catch_error``, top-level
``workflows.catch_error``; ``workflows.events.StepFailedEvent``).

llama documents: ``@catch_error`` (bare) or ``@catch_error(for_steps=[...], max_recoveries=1)`` marks a step taking
a ``StepFailedEvent``; it runs when a covered step has *exhausted its retries*. A scoped handler covers the steps
it names; one wildcard handler (``for_steps=None``) covers every step no scoped handler claims; a handler may
return any event (a ``StopEvent`` ends the run successfully). ``StepFailedEvent`` carries ``step_name``,
``input_event``, ``exception``, ``attempts``, ``elapsed_seconds``, ``failed_at`` (an aware UTC datetime). Each
handler recovers at most ``max_recoveries`` times per lineage; past that the run fails.
"""

import datetime
from pathlib import Path
from typing import Any

import pytest

from ._support import Impl, aio, outcome


def two_step_workflow(wf: Impl, handler_scope: str) -> Any:
    """first: StartEvent -> Mid (fails when ev.fail == "first", retried up to 3 attempts);
    second: Mid -> StopEvent (fails when ev.fail == "second"). One handler: wildcard, or scoped to first."""
    Event, StartEvent, StopEvent = wf.events.Event, wf.events.StartEvent, wf.events.StopEvent
    StepFailedEvent = wf.events.StepFailedEvent
    step, catch_error, Workflow = wf.decorators.step, wf.decorators.catch_error, wf.workflow.Workflow
    rp = wf.retry_policy
    policy = rp.retry_policy(wait=rp.wait_fixed(0), stop=rp.stop_after_attempt(3))

    class Mid(Event):
        fail: str
        log: str

    def note(path: str, line: str) -> None:
        with open(path, "a") as f:
            f.write(line + "\n")

    def recovered(ev: Any) -> Any:
        return StopEvent(result={
            "step": ev.step_name, "attempts": ev.attempts, "error": (type(ev.exception).__name__,
                                                                      str(ev.exception)),
            "input": type(ev.input_event).__name__,
            "elapsed_ok": isinstance(ev.elapsed_seconds, float) and ev.elapsed_seconds >= 0,
            "failed_at_utc": isinstance(ev.failed_at, datetime.datetime) and ev.failed_at.utcoffset()
            == datetime.timedelta(0),
        })

    class Base(Workflow):
        @step(retry_policy=policy)
        async def first(self, ev: StartEvent) -> Mid:
            note(ev.log, "first")
            if ev.fail == "first":
                raise ValueError("first broke")
            return Mid(fail=ev.fail, log=ev.log)

        @step
        async def second(self, ev: Mid) -> StopEvent:
            note(ev.log, "second")
            if ev.fail == "second":
                raise KeyError("second broke")
            return StopEvent(result="no failure")

    if handler_scope == "wildcard":
        class Guarded(Base):
            @catch_error
            async def recover(self, ev: StepFailedEvent) -> StopEvent:
                return recovered(ev)
    else:
        class Guarded(Base):  # type: ignore[no-redef]
            @catch_error(for_steps=["first"])
            async def recover(self, ev: StepFailedEvent) -> StopEvent:
                return recovered(ev)

    return Guarded


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@aio
async def test_a_handler_turns_a_failed_step_into_a_stop_event(wf: Impl, tmp_path: Path) -> None:
    Guarded = two_step_workflow(wf, "wildcard")
    result = await wf.make(Guarded).run(fail="second", log=str(tmp_path / "log"))
    assert result == {"step": "second", "attempts": 1, "error": ("KeyError", "'second broke'"), "input": "Mid",
                      "elapsed_ok": True, "failed_at_utc": True}, f"{wf.side}: StepFailedEvent fields: {result}"


@aio
async def test_the_handler_runs_after_the_retries_are_spent(wf: Impl, tmp_path: Path) -> None:
    Guarded = two_step_workflow(wf, "wildcard")
    log = tmp_path / "log"
    result = await wf.make(Guarded).run(fail="first", log=str(log))
    assert result["step"] == "first" and result["attempts"] == 3 and result["input"] == "StartEvent"
    assert lines(log) == ["first", "first", "first"], f"{wf.side}: the step must be retried before the handler"


@aio
async def test_a_scoped_handler_does_not_cover_other_steps(wf: Impl, tmp_path: Path) -> None:
    Guarded = two_step_workflow(wf, "first only")
    kind, value = await outcome(wf.make(Guarded).run(fail="second", log=str(tmp_path / "log")))
    assert kind == "raised" and type(value) is KeyError, (
        f"{wf.side}: a failure of a step not in for_steps must fail the run with its exception, got {kind} "
        f"{value!r}")


@aio
async def test_a_scoped_handler_covers_its_steps(wf: Impl, tmp_path: Path) -> None:
    Guarded = two_step_workflow(wf, "first only")
    result = await wf.make(Guarded).run(fail="first", log=str(tmp_path / "log"))
    assert result["step"] == "first"


@aio
async def test_a_wildcard_handler_covers_the_steps_a_scoped_one_does_not_claim(wf: Impl, tmp_path: Path) -> None:
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    StepFailedEvent, Event = wf.events.StepFailedEvent, wf.events.Event
    step, catch_error, Workflow = wf.decorators.step, wf.decorators.catch_error, wf.workflow.Workflow

    class Mid(Event):
        which: str

    class Both(Workflow):
        @step
        async def first(self, ev: StartEvent) -> Mid:
            if ev.which == "first":
                raise ValueError("first")
            return Mid(which=ev.which)

        @step
        async def second(self, ev: Mid) -> StopEvent:
            raise ValueError("second")

        @catch_error(for_steps=["first"])
        async def scoped(self, ev: StepFailedEvent) -> StopEvent:
            return StopEvent(result=f"scoped:{ev.step_name}")

        @catch_error
        async def everything_else(self, ev: StepFailedEvent) -> StopEvent:
            return StopEvent(result=f"wildcard:{ev.step_name}")

    workflow = wf.make(Both)
    assert await workflow.run(which="first") == "scoped:first"
    assert await workflow.run(which="second") == "wildcard:second"


@aio
async def test_a_handler_recovers_at_most_max_recoveries_times(wf: Impl, tmp_path: Path) -> None:
    StartEvent, StopEvent, Event = wf.events.StartEvent, wf.events.StopEvent, wf.events.Event
    StepFailedEvent = wf.events.StepFailedEvent
    step, catch_error, Workflow = wf.decorators.step, wf.decorators.catch_error, wf.workflow.Workflow

    class Again(Event):
        log: str

    class Loop(Workflow):
        @step
        async def flaky(self, ev: StartEvent | Again) -> StopEvent:
            with open(ev.log, "a") as f:
                f.write("run\n")
            raise ValueError(f"run {len(Path(ev.log).read_text().split())}")

        @catch_error(max_recoveries=2)
        async def retry_from_handler(self, ev: StepFailedEvent) -> Again:
            return Again(log=ev.input_event.log)

    log = tmp_path / "log"
    kind, value = await outcome(wf.make(Loop).run(log=str(log)))
    assert kind == "raised" and str(value) == "run 3", f"{wf.side}: got {kind} {value!r}"
    assert len(lines(log)) == 3, f"{wf.side}: one run plus max_recoveries=2 recoveries"


def test_a_handler_must_accept_step_failed_event(wf: Impl) -> None:
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    catch_error = wf.decorators.catch_error
    with pytest.raises(wf.errors.WorkflowValidationError):
        class Wrong(wf.workflow.Workflow):
            @catch_error
            async def recover(self, ev: StartEvent) -> StopEvent:
                return StopEvent()


def test_max_recoveries_below_one_is_rejected_by_the_decorator(wf: Impl) -> None:
    with pytest.raises(wf.errors.WorkflowValidationError):
        wf.decorators.catch_error(max_recoveries=0)


def test_two_wildcard_handlers_fail_validation(wf: Impl) -> None:
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    StepFailedEvent = wf.events.StepFailedEvent
    step, catch_error, Workflow = wf.decorators.step, wf.decorators.catch_error, wf.workflow.Workflow

    class TwoWild(Workflow):
        @step
        async def work(self, ev: StartEvent) -> StopEvent:
            return StopEvent()

        @catch_error
        async def one(self, ev: StepFailedEvent) -> StopEvent:
            return StopEvent()

        @catch_error
        async def two(self, ev: StepFailedEvent) -> StopEvent:
            return StopEvent()

    workflow = wf.make(TwoWild)  # construction succeeds
    with pytest.raises(wf.errors.WorkflowValidationError):
        workflow.validate()


def test_a_scoped_handler_naming_an_unknown_step_fails_validation(wf: Impl) -> None:
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    StepFailedEvent = wf.events.StepFailedEvent
    step, catch_error, Workflow = wf.decorators.step, wf.decorators.catch_error, wf.workflow.Workflow

    class Unknown(Workflow):
        @step
        async def work(self, ev: StartEvent) -> StopEvent:
            return StopEvent()

        @catch_error(for_steps=["nope"])
        async def recover(self, ev: StepFailedEvent) -> StopEvent:
            return StopEvent()

    with pytest.raises(wf.errors.WorkflowValidationError):
        wf.make(Unknown).validate()
