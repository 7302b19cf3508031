"""``PoolStats``: what the pool holds right now, for ``ProcessRuntime.stats()`` and live views."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runtime.pool.link import ANY_SHAPE
from runtime.pool.worker import WorkerState

if TYPE_CHECKING:
    from runtime.pool.pool import Pool


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a runtime's pool (``ProcessRuntime.stats()``).

    ``workers`` counts every worker not yet dead: ``starting`` (launched, not yet ready) + ``busy`` (running
    invocations) + ``idle`` + ``retiring`` (taking no new work: retiring, or being killed). ``min_workers``
    and ``max_workers`` are the pool's limits (``max_workers`` None: as many as the cluster holds).
    ``waiting`` counts invocations no worker has taken yet; ``runs`` the runs not yet ended. ``shapes``
    counts the workers by what they hold (launches in flight included; "any" for local processes),
    ``nodes`` by where they run ("10.0.0.7 (3fa2c81b)", or "this machine"). ``launch_failures`` and
    ``crashes`` count failed launches and unexpected deaths since the pool started.
    """

    workers: int
    starting: int
    busy: int
    idle: int
    retiring: int
    min_workers: int
    max_workers: int | None
    waiting: int
    runs: int = 0
    launch_failures: int = 0
    crashes: int = 0
    state: str = "open"
    shapes: dict[str, int] = field(default_factory=dict)
    nodes: dict[str, int] = field(default_factory=dict)
    # Large payloads in shared memory (ProcessRuntime): segments and bytes held now, created/adopted/unlinked.
    shared_memory: dict[str, int] = field(default_factory=dict)

    @property
    def ready(self) -> int:
        return self.busy + self.idle


def count_stats(pool: Pool) -> PoolStats:
    live = pool.live()
    starting = len(pool._spawning) + sum(1 for w in live if w.state is WorkerState.STARTING)
    busy = sum(1 for w in live if w.ready and not w.idle())
    idle = sum(1 for w in live if w.ready and w.idle())
    retiring = sum(1 for w in live if w.state in (WorkerState.RETIRING, WorkerState.DYING))
    shapes = Counter("any" if shape == ANY_SHAPE else shape.describe()
                     for shape in [w.shape for w in live] + list(pool._spawning.values()))
    nodes = Counter(w.link.where().strip().removeprefix("on node ") or "this machine" for w in live)
    return PoolStats(workers=len(live) + len(pool._spawning), starting=starting, busy=busy, idle=idle,
                     retiring=retiring, min_workers=pool.min_size, max_workers=pool.max_size,
                     waiting=pool.demand.total(), launch_failures=pool.backoff.failures, crashes=pool.crashes,
                     state=pool.state.value, shapes=dict(shapes), nodes=dict(nodes))
