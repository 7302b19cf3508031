"""The worker pool: starting, watching, killing, replacing and placing work on workers.

    Pool.fill() --executor thread--> Launcher.launch() (a process: see _process.py)
        --loop--> Launcher.attach(): a WorkerLink whose messages and death come back as loop callbacks
    Ready message --> READY: the supervisor may place invocations on it
    death (for processes: the sentinel is readable) --> _died(): reap, end its leftovers, tell the
        supervisor (which fails or requeues its invocations), respawn

Death is detected, never polled for: every worker's ``Process.sentinel`` is a reader on the loop. Kills are
named, logged, escalating (SIGTERM to the worker's process group, ``kill_grace`` seconds, then SIGKILL to the
group and to every descendant psutil saw) and idempotent. Crashes that were not ours count against a restart
budget (at most ``max_restarts`` in ``restart_window`` seconds, as Erlang supervisors do); past it the pool
stops respawning and the runtime is broken.

Placement (``Placement``, computed afresh on every scheduling pass, never stored on a worker): a ``def``
invocation gets an idle worker to itself, so that killing that worker stops exactly that run's step; async
invocations share READY workers that run no ``def`` step. While ``def`` invocations wait, as many idle workers
are held back for them, and if none is idle the READY worker with the fewest async invocations takes no new
async work, so a stream of async work cannot starve ``def`` steps.

Everything here runs on the supervisor's loop thread, except ``Launcher.launch`` (an executor thread) and
the signals of a kill (one signalling thread, in order: the /proc walk that finds a worker's descendants
must not stall the loop).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from actors.host import Ready

from runtime.pool.budget import RestartBudget
from runtime.pool.link import Launcher
from runtime.pool.worker import Worker, WorkerState

log = logging.getLogger("procflow")

class PoolState(enum.Enum):
    """OPEN (respawns the dead) -> EXHAUSTED (restart budget spent: no more respawns) -> CLOSED."""

    OPEN = "open"
    EXHAUSTED = "exhausted"
    CLOSED = "closed"


@dataclass(slots=True)
class Placement:
    """One scheduling pass's view of where work may go: the workers held back for waiting ``def`` work."""

    held: set[Worker] = field(default_factory=set)


