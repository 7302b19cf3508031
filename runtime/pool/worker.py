"""One worker as the supervisor sees it: its link, its lifecycle state and the invocations it holds."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.pool.link import WorkerLink
    from runtime.run.state import Invocation


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DYING = "dying"
    DEAD = "dead"


@dataclass(eq=False, slots=True)
class Worker:
    """One worker process as the supervisor sees it."""

    index: int
    link: WorkerLink
    pid: int
    state: WorkerState = WorkerState.STARTING
    sync_inv: Invocation | None = None
    async_invs: set[int] = field(default_factory=set)
    loaded: set[int] = field(default_factory=set)
    draining: bool = False
    kill_reason: str | None = None

    def idle(self) -> bool:
        return self.sync_inv is None and not self.async_invs

    def send(self, msg: object) -> None:
        self.link.send(msg)

    @property
    def exitcode(self) -> int | None:
        return self.link.exitcode

    def describe_exit(self) -> str:
        return self.link.describe_exit()
