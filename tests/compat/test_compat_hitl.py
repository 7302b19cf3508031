"""Item 2: human in the loop, as llama's "Human in the Loop" page documents it.

A step *returns* an ``InputRequiredEvent`` (here a subclass with a ``prefix`` field): the event goes to the stream
by itself, no step has to consume it, and a step accepting ``HumanResponseEvent`` needs no producer. The caller
watches the stream and answers with ``handler.ctx.send_event(HumanResponseEvent(response=...))`` (the page's
first form) or ``await handler.send_event(...)`` (its newer form).
"""

from typing import Any

from ._support import Impl, aio


def hitl_workflow(wf: Impl) -> Any:
    """ask: StartEvent -> Ask (an InputRequiredEvent); answer: HumanResponseEvent -> StopEvent."""
    InputRequiredEvent = wf.events.InputRequiredEvent
    HumanResponseEvent = wf.events.HumanResponseEvent
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    step, Workflow = wf.decorators.step, wf.workflow.Workflow

    class Ask(InputRequiredEvent):
        prefix: str

    class Greeter(Workflow):
        @step
        async def ask(self, ev: StartEvent) -> Ask:
            return Ask(prefix=f"name for {ev.greeting}? ")

        @step
        async def answer(self, ev: HumanResponseEvent) -> StopEvent:
            return StopEvent(result=f"hello {ev.response}")

    return Greeter, Ask


def test_validation_accepts_an_unconsumed_input_required_event_and_an_unproduced_human_response(
        wf: Impl) -> None:
    Greeter, _ = hitl_workflow(wf)
    uses_hitl = wf.make(Greeter).validate()
    assert uses_hitl is True, (
        f"{wf.side}: Workflow.validate() must pass and return True (the workflow uses human-in-the-loop), "
        f"got {uses_hitl!r}")


@aio
async def test_a_returned_input_required_event_is_published_on_the_stream(wf: Impl) -> None:
    Greeter, Ask = hitl_workflow(wf)
    handler = wf.make(Greeter).run(greeting="hi")
    seen = []
    async for ev in handler.stream_events():
        seen.append(type(ev).__name__)
        if isinstance(ev, Ask):
            assert ev.prefix == "name for hi? "
            handler.ctx.send_event(wf.events.HumanResponseEvent(response="ann"))
    assert "Ask" in seen, f"{wf.side}: the returned InputRequiredEvent subclass never reached the stream: {seen}"
    assert await handler == "hello ann"


@aio
async def test_the_caller_answers_with_handler_ctx_send_event(wf: Impl) -> None:
    Greeter, Ask = hitl_workflow(wf)
    handler = wf.make(Greeter).run(greeting="hi")
    async for ev in handler.stream_events():
        if isinstance(ev, Ask):
            handler.ctx.send_event(wf.events.HumanResponseEvent(response="bob"))
    assert await handler == "hello bob"


@aio
async def test_the_caller_answers_with_await_handler_send_event(wf: Impl) -> None:
    Greeter, Ask = hitl_workflow(wf)
    handler = wf.make(Greeter).run(greeting="hi")
    async for ev in handler.stream_events():
        if isinstance(ev, Ask):
            await handler.send_event(wf.events.HumanResponseEvent(response="cy"))
    assert await handler == "hello cy"


def waiting_workflow(wf: Impl) -> Any:
    """The in-step form: ``await ctx.wait_for_event(HumanResponseEvent, waiter_event=..., waiter_id=...)``."""
    InputRequiredEvent = wf.events.InputRequiredEvent
    HumanResponseEvent = wf.events.HumanResponseEvent
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Context = wf.decorators.step, wf.workflow.Workflow, wf.context.Context

    class Confirm(Workflow):
        @step
        async def confirm(self, ctx: Context, ev: StartEvent) -> StopEvent:
            answer = await ctx.wait_for_event(
                HumanResponseEvent, waiter_event=InputRequiredEvent(prefix="sure? "), waiter_id="sure")
            return StopEvent(result=f"answer={answer.response}")

    return Confirm


@aio
async def test_wait_for_event_publishes_the_waiter_event_and_returns_the_answer(wf: Impl) -> None:
    Confirm = waiting_workflow(wf)
    handler = wf.make(Confirm).run()
    prompts = []
    async for ev in handler.stream_events():
        if isinstance(ev, wf.events.InputRequiredEvent):
            prompts.append(ev.prefix)
            if len(prompts) == 1:
                handler.ctx.send_event(wf.events.HumanResponseEvent(response="yes"))
    assert prompts and prompts[0] == "sure? ", f"{wf.side}: the waiter_event was not published: {prompts}"
    assert await handler == "answer=yes"


def test_input_required_and_human_response_events_take_arbitrary_fields(wf: Impl) -> None:
    ask = wf.events.InputRequiredEvent(prefix="p", user_name="u")
    reply = wf.events.HumanResponseEvent(response="r", user_name="u")
    assert (ask.prefix, ask.user_name, reply.response, reply.user_name) == ("p", "u", "r", "u")
