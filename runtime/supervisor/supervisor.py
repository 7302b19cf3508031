"""The supervisor: one uvloop loop, in its own thread, that owns every run and routes every event.

    caller threads --Supervisor.call(fn)--> loop.call_soon_threadsafe  (the one door; nothing else touches
                                                                        run state)
    RunState.route(event) -> per-step queue (num_workers cap per run) -> self.pending (FIFO, all runs)
    schedule(): pending -> Pool.place() -> worker inbox: [LoadWorkflow once] Invoke
    worker outbox -> Channel reader callback -> on_message():
        Emit -> route          Publish -> run's EventStream       Request -> Reply (store, collect)
        Done -> route result / StopEvent ends the run              Failed -> retry or fail the run
    worker sentinel -> on_death(): its invocations fail the run (crash) or are re-queued (we killed it
                                   for another run's sake)
    end of a run (StopEvent, failure, timeout, cancel): cancel its async invocations, kill the workers
        running its ``def`` steps (they run nothing else), publish the final StopEvent, resolve the result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import enum
import itertools
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import uvloop

from actors import (
    Event, PayloadError, RemoteTraceback, RuntimeBrokenError, StepStateChanged, StopEvent, WorkerCrashedError,
    WorkflowCancelledByUser, WorkflowCancelledEvent, WorkflowFailedEvent, WorkflowRuntimeError,
    WorkflowTimedOutEvent, WorkflowTimeoutError,
)
from actors import StepQueueChanged
from actors.host import (
    CancelInvocations, Cancelled, Done, DropWorkflow, Emit, Failed, Invoke, LoadWorkflow, Packed, Publish,
    Reply, Request, Suspended,
)

from runtime.wire.codec import Codec
from runtime.pool import Launcher, Pool, RestartBudget, Worker
from runtime.workers.process.launcher import ProcessLauncher
from runtime.run.state import Invocation, RunState, RunStatus, StepInput, Waiter

if TYPE_CHECKING:
    from runtime.engine import RunAdapter

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
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name="procflow-supervisor", daemon=True)
        self.codec = Codec()
        self.cancel_grace = cancel_grace
        self.pool = Pool(self.loop, launcher or ProcessLauncher(start_method), workers,
                         kill_grace=kill_grace,
                         budget=RestartBudget(max_restarts, restart_window),
                         async_capacity=async_capacity, on_message=self.on_message,
                         on_ready=lambda w: self.schedule(), on_death=self.on_death,
                         on_broken=self.on_broken)
        self.runs: dict[str, RunState] = {}
        self.invocations: dict[int, Invocation] = {}
        self.pending: deque[Invocation] = deque()
        self.definitions: dict[int, Packed] = {}
        self.wf_running: dict[int, int] = {}
        self.wf_waiting: dict[int, deque[RunState]] = {}
        self.broken_reason = ""
        self._ids = itertools.count(1)
        self._handlers: dict[type, Callable[[Worker, Any], None]] = {
            Done: self._on_done, Failed: self._on_failed, Cancelled: self._on_cancelled,
            Emit: self._on_emit, Publish: self._on_publish, Request: self._on_request,
            Suspended: self._on_suspended,
        }

    # --- the door --------------------------------------------------------------------------------------
    def start(self) -> None:
        self.state = SupervisorState.RUNNING
        self.thread.start()
        self.call(self.pool.fill)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread.ident

    def call(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Run ``fn(*args)`` on the supervisor loop; the only way other threads reach run state."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 -- handed to the caller through the future
                fut.set_exception(exc)

        try:
            self.loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop is closed
            raise RuntimeBrokenError("the procflow runtime has been shut down") from None
        return fut

    # --- starting and ending runs ----------------------------------------------------------------------
    def install(self, key: int, definition: Packed) -> None:
        self.definitions[key] = definition

    def forget(self, key: int) -> None:
        """The workflow object under ``key`` was garbage-collected: workers may drop it."""
        self.definitions.pop(key, None)
        for w in self.pool.live():
            if key in w.loaded:
                w.loaded.discard(key)
                w.send(DropWorkflow(key))

    def begin(self, run: RunState) -> None:
        if self.state is not SupervisorState.RUNNING:
            self._resolve(run, None, RuntimeBrokenError(self._broken_message()))
            return
        limit = run.workflow.num_concurrent_runs
        if limit is not None and self.wf_running.get(run.wf_key, 0) >= limit:
            self.wf_waiting.setdefault(run.wf_key, deque()).append(run)
            self.runs[run.run_id] = run
            return
        self._start(run)

    def _start(self, run: RunState) -> None:
        self.runs[run.run_id] = run
        self.wf_running[run.wf_key] = self.wf_running.get(run.wf_key, 0) + 1
        run.transition(RunStatus.RUNNING)
        if run.workflow.timeout is not None:
            run.timer = self.loop.call_later(run.workflow.timeout, self._timed_out, run)
        if run.leftovers or run.waiters:
            self._resume(run)
        else:
            for step in run.wspec.consumers.get(run.wspec.start_event_type, ()):  # type: ignore[arg-type]
                self._enqueue(run, step, StepInput(run.start_event))
        self.schedule()

    def _resume(self, run: RunState) -> None:
        """Start a run from a snapshot: re-arm its waiters, re-queue what was pending."""
        leftovers, run.leftovers = run.leftovers, []
        lineages = [w.lineage for ws in run.waiters.values() for w in ws.values()]
        lineages += [item.lineage for kind, _, item in leftovers if kind == "invoke"]
        if lineages:  # restored lineage ids must not collide with new invocation ids
            self._ids = itertools.count(max(next(self._ids), max(lineages) + 1))
        for waiters in run.waiters.values():
            for w in waiters.values():
                if w.timeout is not None:
                    w.timer = self.loop.call_later(w.timeout, self._wait_timed_out, run, w)
                if w.waiter_event is not None:  # ask again: this run's stream has a new reader
                    run.waiter_events_written.add((w.lineage, w.waiter_id))
                    run.adapter.events.put(self.codec.unpack(w.waiter_event))
        for kind, step, item in leftovers:
            if kind == "invoke":
                self._enqueue(run, step, item)  # type: ignore[arg-type]
            else:
                event = self.codec.unpack(item)
                self._route(run, type(event), item, step, event)

    def _timed_out(self, run: RunState) -> None:
        timeout = run.workflow.timeout
        busy = sorted({inv.step for inv in run.invs.values()})
        msg = (f"run {run.run_id} of {run.wspec.name} timed out after {timeout} s"
               + (f"; steps still running: {', '.join(busy)}" if busy else ""))
        self.finish(run, RunStatus.TIMED_OUT, WorkflowTimedOutEvent(result=msg, timeout=timeout or 0.0),
                    WorkflowTimeoutError(msg))

    def fail(self, run: RunState, exc: BaseException, step: str | None = None) -> None:
        self.finish(run, RunStatus.FAILED,
                    WorkflowFailedEvent(result=str(exc), step=step, error_type=type(exc).__name__), exc)

    def finish(self, run: RunState, status: RunStatus, stop: StopEvent,
               exc: BaseException | None) -> None:
        """End ``run``: stop its work, publish ``stop`` last, resolve its result. Idempotent."""
        if run.status.ended:
            return
        was_pending = run.status is RunStatus.PENDING
        run.transition(status)
        if run.timer is not None:
            run.timer.cancel()
        self._keep_leftovers(run)
        self._stop_invocations(run, hard=True, why=f"run {run.run_id} {status.value}")
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
        adapter._final_run = run  # type: ignore[attr-defined]
        # The result first: a reader that has just taken the StopEvent off the stream must find the
        # handler done.
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

    def _stop_invocations(self, run: RunState, hard: bool, why: str) -> None:
        """Stop a run's invocations: drop the unplaced, cancel async ones, kill ``def`` ones if ``hard``."""
        to_cancel: dict[Worker, list[int]] = {}
        for inv in list(run.invs.values()):
            if inv.worker is None:
                self._release(inv)
            elif inv.is_async:
                to_cancel.setdefault(inv.worker, []).append(inv.inv)
            elif hard:
                self.pool.kill(inv.worker, f"{why}: stopping its step '{inv.step}'")
        for worker, invs in to_cancel.items():
            worker.send(CancelInvocations(tuple(invs)))
            self.loop.call_later(self.cancel_grace, self._cancel_overdue, worker, invs, why)

    def _cancel_overdue(self, worker: Worker, invs: list[int], why: str) -> None:
        stuck = [i for i in invs if i in worker.async_invs]
        if stuck:
            step = self.invocations[stuck[0]].step
            self.pool.kill(worker, f"{why}: async step '{step}' ignored cancellation for "
                                   f"{self.cancel_grace:g} s (CPU-bound code in an async def?)")

    # --- routing and scheduling ------------------------------------------------------------------------
    def _route(self, run: RunState, cls: type, packed: Packed, step: str | None,
               event: Event | None = None) -> bool:
        """Answer the waiters the event matches, and queue it for ``step`` or every step accepting its
        exact type ``cls``; False if nothing took it. The event is unpickled here only if a waiter for
        its type exists; otherwise the payload travels on as it came."""
        answered = False
        if step is None and run.waiters.get(cls):
            answered = self._answer_waiters(run, event or self.codec.unpack(packed), packed)
        steps = (step,) if step is not None else run.wspec.consumers.get(cls, ())
        for name in steps:
            self._enqueue(run, name, StepInput(packed))
        return bool(steps) or answered

    def _answer_waiters(self, run: RunState, event: Event, packed: Packed) -> bool:
        waiters = run.waiters.get(type(event))
        if not waiters:
            return False
        answered = [key for key, w in waiters.items() if w.matches(event)]
        for key in answered:
            self._wake(run, waiters.pop(key), packed)
        return bool(answered)

    def _wake(self, run: RunState, w: Waiter, answer: Packed) -> None:
        if w.timer is not None:
            w.timer.cancel()
        self._enqueue(run, w.step, StepInput(w.event, w.lineage, w.resumed + ((w.waiter_id, answer),)))

    def _wait_timed_out(self, run: RunState, w: Waiter) -> None:
        waiters = run.waiters.get(w.event_type, {})
        if waiters.get((w.lineage, w.waiter_id)) is not w or not run.status.accepts_work:
            return
        del waiters[(w.lineage, w.waiter_id)]
        error = WorkflowTimeoutError(f"step '{w.step}': wait_for_event({w.event_type.__name__}) got no "
                                     f"matching event within {w.timeout} s")
        self._wake(run, w, self.codec.pack(error))
        self.schedule()

    def _enqueue(self, run: RunState, step: str, item: StepInput, attempt: int = 1,
                 first_try: float | None = None, crashes: int = 0) -> None:
        spec = run.wspec.steps[step]
        if run.active[step] >= spec.num_workers:
            run.queued[step].append(item)
            self._queue_changed(run, step)
            return
        run.active[step] += 1
        inv = Invocation(next(self._ids), run, step, item.event, spec.is_async, attempt,
                         lineage=item.lineage, resumed=item.resumed)
        if first_try is not None:
            inv.first_try = first_try
        inv.crashes = crashes
        run.invs[inv.inv] = inv
        self.invocations[inv.inv] = inv
        self.pending.append(inv)

    def _queue_changed(self, run: RunState, step: str) -> None:
        run.adapter.events.put(StepQueueChanged.model_construct(
            step=step, queued=len(run.queued[step]), active=run.active[step]))

    def schedule(self) -> None:
        """Place pending invocations on workers, in FIFO order across runs."""
        skipped: list[Invocation] = []
        while self.pending:
            inv = self.pending.popleft()
            if inv.finished:
                continue
            worker = self.pool.place(inv.is_async)
            if worker is None:
                skipped.append(inv)
                if not self.pool.has_room():
                    break
                continue
            self._dispatch(inv, worker)
        self.pending.extendleft(reversed(skipped))

    def _dispatch(self, inv: Invocation, worker: Worker) -> None:
        run, channel = inv.run, worker
        if run.wf_key not in worker.loaded:
            worker.loaded.add(run.wf_key)
            channel.send(LoadWorkflow(run.wf_key, self.definitions[run.wf_key]))
        inv.worker = worker
        if inv.is_async:
            worker.async_invs.add(inv.inv)
        else:
            worker.sync_inv = inv
        channel.send(Invoke(inv.inv, run.run_id, run.wf_key, inv.step, inv.event, inv.lineage,
                            inv.resumed))
        self._internal(run, inv, "running")

    def _internal(self, run: RunState, inv: Invocation, state: str) -> None:
        pid = inv.worker.pid if inv.worker is not None else None
        # model_construct: built from trusted values on the hot path, so validation is skipped.
        ev = StepStateChanged.model_construct(step=inv.step, state=state, worker_pid=pid,
                                              input_event=inv.event.type_name, invocation=inv.inv)
        run.adapter.events.put(ev)
        if run.workflow.verbose:
            print(f"[{run.wspec.name} {run.run_id[:8]}] {inv.step} {state} "
                  f"(worker {pid}, input {inv.event.type_name})", flush=True)

    def _release(self, inv: Invocation) -> None:
        """The invocation is over: free its worker slot and its step slot; start the step's next event."""
        if inv.finished:
            return
        inv.finished = True
        worker, run = inv.worker, inv.run
        if worker is not None:
            if inv.is_async:
                worker.async_invs.discard(inv.inv)
            elif worker.sync_inv is inv:
                worker.sync_inv = None
        self.invocations.pop(inv.inv, None)
        run.invs.pop(inv.inv, None)
        run.active[inv.step] -= 1
        run.drop_state_holder(inv.inv)
        queue = run.queued.get(inv.step)
        if queue and run.status.accepts_work:
            self._enqueue(run, inv.step, queue.popleft())
            self._queue_changed(run, inv.step)
        if run.status is RunStatus.CANCELLING and not run.invs:
            self.finish(run, RunStatus.CANCELLED, WorkflowCancelledEvent(result="cancelled"),
                        WorkflowCancelledByUser(f"run {run.run_id} was cancelled"))

    # --- messages from workers -------------------------------------------------------------------------
    def on_message(self, worker: Worker, msg: object) -> None:
        try:
            self._handlers[type(msg)](worker, msg)
        except Exception:
            log.exception("procflow: supervisor failed to handle %r from worker %d", msg, worker.pid)
        self.schedule()

    def _live(self, inv_id: int) -> tuple[Invocation, RunState] | None:
        inv = self.invocations.get(inv_id)
        if inv is None or not inv.run.status.accepts_work:
            return None
        return inv, inv.run

    def _classify(self, run: RunState, packed: Packed, step: str, what: str
                  ) -> tuple[type, Event | None] | None:
        """The event's class from its key, unpickling only when the key is unknown; None (and the run
        failed) when it cannot be unpickled."""
        cls = self.codec.class_of(packed.type_key) if packed.type_key else None
        if cls is not None:
            return cls, None
        event = self._decode(run, packed, step, what)
        return None if event is None else (type(event), event)

    def _decode(self, run: RunState, packed: Packed, step: str, what: str) -> Any:
        try:
            return self.codec.unpack(packed)
        except Exception as exc:
            self.fail(run, PayloadError(
                f"step '{step}' {what} {packed.type_name}, which the parent cannot unpickle: {exc}"), step)
            return None

    def _keep_leftovers(self, run: RunState) -> None:
        """Move what has not started (queued and unplaced inputs) to ``leftovers``, for a snapshot."""
        for step, queue in run.queued.items():
            run.leftovers.extend(("invoke", step, item) for item in queue)
        run.queued.clear()
        for inv in run.invs.values():
            if inv.worker is None:
                run.leftovers.append(("invoke", inv.step, StepInput(inv.event, inv.lineage, inv.resumed)))

    def _on_done(self, worker: Worker, msg: Done) -> None:
        inv = self.invocations.get(msg.inv)
        if inv is None:
            return
        if inv.run.status is RunStatus.CANCELLING:
            # A step finishing during a graceful cancel: keep its output for a resumed run.
            self._internal(inv.run, inv, "done")
            if msg.result is not None:
                inv.run.leftovers.append(("route", None, msg.result))
        self._release(inv)
        run = inv.run
        if not run.status.accepts_work:
            return
        self._internal(run, inv, "done")
        if msg.result is None:
            return
        found = self._classify(run, msg.result, inv.step, "returned")
        if found is None:
            return
        cls, event = found
        if issubclass(cls, StopEvent):
            stop: StopEvent | None = event or self._decode(run, msg.result, inv.step, "returned")  # type: ignore[assignment]
            if stop is not None:
                self.finish(run, RunStatus.COMPLETED, stop, None)
        elif not self._route(run, cls, msg.result, None, event):
            self.fail(run, WorkflowRuntimeError(
                f"step '{inv.step}' returned {cls.__name__}, which no step accepts"), inv.step)

    def _on_failed(self, worker: Worker, msg: Failed) -> None:
        inv = self.invocations.get(msg.inv)
        if inv is None:
            return
        self._release(inv)
        if not inv.run.status.accepts_work:
            return
        self._internal(inv.run, inv, "failed")
        try:
            exc = self.codec.unpack(msg.error)
        except Exception as err:
            exc = WorkflowRuntimeError(f"step '{inv.step}' raised {msg.error.type_name}, which the "
                                       f"parent cannot unpickle: {err}")
        exc.__cause__ = RemoteTraceback(msg.traceback)
        exc.add_note(f"raised in step '{inv.step}' of run {inv.run.run_id} (worker pid {worker.pid})")
        self._retry_or_fail(inv, exc)

    def _retry_or_fail(self, inv: Invocation, exc: BaseException) -> None:
        run, policy = inv.run, inv.run.wspec.steps[inv.step].retry_policy
        delay = None
        if policy is not None and isinstance(exc, Exception):
            delay = policy.next(time.monotonic() - inv.first_try, inv.attempt - 1, exc)
        if delay is None:
            self.fail(run, exc, inv.step)
            return
        log.info("procflow: retrying step '%s' of run %s in %.3g s (attempt %d failed: %r)",
                 inv.step, run.run_id, delay, inv.attempt, exc)
        run.active[inv.step] += 1  # the retry holds the step's slot while it waits

        def again() -> None:
            run.active[inv.step] -= 1
            if run.status.accepts_work:
                self._enqueue(run, inv.step, StepInput(inv.event, inv.lineage, inv.resumed),
                              inv.attempt + 1, inv.first_try)
                self.schedule()

        self.loop.call_later(max(0.0, delay), again)

    def _on_cancelled(self, worker: Worker, msg: Cancelled) -> None:
        inv = self.invocations.get(msg.inv)
        if inv is None:
            return
        if inv.run.status is RunStatus.CANCELLING:  # it did not run to the end: run it again on resume
            inv.run.leftovers.append(("invoke", inv.step, StepInput(inv.event, inv.lineage, inv.resumed)))
            self._internal(inv.run, inv, "cancelled")
        self._release(inv)

    def _on_suspended(self, worker: Worker, msg: Suspended) -> None:
        inv = self.invocations.get(msg.inv)
        if inv is None:
            return
        run = inv.run
        if not run.status.ended:  # registered before the release, which may end a cancelling run
            try:
                self._register_waiter(run, inv, msg)
            except Exception as exc:
                self.fail(run, WorkflowRuntimeError(
                    f"step '{inv.step}': wait_for_event could not be registered: {exc}"), inv.step)
        self._release(inv)

    def _register_waiter(self, run: RunState, inv: Invocation, msg: Suspended) -> None:
        event_type = self.codec.unpack(msg.event_type)
        w = Waiter(inv.step, inv.event, inv.root, inv.resumed, msg.waiter_id, event_type,
                   self.codec.unpack(msg.requirements), msg.timeout, waiter_event=msg.waiter_event)
        run.waiters.setdefault(event_type, {})[(w.lineage, w.waiter_id)] = w
        if not run.status.accepts_work:
            return
        self._internal(run, inv, "waiting")
        key = (w.lineage, w.waiter_id)
        if msg.waiter_event is not None and key not in run.waiter_events_written:
            run.waiter_events_written.add(key)
            run.adapter.events.put(self.codec.unpack(msg.waiter_event))
        if w.timeout is not None:
            w.timer = self.loop.call_later(w.timeout, self._wait_timed_out, run, w)

    def _on_emit(self, worker: Worker, msg: Emit) -> None:
        inv = self.invocations.get(msg.inv)
        if inv is not None and inv.run.status is RunStatus.CANCELLING:
            inv.run.leftovers.append(("route", msg.step, msg.event))
            return
        live = self._live(msg.inv)
        if live is None:
            return
        inv, run = live
        found = self._classify(run, msg.event, inv.step, "sent")
        if found is not None and not self._route(run, found[0], msg.event, msg.step, found[1]):
            self.fail(run, WorkflowRuntimeError(
                f"step '{inv.step}' sent {found[0].__name__}, which no step accepts"), inv.step)

    def _on_publish(self, worker: Worker, msg: Publish) -> None:
        live = self._live(msg.inv)
        if live is None:
            return
        event = self._decode(live[1], msg.event, live[0].step, "wrote to the stream")
        if event is not None:
            live[1].adapter.events.put(event)

    def _on_request(self, worker: Worker, msg: Request) -> None:
        def reply(ok: bool, value: Any) -> None:
            try:
                packed = self.codec.pack(value)
            except Exception as exc:
                ok, packed = False, self.codec.pack(WorkflowRuntimeError(f"{msg.op}: {exc}"))
            worker.send(Reply(msg.req, ok, packed))

        inv = self.invocations.get(msg.inv)
        try:
            if inv is None or inv.run.status.ended:
                raise WorkflowRuntimeError("the run has ended")
            args = self.codec.unpack(msg.args)
            if msg.op == "lock_state":
                def grant(state: Any) -> bool:
                    reply(True, state)
                    return True

                inv.run.lock_state(inv.inv, grant)
                return
            value = inv.run.state_op(msg.op, args, inv.inv)
        except Exception as exc:
            reply(False, exc)
            return
        reply(True, value)

    # --- deaths ----------------------------------------------------------------------------------------
    def on_death(self, worker: Worker, expected: bool) -> None:
        invs = ([worker.sync_inv] if worker.sync_inv else []) + [
            self.invocations[i] for i in list(worker.async_invs) if i in self.invocations]
        for inv in invs:
            self._release(inv)
            run = inv.run
            if not run.status.accepts_work:
                continue
            if not expected and len(invs) > 1 and inv.crashes == 0:
                # Several async steps shared the worker and any one of them may have crashed it: each is
                # run again once elsewhere; one that is on a crashed worker a second time is the culprit.
                inv.crashes += 1
                self._enqueue(run, inv.step, StepInput(inv.event, inv.lineage, inv.resumed),
                              inv.attempt, inv.first_try, crashes=inv.crashes)
                continue
            if expected:
                # Killed for another run's sake (its async step ignored cancellation): not this run's fault,
                # so its step starts again from the beginning on another worker.
                self._enqueue(run, inv.step, StepInput(inv.event, inv.lineage, inv.resumed),
                              inv.attempt, inv.first_try)
                continue
            err = WorkerCrashedError(
                f"the worker process (pid {worker.pid}) running step '{inv.step}' of run {run.run_id} "
                f"on {inv.event.type_name} died: {worker.describe_exit()}",
                step=inv.step, pid=worker.pid, exitcode=worker.exitcode)
            self._internal(run, inv, "failed")
            self._retry_or_fail(inv, err)
        self.schedule()

    def on_broken(self, reason: str) -> None:
        self.state = SupervisorState.BROKEN
        self.broken_reason = reason
        log.error("procflow: %s", reason)
        for run in list(self.runs.values()):
            self.fail(run, RuntimeBrokenError(self._broken_message()))

    def _broken_message(self) -> str:
        if self.state is SupervisorState.BROKEN:
            return (f"the procflow runtime is broken: {self.broken_reason}. Shut it down and start a new "
                    "one (the default runtime is replaced on the next run)")
        return "the procflow runtime has been shut down"

    # --- the caller's side of a run ---------------------------------------------------------------------
    def send_event(self, run_id: str, event: Event, packed: Packed, step: str | None) -> None:
        run = self.runs.get(run_id)
        if run is None or not run.status.accepts_work:
            raise WorkflowRuntimeError(f"run {run_id} is not running; cannot send {type(event).__name__}")
        if not self._route(run, type(event), packed, step, event):
            raise WorkflowRuntimeError(f"no step of {run.wspec.name} accepts {type(event).__name__}")
        self.schedule()

    def publish(self, run_id: str, event: Event) -> None:
        run = self.runs.get(run_id)
        if run is not None and run.status.accepts_work:
            run.adapter.events.put(event)

    def caller_state_op(self, run: RunState, op: str, args: tuple[Any, ...],
                        fut: concurrent.futures.Future[Any]) -> None:
        """A state operation from the caller's side (``handler.ctx``), during or after the run."""
        # Copies both ways: the caller's threads must never share mutable objects with run state.
        try:
            if op == "lock_state":
                def grant(state: Any) -> bool:
                    if not fut.set_running_or_notify_cancel():
                        return False  # the caller stopped waiting (its await was cancelled)
                    fut.set_result(copy.deepcopy(state))
                    return True

                run.lock_state("caller", grant)
                return
            fut.set_result(copy.deepcopy(run.state_op(op, copy.deepcopy(args), "caller")))
        except Exception as exc:
            fut.set_exception(exc)

    def cancel(self, run_id: str) -> None:
        run = self.runs.get(run_id)
        if run is None or run.status.ended or run.status is RunStatus.CANCELLING:
            return
        if run.status is RunStatus.PENDING or not run.invs:
            self.finish(run, RunStatus.CANCELLED, WorkflowCancelledEvent(result="cancelled"),
                        WorkflowCancelledByUser(f"run {run_id} was cancelled"))
            return
        run.transition(RunStatus.CANCELLING)
        self._keep_leftovers(run)
        self._stop_invocations(run, hard=False, why=f"run {run_id} cancelled")
        if not run.invs:  # everything was still unplaced
            self.finish(run, RunStatus.CANCELLED, WorkflowCancelledEvent(result="cancelled"),
                        WorkflowCancelledByUser(f"run {run_id} was cancelled"))

    def abort(self, run_id: str) -> bool:
        run = self.runs.get(run_id)
        if run is None or run.status.ended:
            return False
        self.finish(run, RunStatus.CANCELLED, WorkflowCancelledEvent(result="cancelled", hard=True),
                    WorkflowCancelledByUser(f"run {run_id} was cancelled (hard)"))
        return True

    # --- shutdown --------------------------------------------------------------------------------------
    async def close(self, timeout: float) -> None:
        """Fail every run, ask workers to exit, kill those that do not within ``timeout``."""
        self.state = SupervisorState.CLOSED
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