class Pool:
    """The workers, on the supervisor loop. Calls back ``on_message(worker, msg)``, ``on_ready(worker)``,
    ``on_death(worker, expected)`` and ``on_broken(reason)``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, launcher: Launcher, size: int, *,
                 kill_grace: float, budget: RestartBudget, async_capacity: int,
                 on_message: Callable[[Worker, object], None], on_ready: Callable[[Worker], None],
                 on_death: Callable[[Worker, bool], None], on_broken: Callable[[str], None]) -> None:
        self.loop, self.launcher, self.size = loop, launcher, size
        self.kill_grace, self.budget, self.async_capacity = kill_grace, budget, async_capacity
        self._on_message, self._on_ready, self._on_death = on_message, on_ready, on_death
        self._on_broken = on_broken
        self.workers: list[Worker | None] = [None] * size
        self._spawning: set[int] = set()
        self.state = PoolState.OPEN
        self._signaller = ThreadPoolExecutor(1, thread_name_prefix="procflow-kill")
        self._retire_reasons: dict[Worker, tuple[str, Callable[[Worker], bool]]] = {}

    # --- lifecycle -------------------------------------------------------------------------------------
    def fill(self) -> None:
        if self.state is not PoolState.OPEN:
            return
        for index, worker in enumerate(self.workers):
            if worker is None and index not in self._spawning:
                self._spawning.add(index)
                fut = self.loop.run_in_executor(None, self.launcher.launch, index)
                fut.add_done_callback(functools.partial(self._attach, index))

    def _attach(self, index: int, fut: asyncio.Future[Any]) -> None:
        self._spawning.discard(index)
        exc = fut.exception()
        if exc is not None:
            if self.state is PoolState.CLOSED:
                return  # a start interrupted by shutdown
            log.error("procflow: starting worker %d failed: %r", index, exc)
            self._crashed(f"starting a worker process failed: {exc!r}")
            return
        holder: list[Worker] = []
        link = self.launcher.attach(self.loop, fut.result(), lambda m: self._dispatch(holder[0], m),
                                    lambda: self._died(holder[0]))
        worker = Worker(index, link, link.pid)
        holder.append(worker)
        link.on_frozen = lambda why: self.kill(worker, why)
        self.workers[index] = worker
        if self.state is PoolState.CLOSED:
            self.kill(worker, "the pool closed while the worker was starting")

    def _crashed(self, what: str) -> None:
        """Spend the restart budget on an unexpected death; past it, stop respawning and say so."""
        if self.state is not PoolState.OPEN:
            return
        if not self.budget.spend():
            self.state = PoolState.EXHAUSTED
            self._on_broken(
                f"worker processes died {self.budget.max_restarts + 1} times within "
                f"{self.budget.window:g} s (last: {what}); the pool stopped respawning them")
        else:
            self.loop.call_later(0.05, self.fill)

    def _dispatch(self, worker: Worker, msg: object) -> None:
        if worker.state is WorkerState.STARTING:
            worker.become(WorkerState.READY)
            self._on_ready(worker)
        elif not isinstance(msg, Ready):
            self._on_message(worker, msg)
        # else: the Ready of a worker killed while it started: nothing to do

    def _died(self, worker: Worker) -> None:
        if worker.state is WorkerState.DEAD:
            return
        worker.link.close()
        expected = worker.kill_reason is not None
        worker.become(WorkerState.DEAD)
        if self.workers[worker.index] is worker:
            self.workers[worker.index] = None
        self._on_death(worker, expected)
        if not expected:
            log.warning("procflow: worker %d (pid %d) died unexpectedly: %s",
                        worker.index, worker.pid, worker.describe_exit())
            self._crashed(f"worker pid {worker.pid} {worker.describe_exit()}")
        else:
            self.fill()

    def kill(self, worker: Worker, reason: str) -> None:
        """Kill ``worker`` and what its steps started: SIGTERM, ``kill_grace``, SIGKILL. Idempotent."""
        if worker.kill_reason is not None or worker.state is WorkerState.DEAD:
            return
        worker.kill_reason = reason
        worker.become(WorkerState.DYING)
        log.info("procflow: killing worker %d (pid %d): %s", worker.index, worker.pid, reason)
        self._signal(worker, signal.SIGTERM)
        self.loop.call_later(self.kill_grace, self._escalate, worker)

    def retire(self, worker: Worker, reason: str, still_needed: Callable[[Worker], bool]) -> None:
        """Take no new work on ``worker``, and kill it as soon as ``still_needed(worker)`` is False (now,
        or at a later ``check_retired``). Used when one run's step will not stop: the worker may be
        hosting other runs' work, which must finish undisturbed."""
        if worker.state is WorkerState.READY:
            worker.become(WorkerState.RETIRING)
            worker.kill_reason = None
            self._retire_reasons[worker] = (reason, still_needed)
        self.check_retired(worker)

    def check_retired(self, worker: Worker) -> None:
        entry = self._retire_reasons.get(worker)
        if entry is not None and worker.state is WorkerState.RETIRING and not entry[1](worker):
            del self._retire_reasons[worker]
            self.kill(worker, entry[0])

    def _escalate(self, worker: Worker) -> None:
        if worker.state is not WorkerState.DEAD:
            self._signal(worker, signal.SIGKILL)

    def _signal(self, worker: Worker, sig: int) -> None:
        try:
            self._signaller.submit(worker.link.signal, sig)
        except RuntimeError:  # the signaller is shut down: signal from here
            worker.link.signal(sig)

    def force_kill(self, worker: Worker) -> None:
        """SIGKILL now, whatever state the kill is in."""
        worker.kill_reason = worker.kill_reason or "forced"
        worker.link.signal(signal.SIGKILL)

    def spawning(self) -> bool:
        return bool(self._spawning)

    def close(self) -> None:
        """Stop respawning; the caller ends the workers."""
        self.state = PoolState.CLOSED

    def shutdown_signaller(self) -> None:
        self._signaller.shutdown(wait=True)

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w is not None and w.state is not WorkerState.DEAD]

    def ready_count(self) -> int:
        return sum(1 for w in self.workers if w is not None and w.ready)

    # --- placement -------------------------------------------------------------------------------------
    def placement(self, waiting_sync: int) -> Placement:
        """This pass's ``Placement`` when ``waiting_sync`` ``def`` invocations wait (see the docstring)."""
        plan = Placement()
        if not waiting_sync:
            return plan
        ready = [w for w in self.workers if w is not None and w.ready]
        idle = [w for w in ready if w.idle()]
        if idle:
            plan.held.update(idle[:waiting_sync])
        else:
            open_ = [w for w in ready if w.sync_inv is None]
            if open_:
                plan.held.add(min(open_, key=lambda w: len(w.async_invs)))
        return plan

    def place(self, is_async: bool, plan: Placement) -> Worker | None:
        """A worker that can take an invocation now, or None."""
        ready = [w for w in self.workers if w is not None and w.ready]
        if not is_async:
            return next((w for w in ready if w.idle()), None)
        open_ = [w for w in ready if w.sync_inv is None and w not in plan.held
                 and len(w.async_invs) < self.async_capacity]
        return min(open_, key=lambda w: len(w.async_invs), default=None)

    def has_room(self, plan: Placement) -> bool:
        """Whether any invocation could be placed now."""
        return any(w is not None and w.ready and w.sync_inv is None
                   and (w.idle() or (w not in plan.held and len(w.async_invs) < self.async_capacity))
                   for w in self.workers)
