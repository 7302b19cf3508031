"""The ``WorkflowHandler`` surface (``workflows.handler``; procflow's ``handler`` package), as llama documents it:
``Workflow.run()`` returns a ``WorkflowHandler``; ``run(run_id=...)`` names the run; ``await handler`` gives
``StopEvent.result`` (the event itself for a subclass); ``await handler.stop_event_result()`` the StopEvent;
``get_stop_event()`` and ``is_done()`` after the run; ``stream_events()`` a second time, after the stream was
consumed, raises ``WorkflowRuntimeError``.
"""

from typing import Any

import pytest

from ._support import Impl, aio, drain


def answer_workflow(wf: Impl) -> Any:
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    step, Workflow = wf.decorators.step, wf.workflow.Workflow

    class Answer(Workflow):
        @step
        async def answer(self, ev: StartEvent) -> StopEvent:
            return StopEvent(result=42)

    return Answer


@aio
async def test_run_returns_a_workflow_handler_of_the_handler_module(wf: Impl) -> None:
    handler = wf.make(answer_workflow(wf)).run()
    assert isinstance(handler, wf.handler.WorkflowHandler)
    assert await handler == 42


@aio
async def test_the_run_id_keyword_names_the_run(wf: Impl) -> None:
    handler = wf.make(answer_workflow(wf)).run(run_id="run-123")
    assert handler.run_id == "run-123", f"{wf.side}: run(run_id=...) must set handler.run_id (not a start field)"
    assert await handler == 42


@aio
async def test_stop_event_result_gives_the_stop_event(wf: Impl) -> None:
    handler = wf.make(answer_workflow(wf)).run()
    stop = await handler.stop_event_result()
    assert type(stop) is wf.events.StopEvent and stop.result == 42


@aio
async def test_is_done_and_get_stop_event_after_the_run(wf: Impl) -> None:
    handler = wf.make(answer_workflow(wf)).run()
    assert await handler == 42
    assert handler.is_done() is True
    stop = handler.get_stop_event()
    assert isinstance(stop, wf.events.StopEvent) and stop.result == 42


@aio
async def test_streaming_again_after_the_stream_ended_raises_workflow_runtime_error(wf: Impl) -> None:
    handler = wf.make(answer_workflow(wf)).run()
    await drain(handler)
    with pytest.raises(wf.errors.WorkflowRuntimeError):
        await drain(handler)
