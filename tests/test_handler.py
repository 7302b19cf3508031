"""Issue 2 item 6: the ``WorkflowHandler`` surface (awaitable, run_id, ctx, get_stop_event,
stop_event_result, is_done, stream_events, send_event, cancel_run, exception, cancelled, done, str)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import pid_gone, wait_until

from actors import (
    Context, Event, HumanResponseEvent, StartEvent, StopEvent, Workflow, WorkflowCancelledByUser, WorkflowCancelledEvent,
    WorkflowFailedEvent, WorkflowRuntimeError, step,
)
from handler import WorkflowHandler
from runtime import ProcessRuntime


class Ask(Event):
    question: str


class Answer(HumanResponseEvent):  # sent by the caller: no step produces it
    text: str


class Started(Event):
    pid: int


class Custom(StopEvent):
    answer: str


class PlainFlow(Workflow):
    @step
    async def only(self, ctx: Context, ev: StartEvent) -> StopEvent:
        await ctx.store.set("seen", ev.get("x"))
        return StopEvent(result={"x": ev.get("x")})


class CustomStopFlow(Workflow):
    @step
    async def only(self, ev: StartEvent) -> Custom:
        return Custom(answer="42", result="r")


class AskFlow(Workflow):
    """Waits for an Answer that no step produces: only the caller can send it."""

    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> None:
        ctx.write_event_to_stream(Ask(question="name?"))
        return None

    @step
    async def answered(self, ctx: Context, ev: Answer) -> StopEvent:
        return StopEvent(result=(ev.text, await ctx.store.get("secret", default=None)))


class FailFlow(Workflow):
    @step
    async def only(self, ev: StartEvent) -> StopEvent:
        raise KeyError("missing thing")


async def next_event(gen: Any) -> Event:
    return await asyncio.wait_for(gen.__anext__(), 30)


# --- awaiting ---------------------------------------------------------------------------------------------
async def test_awaiting_gives_the_result_of_a_plain_stop_event_every_time(rt: ProcessRuntime) -> None:
    handler = PlainFlow(runtime=rt).run(x=1)
    assert await handler == {"x": 1}
    assert await handler == {"x": 1}
    stop = await handler.stop_event_result()
    assert type(stop) is StopEvent and stop.result == {"x": 1}


async def test_awaiting_gives_the_event_itself_for_a_stop_event_subclass(rt: ProcessRuntime) -> None:
    handler = CustomStopFlow(runtime=rt).run()
    custom = await handler
    assert isinstance(custom, Custom) and (custom.answer, custom.result) == ("42", "r")
    assert await handler.stop_event_result() == custom
    assert handler.get_stop_event() == custom


def test_a_handler_has_no_public_constructor() -> None:
    with pytest.raises(TypeError):
        WorkflowHandler()


async def test_each_run_has_its_own_run_id_and_str_names_workflow_and_run(rt: ProcessRuntime) -> None:
    wf = PlainFlow(runtime=rt)
    one, two = wf.run(x=1), wf.run(x=2)
    assert isinstance(one.run_id, str) and one.run_id and one.run_id != two.run_id
    await asyncio.gather(one, two)
    text = str(one)
    assert "PlainFlow" in text and one.run_id in text


async def test_run_id_names_the_run_and_a_run_id_still_in_use_is_refused(rt: ProcessRuntime) -> None:
    first = AskFlow(runtime=rt).run(run_id="mine")
    assert first.run_id == "mine"
    second = AskFlow(runtime=rt).run(run_id="mine")  # while the first waits for its Answer
    with pytest.raises(WorkflowRuntimeError, match="mine"):
        await asyncio.wait_for(second, 30)
    await first.send_event(Answer(text="a"))
    assert (await asyncio.wait_for(first, 30))[0] == "a"
    third = PlainFlow(runtime=rt).run(run_id="mine", x=3)  # the id is free again
    assert await asyncio.wait_for(third, 30) == {"x": 3}


async def test_handler_ctx_reaches_the_runs_store_during_and_after_the_run(rt: ProcessRuntime) -> None:
    handler = AskFlow(runtime=rt).run()
    assert isinstance(handler.ctx, Context)
    events = handler.stream_events()
    assert isinstance(await next_event(events), Ask)
    await handler.ctx.store.set("secret", "s3")  # read by the step that the Answer starts
    await handler.send_event(Answer(text="hi"))
    assert await handler == ("hi", "s3")
    assert await handler.ctx.store.get("secret") == "s3"


# --- state while running and after ------------------------------------------------------------------------
async def test_done_is_done_and_get_stop_event_follow_the_run(rt: ProcessRuntime) -> None:
    handler = AskFlow(runtime=rt).run()
    events = handler.stream_events()
    assert isinstance(await next_event(events), Ask)
    assert not handler.is_done() and not handler.done() and handler.get_stop_event() is None
    await handler.send_event(Answer(text="hi"))
    await handler
    assert handler.is_done() and handler.done()
    stop = handler.get_stop_event()
    assert type(stop) is StopEvent and stop.result == ("hi", None)
    assert await next_event(events) == stop  # the stream ends with the same StopEvent


def stream_from_threads(handler: WorkflowHandler, consumers: int) -> list[bool]:
    """Stream one run from ``consumers`` threads, each with its own loop (they split the events); the one
    that receives the StopEvent records whether the handler was done at that moment."""
    seen: list[bool] = []
    ready = threading.Barrier(consumers + 1)

    async def consume() -> None:
        ready.wait()
        async for ev in handler.stream_events():
            if isinstance(ev, StopEvent):
                seen.append(handler.is_done() and handler.get_stop_event() is ev)

    threads = [threading.Thread(target=asyncio.run, args=(consume(),)) for _ in range(consumers)]
    for t in threads:
        t.start()
    ready.wait(30)
    time.sleep(0.02)  # lets the consumers park on the stream: each wake-up widens the race window
    handler.send_event_sync(Answer(text="now"))
    for t in threads:
        t.join(30)
    return seen


def test_once_the_stream_has_delivered_its_stop_event_the_handler_is_done(rt: ProcessRuntime) -> None:
    """Regression: the supervisor once published the StopEvent before resolving the result, and this
    caught the race in ~20-45 % of runs."""
    wf = AskFlow(runtime=rt)
    for _ in range(100):
        handler = wf.run()
        assert stream_from_threads(handler, consumers=8) == [True]
        assert handler.result(timeout=30) == ("now", None)


async def test_exception_and_cancelled_after_a_successful_run(rt: ProcessRuntime) -> None:
    handler = PlainFlow(runtime=rt).run(x=1)
    await handler
    assert handler.exception() is None and not handler.cancelled()


async def test_exception_and_cancelled_after_a_failed_run(rt: ProcessRuntime) -> None:
    handler = FailFlow(runtime=rt).run()
    with pytest.raises(KeyError):
        await handler
    assert isinstance(handler.exception(), KeyError) and not handler.cancelled()
    stop = handler.get_stop_event()
    assert isinstance(stop, WorkflowFailedEvent) and stop.error_type == "KeyError"


# --- streaming ----------------------------------------------------------------------------------------------
async def test_stream_events_twice_raises_workflow_runtime_error(rt: ProcessRuntime) -> None:
    handler = PlainFlow(runtime=rt).run(x=1)
    first = [ev async for ev in handler.stream_events()]
    assert [type(ev) for ev in first] == [StopEvent]
    with pytest.raises(WorkflowRuntimeError):
        async for _ in handler.stream_events():
            pass
    assert await handler == {"x": 1}


# --- send_event ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [None, "answered"])
async def test_send_event_feeds_a_step_waiting_for_an_event_only_the_caller_sends(
        rt: ProcessRuntime, target: str | None) -> None:
    handler = AskFlow(runtime=rt).run()
    events = handler.stream_events()
    ask = await next_event(events)
    assert isinstance(ask, Ask) and ask.question == "name?"
    await handler.send_event(Answer(text="Ada"), step=target)
    assert await handler == ("Ada", None)


async def test_send_event_to_a_run_that_ended_raises_workflow_runtime_error(rt: ProcessRuntime) -> None:
    handler = PlainFlow(runtime=rt).run(x=1)
    await handler
    with pytest.raises(WorkflowRuntimeError):
        await handler.send_event(Answer(text="late"))


async def test_a_caller_timeout_on_await_does_not_cancel_the_run(rt: ProcessRuntime) -> None:
    handler = AskFlow(runtime=rt).run()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(handler, timeout=0.2)
    assert not handler.is_done() and not handler.cancelled()
    await handler.send_event(Answer(text="still here"))
    assert await handler == ("still here", None)


# --- cancel_run ---------------------------------------------------------------------------------------------
class SleepyFlow(Workflow):
    @step
    async def only(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Started(pid=os.getpid()))
        await asyncio.sleep(50)
        return StopEvent(result="unreachable")


class BusyDefFlow(Workflow):
    @step
    def work(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Started(pid=os.getpid()))
        time.sleep(0.5)
        Path(ev.marker).write_text("finished")
        return StopEvent(result="finished")


async def test_cancel_run_cancels_async_steps_and_ends_the_run_as_cancelled(rt: ProcessRuntime) -> None:
    handler = SleepyFlow(runtime=rt).run()
    events = handler.stream_events()
    assert isinstance(await next_event(events), Started)
    await handler.cancel_run()
    assert handler.is_done() and handler.cancelled()
    assert isinstance(handler.exception(), WorkflowCancelledByUser)
    with pytest.raises(WorkflowCancelledByUser):
        await handler
    stop = await next_event(events)
    assert isinstance(stop, WorkflowCancelledEvent) and stop.hard is False
    assert handler.get_stop_event() == stop


async def test_cancel_run_lets_a_running_def_step_finish_and_keeps_its_worker(
        rt: ProcessRuntime, tmp_path: Path) -> None:
    marker = tmp_path / "finished"
    handler = BusyDefFlow(runtime=rt).run(marker=str(marker))
    events = handler.stream_events()
    started = await next_event(events)
    assert isinstance(started, Started)
    await handler.cancel_run(timeout=20)
    assert handler.cancelled()
    assert marker.read_text() == "finished"  # the step ran to its end before the run ended
    assert not pid_gone(started.pid) and started.pid in rt.worker_pids()
    assert isinstance(await next_event(events), WorkflowCancelledEvent)
    assert wait_until(lambda: len(rt.worker_pids()) == 2)
