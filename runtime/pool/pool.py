"""The worker pool: starting, watching, killing, replacing and placing work on workers.

    Pool.fill() --executor thread--> Launcher.launch_shaped() (a process: workers/process/launcher.py)
        --loop--> Launcher.attach(): a WorkerLink whose messages and death come back as loop callbacks
    Ready message --> READY: the supervisor may place invocations on it (placement.py)
    death (for processes: the sentinel is readable) --> _died(): reap, end its leftovers, tell the
        supervisor (which fails or requeues its invocations), replace it (sizing.py)

Death is detected, never polled for: every worker's ``Process.sentinel`` is a reader on the loop. Kills are
named, logged, escalating (SIGTERM to the worker's process group, ``kill_grace`` seconds, then SIGKILL to the
group and to every descendant psutil saw) and idempotent. Crashes that were not ours count against a restart
budget (at most ``max_restarts`` in ``restart_window`` seconds, as Erlang supervisors do); past it the pool
stops respawning and the runtime is broken. A worker that dies before its Ready, or whose launch raised, is a
failed launch, not a crash: launches back off per shape (launches.py).

How many workers, of which shape, is ``sizing.py``'s part: at least ``min_size`` always, more (up to
``max_size``) while work waits and the launcher has room for it, fewer after ``idle_timeout`` of idleness.
A process pool has ``min_size == max_size`` and one shape: it only replaces the dead.

Everything here runs on the supervisor's loop thread, except ``Launcher.launch_shaped`` (an executor
thread) and the signals of a kill (one signalling thread, in order: the /proc walk that finds a worker's
descendants must not stall the loop).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable

from actors.host import Ready

from runtime.pool import placement as placing
from runtime.pool.placement import Placement
from runtime.pool.budget import RestartBudget
from runtime.pool.launches import LaunchBackoff
from runtime.pool.link import Launcher
from runtime.pool.shapes import Demand
from runtime.pool.sizing import Sizing
from runtime.pool.stats import PoolStats, count_stats
from runtime.pool.worker import Worker, WorkerState

if TYPE_CHECKING:
    from actors import ResourceRequest

log = logging.getLogger("procflow")


class PoolState(enum.Enum):
    """OPEN (respawns the dead) -> EXHAUSTED (restart budget spent, or no worker can start: no more
    respawns) -> CLOSED."""

    OPEN = "open"
    EXHAUSTED = "exhausted"
    CLOSED = "closed"


class Pool(Sizing):
    """The workers, on the supervisor loop. Calls back ``on_message(worker, msg)``, ``on_ready(worker)``,
    ``on_death(worker, expected)``, ``on_broken(reason)`` and ``on_unplaceable(need, reason)`` (the
    invocations waiting for workers of ``need`` cannot get one)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, launcher: Launcher, size: int, *,
                 kill_grace: float, budget: RestartBudget, async_capacity: int,
                 on_message: Callable[[Worker, object], None], on_ready: Callable[[Worker], None],
                 on_death: Callable[[Worker, bool], None], on_broken: Callable[[str], None],
                 on_unplaceable: Callable[[ResourceRequest, str], None] | None = None) -> None:
        self.loop, self.launcher = loop, launcher
        self.min_size: int = size
        self.max_size: int | None = size
        self.idle_timeout: float | None = None
        self.kill_grace, self.budget, self.async_capacity = kill_grace, budget, async_capacity
        self._on_message, self._on_ready, self._on_death = on_message, on_ready, on_death
        self._on_broken = on_broken
        self.on_unplaceable = on_unplaceable
        self.workers: list[Worker | None] = [None] * size  # slots; an elastic pool appends more
        self._spawning: dict[int, ResourceRequest] = {}  # slot -> shape being launched
        self.state = PoolState.OPEN
        self._signaller = ThreadPoolExecutor(1, thread_name_prefix="procflow-kill")
        self._retire_reasons: dict[Worker, tuple[str, Callable[[Worker], bool]]] = {}
        self.demand = Demand()
        self.default_shape = launcher.shape_for(None)
        self.uniform = True  # every need seen so far is the default shape
        self._needs: dict[ResourceRequest | None, ResourceRequest] = {}
        self.backoff = LaunchBackoff()
        self.crashes = 0
        self._init_sizing()

    # --- lifecycle -------------------------------------------------------------------------------------
    def fill(self) -> None:
        """Start what the pool lacks: at least ``min_size`` workers, and what waiting work needs."""
        self.replenish()

    def _launch(self, shape: ResourceRequest) -> None:
        index = next((i for i, w in enumerate(self.workers) if w is None and i not in self._spawning), None)
        if index is None:
            index = len(self.workers)
            self.workers.append(None)
        self._spawning[index] = shape
        fut = self.loop.run_in_executor(None, self.launcher.launch_shaped, index, shape)
        fut.add_done_callback(functools.partial(self._attach, index, shape))

    def _attach(self, index: int, shape: ResourceRequest, fut: asyncio.Future[Any]) -> None:
        self._spawning.pop(index, None)
        exc = fut.exception()
        if exc is not None:
            if self.state is PoolState.CLOSED:
                return  # a start interrupted by shutdown
            self.launch_failed(shape, _text(exc))
            return
        holder: list[Worker] = []
        link = self.launcher.attach(self.loop, fut.result(), lambda m: self._dispatch(holder[0], m),
                                    lambda: self._died(holder[0]))
        worker = Worker(index, link, link.pid, shape)
        holder.append(worker)
        link.on_frozen = lambda why: self.kill(worker, why)
        self.workers[index] = worker
        if self.state is PoolState.CLOSED:
            self.kill(worker, "the pool closed while the worker was starting")

    def _crashed(self, what: str) -> None:
        """Spend the restart budget on an unexpected death; past it, stop respawning and say so."""
        if self.state is not PoolState.OPEN:
            return
        self.crashes += 1
        if not self.budget.spend():
            self.state = PoolState.EXHAUSTED
            self._on_broken(
                f"worker processes died {self.budget.max_restarts + 1} times within "
                f"{self.budget.window:g} s (last: {what}); the pool stopped respawning them")
        else:
            self.loop.call_later(0.05, self.fill)

    def _dispatch(self, worker: Worker, msg: object) -> None:
        if worker.state is WorkerState.STARTING:
            if isinstance(msg, Ready) and msg.pid:
                worker.pid = msg.pid
            worker.become(WorkerState.READY)
            worker.idle_since = self.loop.time()
            self.backoff.succeeded(worker.shape)
            self._on_ready(worker)
            self.arm_shrink(worker)
        elif not isinstance(msg, Ready):
            self._on_message(worker, msg)
        # else: the Ready of a worker killed while it started: nothing to do

    def _died(self, worker: Worker) -> None:
        if worker.state is WorkerState.DEAD:
            return
        worker.link.close()
        expected = worker.kill_reason is not None
        never_started = worker.state is WorkerState.STARTING
        worker.become(WorkerState.DEAD)
        if self.workers[worker.index] is worker:
            self.workers[worker.index] = None
        self._on_death(worker, expected)
        if expected:
            self.fill()
        elif never_started:
            self.launch_failed(worker.shape, worker.describe_exit(), conclusive=worker.link.launch_timed_out)
        else:
            log.warning("procflow: worker %d (%s) died unexpectedly: %s",
                        worker.index, worker.describe(), worker.describe_exit())
            self._crashed(f"{worker.describe()} {worker.describe_exit()}")

    def kill(self, worker: Worker, reason: str) -> None:
        """Kill ``worker`` and what its steps started: SIGTERM, ``kill_grace``, SIGKILL. Idempotent."""
        if worker.kill_reason is not None or worker.state is WorkerState.DEAD:
            return
        worker.kill_reason = reason
        worker.become(WorkerState.DYING)
        log.info("procflow: killing worker %d (%s): %s", worker.index, worker.describe(), reason)
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

    def released(self, worker: Worker) -> None:
        """An invocation on ``worker`` ended: a retiring worker may go now; an idle one starts its clock."""
        if self._retire_reasons:
            self.check_retired(worker)
        if worker.ready and worker.idle():
            worker.idle_since = self.loop.time()
            self.arm_shrink(worker)

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

    def is_open(self) -> bool:
        return self.state is PoolState.OPEN

    def give_up(self) -> None:
        self.state = PoolState.EXHAUSTED

    def close(self) -> None:
        """Stop respawning; the caller ends the workers."""
        self.state = PoolState.CLOSED
        self.stop_sizing()

    def shutdown_signaller(self) -> None:
        self._signaller.shutdown(wait=True)

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w is not None and w.state is not WorkerState.DEAD]

    def ready_count(self) -> int:
        return sum(1 for w in self.workers if w is not None and w.ready)

    def stats(self) -> PoolStats:
        return count_stats(self)

    # --- placement (placement.py) ----------------------------------------------------------------------
    def need(self, request: ResourceRequest | None) -> ResourceRequest:
        """The shape of worker a step asking ``request`` needs (cached: requests are few)."""
        shape = self._needs.get(request)
        if shape is None:
            shape = self._needs[request] = self.launcher.shape_for(request)
            if shape != self.default_shape:
                self.uniform = False
        return shape

    def placement(self) -> Placement:
        """This pass's ``Placement``, from the ``def`` invocations waiting now."""
        return placing.plan(self.workers, self.demand.waiting_sync(), self.uniform)

    def place(self, need: ResourceRequest, is_async: bool, plan: Placement) -> Worker | None:
        """A worker that can take an invocation of ``need`` now, or None."""
        return placing.place(self.workers, need, is_async, plan, self.async_capacity, self.uniform)

    def has_room(self, plan: Placement) -> bool:
        """Whether any invocation could be placed now."""
        return placing.has_room(self.workers, plan, self.async_capacity)


def _text(exc: BaseException) -> str:
    """An exception as one readable line: its message (Ray's errors have an empty repr), else its type."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else repr(exc)
