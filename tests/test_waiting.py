"""Issue 4 items 2 and 3: ``ctx.wait_for_event`` (human in the loop) and targeted events.

A waiting step's invocation ends (holding no worker) and the step runs again from its start once a matching
event arrives; code before the wait therefore runs once per attempt, which the tests count in the store.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from actors import (
    Context, Event, HumanResponseEvent, InputRequiredEvent, StartEvent, StepStateChanged, StopEvent,
    Workflow, WorkflowRuntimeError, WorkflowTimeoutError, step,
)
from runtime import ProcessRuntime


class Answer(HumanResponseEvent):
    user: str = ""
    response: str = ""


class SubAnswer(Answer):
    pass


class Ask(InputRequiredEvent):
    prefix: str = ""
    user: str = ""


class AskFlow(Workflow):
    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> StopEvent:
        await ctx.store.set("before_wait", await ctx.store.get("before_wait", default=0) + 1)
        answer = await ctx.wait_for_event(
            Answer, waiter_event=Ask(prefix=f"run {ev.tag}: your name?", user=ev.user),
            requirements={"user": ev.user})
        return StopEvent(result=(ev.tag, answer.response, await ctx.store.get("before_wait")))


async def test_a_waiting_step_is_run_again_with_the_answer_and_writes_its_waiter_event_once(
        rt: ProcessRuntime) -> None:
    handler = AskFlow(runtime=rt).run(tag="a", user="bob")
    asks = []
    async for ev in handler.stream_events():
        if isinstance(ev, Ask):
            asks.append(ev)
            await handler.send_event(Answer(user="bob", response="Robert"))
    assert await handler == ("a", "Robert", 2)  # the code before the wait ran twice
    assert [a.prefix for a in asks] == ["run a: your name?"]


def test_send_event_sync_answers_a_waiting_step_from_blocking_code(rt: ProcessRuntime) -> None:
    handler = AskFlow(runtime=rt).run(tag="b", user="amy")
    for ev in handler.iter_events(timeout=30):
        if isinstance(ev, Ask):
            handler.send_event_sync(Answer(user="amy", response="Amelia"))
    assert handler.result(30) == ("b", "Amelia", 2)


class Audit(Workflow):
    """AskFlow plus a step that also accepts Answer, so a non-matching answer has somewhere to go."""

    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> StopEvent:
        await ctx.store.set("before_wait", await ctx.store.get("before_wait", default=0) + 1)
        answer = await ctx.wait_for_event(Answer, waiter_event=Ask(user="bob"), requirements={"user": "bob"})
        return StopEvent(result=(answer.response, await ctx.store.get("before_wait"),
                                 await ctx.store.get("audited", default=[])))

    @step
    async def audit(self, ctx: Context, ev: Answer) -> None:
        await ctx.store.set("audited", [*await ctx.store.get("audited", default=[]), ev.user])
        ctx.write_event_to_stream(Event(audited=ev.user))

    @step
    async def audit_sub(self, ev: SubAnswer) -> None:
        return None


async def test_only_an_event_of_the_exact_type_with_the_required_fields_answers_a_wait(
        rt: ProcessRuntime) -> None:
    handler = Audit(runtime=rt).run()
    async for ev in handler.stream_events():
        if isinstance(ev, Ask):
            await handler.send_event(Answer(user="alice", response="wrong user"))
            await handler.send_event(SubAnswer(user="bob", response="wrong type"))
        elif ev.get("audited") == "alice":
            await handler.send_event(Answer(user="bob", response="right"))
    response, before_wait, audited = await handler
    assert response == "right"
    assert before_wait == 2  # neither wrong answer woke the step
    assert audited[0] == "alice"


class TwoQuestions(Workflow):
    @step
    def ask(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.store.set_sync("runs", ctx.store.get_sync("runs", default=0) + 1)
        first = ctx.wait_for_event_sync(Answer, waiter_event=Ask(prefix="first"),
                                        requirements={"user": "q1"})
        second = ctx.wait_for_event_sync(Answer, waiter_event=Ask(prefix="second"),
                                         requirements={"user": "q2"})
        return StopEvent(result=(first.response, second.response, ctx.store.get_sync("runs")))


def test_a_def_step_can_wait_several_times_and_each_waiter_event_is_written_once(
        rt: ProcessRuntime) -> None:
    handler = TwoQuestions(runtime=rt).run()
    prompts = []
    for ev in handler.iter_events(timeout=30):
        if isinstance(ev, Ask):
            prompts.append(ev.prefix)
            user = "q1" if ev.prefix == "first" else "q2"
            handler.send_event_sync(Answer(user=user, response=ev.prefix.upper()))
    assert handler.result(30) == ("FIRST", "SECOND", 3)
    assert prompts == ["first", "second"]


class Trigger(HumanResponseEvent):  # sent by the caller: no step produces it
    response: str


class StepAnswers(Workflow):
    """``ask`` waits; once its question is out, the caller triggers ``helper``, which answers with
    ``ctx.send_event``."""

    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> StopEvent:
        answer = await ctx.wait_for_event(Answer, waiter_event=Ask(prefix="?"))
        return StopEvent(result=answer.response)

    @step
    async def helper(self, ctx: Context, ev: Trigger) -> None:
        ctx.send_event(Answer(response=ev.response))


async def test_another_step_can_answer_a_waiting_step_with_ctx_send_event(rt: ProcessRuntime) -> None:
    handler = StepAnswers(runtime=rt).run()
    async for ev in handler.stream_events():
        if isinstance(ev, Ask):
            await handler.send_event(Trigger(response="from a step"))
    assert await handler == "from a step"


class TimeoutFlow(Workflow):
    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> StopEvent:
        try:
            await ctx.wait_for_event(Answer, waiter_event=Ask(), timeout=ev.timeout)
        except WorkflowTimeoutError as exc:
            if ev.catch:
                return StopEvent(result=f"gave up: {exc}")
            raise
        return StopEvent(result="answered")


async def test_a_wait_longer_than_its_timeout_raises_workflow_timeout_error_in_the_step(
        rt: ProcessRuntime) -> None:
    caught = await asyncio.wait_for(TimeoutFlow(runtime=rt).run(timeout=0.2, catch=True), 30)
    assert caught.startswith("gave up:") and "Answer" in caught
    with pytest.raises(WorkflowTimeoutError) as info:
        await asyncio.wait_for(TimeoutFlow(runtime=rt).run(timeout=0.2, catch=False), 30)
    assert any("'ask'" in note for note in getattr(info.value, "__notes__", []))


# --- many waiting runs on a small pool --------------------------------------------------------------------
class DefAsk(Workflow):
    @step
    def ask(self, ctx: Context, ev: StartEvent) -> StopEvent:
        answer = ctx.wait_for_event_sync(Answer, waiter_event=Ask(user=ev.user))
        return StopEvent(result=f"{ev.user}:{answer.response}")


@pytest.mark.parametrize("flow", [AskFlow, DefAsk])
def test_more_runs_than_workers_can_wait_at_once_and_all_finish_when_answered(
        rt: ProcessRuntime, flow: type[Workflow]) -> None:
    wf = flow(runtime=rt)
    users = [f"u{i}" for i in range(6)]
    handlers = [wf.run(tag=u, user=u) for u in users]
    asked = threading.Barrier(len(handlers) + 1)  # every run is waiting before anyone answers

    def answer(handler: Any, user: str) -> None:
        for ev in handler.iter_events(timeout=30):
            if isinstance(ev, Ask):
                asked.wait(30)
                handler.send_event_sync(Answer(user=user, response=user.upper()))

    threads = [threading.Thread(target=answer, args=(h, u)) for h, u in zip(handlers, users)]
    for t in threads:
        t.start()
    asked.wait(30)  # a broken barrier (some run never asked) raises here
    for t in threads:
        t.join(30)
    results = [h.result(30) for h in handlers]
    if flow is AskFlow:
        assert results == [(u, u.upper(), 2) for u in users]
    else:
        assert results == [f"{u}:{u.upper()}" for u in users]


async def test_a_waiting_step_reports_the_waiting_state_and_holds_no_invocation(rt: ProcessRuntime) -> None:
    handler = DefAsk(runtime=rt).run(user="x")
    states = []
    async for ev in handler.stream_events(expose_internal=True):
        if isinstance(ev, StepStateChanged):
            states.append(ev.state)
        if isinstance(ev, Ask):
            await handler.send_event(Answer(response="y"))
    assert await handler == "x:y"
    assert states == ["running", "waiting", "running", "done"]


# --- targeted events ------------------------------------------------------------------------------------------
class Ping(Event):
    n: int = 0


class Targets(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> Ping | None:
        if ev.bad_step:
            ctx.send_event(Ping(), step="no_such_step")
        if ev.bad_type:
            ctx.send_event(StartEvent(), step="left")
        ctx.write_event_to_stream(Event(ready=True))
        return None

    @step
    async def left(self, ctx: Context, ev: Ping) -> StopEvent | None:
        return await self._record(ctx, "left", ev)

    @step
    async def right(self, ctx: Context, ev: Ping) -> StopEvent | None:
        return await self._record(ctx, "right", ev)

    async def _record(self, ctx: Context, name: str, ev: Ping) -> StopEvent | None:
        got = ctx.collect_events(Event(who=name, n=ev.n), [Event, Event], buffer_id="all")
        if got is None:
            return None
        return StopEvent(result=sorted((e.who, e.n) for e in got))


async def test_handler_send_event_to_a_named_step_reaches_only_that_step(rt: ProcessRuntime) -> None:
    handler = Targets(runtime=rt).run(bad_step=False, bad_type=False)
    async for ev in handler.stream_events():
        if ev.get("ready"):
            await handler.send_event(Ping(n=1), step="right")
            await handler.send_event(Ping(n=2), step="right")
    assert await handler == [("right", 1), ("right", 2)]


async def test_handler_send_event_to_an_unknown_step_or_one_not_accepting_the_type_is_an_error(
        rt: ProcessRuntime) -> None:
    handler = Targets(runtime=rt).run(bad_step=False, bad_type=False)
    with pytest.raises(WorkflowRuntimeError, match="no_such_step"):
        await handler.send_event(Ping(), step="no_such_step")
    with pytest.raises(WorkflowRuntimeError, match="'left'.*StartEvent|StartEvent.*'left'"):
        await handler.send_event(StartEvent(), step="left")
    with pytest.raises(WorkflowRuntimeError, match="no_such_step"):
        handler.send_event_sync(Ping(), step="no_such_step")
    await handler.send_event(Ping(n=1))  # broadcast: both steps
    assert await asyncio.wait_for(handler, 30) == [("left", 1), ("right", 1)]


@pytest.mark.parametrize("bad, needle", [("bad_step", "no_such_step"), ("bad_type", "StartEvent")])
def test_ctx_send_event_to_an_unknown_step_or_one_not_accepting_the_type_fails_the_step(
        rt: ProcessRuntime, bad: str, needle: str) -> None:
    handler = Targets(runtime=rt).run(**{"bad_step": False, "bad_type": False, bad: True})
    with pytest.raises(WorkflowRuntimeError, match=needle) as info:
        handler.result(30)
    assert any("'begin'" in note for note in getattr(info.value, "__notes__", []))


class Question(Event):
    user: str


class Replied(Event):
    user: str
    response: str


class FanOutAsk(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> Question | None:
        for user in ev.users:
            ctx.send_event(Question(user=user))
        return None

    @step(num_workers=1)
    async def ask(self, ctx: Context, ev: Question) -> Replied:
        answer = await ctx.wait_for_event(Answer, waiter_event=Ask(user=ev.user),
                                          requirements={"user": ev.user})
        return Replied(user=ev.user, response=answer.response)

    @step
    async def gather(self, ctx: Context, ev: Replied) -> StopEvent | None:
        got = ctx.collect_events(ev, [Replied] * 3)
        if got is None:
            return None
        return StopEvent(result=[(r.user, r.response) for r in got])


async def test_a_waiting_invocation_frees_its_step_slot_and_each_waiter_gets_its_own_answer(
        rt: ProcessRuntime) -> None:
    users = ["a", "b", "c"]
    handler = FanOutAsk(runtime=rt).run(users=users)
    asked = []
    async for ev in handler.stream_events():
        if isinstance(ev, Ask):
            asked.append(ev.user)
            if len(asked) == 3:  # num_workers=1, yet all three are waiting at once
                for user in reversed(users):
                    await handler.send_event(Answer(user=user, response=user * 2))
    assert sorted(asked) == users
    assert sorted(await handler) == [("a", "aa"), ("b", "bb"), ("c", "cc")]
