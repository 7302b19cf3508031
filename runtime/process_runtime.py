"""``ProcessRuntime``: the engine that runs workflows on a pool of worker processes.

One runtime = one supervisor thread + one pool. Runs from every thread share it. The default runtime
(``runtime.default``) is made on first use by ``Workflow.run()`` and shut down at interpreter exit; make your
own to choose its size or start method, and pass it as ``Workflow(runtime=...)``.
"""

from __future__ import annotations

import contextlib
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
from runtime.pool.link import Launcher
from runtime.process_adapter import ProcessRunAdapter
from runtime.run.snapshot import seed
from runtime.run.state import RunState
from runtime.supervisor.supervisor import Supervisor, SupervisorState
from runtime.wire import segments as shm
from runtime.wire.segments import SegmentTable
from runtime.workers.process.launcher import ProcessLauncher
from runtime.workers.process.reaper import REAPER

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
        # Large payloads go through shared memory when the workers are local processes (another launcher,
        # Ray's, brings its own transport); the table owns this runtime's segments.
        self._segments: SegmentTable | None = None
        if _launcher is None and shm.AVAILABLE:
            self._segments = SegmentTable()
            _launcher = ProcessLauncher(start_method, self._segments)
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
        if self._segments is not None:
            self._sup.codec.segments = self._segments
        register(self)

    # --- lifecycle -------------------------------------------------------------------------------------
    def start(self, wait: bool = False, timeout: float = 60.0) -> ProcessRuntime:
        """Start the pool (idempotent). With ``wait``, block until every worker is ready."""
        with self._lock:
            if self._state is RuntimeState.SHUT_DOWN:
                raise RuntimeBrokenError("this ProcessRuntime has been shut down; create a new one")
            if self._state is RuntimeState.NEW:
                self._state = RuntimeState.STARTED
                if self._segments is not None:
                    REAPER.watch_segments(self._segments.runtime_prefix)
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
        if self._segments is not None:
            self._segments.close()  # the workers are gone: every segment of this runtime goes
            REAPER.forget_segments(self._segments.runtime_prefix)

    def _forked_away(self) -> None:
        """In a child of ``os.fork()``: this runtime's thread and workers are the parent's. It counts as
        shut down here (a run on it raises ``RuntimeBrokenError``), without touching any of them."""
        self._lock = threading.RLock()
        self._state = RuntimeState.SHUT_DOWN

    def __enter__(self) -> ProcessRuntime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def on_engine_thread(self) -> bool:
        """Whether the caller is the supervisor's own thread (where blocking would deadlock)."""
        return self._sup.in_loop_thread()

    def stats(self) -> dict[str, Any]:
        """Figures about this runtime now. ``shared_memory``: the segments its large payloads occupy
        (``segments``, ``bytes``: held now, by events, stream items, store values or snapshots still referring
        to them; ``created``/``adopted``/``unlinked``: counts so far)."""
        zero = {"segments": 0, "bytes": 0, "created": 0, "adopted": 0, "unlinked": 0}
        return {"shared_memory": self._segments.stats() if self._segments is not None else zero}

    def worker_pids(self, wait: bool = True) -> list[int]:
        """PIDs of the live worker processes; with ``wait``, once the pool is at full strength (workers
        start in the background: right after the first run some may still be starting), for at most 10 s."""
        self.start()
        if wait:
            with contextlib.suppress(TimeoutError, RuntimeBrokenError):
                self.wait_ready(10.0)
        return self._sup.call(lambda: [w.pid for w in self._sup.pool.live()]).result(10)

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
            key = next(self._keys)
            definition = self._sup.codec.pack_definition(workflow, spec_of(workflow),
                                                         event_types | {StartEvent})
            self._workflow_keys[id(workflow)] = (key, definition)
        weakref.finalize(workflow, self._forget, id(workflow), key)
        return key, definition

    def _forget(self, ident: int, key: int) -> None:
        with self._lock:
            known = self._workflow_keys.get(ident)
            if known is not None and known[0] == key:
                del self._workflow_keys[ident]
        self._sup.call(self._sup.forget, key)  # refused once shut down: nothing to forget then
