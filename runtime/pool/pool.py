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

Everything here runs on the supervisor's loop thread, except ``spawn_process``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from typing import Any, Callable

from actors.host import Ready

from runtime.pool.budget import RestartBudget
from runtime.pool.link import Launcher
from runtime.pool.worker import Worker, WorkerState

log = logging.getLogger("procflow")

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
        self.respawn = True
        self.closed = False

    # --- lifecycle -------------------------------------------------------------------------------------
    def fill(self) -> None:
        for index, worker in enumerate(self.workers):
            if worker is None and index not in self._spawning and self.respawn:
                self._spawning.add(index)
                fut = self.loop.run_in_executor(None, self.launcher.launch, index)
                fut.add_done_callback(functools.partial(self._attach, index))

    def _attach(self, index: int, fut: asyncio.Future[Any]) -> None:
        self._spawning.discard(index)
        exc = fut.exception()
        if exc is not None:
            if self.closed:
                return  # a start interrupted by shutdown
            log.error("procflow: starting worker %d failed: %r", index, exc)
            self._crashed(f"starting a worker process failed: {exc!r}")
            return
        holder: list[Worker] = []
        link = self.launcher.attach(self.loop, fut.result(), lambda m: self._dispatch(holder[0], m),
                                    lambda: self._died(holder[0]))
        worker = Worker(index, link, link.pid)
        holder.append(worker)
        self.workers[index] = worker
        if self.closed:
            self.kill(worker, "the pool closed while the worker was starting")

    def _crashed(self, what: str) -> None:
        """Spend the restart budget on an unexpected death; past it, stop respawning and say so."""
        if self.respawn and not self.budget.spend():
            self.respawn = False
            self._on_broken(
                f"worker processes died {self.budget.max_restarts + 1} times within "
                f"{self.budget.window:g} s (last: {what}); the pool stopped respawning them")
        elif self.respawn and not self.closed:
            self.loop.call_later(0.05, self.fill)

    def _dispatch(self, worker: Worker, msg: object) -> None:
        if worker.state is WorkerState.STARTING:
            worker.state = WorkerState.READY
            self._on_ready(worker)
        elif worker.state is WorkerState.READY or not isinstance(msg, Ready):
            self._on_message(worker, msg)
        # else: the Ready of a worker killed while it started (the pool closed): nothing to do

    def _died(self, worker: Worker) -> None:
        if worker.state is WorkerState.DEAD:
            return
        worker.link.close()
        expected = worker.kill_reason is not None
        worker.state = WorkerState.DEAD
        if self.workers[worker.index] is worker:
            self.workers[worker.index] = None
        self._on_death(worker, expected)
        if not expected:
            log.warning("procflow: worker %d (pid %d) died unexpectedly: %s",
                        worker.index, worker.pid, worker.describe_exit())
            self._crashed(f"worker pid {worker.pid} {worker.describe_exit()}")
        elif not self.closed:
            self.fill()

    def kill(self, worker: Worker, reason: str) -> None:
        """Kill ``worker`` and what its steps started: SIGTERM, ``kill_grace``, SIGKILL. Idempotent."""
        if worker.kill_reason is not None or worker.state is WorkerState.DEAD:
            return
        worker.kill_reason = reason
        worker.state = WorkerState.DYING
        log.info("procflow: killing worker %d (pid %d): %s", worker.index, worker.pid, reason)
        worker.link.signal(signal.SIGTERM)
        self.loop.call_later(self.kill_grace, self._escalate, worker)

    def _escalate(self, worker: Worker) -> None:
        if worker.state is not WorkerState.DEAD:
            worker.link.signal(signal.SIGKILL)

    def force_kill(self, worker: Worker) -> None:
        """SIGKILL now, whatever state the kill is in."""
        worker.kill_reason = worker.kill_reason or "forced"
        worker.link.signal(signal.SIGKILL)

    def spawning(self) -> bool:
        return bool(self._spawning)

    def close(self) -> None:
        """Stop respawning; the caller ends the workers."""
        self.closed = True
        self.respawn = False

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w is not None and w.state is not WorkerState.DEAD]

    def ready_count(self) -> int:
        return sum(1 for w in self.workers if w is not None and w.state is WorkerState.READY)

    # --- placement -------------------------------------------------------------------------------------
    def place(self, is_async: bool) -> Worker | None:
        """A worker that can take an invocation now, or None.

        A plain ``def`` step gets a worker to itself: killing that worker (hard cancel, timeout) then
        stops exactly that run's step and nothing of another run's. Async steps share workers, up to
        ``async_capacity`` each, on workers that run no ``def`` step and are not draining for one.
        """
        ready = [w for w in self.workers if w is not None and w.state is WorkerState.READY]
        if is_async:
            open_ = [w for w in ready if w.sync_inv is None and not w.draining
                     and len(w.async_invs) < self.async_capacity]
            return min(open_, key=lambda w: len(w.async_invs), default=None)
        for w in ready:
            if w.idle():
                w.draining = False
                return w
        # No idle worker: drain one (no new async work) so that this step is not starved by async steps.
        if not any(w.draining for w in ready):
            candidates = [w for w in ready if w.sync_inv is None]
            if candidates:
                min(candidates, key=lambda w: len(w.async_invs)).draining = True
        return None

    def has_room(self) -> bool:
        """Whether any invocation could be placed now."""
        return any(w is not None and w.state is WorkerState.READY and w.sync_inv is None
                   and (w.idle() or (not w.draining and len(w.async_invs) < self.async_capacity))
                   for w in self.workers)
