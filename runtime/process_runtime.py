"""``ProcessRuntime``: the engine that runs workflows on a pool of worker processes.

One runtime = one supervisor thread + one pool. Runs from every thread share it. The default runtime
(``runtime.default``) is made on first use by ``Workflow.run()`` and shut down at interpreter exit; make your
own to choose its size or start method, and pass it as ``Workflow(runtime=...)``.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import os
import threading
import time
import uuid
import weakref
from typing import TYPE_CHECKING, Any

from actors import RuntimeBrokenError, StartEvent, Workflow
from actors.host import Packed, continues_from, spec_of

from runtime.default import register
from runtime.engine import Engine, RunAdapter
from runtime.pool import Launcher, PoolStats
from runtime.process_adapter import ProcessRunAdapter
from runtime.run.snapshot import seed
from runtime.run.state import RunState
from runtime.supervisor.supervisor import Supervisor, SupervisorState

if TYPE_CHECKING:
    from actors import Context


class RuntimeState(enum.Enum):
    """NEW -> STARTED -> SHUT_DOWN."""

    NEW = "new"
    STARTED = "started"
    SHUT_DOWN = "shut down"


class ProcessRuntime(Engine):
    """A pool of worker processes and the supervisor that routes events between them.

    Args:
        workers: pool size (default: one per CPU).
        start_method: "forkserver" (default, ~10 ms per worker) or "spawn" (~100 ms). Never fork.
        kill_grace: seconds between SIGTERM and SIGKILL when a worker is killed.
        cancel_grace: seconds an async step may take to honour cancellation before its worker is killed.
        max_restarts, restart_window: at most this many unexpected worker deaths in this many seconds;
            past that the runtime is broken and every run fails with ``RuntimeBrokenError``.
        async_capacity: async step invocations one worker runs at once.
    """

    def __init__(self, workers: int | None = None, *, start_method: str = "forkserver",
                 kill_grace: float = 0.1, cancel_grace: float = 1.0, max_restarts: int | None = None,
                 restart_window: float = 10.0, async_capacity: int = 64,
                 _launcher: Launcher | None = None) -> None:
        size = workers if workers is not None else (os.cpu_count() or 1)
        if size < 1:
            raise ValueError(f"ProcessRuntime(workers={workers!r}): need at least one worker")
        self.workers = size
        self._sup = Supervisor(workers=size, start_method=start_method, kill_grace=kill_grace,
                               cancel_grace=cancel_grace,
                               max_restarts=max_restarts if max_restarts is not None else 5 * size,
                               restart_window=restart_window, async_capacity=async_capacity,
                               launcher=_launcher)
        self._state = RuntimeState.NEW
        # Re-entrant: a garbage collection inside _workflow_key may run a workflow's finalizer, _forget,
        # on this same thread.
        self._lock = threading.RLock()
        self._keys = itertools.count(1)
        self._workflow_keys: dict[int, tuple[int, Packed]] = {}  # id(workflow) -> key, definition
        register(self)

    # --- lifecycle -------------------------------------------------------------------------------------
    def start(self, wait: bool = False, timeout: float = 60.0) -> ProcessRuntime:
        """Start the pool (idempotent). With ``wait``, block until every worker is ready."""
        with self._lock:
            if self._state is RuntimeState.SHUT_DOWN:
                raise RuntimeBrokenError("this ProcessRuntime has been shut down; create a new one")
            if self._state is RuntimeState.NEW:
                self._state = RuntimeState.STARTED
                self._sup.start()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until every worker is up (the pool is warm)."""
        deadline = time.monotonic() + timeout
        while self._sup.call(self._sup.pool.ready_count).result(timeout) < self.workers:
            if self._sup.state is not SupervisorState.RUNNING:
                raise RuntimeBrokenError(self._sup.broken_message())
            if time.monotonic() > deadline:
                raise TimeoutError(f"the pool's {self.workers} workers were not ready within {timeout} s")
            time.sleep(0.005)

    @property
    def is_shut_down(self) -> bool:
        return self._state is RuntimeState.SHUT_DOWN

    @property
    def broken(self) -> bool:
        return self._sup.state in (SupervisorState.BROKEN, SupervisorState.CLOSED)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Fail the runs still going, end every worker, stop the supervisor. Idempotent."""
        with self._lock:
            if self._state is RuntimeState.SHUT_DOWN:
                return
            started = self._state is RuntimeState.STARTED
            self._state = RuntimeState.SHUT_DOWN
        if not started:
            self._sup.state = SupervisorState.CLOSED
        self._sup.close(timeout)

    def __enter__(self) -> ProcessRuntime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def on_engine_thread(self) -> bool:
        """Whether the caller is the supervisor's own thread (where blocking would deadlock)."""
        return self._sup.in_loop_thread()

    def worker_pids(self) -> list[int]:
        """PIDs of the live workers, now. Never waits for a launch: a worker whose pid is not known yet (a
        Ray actor still being placed) is left out, and after a crash the replacement shows up once started
        (``start(wait=True)`` or ``wait_ready()`` wait for the pool to be warm)."""
        self.start()
        return self._sup.call(lambda: [w.pid for w in self._sup.pool.live() if w.pid > 0]).result(10)

    def stats(self) -> PoolStats:
        """A snapshot of the pool: workers starting, busy, idle and retiring, its limits, invocations waiting
        for a worker, runs not yet ended, failed launches and crashes (see ``runtime.PoolStats``)."""
        def take() -> PoolStats:
            return dataclasses.replace(self._sup.pool.stats(), runs=len(self._sup.runs))

        if self._state is not RuntimeState.STARTED or self._sup.in_loop_thread():
            return take()  # no loop to ask (not started, or shut down), or we are on it
        return self._sup.call(take).result(10)

    # --- runs ------------------------------------------------------------------------------------------
    def start_run(self, workflow: Workflow, start_event: StartEvent, ctx: Context[Any] | None
                  ) -> RunAdapter:
        self.start()
        wspec = spec_of(workflow)
        key, definition = self._workflow_key(workflow, wspec.event_types())
        packed = self._sup.codec.pack(start_event)
        adapter = ProcessRunAdapter(self._sup, uuid.uuid4().hex, workflow)
        run = RunState(adapter.run_id, workflow, wspec, key, adapter, packed, definition,
                       store=wspec.state_type() if wspec.state_type else {})
        adapter.run = run
        if ctx is not None:
            previous, data = continues_from(ctx)
            if isinstance(previous, RunState):
                run.previous = previous  # read on the supervisor thread, which owns it
            else:
                seed(run, data, self._sup.codec)  # the snapshot is the caller's: read it here
        begun = self._sup.call(self._sup.begin, run)
        begun.add_done_callback(adapter.begun)
        return adapter

    def _workflow_key(self, workflow: Workflow, event_types: set[type]) -> tuple[int, Packed]:
        """The key workers know this workflow object by, and its definition (cloudpickled once per
        object; every run carries it, so no run can reach a worker before its definition does)."""
        with self._lock:
            known = self._workflow_keys.get(id(workflow))
            if known is not None:
                return known
            self._check_placement(workflow)
            key = next(self._keys)
            definition = self._sup.codec.pack_definition(workflow, spec_of(workflow),
                                                         event_types | {StartEvent})
            self._workflow_keys[id(workflow)] = (key, definition)
        weakref.finalize(workflow, self._forget, id(workflow), key)
        return key, definition

    def _check_placement(self, workflow: Workflow) -> None:
        """Refuse, at run(), a step asking for resources its workers can never hold (WorkflowValidationError
        naming the step): here a GPU, a custom resource, more CPUs or memory than this machine has."""
        wspec = spec_of(workflow)
        for name, spec in wspec.steps.items():
            if spec.placement is not None:
                self._sup.pool.launcher.check(wspec.name, name, spec.placement)

    def _forget(self, ident: int, key: int) -> None:
        with self._lock:
            known = self._workflow_keys.get(ident)
            if known is not None and known[0] == key:
                del self._workflow_keys[ident]
        self._sup.call(self._sup.forget, key)  # refused once shut down: nothing to forget then
