"""The actor host ends every invocation with exactly one outcome, sent by the invocation's task itself, or by
the cancel of a task that never ran; the last one in flight leaves at once (``send(now=True)``)."""

from __future__ import annotations

import asyncio
from typing import Any

from actors import Event, StartEvent, StopEvent, Workflow, step
from actors.host import ActorHost, CancelInvocations, Cancelled, Done, Invoke, spec_of

from runtime.wire.codec import Codec


class Slow(Event):
    pass


class Steps(Workflow):
    @step
    async def quick(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=1)

    @step
    async def slow(self, ev: Slow) -> StopEvent:
        await asyncio.sleep(30)
        return StopEvent(result=2)


class FakeMailbox:
    def __init__(self) -> None:
        self.codec = Codec()
        self.sent: list[tuple[object, bool]] = []

    def send(self, msg: object, now: bool = False) -> None:
        self.sent.append((msg, now))

    def pack(self, obj: Any, keys: frozenset[int] | None = None) -> Any:
        return self.codec.pack(obj)

    def unpack(self, packed: Any) -> Any:
        return self.codec.unpack(packed)


def _host(loop: asyncio.AbstractEventLoop) -> tuple[ActorHost, FakeMailbox]:
    mailbox = FakeMailbox()
    host = ActorHost(mailbox, loop)  # type: ignore[arg-type]
    wf = Steps()
    host.workflows[1] = (wf, spec_of(wf))
    return host, mailbox


def _invoke(inv: int, step_name: str, event: Event, codec: Codec) -> Invoke:
    return Invoke(inv, "run", 1, step_name, codec.pack(event))


def test_each_invocation_ends_with_one_outcome_and_the_last_leaves_at_once() -> None:
    loop = asyncio.new_event_loop()
    try:
        host, mailbox = _host(loop)
        host.dispatch(_invoke(1, "quick", StartEvent(), mailbox.codec))
        host.dispatch(_invoke(2, "quick", StartEvent(), mailbox.codec))
        loop.run_until_complete(asyncio.sleep(0.05))
        assert [(type(m), m.inv, now) for m, now in mailbox.sent] == [  # type: ignore[attr-defined]
            (Done, 1, False), (Done, 2, True)]
        assert not host.tasks
    finally:
        loop.close()


def test_a_task_cancelled_before_it_ran_is_answered_by_the_cancel_once() -> None:
    loop = asyncio.new_event_loop()
    try:
        host, mailbox = _host(loop)
        host.dispatch(_invoke(1, "quick", StartEvent(), mailbox.codec))
        host.dispatch(CancelInvocations((1,)))  # in the same batch: its task never ran
        loop.run_until_complete(asyncio.sleep(0.05))
        assert [(type(m), m.inv) for m, _ in mailbox.sent] == [(Cancelled, 1)]  # type: ignore[attr-defined]
        assert not host.tasks
    finally:
        loop.close()


def test_a_running_task_cancelled_answers_cancelled_itself_once() -> None:
    loop = asyncio.new_event_loop()
    try:
        host, mailbox = _host(loop)
        host.dispatch(_invoke(1, "slow", Slow(), mailbox.codec))
        loop.run_until_complete(asyncio.sleep(0.05))
        host.dispatch(CancelInvocations((1,)))
        loop.run_until_complete(asyncio.sleep(0.05))
        assert [(type(m), m.inv) for m, _ in mailbox.sent] == [(Cancelled, 1)]  # type: ignore[attr-defined]
        assert not host.tasks
    finally:
        loop.close()
