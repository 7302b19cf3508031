"""``ProcessRuntime``: the engine that runs workflows on a pool of worker processes.

One runtime = one supervisor thread + one pool. Runs from every thread share it. The default runtime is made
on first use by ``Workflow.run()`` and shut down at interpreter exit; make your own to choose its size or
start method, and pass it as ``Workflow(runtime=...)``.
"""

from __future__ import annotations

import atexit
import contextlib
import concurrent.futures
import enum
import itertools
import os
import threading
import uuid
import weakref
from typing import TYPE_CHECKING, Any

from actors import Event, RuntimeBrokenError, StartEvent, Workflow, WorkflowRuntimeError
from actors.host import continues_from, spec_of

from runtime.engine import Engine, RunAdapter
from runtime.pool.link import Launcher
from runtime.run.state import RunState
from runtime.run.snapshot import carry, seed, to_dict
from runtime.stream import EventStream
from runtime.supervisor.supervisor import Supervisor, SupervisorState

if TYPE_CHECKING:
    from actors import Context, StopEvent


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
        self._workflow_keys: dict[int, int] = {}  # id(workflow) -> key, while the workflow lives
        _ALL.add(self)

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
        import time

        deadline = time.monotonic() + timeout
        while self._sup.call(self._sup.pool.ready_count).result(timeout) < self.workers:
            if self._sup.state is not SupervisorState.RUNNING:
                raise RuntimeBrokenError(self._sup._broken_message())
            if time.monotonic() > deadline:
                raise TimeoutError(f"the pool's {self.workers} workers were not ready within {timeout} s")
            time.sleep(0.005)

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
            return
        if self._sup.in_loop_thread():
            raise RuntimeError("shutdown() cannot be called from the supervisor's own thread")
        import asyncio

        loop = self._sup.loop
        try:
            asyncio.run_coroutine_threadsafe(self._sup.close(timeout), loop).result(timeout + 5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._sup.thread.join(timeout + 5)
            if not self._sup.thread.is_alive():
                loop.close()

    def __enter__(self) -> ProcessRuntime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def _on_engine_thread(self) -> bool:
        """Whether the caller is the supervisor's own thread (where blocking would deadlock)."""
        return self._sup.in_loop_thread()

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
        key = self._workflow_key(workflow, wspec.event_types())
        packed = self._sup.codec.pack(start_event)
        adapter = ProcessRunAdapter(self._sup, uuid.uuid4().hex, workflow)
        run = RunState(adapter.run_id, workflow, wspec, key, adapter, packed,
                       store=wspec.state_type() if wspec.state_type else {})
        adapter._run = run
        if ctx is not None:
            previous, data = continues_from(ctx)
            if isinstance(previous, RunState):
                carry(run, previous)
            else:
                seed(run, data, self._sup.codec)
        self._sup.call(self._sup.begin, run)
        return adapter

    def _workflow_key(self, workflow: Workflow, event_types: set[type]) -> int:
        """The key workers know this workflow object by; shipped (cloudpickled) once per object."""
        with self._lock:
            key = self._workflow_keys.get(id(workflow))
            if key is not None:
                return key
            key = next(self._keys)
            definition = self._sup.codec.pack_definition(workflow, spec_of(workflow),
                                                         event_types | {StartEvent})
            self._workflow_keys[id(workflow)] = key
        weakref.finalize(workflow, self._forget, id(workflow), key)
        self._sup.call(self._sup.install, key, definition)
        return key

    def _forget(self, ident: int, key: int) -> None:
        with self._lock:
            if self._workflow_keys.get(ident) == key:
                del self._workflow_keys[ident]
        try:
            self._sup.call(self._sup.forget, key)
        except RuntimeBrokenError:
            pass  # shut down already: nothing to forget


class ProcessRunAdapter(RunAdapter):
    """A run on a ``ProcessRuntime``; every call goes through the supervisor's door."""

    def __init__(self, sup: Supervisor, run_id: str, workflow: Workflow) -> None:
        self._sup = sup
        self.run_id = run_id
        self.workflow = workflow
        self.result: concurrent.futures.Future[StopEvent] = concurrent.futures.Future()
        self.events = EventStream()
        self.stop_event = None
        self._run: RunState | None = None  # set once by start_run; read on the supervisor thread only
        self._final_run: RunState | None = None

    def send_event(self, event: Event, step: str | None = None) -> concurrent.futures.Future[None]:
        spec_of(self.workflow).check_target(type(event), step)
        packed = self._sup.codec.pack(event)
        return self._sup.call(self._sup.send_event, self.run_id, event, packed, step)

    def write_event_to_stream(self, event: Event) -> None:
        self._sup.call(self._sup.publish, self.run_id, event)

    def cancel(self) -> concurrent.futures.Future[None]:
        return self._sup.call(self._sup.cancel, self.run_id)

    def abort(self) -> concurrent.futures.Future[bool]:
        if self.result.done():
            done: concurrent.futures.Future[bool] = concurrent.futures.Future()
            done.set_result(False)
            return done
        return self._sup.call(self._sup.abort, self.run_id)

    def store_call(self, op: str, *args: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._sup.call(self._sup.caller_state_op, self._run, op, args, fut)
        return fut

    def previous_run(self) -> RunState:
        run = self._final_run
        if run is None:
            raise WorkflowRuntimeError(
                f"run {self.run_id} is still going: a Context can start a new run once its run has ended")
        return run

    def snapshot(self) -> dict[str, Any]:
        run = self._final_run
        if run is None:
            raise WorkflowRuntimeError(
                f"run {self.run_id} is still going: to_dict() needs a run that has ended (stop it "
                "gracefully with cancel_run() first)")
        return to_dict(run, self._sup.codec)

    def collect_events(self, event: Event, expected: list[type[Event]], buffer_id: str | None
                       ) -> list[Event] | None:
        result: list[Event] | None = self.store_call(
            "collect", buffer_id or "_caller", event, expected).result()
        return result


# --- the default runtime -----------------------------------------------------------------------------
_ALL: weakref.WeakSet[ProcessRuntime] = weakref.WeakSet()
_default: ProcessRuntime | None = None
_default_lock = threading.Lock()


def get_default_runtime() -> ProcessRuntime:
    """The runtime ``Workflow.run()`` uses when the workflow names none; replaced if broken."""
    global _default
    with _default_lock:
        if _default is None or _default.broken or _default._state is RuntimeState.SHUT_DOWN:
            if _default is not None:
                _default.shutdown()
            _default = ProcessRuntime()
        return _default


def shutdown_default_runtime() -> None:
    """Shut the default runtime down now (it is made again on the next run)."""
    global _default
    with _default_lock:
        rt, _default = _default, None
    if rt is not None:
        rt.shutdown()


@atexit.register
def _shutdown_all() -> None:
    for rt in list(_ALL):
        try:
            rt.shutdown(timeout=2.0)
        except Exception:  # noqa: BLE001 -- at exit, finish the others whatever one does
            pass


def _after_fork_in_child() -> None:
    """In a child made by ``os.fork()`` the runtimes are copies without their supervisor threads and workers:
    they count as shut down there (using one raises instead of hanging, exiting does not wait for it), and
    the child's default runtime is made afresh on first use."""
    global _default, _default_lock
    _default, _default_lock = None, threading.Lock()
    for rt in list(_ALL):
        rt._lock = threading.RLock()
        rt._state = RuntimeState.SHUT_DOWN
    _ALL.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
