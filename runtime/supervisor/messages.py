"""What workers tell the supervisor, one handler per message type.

    Done       -> the result is routed (or, a StopEvent, ends the run)     Failed    -> failures.on_failed
    Emit       -> routed (marks the invocation visible)                     Cancelled -> released
    Publish    -> the run's stream, still pickled (marks it visible)       Suspended -> routing.register
    Request    -> state_request, the one entry point for run state (writes mark it visible)

Every error goes somewhere: a handler that raises ends the run of the invocation the message was about
(named), or, for a message about no invocation, is logged; the supervisor carries on either way.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from actors import Event, InputRequiredEvent, PayloadError, StopEvent, WorkflowRuntimeError
from actors.host import Cancelled, Done, Emit, Failed, Packed, Publish, Reply, Request, Suspended

from runtime.run.state import RunStatus
from runtime.supervisor import report

if TYPE_CHECKING:
    from runtime.pool.worker import Worker
    from runtime.run.state import Invocation, RunState
    from runtime.supervisor.supervisor import Supervisor

log = logging.getLogger("procflow")

# State operations that change nothing: a step re-run after asking them leaves the run as it was.
READ_ONLY_OPS = frozenset({"get", "get_state"})


class WorkerMessages:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self._handlers: dict[type, Callable[[Worker, Any], None]] = {
            Done: self._on_done, Failed: sup.failures.on_failed, Cancelled: self._on_cancelled,
            Emit: self._on_emit, Publish: self._on_publish, Request: self._on_request,
            Suspended: self._on_suspended,
        }

    def on_message(self, worker: Worker, msg: object) -> None:
        about = self.sup.invocations.get(getattr(msg, "inv", -1))
        try:
            handler = self._handlers[type(msg)]
            handler(worker, msg)
        except Exception as exc:  # noqa: BLE001 -- ends the run it concerns, below
            inv = self.sup.invocations.get(getattr(msg, "inv", -1))
            if inv is None:
                log.exception("procflow: supervisor failed to handle %s from worker %d", type(msg).__name__,
                              worker.pid)
            else:
                self.sup.fail(inv.run, WorkflowRuntimeError(
                    f"procflow could not handle {type(msg).__name__} from step '{inv.step}' "
                    f"(worker pid {worker.pid}): {type(exc).__name__}: {exc}"), inv.step)
        self.sup.scheduler.schedule()
        if about is not None:
            report.maybe_idle(about.run)

    def _live(self, inv_id: int) -> Invocation | None:
        inv = self.sup.invocations.get(inv_id)
        if inv is None or not inv.run.status.accepts_work:
            return None
        return inv

    def classify(self, run: RunState, packed: Packed, step: str, what: str
                 ) -> tuple[type, Event | None] | None:
        """The event's class from its key, unpickling only when the key is unknown; None (and the run
        failed) when it cannot be unpickled."""
        cls = self.sup.codec.class_of(packed.type_key) if packed.type_key else None
        if cls is not None:
            return cls, None
        event = self.decode(run, packed, step, what)
        return None if event is None else (type(event), event)

    def decode(self, run: RunState, packed: Packed, step: str, what: str) -> Any:
        try:
            return self.sup.codec.unpack(packed)
        except PayloadError as exc:
            self.sup.fail(run, PayloadError(
                f"step '{step}' {what} {packed.type_name}, which the parent cannot unpickle: {exc}"), step)
            return None

    # --- outcomes --------------------------------------------------------------------------------------
    def _on_done(self, worker: Worker, msg: Done) -> None:
        inv = self.sup.invocations.get(msg.inv)
        if inv is None:
            return
        run = inv.run
        output = msg.result.type_name if msg.result is not None else None
        if run.status is RunStatus.CANCELLING:
            # A step finishing during a graceful cancel: keep its output for a resumed run.
            report.step_changed(run, inv, "done", output)
            if msg.result is not None:
                run.leftovers.append(("route", None, msg.result))
        self.sup.scheduler.release(inv)
        if not run.status.accepts_work:
            return
        report.step_changed(run, inv, "done", output)
        if msg.result is None:
            return
        found = self.classify(run, msg.result, inv.step, "returned")
        if found is None:
            return
        cls, event = found
        if issubclass(cls, StopEvent):
            stop: StopEvent | None = event or self.decode(run, msg.result, inv.step, "returned")  # type: ignore[assignment]
            if stop is not None:
                self.sup.finish(run, RunStatus.COMPLETED, stop, None)
            return
        asks = issubclass(cls, InputRequiredEvent)
        if asks:  # a returned InputRequiredEvent goes to the stream by itself: the caller answers it
            run.adapter.events.put_packed(msg.result)
        if not self.sup.router.route(run, cls, msg.result, None, event, inv.recoveries) and not asks:
            self.sup.fail(run, WorkflowRuntimeError(
                f"step '{inv.step}' returned {cls.__name__}, which no step accepts"), inv.step)

    def _on_cancelled(self, worker: Worker, msg: Cancelled) -> None:
        inv = self.sup.invocations.get(msg.inv)
        if inv is None:
            return
        if inv.run.status is RunStatus.CANCELLING:  # it did not run to the end: run it again on resume
            inv.run.leftovers.append(("invoke", inv.step, inv.again()))
            report.step_changed(inv.run, inv, "cancelled")
        self.sup.scheduler.release(inv)

    def _on_suspended(self, worker: Worker, msg: Suspended) -> None:
        inv = self.sup.invocations.get(msg.inv)
        if inv is None:
            return
        run = inv.run
        if not run.status.ended:  # registered before the release, which may end a cancelling run
            try:
                self.sup.router.register(run, inv, msg)
            except Exception as exc:  # noqa: BLE001 -- named and ends the run
                self.sup.fail(run, exc, inv.step)
        self.sup.scheduler.release(inv)

    # --- effects on the run ----------------------------------------------------------------------------
    def _on_emit(self, worker: Worker, msg: Emit) -> None:
        inv = self.sup.invocations.get(msg.inv)
        if inv is not None and inv.run.status is RunStatus.CANCELLING:
            inv.visible = True
            inv.run.leftovers.append(("route", msg.step, msg.event))
            return
        inv = self._live(msg.inv)
        if inv is None:
            return
        inv.visible = True
        run = inv.run
        found = self.classify(run, msg.event, inv.step, "sent")
        if found is not None and not self.sup.router.route(run, found[0], msg.event, msg.step, found[1],
                                                           inv.recoveries):
            self.sup.fail(run, WorkflowRuntimeError(
                f"step '{inv.step}' sent {found[0].__name__}, which no step accepts"), inv.step)

    def _on_publish(self, worker: Worker, msg: Publish) -> None:
        inv = self._live(msg.inv)
        if inv is None:
            return
        inv.visible = True
        inv.run.adapter.events.put_packed(msg.event)

    def _on_request(self, worker: Worker, msg: Request) -> None:
        def reply(ok: bool, packed: Packed) -> bool:
            worker.send(Reply(msg.req, ok, packed))
            return True

        inv = self.sup.invocations.get(msg.inv)
        if inv is None or inv.run.status.ended:
            reply(False, self.sup.codec.pack(WorkflowRuntimeError("the run has ended")))
            return
        if msg.op not in READ_ONLY_OPS:
            inv.visible = True
        self.sup.state_request(inv.run, inv.inv, msg.op, msg.args, reply)
