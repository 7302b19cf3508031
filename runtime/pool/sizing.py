"""How many workers, of which shape: the pool's launches and retirements (a part of ``Pool``).

    replenish()   [after a death, a failed launch, a scheduling pass that left work waiting, a timer]
        up to min_size: launch now, shapes that waiting work needs first, else the default shape
        beyond min_size, up to max_size (elastic pools): ask the launcher's capacity (executor thread),
            launch what fits; what does not fit is wished for (Launcher.want: an autoscaler's demand),
            and capacity is asked again every GROW_POLL s while work waits (nodes that join are seen so).
            Work that no worker covers, with no room anywhere, still gets one launch: it waits for room
            (Ray holds it until a node joins) and, if none comes in time, fails what waits, saying why
        at the limit: a shape that no worker covers gets room: an idle worker of another shape retires
    timer         an idle worker past idle_timeout retires while the pool holds more than min_size (one of
                  a shape other than the default always: it holds what is scarce, and min_size is refilled
                  with the default shape); a shape in launch back-off is launched again when its wait ends

What waits is read from ``Demand`` (shapes.py) and from the workers starting: ``unmet()`` is the number of
workers wanted per shape beyond those already coming. A pool with ``min_size == max_size`` and one shape
(local processes) never grows or shrinks: it only replaces the dead, as it always did.

One timer serves all of it (``_arm`` keeps the earliest deadline; each tick re-arms what is still due).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable

from runtime.pool.launches import LAUNCH_ATTEMPTS, LaunchBackoff
from runtime.pool.link import ANY_SHAPE, Launcher
from runtime.pool.worker import WorkerState

if TYPE_CHECKING:
    from actors import ResourceRequest

    from runtime.pool.shapes import Demand
    from runtime.pool.worker import Worker

log = logging.getLogger("procflow")

GROW_POLL = 1.0  # seconds between capacity questions while work waits for room


class Sizing:
    """The sizing half of ``Pool``; everything here runs on the loop thread."""

    # Provided by Pool.
    loop: asyncio.AbstractEventLoop
    launcher: Launcher
    min_size: int
    max_size: int | None
    idle_timeout: float | None
    async_capacity: int
    workers: list[Worker | None]
    _spawning: dict[int, ResourceRequest]
    demand: Demand
    default_shape: ResourceRequest
    uniform: bool
    backoff: LaunchBackoff
    on_unplaceable: Callable[[ResourceRequest, str], None] | None
    _on_broken: Callable[[str], None]

    def _launch(self, shape: ResourceRequest) -> None:
        raise NotImplementedError

    def retire(self, worker: Worker, reason: str, still_needed: Callable[[Worker], bool]) -> None:
        raise NotImplementedError

    def live(self) -> list[Worker]:
        raise NotImplementedError

    def is_open(self) -> bool:
        raise NotImplementedError

    def give_up(self) -> None:
        """Stop launching for good (the pool is broken)."""
        raise NotImplementedError

    def _init_sizing(self) -> None:
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._asking = False  # a capacity question is in flight
        self._ask_after = 0.0  # loop time before which capacity is not asked again
        self._wished: list[ResourceRequest] = []
        self._open = True

    def resize(self, min_size: int, max_size: int | None, idle_timeout: float | None) -> None:
        """Set the pool's limits (before it starts)."""
        self.min_size, self.max_size, self.idle_timeout = min_size, max_size, idle_timeout
        self.workers = [None] * min_size

    @property
    def elastic(self) -> bool:
        return self.max_size is None or self.max_size > self.min_size

    def stop_sizing(self) -> None:
        self._open = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- what waits ------------------------------------------------------------------------------------
    def occupied(self) -> int:
        """Slots taken: workers not yet dead (a dying one is replaced once dead) and launches in flight."""
        return sum(1 for w in self.workers if w is not None) + len(self._spawning)

    def unmet(self) -> dict[ResourceRequest, int]:
        """Workers wanted for the work waiting now, per shape, beyond those idle, free or on their way."""
        supply: Counter[ResourceRequest] = Counter(self._spawning.values())
        free: list[Worker] = []
        for w in self.workers:
            if w is None:
                continue
            if w.state is WorkerState.STARTING or (w.ready and w.idle()):
                supply[w.shape] += 1
            elif w.ready and w.sync_inv is None and len(w.async_invs) < self.async_capacity:
                free.append(w)
        out: dict[ResourceRequest, int] = {}
        for need, is_async, count in self.demand.items():
            covering = sorted((s for s in supply if self.uniform or s.covers(need)), key=lambda s: s.size())
            if is_async:
                if any(supply[s] for s in covering) or any(
                        self.uniform or w.shape.covers(need) for w in free):
                    continue
                want = -(-count // self.async_capacity)
            else:
                want = count
                for shape in covering:
                    taken = min(supply[shape], want)
                    supply[shape] -= taken
                    want -= taken
            if want > 0:
                out[need] = out.get(need, 0) + want
        return out

    def _wanted(self, now: float) -> dict[ResourceRequest, int]:
        """``unmet()`` without the shapes whose launches are backing off."""
        return {shape: n for shape, n in self.unmet().items() if self.backoff.wait(shape, now) <= 0}

    # --- launching -------------------------------------------------------------------------------------
    def wants(self) -> None:
        """After a scheduling pass: start what work left unplaced needs, if this pool ever does more than
        replace the dead; once nothing waits, withdraw a wish for more room."""
        if self.demand and (self.elastic or not self.uniform):
            self.replenish()
        elif self._wished and not self.demand:
            self._wish([])

    def replenish(self) -> None:
        if not self._open or not self.is_open():
            return
        now = self.loop.time()
        wanted = self._wanted(now) if (self.demand and (self.elastic or not self.uniform)) else {}
        total = self.occupied()
        while total < self.min_size:
            shape = next(iter(wanted), None)
            if shape is not None:
                wanted[shape] -= 1
                if not wanted[shape]:
                    del wanted[shape]
            elif self.backoff.wait(self.default_shape, now) <= 0:
                shape = self.default_shape
            else:
                break
            self._launch(shape)
            total += 1
        if wanted and self.elastic and (self.max_size is None or total < self.max_size):
            self._grow(now)
        elif wanted:
            self._make_room(wanted)
        elif self._wished:
            self._wish([])
        retry = self.backoff.next_retry()
        if retry is not None and retry > now:
            self._arm(retry)

    def _grow(self, now: float) -> None:
        if self._asking:
            return
        if now < self._ask_after:
            self._arm(self._ask_after)
            return
        self._asking = True
        shapes = list(self._wanted(now))
        fut = self.loop.run_in_executor(None, self.launcher.capacity, shapes)
        fut.add_done_callback(self._grown)

    def _grown(self, fut: asyncio.Future[Any]) -> None:
        self._asking = False
        if not self._open or not self.is_open():
            return
        try:
            capacity = fut.result()
        except Exception as exc:  # noqa: BLE001 -- the cluster did not answer: ask again later
            log.warning("procflow: asking for the cluster's capacity failed: %r", exc)
            capacity = {}
        now = self.loop.time()
        total = self.occupied()
        short: dict[ResourceRequest, int] = {}
        for shape, count in self._wanted(now).items():
            room = count if self.max_size is None else max(0, min(count, self.max_size - total))
            fits = room if capacity is None else min(room, capacity.get(shape, 0))
            if room > fits:
                short[shape] = room - fits
            if not fits and room and not self._covered(shape):
                # Nothing could ever take this work: one launch waits for room (Ray holds it until a node
                # joins, an autoscaler sees it) and, if none comes in time, fails what waits, saying why.
                fits = 1
            for _ in range(fits):
                self._launch(shape)
            total += fits
        if short:
            self._ask_after = now + GROW_POLL
            self._arm(self._ask_after)
            self._wish([s for shape, n in short.items() for s in [shape] * n])
        elif self._wished:
            self._wish([])

    def _wish(self, more: list[ResourceRequest]) -> None:
        """Tell the launcher the shapes the pool wants in all (its workers and ``more``); [] withdraws."""
        mine = [w.shape for w in self.live() if w.state in (WorkerState.STARTING, WorkerState.READY)]
        wish = sorted(mine + list(self._spawning.values()) + more, key=repr) if more else []
        if wish == self._wished:
            return
        self._wished = wish
        self.loop.run_in_executor(None, self.launcher.want, wish)

    def _covered(self, shape: ResourceRequest) -> bool:
        """Whether a worker that covers ``shape`` is ready or on its way (waiting work will get it)."""
        return any(s.covers(shape) for s in self._spawning.values()) or any(
            w.state in (WorkerState.STARTING, WorkerState.READY) and w.shape.covers(shape)
            for w in self.live())

    def _make_room(self, wanted: dict[ResourceRequest, int]) -> None:
        """At the size limit: retire an idle worker of another shape for a shape no worker covers."""
        for shape in wanted:
            if self._covered(shape):
                continue  # one will be free in time
            waiting = [need for need, _, _ in self.demand.items()]
            idle = [w for w in self.live() if w.ready and w.idle()
                    and not any(w.shape.covers(need) for need in waiting)]
            if idle:
                victim = max(idle, key=lambda w: w.shape.size())
                self.retire(victim, f"making room for a worker with {shape.describe()} (the pool is at its "
                                    f"limit of {self.max_size} workers)", lambda w: False)
                return

    def launch_failed(self, shape: ResourceRequest, reason: str, conclusive: bool = False) -> None:
        """A launch raised, or its worker died before saying Ready: back off; give up on what waits for
        that shape after ``LAUNCH_ATTEMPTS`` in a row, or at once when the launch waited its full time for
        room (``conclusive``); break if no worker at all can start."""
        now = self.loop.time()
        streak = self.backoff.failed(shape, reason, now)
        what = "a worker" if shape == ANY_SHAPE else f"a worker with {shape.describe()}"
        log.warning("procflow: starting %s failed (%d in a row; next try in %.1f s): %s",
                    what, streak.failures, streak.not_before - now, reason)
        if self.is_open() and (conclusive or streak.failures >= LAUNCH_ATTEMPTS) and not self._covered(shape):
            tries = f" after {streak.failures} attempts" if streak.failures > 1 else ""
            message = f"{what} could not start{tries}: {reason}"
            if self.on_unplaceable is not None:
                self.on_unplaceable(shape, message)
            if streak.failures >= LAUNCH_ATTEMPTS and shape == self.default_shape and not self.live() \
                    and not self._spawning and self.min_size:
                self.give_up()
                self._on_broken(f"no worker could start: {message}")
                return
        self.replenish()

    # --- shrinking, and the one timer ------------------------------------------------------------------
    def arm_shrink(self, worker: Worker) -> None:
        """``worker`` became idle: look at it again when its idle time is up (elastic pools)."""
        if self.idle_timeout is not None and self.elastic:
            self._arm(worker.idle_since + self.idle_timeout)

    def _shrink(self) -> None:
        if self.idle_timeout is None or not self.elastic or not self.is_open():
            return
        now = self.loop.time()
        active = len(self._spawning) + sum(1 for w in self.workers if w is not None and w.state in (
            WorkerState.STARTING, WorkerState.READY))
        idle = sorted((w for w in self.workers if w is not None and w.ready and w.idle()),
                      key=lambda w: (w.shape != self.default_shape, w.shape.size(), now - w.idle_since),
                      reverse=True)
        for w in idle:
            # A worker of another shape holds what is scarce: it goes even below min_size (the pool then
            # starts one of the default shape in its place).
            special = w.shape != self.default_shape
            if active <= self.min_size and not special:
                break
            if now - w.idle_since >= self.idle_timeout:
                self.retire(w, f"idle for {self.idle_timeout:g} s (the pool shrinks to {self.min_size} "
                               "workers of its default shape)", lambda w: False)
                active -= 1
            else:
                self._arm(w.idle_since + self.idle_timeout)

    def _arm(self, when: float) -> None:
        if not self._open:
            return
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._tick)

    def _tick(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self._shrink()
        self.replenish()
