"""Placement: which worker takes an invocation, decided afresh on every scheduling pass.

A ``def`` invocation gets an idle worker to itself, so that killing that worker stops exactly that run's
step; async invocations share READY workers that run no ``def`` step (at most ``async_capacity`` each).
While ``def`` invocations wait, as many idle workers are held back for them, and if none is idle the READY
worker with the fewest async invocations takes no new async work, so a stream of async work cannot starve
``def`` steps.

With shapes (``actors.placement``): an invocation goes only to a worker whose shape covers its need, the
smallest such worker first (a GPU worker is not spent on a step that asks for nothing while a plain one is
free), and workers are held back per need. When every worker has the one shape (local processes, or a Ray
pool whose steps ask nothing special), ``uniform`` skips the comparisons: placement is then exactly the rule
above.

Nothing here is remembered between passes: a ``Placement`` lives for one ``Scheduler.schedule`` call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from runtime.pool.worker import WorkerState

if TYPE_CHECKING:
    from actors import ResourceRequest

    from runtime.pool.worker import Worker

READY = WorkerState.READY


@dataclass(slots=True)
class Placement:
    """One scheduling pass's view of where work may go: the workers held back for waiting ``def`` work,
    each with the need it is held for."""

    held: dict[Worker, ResourceRequest] = field(default_factory=dict)

    def take(self, worker: Worker) -> None:
        """``worker`` got an invocation in this pass: it is no longer held."""
        self.held.pop(worker, None)


def _covering(ready: list[Worker], need: ResourceRequest, uniform: bool) -> list[Worker]:
    if uniform:
        return ready
    return sorted((w for w in ready if w.shape.covers(need)), key=lambda w: w.shape.size())


def plan(workers: Sequence[Worker | None], waiting_sync: dict[ResourceRequest, int],
         uniform: bool) -> Placement:
    """This pass's ``Placement`` when ``waiting_sync[need]`` ``def`` invocations wait for each need."""
    placement = Placement()
    if not waiting_sync:
        return placement
    ready = [w for w in workers if w is not None and w.ready]
    for need, count in waiting_sync.items():
        covering = [w for w in _covering(ready, need, uniform) if w not in placement.held]
        idle = [w for w in covering if w.idle()][:count]
        if idle:
            placement.held.update((w, need) for w in idle)
            continue
        open_ = [w for w in covering if w.sync_inv is None]
        if open_:
            placement.held[min(open_, key=lambda w: len(w.async_invs))] = need
    return placement


def place(workers: Sequence[Worker | None], need: ResourceRequest, is_async: bool, placement: Placement,
          async_capacity: int, uniform: bool) -> Worker | None:
    """A worker that can take an invocation of ``need`` now, or None."""
    if is_async and uniform:
        # Every invocation's path: one scan, no lists, the same choice as below (the first READY worker with
        # the fewest async invocations, under capacity, running no def step, not held).
        best, fewest = None, async_capacity
        for w in workers:
            if w is None or w.state is not READY or w.sync_inv is not None or w in placement.held:
                continue
            n = len(w.async_invs)
            if n < fewest:
                best, fewest = w, n
        return best
    ready = _covering([w for w in workers if w is not None and w.ready], need, uniform)
    if not is_async:
        return next((w for w in ready if w.idle() and placement.held.get(w, need) == need), None)
    open_ = [w for w in ready if w.sync_inv is None and w not in placement.held
             and len(w.async_invs) < async_capacity]
    if uniform:
        return min(open_, key=lambda w: len(w.async_invs), default=None)
    return min(open_, key=lambda w: (w.shape.size(), len(w.async_invs)), default=None)


def has_room(workers: Sequence[Worker | None], placement: Placement, async_capacity: int) -> bool:
    """Whether any invocation could be placed now (whatever its need)."""
    return any(w is not None and w.ready and w.sync_inv is None
               and (w.idle() or (w not in placement.held and len(w.async_invs) < async_capacity))
               for w in workers)
