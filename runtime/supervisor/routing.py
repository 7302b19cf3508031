"""Routing: where an event goes inside its run, and the steps waiting in ``ctx.wait_for_event``.

    route(run, cls, packed, step) -> the waiters it answers (their step runs again with the answer)
                                  -> the named ``step``, or every step accepting exactly ``cls``

An event is routed by its class key without being unpickled; it is unpickled here only when a waiter for its
type exists and its fields must be compared with the waiter's requirements.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors import Event, WorkflowRuntimeError, WorkflowTimeoutError
from actors.host import Packed, Suspended

from runtime.run.state import Recoveries, StepInput, Waiter
from runtime.supervisor import report

if TYPE_CHECKING:
    from runtime.run.state import Invocation, RunState
    from runtime.supervisor.supervisor import Supervisor


class Router:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def route(self, run: RunState, cls: type, packed: Packed, step: str | None,
              event: Event | None = None, recoveries: Recoveries = ()) -> bool:
        """Answer the waiters the event matches, and queue it for ``step`` or every step accepting its type
        ``cls`` (exactly, or as a subclass for steps that asked); False if nothing took it. ``recoveries``
        (the producer's) go on with the event."""
        answered = False
        if step is None and run.waiters.get(cls):
            answered = self._answer_waiters(run, event or self.sup.codec.unpack(packed), packed)
        steps = (step,) if step is not None else run.wspec.consumers_of(cls)
        for name in steps:
            self.sup.scheduler.enqueue(run, name, StepInput(packed, recoveries=recoveries))
        return bool(steps) or answered

    def _answer_waiters(self, run: RunState, event: Event, packed: Packed) -> bool:
        waiters = run.waiters.get(type(event))
        if not waiters:
            return False
        answered = [key for key, w in waiters.items() if w.matches(event)]
        for key in answered:
            self.wake(run, waiters.pop(key), packed)
        return bool(answered)

    def wake(self, run: RunState, w: Waiter, answer: Packed) -> None:
        if w.timer is not None:
            w.timer.cancel()
        self.sup.scheduler.enqueue(run, w.step, StepInput(w.event, w.lineage,
                                                          w.resumed + ((w.waiter_id, answer),)))

    def arm(self, run: RunState, w: Waiter) -> None:
        if w.timeout is not None:
            w.timer = self.sup.loop.call_later(w.timeout, self._timed_out, run, w)

    def _timed_out(self, run: RunState, w: Waiter) -> None:
        waiters = run.waiters.get(w.event_type, {})
        if waiters.get((w.lineage, w.waiter_id)) is not w or not run.status.accepts_work:
            return
        del waiters[(w.lineage, w.waiter_id)]
        error = WorkflowTimeoutError(f"step '{w.step}': wait_for_event({w.event_type.__name__}) got no "
                                     f"matching event within {w.timeout} s")
        self.wake(run, w, self.sup.codec.pack(error, keys=run.class_keys))
        self.sup.scheduler.schedule()

    def register(self, run: RunState, inv: Invocation, msg: Suspended) -> None:
        """A step suspended in ``wait_for_event``: remember it, publish its waiter event once, arm its
        timeout."""
        codec = self.sup.codec
        try:
            event_type = codec.unpack(msg.event_type)
            requirements = codec.unpack(msg.requirements)
        except Exception as exc:
            raise WorkflowRuntimeError(f"step '{inv.step}': wait_for_event could not be registered: "
                                       f"{exc}") from exc
        w = Waiter(inv.step, inv.event, inv.root, inv.resumed, msg.waiter_id, event_type, requirements,
                   msg.timeout, waiter_event=msg.waiter_event)
        run.waiters.setdefault(event_type, {})[(w.lineage, w.waiter_id)] = w
        if not run.status.accepts_work:
            return
        report.step_changed(run, inv, "waiting")
        key = (w.lineage, w.waiter_id)
        if msg.waiter_event is not None and key not in run.waiter_events_written:
            run.waiter_events_written.add(key)
            run.adapter.events.put_packed(msg.waiter_event)
        self.arm(run, w)
