"""``ProcessRuntime``: the engine that runs workflows on a pool of worker processes.

One runtime = one supervisor thread + one pool. Runs from every thread share it. The default runtime
(``runtime.default``) is made on first use by ``Workflow.run()`` and shut down at interpreter exit; make your
own to choose its size or start method, and pass it as ``Workflow(runtime=...)``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import enum
import itertools
import os
import random
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from actors import ContextSerdeError, RuntimeBrokenError, StartEvent, Workflow
from actors.context.state_store import new_state
from actors.host import Packed, continues_from, spec_of

from runtime.default import register
from runtime.engine import Engine, RunAdapter
from runtime.pool import Launcher, PoolStats
from runtime.process_adapter import ProcessRunAdapter
from runtime.run.snapshot import seed
from runtime.run.state import RunState
from runtime.supervisor.supervisor import Supervisor, SupervisorState
from runtime.wire import segments as shm
from runtime.wire.segment_table import SegmentTable
from runtime.workers.process.launcher import ProcessLauncher
from runtime.workers.process.reaper import REAPER

if TYPE_CHECKING:
    from actors import Context


# Run ids: uuid4-shaped hex from a generator of procflow's own, seeded from the OS (and again in a forked
# child). uuid.uuid4() reads os.urandom on every run, a system call that lets go of the GIL: under load the
# caller then waits for the supervisor thread to hand the GIL back before its run can start.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_run_id() -> str:
    """A random run id in ``uuid.uuid4().hex``'s shape (version 4, RFC 4122 variant)."""
    n = _ids.getrandbits(128) & ~(0xF000 << 64) & ~(0xC000 << 48)
    return f"{n | (0x4000 << 64) | (0x8000 << 48):032x}"


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
        # Guards the lifecycle state and the workflow keys. No finalizer takes it (see _forget).
        self._lock = threading.RLock()
        self._keys = itertools.count(1)
        # id(workflow) -> (the workflow, weakly; its key; its definition; its event class keys). The weak
        # reference tells a live entry from one whose object died and whose id a new object took.
        self._workflow_keys: dict[int, tuple[weakref.ref[Workflow], int, Packed, frozenset[int]]] = {}
        self._dead_keys: collections.deque[int] = collections.deque()
        if self._segments is not None:
            self._sup.codec.oob = self._segments
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
        ready = self._sup.call(self._sup.when_ready).result(timeout)
        try:
            ready.result(max(0.0, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"the pool's {self.workers} workers were not ready within {timeout} s") from None

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

    def worker_pids(self, wait: bool = False) -> list[int]:
        """PIDs of the live workers, now. Never waits for a launch: a worker whose pid is not known yet (a
        Ray actor still being placed) is left out, and after a crash the replacement shows up once started.
        ``wait=True`` first waits (at most 10 s) for the pool to be warm, as ``wait_ready()`` does."""
        self.start()
        if wait:
            with contextlib.suppress(TimeoutError, RuntimeBrokenError):
                self.wait_ready(10.0)
        return self._sup.call(lambda: [w.pid for w in self._sup.pool.live() if w.pid > 0]).result(10)

    def _shared_memory(self) -> dict[str, int]:
        """The segments large payloads occupy: ``segments``, ``bytes`` held now (by events, stream items,
        store values or snapshots still referring to them), and ``created``/``adopted``/``unlinked`` so far."""
        if self._segments is None:
            return {"segments": 0, "bytes": 0, "created": 0, "adopted": 0, "unlinked": 0}
        return dict(self._segments.stats())

    def stats(self) -> PoolStats:
        """A snapshot of the pool: workers starting, busy, idle and retiring, its limits, invocations waiting
        for a worker, runs not yet ended, failed launches and crashes (see ``runtime.PoolStats``)."""
        def take() -> PoolStats:
            return dataclasses.replace(self._sup.pool.stats(), runs=len(self._sup.runs),
                                       shared_memory=self._shared_memory())

        if self._state is not RuntimeState.STARTED or self._sup.in_loop_thread():
            return take()  # no loop to ask (not started, or shut down), or we are on it
        return self._sup.call(take).result(10)

    # --- runs ------------------------------------------------------------------------------------------
    def start_run(self, workflow: Workflow, start_event: StartEvent | None, ctx: Context[Any] | None,
                  run_id: str | None = None) -> RunAdapter:
        self.start()
        wspec = spec_of(workflow)
        key, definition, class_keys = self._workflow_key(workflow)
        packed = self._sup.codec.pack(start_event, keys=class_keys) if start_event is not None else None
        adapter = ProcessRunAdapter(self._sup, run_id or new_run_id(), workflow)
        run = RunState(adapter.run_id, workflow, wspec, key, adapter, packed, definition, class_keys,
                       store=new_state(wspec.state_type))
        adapter.run = run
        if ctx is not None:
            previous, img = continues_from(ctx)
            if isinstance(previous, RunState):
                run.previous = previous  # read on the supervisor thread, which owns it
            elif img is not None:
                try:
                    seed(run, img, self._sup.codec)  # the Context is the caller's: read it here
                except Exception as exc:
                    raise ContextSerdeError(f"run(ctx=...): the Context cannot start a run of "
                                            f"{wspec.name}: {exc}") from exc
        begun = self._sup.call(self._sup.begin, run)
        begun.add_done_callback(adapter.begun)
        return adapter

    def _workflow_key(self, workflow: Workflow) -> tuple[int, Packed, frozenset[int]]:
        """The key workers know this workflow object by, its definition (cloudpickled once per object;
        every run carries it, so no run can reach a worker before its definition does) and the event class
        keys its definition carries (its runs' payloads use no other)."""
        with self._lock:
            self._drop_dead_keys()
            known = self._workflow_keys.get(id(workflow))
            if known is not None and known[0]() is workflow:
                return known[1:]
            self._check_placement(workflow)
            key = next(self._keys)
            wspec = spec_of(workflow)
            definition, class_keys = self._sup.codec.pack_definition(workflow, wspec,
                                                                     wspec.event_types() | {StartEvent})
            self._workflow_keys[id(workflow)] = (weakref.ref(workflow), key, definition, class_keys)
        weakref.finalize(workflow, self._forget, id(workflow), key)
        return key, definition, class_keys

    def _check_placement(self, workflow: Workflow) -> None:
        """Refuse, at run(), a step asking for resources its workers can never hold (WorkflowValidationError
        naming the step): here a GPU, a custom resource, more CPUs or memory than this machine has."""
        wspec = spec_of(workflow)
        for name, spec in wspec.steps.items():
            if spec.placement is not None:
                self._sup.pool.launcher.check(wspec.name, name, spec.placement)

    def _forget(self, ident: int, key: int) -> None:
        """A workflow object was garbage-collected (a finalizer: any thread, at any allocation, maybe
        while this thread holds some lock). It takes no lock: it queues the entry for the next
        ``_workflow_key`` to drop, and tells the supervisor without waiting, so a finalizer can never
        close a lock-order circle with a thread waiting for a lock this one holds."""
        self._dead_keys.append(ident)
        self._sup.door.call_soon(self._sup.forget, key)

    def _drop_dead_keys(self) -> None:
        # Holding self._lock. deque.popleft is atomic against the finalizer's append.
        while self._dead_keys:
            ident = self._dead_keys.popleft()
            known = self._workflow_keys.get(ident)
            if known is not None and known[0]() is None:
                del self._workflow_keys[ident]
