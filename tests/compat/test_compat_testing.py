"""Item 11: ``workflows.testing.WorkflowTestRunner``.

llama documents ``WorkflowTestRunner(workflow)`` and ``await runner.run(start_event=StartEvent(), ctx=None,
expose_internal=True, exclude_events=None)`` returning a ``WorkflowTestResult`` with ``collected`` (the streamed
events, in order, less the excluded types), ``event_types`` (``{event class: count}``), ``result`` (what awaiting
the handler gives) and ``ctx`` (the run's Context).
"""

from typing import Any

from ._support import Impl, aio


def doubling_workflow(wf: Impl) -> Any:
    Event, StartEvent, StopEvent = wf.events.Event, wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Context = wf.decorators.step, wf.workflow.Workflow, wf.context.Context

    class Progress(Event):
        n: int

    class Doubler(Workflow):
        @step
        async def double(self, ctx: Context, ev: StartEvent) -> StopEvent:
            ctx.write_event_to_stream(Progress(n=ev.n))
            await ctx.store.set("doubled", ev.n * 2)
            return StopEvent(result=ev.n * 2)

    return Doubler, Progress


@aio
async def test_the_runner_collects_the_streamed_events_and_the_result(wf: Impl) -> None:
    Doubler, Progress = doubling_workflow(wf)
    runner = wf.testing.WorkflowTestRunner(wf.make(Doubler))
    outcome = await runner.run(start_event=wf.events.StartEvent(n=4), expose_internal=False)
    assert outcome.result == 8
    assert [type(ev) for ev in outcome.collected] == [Progress, wf.events.StopEvent]
    assert outcome.event_types == {Progress: 1, wf.events.StopEvent: 1}
    assert await outcome.ctx.store.get("doubled") == 8


@aio
async def test_the_runner_exposes_internal_events_by_default(wf: Impl) -> None:
    Doubler, _ = doubling_workflow(wf)
    outcome = await wf.testing.WorkflowTestRunner(wf.make(Doubler)).run(start_event=wf.events.StartEvent(n=1))
    assert outcome.event_types.get(wf.events.StepStateChanged, 0) >= 2


@aio
async def test_the_runner_leaves_out_the_excluded_event_types(wf: Impl) -> None:
    Doubler, Progress = doubling_workflow(wf)
    outcome = await wf.testing.WorkflowTestRunner(wf.make(Doubler)).run(
        start_event=wf.events.StartEvent(n=1), exclude_events=[wf.events.StepStateChanged, Progress])
    assert not any(isinstance(ev, (wf.events.StepStateChanged, Progress)) for ev in outcome.collected)
    assert outcome.result == 2
