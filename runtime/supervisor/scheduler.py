"""Scheduling: from a run's per-step queues to a worker's inbox, and back when an invocation ends.

    enqueue(run, step, input) --(step under its num_workers cap)--> Invocation on ``pending`` (FIFO, all runs)
                              --(at the cap)--> run.queued[step]
    schedule(): pending --Pool.place(need, this pass's Placement)--> dispatch(): [LoadWorkflow once] Invoke
                what is left unplaced --Pool.wants()--> workers of the shapes it needs (elastic pools)
    release(inv): frees its worker slot and its step slot; the step's next queued input is enqueued

Unplaced invocations are counted exactly by need (the shape of worker their step asks for) in the pool's
``Demand``, so each pass can hold workers back for waiting ``def`` work, and the pool can start workers for
what waits, without scanning the queue; nothing about placement is remembered between passes.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import TYPE_CHECKING

from actors.host import Invoke, LoadWorkflow

from actors import WorkflowRuntimeError

from runtime.run.state import Invocation, RetryState, RunStatus, StepInput
from runtime.supervisor import report

if TYPE_CHECKING:
    from actors import ResourceRequest

    from runtime.pool.worker import Worker
    from runtime.run.state import RunState
    from runtime.supervisor.supervisor import Supervisor


class Scheduler:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.pending: deque[Invocation] = deque()
        self._fresh: list[Invocation] = []  # enqueued since the last pass (see schedule)
        self._ids = itertools.count(1)

    def skip_ids_past(self, used: int) -> None:
        """Restored lineage ids must not collide with new invocation ids."""
        self._ids = itertools.count(max(next(self._ids), used + 1))

    def enqueue(self, run: RunState, step: str, item: StepInput, retry: RetryState | None = None,
                crashes: int = 0) -> None:
        spec = run.wspec.steps[step]
        run.idle = False
        active = run.active
        if active[step] >= spec.num_workers:
            run.queued[step].append(item)
            report.queue_changed(run, step)
            return
        active[step] += 1
        pool, is_async = self.sup.pool, spec.is_async
        need = pool.need(spec.placement)  # once: enqueue, placement and release all use it
        if retry is None:  # a first attempt (no RetryState made for it)
            attempt, first_try, last_error, last_failed_at = 1, time.monotonic(), None, None
        else:
            attempt, first_try = retry.attempt, retry.first_try
            last_error, last_failed_at = retry.last_error, retry.last_failed_at
        inv = Invocation(next(self._ids), run, step, item.event, is_async, attempt, first_try,
                         lineage=item.lineage, resumed=item.resumed, crashes=crashes, recoveries=item.recoveries,
                         last_error=last_error, last_failed_at=last_failed_at, need=need)
        run.invs[inv.inv] = inv
        self.sup.invocations[inv.inv] = inv
        self.pending.append(inv)
        self._fresh.append(inv)
        pool.demand.add(need, is_async)

    def schedule(self) -> None:
        """Place pending invocations on workers, in FIFO order across runs."""
        pending = self.pending
        if not pending:
            self._fresh.clear()
            return
        pool = self.sup.pool
        plan = pool.placement()
        skipped: list[Invocation] = []
        while pending:
            inv = pending.popleft()
            if inv.finished:
                continue
            worker = pool.place(inv.need, inv.is_async, plan)
            if worker is None:
                skipped.append(inv)
                if not pool.has_room(plan):
                    break
                continue
            plan.take(worker)
            self.dispatch(inv, worker)
        if skipped:
            pending.extendleft(reversed(skipped))
        # What this pass could not place of what came since the last one waits for a worker: say so once
        # (StepState.PREPARING). One placed at once goes straight to "running", as LlamaIndex skips
        # PREPARING when there is capacity. Only the newcomers are looked at: a pass stays O(placed).
        fresh, self._fresh = self._fresh, []
        for inv in fresh:
            if inv.worker is None and not inv.finished:
                report.step_changed(inv.run, inv, "pending")
        pool.wants()

    def unplaceable(self, need: ResourceRequest, reason: str) -> None:
        """No worker of ``need`` can start: the runs whose invocations wait for one fail, naming the step."""
        for inv in [inv for inv in self.pending if not inv.finished and inv.need == need]:
            run = inv.run
            if run.status.accepts_work:
                error = WorkflowRuntimeError(
                    f"step '{inv.step}' of {run.wspec.name} (run {run.run_id}) cannot run: {reason}")
                self.sup.fail(run, error, inv.step)

    def dispatch(self, inv: Invocation, worker: Worker) -> None:
        run = inv.run
        self.sup.pool.demand.remove(inv.need, inv.is_async)
        if run.wf_key not in worker.loaded:
            worker.loaded.add(run.wf_key)
            worker.send(LoadWorkflow(run.wf_key, run.definition))
        inv.worker = worker
        if inv.is_async:
            worker.async_invs.add(inv.inv)
        else:
            worker.sync_inv = inv
        first_try_wall = time.time() - (time.monotonic() - inv.first_try)
        worker.send(Invoke(inv.inv, run.run_id, run.wf_key, inv.step, inv.event, inv.lineage, inv.resumed,
                           inv.attempt, first_try_wall, inv.last_error, inv.last_failed_at))
        report.step_changed(run, inv, "running")

    def release(self, inv: Invocation) -> None:
        """The invocation is over: free its worker slot and its step slot; start the step's next input."""
        if inv.finished:
            return
        inv.finished = True
        worker, run = inv.worker, inv.run
        if worker is None:
            self.sup.pool.demand.remove(inv.need, inv.is_async)
        elif inv.is_async:
            worker.async_invs.discard(inv.inv)
        elif worker.sync_inv is inv:
            worker.sync_inv = None
        self.sup.invocations.pop(inv.inv, None)
        run.invs.pop(inv.inv, None)
        run.active[inv.step] -= 1
        if run.state_holder is not None or run.state_queue:  # (an invocation id is never None)
            run.drop_state_holder(inv.inv)
        queue = run.queued.get(inv.step)
        if queue and run.status.accepts_work:
            self.enqueue(run, inv.step, queue.popleft())
            report.queue_changed(run, inv.step)
        if worker is not None:
            self.sup.pool.released(worker)
        if run.status is RunStatus.CANCELLING and not run.invs:
            self.sup.end_cancelled(run)
