"""The supervisor: one uvloop loop, in its own thread, that owns every run and routes every event.

    caller threads --Door.call(fn)--> the loop thread (door.py: the one way in; nothing else touches runs)
    begin(run) --(num_concurrent_runs gate)--> start: the StartEvent, or what a resumed run left, is routed
    routing.py     event -> waiters | per-step queues
    scheduler.py   queues -> pending (FIFO, all runs) -> Pool.place() -> worker inbox (LoadWorkflow, Invoke)
    messages.py    worker outbox -> Done / Failed / Emit / Publish / Request / Suspended / Cancelled
    failures.py    a step's error -> retry or fail; a worker's death -> re-run what nothing saw, else fail
    finish(run)    StopEvent, failure, timeout or cancel: stop its work (cancel async invocations, kill the
                   workers running its ``def`` steps), publish the final StopEvent, resolve its result

Run state is read and written on the loop thread only. User code never runs here except where noted (the
unpickling of a routed event's fields when a waiter must compare them, a returned StopEvent, a state
operation's arguments): streamed events stay pickled until a reader takes them, and user callbacks run on
the handler's callback thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from actors import (
    Event, RuntimeBrokenError, StopEvent, WorkflowCancelledByUser, WorkflowCancelledEvent,
    WorkflowFailedEvent, WorkflowRuntimeError, WorkflowTimedOutEvent, WorkflowTimeoutError,
)
from actors.host import DropWorkflow, Packed, safe_text, type_name

from runtime.pool import Launcher, Pool, RestartBudget
from runtime.run.snapshot import RunCapture, capture, carry
from runtime.run.state import RunState, RunStatus, StepInput
from runtime.supervisor.door import Door
from runtime.supervisor.failures import Failures
from runtime.supervisor.messages import WorkerMessages
from runtime.supervisor.routing import Router
from runtime.supervisor.scheduler import Scheduler
from runtime.wire.codec import Codec
from runtime.workers.process.launcher import ProcessLauncher

if TYPE_CHECKING:
    from runtime.run.state import Invocation


def type_of_start(run: RunState) -> type:
    start = run.wspec.start_event_type
    assert start is not None, "a run starts only for a workflow whose start event class is known"
    return start

log = logging.getLogger("procflow")
T = TypeVar("T")


class SupervisorState(enum.Enum):
    """NEW -> RUNNING -> (BROKEN ->) CLOSED."""

    NEW = "new"
    RUNNING = "running"
    BROKEN = "broken"
    CLOSED = "closed"


class Supervisor:
    def __init__(self, *, workers: int, start_method: str, kill_grace: float, cancel_grace: float,
                 max_restarts: int, restart_window: float, async_capacity: int,
                 launcher: Launcher | None = None) -> None:
        self.state = SupervisorState.NEW
        self.door = Door("procflow-supervisor", self._thread_died)
        self.loop = self.door.loop
        self.codec = Codec()
        self.cancel_grace = cancel_grace
        self.runs: dict[str, RunState] = {}
        self.invocations: dict[int, Invocation] = {}
        self.broken_reason = ""
        self._ready_waiters: list[concurrent.futures.Future[None]] = []
        self.wf_running: dict[int, int] = {}
        self.wf_waiting: dict[int, deque[RunState]] = {}
        self.scheduler = Scheduler(self)
        self.router = Router(self)
        self.failures = Failures(self)
        self.messages = WorkerMessages(self)
        self.pool = Pool(self.loop, launcher or ProcessLauncher(start_method), workers,
                         kill_grace=kill_grace, budget=RestartBudget(max_restarts, restart_window),
                         async_capacity=async_capacity, on_message=self.messages.on_message,
                         on_ready=self._worker_ready, on_death=self.failures.on_death,
                         on_broken=self.on_broken, on_unplaceable=self.scheduler.unplaceable)

    # --- the door --------------------------------------------------------------------------------------
    def start(self) -> None:
        self.state = SupervisorState.RUNNING
        self.door.open()
        self.call(self.pool.fill)

    def in_loop_thread(self) -> bool:
        return self.door.in_loop_thread()

    def call(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Run ``fn(*args)`` on the supervisor loop; the only way other threads reach run state."""
        return self.door.call(fn, *args)

    def _thread_died(self, why: str) -> None:
        """The loop thread is ending unexpectedly (it still owns the runs): fail them all, loudly."""
        self.state = SupervisorState.BROKEN
        self.broken_reason = why
        for run in list(self.runs.values()):
            if not run.adapter.result.done():
                self._resolve(run, None, RuntimeBrokenError(self.broken_message()))

    # --- the pool at full strength ---------------------------------------------------------------------
    def when_ready(self) -> concurrent.futures.Future[None]:
        """A future resolved once every worker of the pool is READY (at once if they are), failed with
        ``RuntimeBrokenError`` if the runtime breaks or shuts down first."""
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._ready_waiters.append(fut)
        self._answer_ready_waiters()
        return fut

    def _worker_ready(self, worker: object) -> None:
        self._answer_ready_waiters()
        self.scheduler.schedule()

    def _answer_ready_waiters(self) -> None:
        if not self._ready_waiters:
            return
        if self.state is not SupervisorState.RUNNING:
            error: BaseException | None = RuntimeBrokenError(self.broken_message())
        elif self.pool.ready_count() >= self.pool.min_size:
            error = None
        else:
            return
        waiters, self._ready_waiters = self._ready_waiters, []
        for fut in waiters:
            if fut.set_running_or_notify_cancel():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)

    # --- starting runs ---------------------------------------------------------------------------------
    def forget(self, key: int) -> None:
        """The workflow object under ``key`` was garbage-collected: workers may drop it."""
        for w in self.pool.live():
            if key in w.loaded:
                w.loaded.discard(key)
                w.send(DropWorkflow(key))

    def begin(self, run: RunState) -> None:
        if self.state is not SupervisorState.RUNNING:
            self._resolve(run, None, RuntimeBrokenError(self.broken_message()))
            return
        if run.run_id in self.runs:  # run(run_id=...) naming a run still going
            self._resolve(run, None, WorkflowRuntimeError(
                f"a run with id {run.run_id!r} is still going on this runtime; give each run its own run_id"))
            return
        if run.previous is not None:  # a reused Context: its ended run is read here, where it lives
            try:
                carry(run, run.previous)
            except Exception as exc:  # noqa: BLE001 -- the run fails, named
                self._resolve(run, None, WorkflowRuntimeError(
                    f"the Context's previous run cannot be carried into run {run.run_id}: {exc}"))
                return
            run.previous = None
        limit = run.workflow.num_concurrent_runs
        self.runs[run.run_id] = run
        if limit is not None and self.wf_running.get(run.wf_key, 0) >= limit:
            self.wf_waiting.setdefault(run.wf_key, deque()).append(run)
            return
        self._start(run)

    def _start(self, run: RunState) -> None:
        self.wf_running[run.wf_key] = self.wf_running.get(run.wf_key, 0) + 1
        run.transition(RunStatus.RUNNING)
        if run.workflow.timeout is not None:
            run.timer = self.loop.call_later(run.workflow.timeout, self._timed_out, run)
        if run.resumes or run.leftovers or run.waiters or run.start_event is None:
            self._resume(run)
        else:
            for step in run.wspec.consumers_of(type_of_start(run)):
                self.scheduler.enqueue(run, step, StepInput(run.start_event))
        self.scheduler.schedule()

    def _resume(self, run: RunState) -> None:
        """Start a run from a snapshot: re-arm its waiters, re-queue what was pending."""
        leftovers, run.leftovers = run.leftovers, []
        lineages = [w.lineage for ws in run.waiters.values() for w in ws.values()]
        lineages += [item.lineage for kind, _, item in leftovers if kind == "invoke"]
        if lineages:
            self.scheduler.skip_ids_past(max(lineages))
        for waiters in run.waiters.values():
            for w in waiters.values():
                self.router.arm(run, w)
                if w.waiter_event is not None:  # ask again: this run's stream has a new reader
                    run.waiter_events_written.add((w.lineage, w.waiter_id))
                    run.adapter.events.put_packed(w.waiter_event)
        for kind, step, item in leftovers:
            if kind == "invoke":
                self.scheduler.enqueue(run, step, item)  # type: ignore[arg-type]
            else:
                event = self.codec.unpack(item)
                self.router.route(run, type(event), item, step, event)

    # --- ending runs -----------------------------------------------------------------------------------
    def _timed_out(self, run: RunState) -> None:
        timeout = run.workflow.timeout
        busy = self.running_steps(run)
        msg = (f"run {run.run_id} of {run.wspec.name} timed out after {timeout} s"
               + (f"; steps still running: {', '.join(busy)}" if busy else ""))
        self.finish(run, RunStatus.TIMED_OUT,
                    WorkflowTimedOutEvent(result=msg, timeout=timeout or 0.0, active_steps=busy),
                    WorkflowTimeoutError(msg))

    def fail(self, run: RunState, exc: BaseException, step: str | None = None, attempts: int | None = None,
             elapsed: float | None = None) -> None:
        """End ``run`` as failed with ``exc``; ``step`` failed after ``attempts`` attempts over ``elapsed``
        seconds (None when the failure is not a step's)."""
        self.finish(run, RunStatus.FAILED,
                    WorkflowFailedEvent(result=safe_text(exc), step_name=step or "", exception=exc,
                                        attempts=attempts, elapsed_seconds=elapsed,
                                        error_type=type_name(exc)), exc)

    def end_cancelled(self, run: RunState, hard: bool = False) -> None:
        self.finish(run, RunStatus.CANCELLED, WorkflowCancelledEvent(result="cancelled", hard=hard),
                    WorkflowCancelledByUser(f"run {run.run_id} was cancelled" + (" (hard)" if hard else "")))

    def finish(self, run: RunState, status: RunStatus, stop: StopEvent, exc: BaseException | None) -> None:
        """End ``run``: stop its work, publish ``stop`` last, resolve its result. Idempotent."""
        if run.status.ended:
            return
        was_pending = run.status is RunStatus.PENDING
        run.transition(status)
        if run.timer is not None:
            run.timer.cancel()
        self._keep_leftovers(run)
        self.failures.stop_invocations(run, hard=True, why=f"run {run.run_id} {status.value}")
        for waiters in run.waiters.values():
            for w in waiters.values():
                if w.timer is not None:
                    w.timer.cancel()
        self.runs.pop(run.run_id, None)
        if was_pending:
            self.wf_waiting.get(run.wf_key, deque()).remove(run)
        else:
            self._release_slot(run.wf_key)
        self._resolve(run, stop, exc)

    def _resolve(self, run: RunState, stop: StopEvent | None, exc: BaseException | None) -> None:
        adapter = run.adapter
        adapter.stop_event = stop
        adapter.final_run = run
        # The result first: a reader that has just taken the StopEvent off the stream must find the
        # handler done. (Done callbacks only hand the handler to the callback thread: see handler.)
        if exc is None:
            adapter.result.set_result(stop)  # type: ignore[arg-type]
        else:
            adapter.result.set_exception(exc)
        if stop is not None:
            adapter.events.put(stop)
        adapter.events.close()

    def _release_slot(self, wf_key: int) -> None:
        self.wf_running[wf_key] -= 1
        waiting = self.wf_waiting.get(wf_key)
        if waiting:
            self._start(waiting.popleft())
        if not self.wf_running[wf_key]:
            del self.wf_running[wf_key]
            self.wf_waiting.pop(wf_key, None)

    def _keep_leftovers(self, run: RunState) -> None:
        """Move what has not started (queued and unplaced inputs, pending retries) to ``leftovers``, for a
        snapshot or a resumed run."""
        for retry in self.failures.drop_retries(run):
            run.leftovers.append(("invoke", retry.step, retry.item))
        for step, queue in run.queued.items():
            run.leftovers.extend(("invoke", step, item) for item in queue)
        run.queued.clear()
        for inv in run.invs.values():
            if inv.worker is None:
                run.leftovers.append(("invoke", inv.step, inv.again()))

    def on_broken(self, reason: str) -> None:
        self.state = SupervisorState.BROKEN
        self.broken_reason = reason
        log.error("procflow: %s", reason)
        for run in list(self.runs.values()):
            self.fail(run, RuntimeBrokenError(self.broken_message()))
        self._answer_ready_waiters()

    def broken_message(self) -> str:
        if self.state is SupervisorState.BROKEN:
            return (f"the procflow runtime is broken: {self.broken_reason}. Shut it down and start a new "
                    "one (the default runtime is replaced on the next run)")
        return "the procflow runtime has been shut down"

    # --- the caller's side of a run ----------------------------------------------------------------------
    def send_event(self, run_id: str, event: Event, packed: Packed, step: str | None) -> None:
        run = self.runs.get(run_id)
        if run is None or not run.status.accepts_work:
            raise WorkflowRuntimeError(f"run {run_id} is not running; cannot send {type(event).__name__}")
        if not self.router.route(run, type(event), packed, step, event):
            raise WorkflowRuntimeError(f"no step of {run.wspec.name} accepts {type(event).__name__}")
        self.scheduler.schedule()

    def publish(self, run_id: str, packed: Packed) -> None:
        run = self.runs.get(run_id)
        if run is None or not run.status.accepts_work:
            raise WorkflowRuntimeError(f"run {run_id} is not running; cannot write {packed.type_name} to "
                                       "its stream")
        run.adapter.events.put_packed(packed)

    def state_request(self, run: RunState, holder: object, op: str, args: Packed,
                      reply: Callable[[bool, Packed], bool]) -> None:
        """The one entry point for run-state operations, from a step (``holder`` is its invocation id) or
        from the caller ("caller"). Arguments come pickled and the answer goes back pickled: both are
        unpickled on the asking side's thread, except the arguments, which the state needs as objects.
        ``reply`` returns False when its asker is gone (a caller that stopped waiting)."""
        def answer(ok: bool, value: Any) -> bool:
            try:
                packed = self.codec.pack(value, keys=run.class_keys)
            except Exception as exc:  # noqa: BLE001 -- the asker gets the reason
                ok, packed = False, self.codec.pack(WorkflowRuntimeError(f"store.{op}: {safe_text(exc)}"))
            return reply(ok, packed)

        try:
            values = self.codec.unpack(args)
            if op == "lock_state":
                run.lock_state(holder, lambda state: answer(True, state))
                return
            result = run.state_op(op, values, holder)
        except Exception as exc:  # noqa: BLE001 -- handed to the asker
            answer(False, exc)
            return
        answer(True, result)

    def cancel(self, run_id: str) -> None:
        run = self.runs.get(run_id)
        if run is None or run.status.ended or run.status is RunStatus.CANCELLING:
            return
        if run.status is RunStatus.PENDING or not run.invs:
            self.end_cancelled(run)
            return
        run.transition(RunStatus.CANCELLING)
        self._keep_leftovers(run)
        self.failures.stop_invocations(run, hard=False, why=f"run {run_id} cancelled")
        if not run.invs:  # everything was still unplaced
            self.end_cancelled(run)

    def abort(self, run_id: str) -> bool:
        run = self.runs.get(run_id)
        if run is None or run.status.ended:
            return False
        self.end_cancelled(run, hard=True)
        return True

    def capture(self, run: RunState) -> RunCapture:
        """The run as it is now, as pickled copies: a consistent snapshot, on this thread."""
        return capture(run, self.codec)

    @staticmethod
    def running_steps(run: RunState) -> list[str]:
        """The steps with an invocation in progress (placed on a worker or about to be); none once it ended."""
        return [] if run.status.ended else sorted({inv.step for inv in run.invs.values()})

    # --- shutdown --------------------------------------------------------------------------------------
    def close(self, timeout: float) -> None:
        """Fail every run, end every worker, stop the loop thread; every pending call gets an answer."""
        self.door.close(lambda: self._close(timeout), timeout)
        self.pool.shutdown_signaller()

    async def _close(self, timeout: float) -> None:
        self.state = SupervisorState.CLOSED
        self._answer_ready_waiters()
        self.pool.close()
        for run in list(self.runs.values()):
            self.fail(run, RuntimeBrokenError("the procflow runtime has been shut down"))
        for w in self.pool.live():
            self.pool.kill(w, "runtime shutdown")
        deadline = time.monotonic() + timeout
        while (self.pool.live() or self.pool.spawning()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for w in self.pool.live():
            self.pool.force_kill(w)
        while self.pool.live() and time.monotonic() < deadline + 2.0:
            await asyncio.sleep(0.01)
        await self.loop.shutdown_default_executor()
