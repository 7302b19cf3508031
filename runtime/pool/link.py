"""The boundary between the pool and a kind of worker: a ``Launcher`` starts workers, a ``WorkerLink``
carries messages to one and signals it. Processes (``runtime.workers.process``) and Ray actors
(``runtime.workers.ray``) each provide both; the pool sees nothing else of them.

A launcher also says what its workers can hold. Local processes are all alike and hold this machine: every
step's ``ResourceRequest`` maps to one shape, and a request this machine cannot meet is refused when the run
starts (``check``). Ray actors reserve resources: a request maps to the shape of actor it needs, and the
launcher tells the pool how many more of a shape the cluster has room for now (``capacity``).
"""

from __future__ import annotations

import asyncio
import signal
from abc import ABC, abstractmethod
from typing import Any, Callable, Mapping

from actors import ResourceRequest

from runtime.pool.shapes import check_fits_machine

ANY_SHAPE = ResourceRequest()  # the one shape of workers that are all alike


class WorkerLink(ABC):
    """The pool's handle on one started worker."""

    pid: int
    exitcode: int | None = None
    # Set by the pool: called (on the loop thread) when the link finds its worker alive but frozen
    # (SIGSTOP), so that the pool kills it as its own decision and re-queues what it held.
    on_frozen: Callable[[str], None] | None = None
    launch_timed_out = False  # the worker never started because no room was found for it in time

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

    def where(self) -> str:
        """Where the worker runs, for messages (" on node 10.0.0.7 (3fa2c81b)"); "" for this machine."""
        return ""

    def explain(self, error_text: str) -> str | None:
        """A hint for an error this worker reported (its formatted traceback), when its kind makes one
        likely: a module missing on a remote node, and how to ship it. None when there is nothing to add."""
        return None


class Launcher(ABC):
    """Starts workers for a pool."""

    @abstractmethod
    def launch(self, index: int) -> Any:
        """Start worker ``index``; blocking, called in an executor thread."""

    @abstractmethod
    def attach(self, loop: asyncio.AbstractEventLoop, launched: Any,
               on_message: Callable[[object], None], on_death: Callable[[], None]) -> WorkerLink:
        """On the loop thread: wire a launched worker's messages and death to the callbacks."""

    # --- shapes: what a worker holds --------------------------------------------------------------------
    def shape_for(self, request: ResourceRequest | None) -> ResourceRequest:
        """The shape of worker a step asking ``request`` needs (``None``: the step asks nothing)."""
        return ANY_SHAPE

    def launch_shaped(self, index: int, shape: ResourceRequest) -> Any:
        """Start worker ``index`` of ``shape``; a launcher whose workers are all alike starts one."""
        return self.launch(index)

    def check(self, workflow: str, step: str, request: ResourceRequest) -> None:
        """Raise ``WorkflowValidationError`` naming the step if its workers can never hold ``request``.
        Called when a run starts. The default judges by this machine (local workers)."""
        check_fits_machine(workflow, step, request)

    def capacity(self, shapes: list[ResourceRequest]) -> Mapping[ResourceRequest, int] | None:
        """How many more workers of each shape fit now, or None for "no limit but the pool's own";
        blocking (an executor thread)."""
        return None

    def want(self, bundles: list[ResourceRequest]) -> None:
        """Tell whoever adds capacity (an autoscaler) that the pool wants workers of these shapes, in all
        (its live ones included); [] withdraws the wish. Blocking (an executor thread); default: nobody."""
