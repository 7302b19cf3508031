"""The boundary between the pool and a kind of worker: a ``Launcher`` starts workers, a ``WorkerLink``
carries messages to one and signals it. Processes (``runtime.workers.process``) and Ray actors
(``runtime.workers.ray``) each provide both; the pool sees nothing else of them."""

from __future__ import annotations

import asyncio
import signal
from abc import ABC, abstractmethod
from typing import Any, Callable


class WorkerLink(ABC):
    """The pool's handle on one started worker."""

    pid: int
    exitcode: int | None = None
    # Set by the pool: called (on the loop thread) when the link finds its worker alive but frozen
    # (SIGSTOP), so that the pool kills it as its own decision and re-queues what it held.
    on_frozen: Callable[[str], None] | None = None

    @abstractmethod
    def send(self, msg: object) -> None:
        """Queue a message for the worker; never blocks."""

    @abstractmethod
    def signal(self, sig: int) -> None:
        """Deliver ``sig`` (SIGTERM, SIGKILL) to the worker and what its steps started; gone is fine."""

    @abstractmethod
    def close(self) -> None:
        """After death: reap the worker, end its leftovers, release its channels. Sets ``exitcode``."""

    def describe_exit(self) -> str:
        code = self.exitcode
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"


class Launcher(ABC):
    """Starts workers for a pool."""

    @abstractmethod
    def launch(self, index: int) -> Any:
        """Start worker ``index``; blocking, called in an executor thread."""

    @abstractmethod
    def attach(self, loop: asyncio.AbstractEventLoop, launched: Any,
               on_message: Callable[[object], None], on_death: Callable[[], None]) -> WorkerLink:
        """On the loop thread: wire a launched worker's messages and death to the callbacks."""
