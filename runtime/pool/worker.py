"""One worker as the supervisor sees it: its link, its lifecycle state and the invocations it holds.

    STARTING --Ready--> READY --retire()--> RETIRING --(holds no live run's work)--> DYING --> DEAD
    STARTING | READY | RETIRING --kill()--> DYING --(death seen)--> DEAD;  any state --(death seen)--> DEAD

Only READY workers take new invocations. A RETIRING worker keeps running what it holds (other runs' work
must not be disturbed) and is killed by the pool once none of it belongs to a live run. A worker that dies
while STARTING never ran anything: the pool counts that as a failed launch, not a crash.

``shape`` is what the worker holds (``actors.placement``): it takes only invocations whose need it covers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actors import ResourceRequest

    from runtime.pool.link import WorkerLink
    from runtime.run.state import Invocation


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RETIRING = "retiring"
    DYING = "dying"
    DEAD = "dead"


_LEGAL: dict[WorkerState, set[WorkerState]] = {
    WorkerState.STARTING: {WorkerState.READY, WorkerState.DYING, WorkerState.DEAD},
    WorkerState.READY: {WorkerState.RETIRING, WorkerState.DYING, WorkerState.DEAD},
    WorkerState.RETIRING: {WorkerState.DYING, WorkerState.DEAD},
    WorkerState.DYING: {WorkerState.DEAD},
    WorkerState.DEAD: set(),
}


class IllegalTransition(RuntimeError):
    """A lifecycle was asked to move where its state machine has no arrow: a bug in procflow."""


@dataclass(eq=False, slots=True)
class Worker:
    """One worker process as the supervisor sees it. Touched only on the supervisor thread."""

    index: int
    link: WorkerLink
    pid: int  # 0 until known (a Ray actor's pid comes with its Ready)
    shape: ResourceRequest
    state: WorkerState = WorkerState.STARTING
    sync_inv: Invocation | None = None  # the one ``def`` invocation it runs; then it runs nothing else
    async_invs: set[int] = field(default_factory=set)
    loaded: set[int] = field(default_factory=set)  # workflow keys whose definition it holds
    kill_reason: str | None = None
    idle_since: float = 0.0  # loop time it last became idle (READY, or its last invocation ended)

    def become(self, to: WorkerState) -> None:
        if to not in _LEGAL[self.state]:
            raise IllegalTransition(f"worker {self.index} (pid {self.pid}) cannot go from "
                                    f"{self.state.value} to {to.value}")
        self.state = to

    def idle(self) -> bool:
        return self.sync_inv is None and not self.async_invs

    @property
    def ready(self) -> bool:
        return self.state is WorkerState.READY

    def send(self, msg: object) -> None:
        self.link.send(msg)

    @property
    def exitcode(self) -> int | None:
        return self.link.exitcode

    def describe_exit(self) -> str:
        return self.link.describe_exit()

    def describe(self) -> str:
        """``worker pid 4242`` and, for a remote worker, its node."""
        return f"worker pid {self.pid}{self.link.where()}"
