"""``RayRuntime``: the process runtime's supervisor, run state and handler, with workers that are Ray actors.

Only the workers change. Routing, run state, placement (a ``def`` step gets a worker to itself), retries,
waits, timeouts, cancels and the handler are ``ProcessRuntime``'s own: this module provides a ``Launcher``
(see ``_process.py``) whose workers are Ray actors placed by Ray, anywhere in the cluster.

    RayLauncher.launch()  [executor thread]  create a RayWorker actor (num_cpus=1: Ray picks the node),
                                             ping it for its pid and node
    RayLauncher.attach()  [loop thread]      a RayLink on it:

    supervisor -> worker:  RayLink.send(msg): pickled, framed, coalesced per loop iteration (as Channel does)
                           -> actor.deliver.remote(seq, frames)       fire and forget; concurrency group
                                                                      "inbox" of size 1, so in order
                           -> os.pipe() inbox -> the ActorHost's reader callback on the actor's uvloop thread
    worker -> supervisor:  ActorHost -> RayMailbox.send -> Outbox (thread-safe list of pickled messages)
                           <- actor.drain() long poll (group "outbox", size 1), one call in flight per worker
                           <- bridge thread: ray.get, unpickle -> loop.call_soon_threadsafe(messages)
    death:                 the pending drain raises (RayActorError: killed, crashed, node lost)
                           -> call_soon_threadsafe(on_death), after every message already drained
    kill (hard cancel, timeout, shutdown): RayLink.signal -> ray.kill(actor, no_restart=True); on this
                           machine, SIGKILL escalation of the actor's process and what its steps started

Events and state travel as Ray actor calls and their results (Ray's transport and object store); the pipe
inside an actor only hands bytes from Ray's call thread to the host's loop, as the host's reader expects.

Import it as ``from runtime import RayRuntime`` (the ``ray`` extra). With no address (and no Ray
cluster in the environment) a local Ray instance is started and ``shutdown()`` ends it; with an address,
the cluster is joined. The workers import procflow and the modules your workflows live in: on a cluster install them on
every node or ship them with ``init_options={"runtime_env": {"py_modules": [...]}}``. Classes defined in
``__main__`` or locally travel by value, as with processes.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import math
import os
import pickle
import signal
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import psutil
import ray
import uvloop

from actors.host import ActorHost
from actors.host import Packed, Ready

from runtime.wire.framing import frame
from runtime.pool.link import Launcher, WorkerLink
from runtime.process_runtime import ProcessRuntime, RuntimeState
from runtime.workers.process.main import PipeInbox

log = logging.getLogger("procflow")

DRAIN_POLL = 1.0  # seconds a drain() waits for a first message before returning an empty batch


# --- inside the actor ---------------------------------------------------------------------------------------
class Outbox:
    """Pickled messages from the host's threads (loop and step thread), taken in batches by ``drain``."""

    def __init__(self) -> None:
        self._items: list[bytes] = []
        self._cond = threading.Condition()

    def put(self, data: bytes) -> None:
        with self._cond:
            self._items.append(data)
            if len(self._items) == 1:
                self._cond.notify()

    def take(self, timeout: float) -> list[bytes]:
        """Everything queued, waiting up to ``timeout`` for a first item; [] if none came."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            items, self._items = self._items, []
            return items


class RayMailbox(PipeInbox):
    """The ``Mailbox`` of an actor host inside a Ray actor: a pipe inbox, an ``Outbox``, a codec."""

    def __init__(self, inbox_fd: int, outbox: Outbox) -> None:
        super().__init__(inbox_fd)
        self._outbox = outbox

    def send(self, msg: object) -> None:
        self._outbox.put(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))

    def orphaned(self) -> None:
        """Exit with what the steps started. Unreached in practice: the actor holds its inbox's write end,
        so the inbox never reports EOF, and Ray ends an actor whose owner (the driver) died."""
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
        os._exit(0)


class RayWorker:
    """One procflow worker inside a Ray actor: an ``ActorHost`` on a uvloop in a thread of its own.

    A threaded actor: Ray runs ``deliver`` and ``drain`` on their own one-thread concurrency groups (so a
    long-polling ``drain`` never holds up a delivery, and deliveries run one at a time), ``ping`` on the
    default one. The actor has no restarts: a dead worker is replaced by the pool, not by Ray, so that its
    invocations fail or retry under the supervisor's rules. It is owned by the driver, so Ray ends it when the
    driver dies (the process runtime's parent watch).
    """

    def __init__(self, sys_path: list[str]) -> None:
        # The driver's import path, appended (never in front: on another node the worker's own
        # site-packages must win): modules imported by the driver from a tests or scripts directory then
        # import here too, as they do in forkserver/spawn workers.
        for entry in sys_path:
            if entry not in sys.path:
                sys.path.append(entry)
        self._inbox_r, self._inbox_w = os.pipe()
        self._outbox = Outbox()
        self._next_seq = 0
        self._early: dict[int, bytes] = {}
        started = threading.Event()
        failure: list[BaseException] = []
        threading.Thread(target=self._serve, args=(started, failure), name="procflow-actor-loop",
                         daemon=True).start()
        started.wait()
        if failure:
            raise failure[0]

    def _serve(self, started: threading.Event, failure: list[BaseException]) -> None:
        try:
            mailbox = RayMailbox(self._inbox_r, self._outbox)
            loop = uvloop.new_event_loop()
            asyncio.set_event_loop(loop)
            host = ActorHost(mailbox, loop)  # built on this thread: the host takes it as its loop thread
            host.start()
            mailbox.send(Ready(os.getpid()))  # first, as in worker_main: the pool counts it as "ready"
        except BaseException as exc:  # noqa: BLE001 -- reported by __init__, so the actor creation fails
            failure.append(exc)
            started.set()
            return
        started.set()
        try:
            loop.run_forever()
        finally:
            # Shutdown stopped the loop: leave as a worker process does. Ray reports the actor dead, and
            # the bridge reports that to the pool.
            os._exit(0)

    def ping(self) -> tuple[int, str]:
        """The actor's pid and Ray node id."""
        return os.getpid(), ray.get_runtime_context().get_node_id()

    @ray.method(concurrency_group="inbox")
    def deliver(self, seq: int, frames: bytes) -> None:
        """Write framed messages into the host's inbox, in ``seq`` order.

        Ray already runs a one-thread group's calls in submission order (in-order execution is the default
        for an actor with ``max_concurrency=1``); the sequence number keeps the order even if a Ray option
        or version did not. The write may block while the host's loop is busy: that holds only this thread.
        """
        self._early[seq] = frames
        while self._next_seq in self._early:
            view = memoryview(self._early.pop(self._next_seq))
            self._next_seq += 1
            while view:
                view = view[os.write(self._inbox_w, view):]

    @ray.method(concurrency_group="outbox")
    def drain(self) -> list[bytes]:
        """The host's pickled messages since the last call, waiting up to ``DRAIN_POLL`` s for one."""
        return self._outbox.take(DRAIN_POLL)


# Ray's typed overloads of ray.remote() leave out concurrency_groups, which it accepts at run time.
_RemoteWorker: Any = ray.remote(concurrency_groups={"inbox": 1, "outbox": 1})(  # type: ignore[call-overload]
    RayWorker)


# --- the supervisor's side ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Launched:
    """A started actor: its handle, pid, node, and its process when it runs on this machine."""

    actor: Any
    pid: int
    node_id: str
    local: psutil.Process | None


def _death_reason(exc: BaseException) -> str:
    """The line of a Ray error that says why the actor died ("... killed by `ray.kill`", "... its worker
    process has died", "... its node has died"), else its last line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(exc).__name__
    for line in lines:
        if line.startswith("The actor is dead because"):
            reason = line.removeprefix("The actor is dead because").strip()
            break
    # Ray appends a paragraph of generic advice (OOM killer, ``ray stop``...) to a worker's death.
    return reason.split(" Some common causes include")[0].rstrip(".")


class RayLink(WorkerLink):
    """The pool's handle on one RayWorker actor."""

    def __init__(self, loop: asyncio.AbstractEventLoop, launched: Launched,
                 on_message: Callable[[object], None], on_death: Callable[[], None]) -> None:
        self.loop, self.actor, self.pid = loop, launched.actor, launched.pid
        self._local = launched.local
        self._on_message, self._on_death = on_message, on_death
        self._frames: list[bytes] = []
        self._seq = 0
        self._flush_pending = False
        self._closed = False  # loop thread only
        self._stopping = threading.Event()  # tells the bridge to stop (close() before a death was seen)
        self._killed = False
        self._dead_because: str | None = None  # written by the bridge before it posts on_death
        self._descendants: list[psutil.Process] | None = None
        self._bridge = threading.Thread(target=self._pump, name=f"procflow-ray-bridge-{self.pid}",
                                        daemon=True)
        self._bridge.start()

    # --- to the actor (loop thread) ---------------------------------------------------------------------
    def send(self, msg: object) -> None:
        """Queue ``msg``; the frames of one loop iteration leave in one ``deliver`` call at its end."""
        if self._closed:
            return
        self._frames.append(frame(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)))
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        if self._closed or not self._frames:
            return
        data = b"".join(self._frames)
        self._frames.clear()
        try:
            # The returned ObjectRef is dropped: a delivery to a dead actor fails quietly, and the
            # pending drain() reports the death.
            self.actor.deliver.remote(self._seq, data)
        except Exception as exc:  # noqa: BLE001 -- Ray going away; the bridge reports the death
            log.warning("procflow: delivering to Ray worker pid %d failed: %r", self.pid, exc)
        self._seq += 1

    # --- from the actor (bridge thread) -----------------------------------------------------------------
    def _pump(self) -> None:
        try:
            while not self._stopping.is_set():
                batch = ray.get(self.actor.drain.remote())
                if batch:
                    msgs = [pickle.loads(data) for data in batch]
                    self.loop.call_soon_threadsafe(self._hand_over, msgs)
        except Exception as exc:  # noqa: BLE001 -- RayActorError (killed, crashed, node lost) or Ray gone
            self._dead_because = _death_reason(exc)
        if self._stopping.is_set():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
            self.loop.call_soon_threadsafe(self._on_death)

    def _hand_over(self, msgs: list[object]) -> None:
        for msg in msgs:
            if self._closed:
                return
            self._on_message(msg)

    # --- ending it (loop thread) ------------------------------------------------------------------------
    def signal(self, sig: int) -> None:
        """End the actor: ``ray.kill`` at the first signal, SIGKILL of its process (on this machine) at
        ``SIGKILL``; what its steps started on this machine gets ``sig`` too. Gone is fine.

        ``ray.kill`` and not ``ray.cancel``: steps are not Ray tasks of their own but run inside the actor's
        host, and for actor tasks ``ray.cancel(force=True)`` raises ``ValueError`` while a plain cancel only
        sets a flag in a threaded actor, so nothing there stops a ``def`` step spinning in pure Python.
        Killing the actor does, and by the placement rule a worker running a ``def`` step runs nothing
        else, so exactly that run's step is stopped (async steps of other runs are never on that worker)."""
        if self._descendants is None:  # seen once, at the first signal: a dead parent hides them later
            self._descendants = []
            if self._local is not None:
                with contextlib.suppress(psutil.Error):
                    self._descendants = self._local.children(recursive=True)
        if not self._killed:
            self._killed = True
            try:
                ray.kill(self.actor, no_restart=True)
            except Exception as exc:  # noqa: BLE001 -- dead already, or Ray gone
                log.debug("procflow: ray.kill of worker pid %d: %r", self.pid, exc)
        if sig == signal.SIGKILL and self._local is not None:
            with contextlib.suppress(psutil.Error):  # psutil checks the pid was not reused
                self._local.kill()
        for child in self._descendants:
            with contextlib.suppress(psutil.Error):
                child.send_signal(sig)

    def close(self) -> None:
        self._closed = True
        self._stopping.set()
        if not self._killed:  # a death we did not cause: the actor is gone, ray.kill is a no-op then
            self.signal(signal.SIGTERM)
        self._bridge.join(DRAIN_POLL + 2.0)
        for child in self._descendants or []:
            with contextlib.suppress(psutil.Error):
                child.kill()

    def describe_exit(self) -> str:
        if not self._closed:
            return "still running"
        return f"its Ray actor died: {self._dead_because or 'reason unknown'}"


class RayLauncher(Launcher):
    """Starts ``RayWorker`` actors; owns the Ray connection a ``RayRuntime`` opened."""

    def __init__(self, address: str | None, *, num_cpus_per_worker: float = 1.0,
                 actor_options: dict[str, Any] | None = None, init_options: dict[str, Any] | None = None,
                 launch_timeout: float = 120.0) -> None:
        self.address = address
        self.num_cpus_per_worker = num_cpus_per_worker
        self.actor_options = dict(actor_options or {})
        self.init_options = dict(init_options or {})
        self.launch_timeout = launch_timeout
        self.workers = 0  # set by RayRuntime once the pool size is known (sizes a local Ray instance)
        self._node_id: str | None = None
        self._holds_session = False
        self._connected = False
        self._lock = threading.Lock()
        self.closing = threading.Event()  # set at shutdown: launches in progress give up

    # --- the Ray connection -----------------------------------------------------------------------------
    def starts_local(self) -> bool:
        """Whether ``connect`` will start a new local Ray instance: no connection yet, and ``address``
        resolves to none (Ray's own rule: an explicit address, else ``RAY_ADDRESS``, else a cluster
        started with ``ray start`` on this machine, else a new instance)."""
        if ray.is_initialized():
            return False
        if self.address == "local":
            return True
        try:
            from ray._private.services import canonicalize_bootstrap_address

            return canonicalize_bootstrap_address(self.address) is None  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 -- a private helper: if it moved, judge by the arguments
            return self.address is None and not os.environ.get("RAY_ADDRESS")

    def default_workers(self) -> int:
        """One worker per CPU: this machine's for a local instance, the cluster's otherwise (connecting)."""
        if self.starts_local():
            cpus = float(self.init_options.get("num_cpus") or os.cpu_count() or 1)
        else:
            self.connect()
            cpus = float(ray.cluster_resources().get("CPU", 1))
        return max(1, int(cpus // self.num_cpus_per_worker))

    def connect(self) -> None:
        """Join the Ray connection this process has, or open one (idempotent)."""
        with self._lock:
            if self._connected:
                return
            options: dict[str, Any] = {"log_to_driver": False, **self.init_options}
            if self.starts_local():  # only a new instance takes these (joining one refuses num_cpus)
                options.setdefault("include_dashboard", False)
                options.setdefault("num_cpus", max(os.cpu_count() or 1,
                                                   math.ceil(self.workers * self.num_cpus_per_worker)))
            self._holds_session = _session_acquire(self.address, options)
            self._connected = True
            self._node_id = _local_node_id()

    def disconnect(self) -> None:
        """Give back the connection; the last runtime using one this module opened calls ray.shutdown."""
        with self._lock:
            if not self._connected:
                return
            self._connected = False
            if self._holds_session:
                self._holds_session = False
                _session_release()

    # --- workers ----------------------------------------------------------------------------------------
    def launch(self, index: int) -> Launched:
        """Create worker actor ``index`` and wait until it answers (Ray may first have to find it a node).

        Waits in short slices so that a shutdown (``closing``) need not wait ``launch_timeout`` for an actor
        the cluster has no room for."""
        if self.closing.is_set():
            raise RuntimeError(f"the runtime is shutting down: worker {index} is not started")
        options = {"num_cpus": self.num_cpus_per_worker, "max_restarts": 0, "max_task_retries": 0,
                   "name": None, **self.actor_options}
        actor = _RemoteWorker.options(**options).remote(list(sys.path))
        deadline = time.monotonic() + self.launch_timeout
        try:
            ping = actor.ping.remote()
            while not ray.wait([ping], timeout=0.25)[0]:
                if self.closing.is_set():
                    raise RuntimeError(f"the runtime shut down while worker {index} was starting")
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"Ray did not start procflow worker {index} within {self.launch_timeout:g} s: the "
                        f"cluster may have no free resources for it ({options['num_cpus']} CPU per worker, "
                        f"{self.workers} workers)")
            pid, node_id = ray.get(ping)
        except BaseException:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
            raise
        local = None
        if node_id == self._node_id:
            with contextlib.suppress(psutil.Error):
                local = psutil.Process(pid)
        return Launched(actor, pid, node_id, local)

    def attach(self, loop: asyncio.AbstractEventLoop, launched: Any,
               on_message: Callable[[object], None], on_death: Callable[[], None]) -> WorkerLink:
        return RayLink(loop, launched, on_message, on_death)


def _local_node_id() -> str | None:
    """The Ray node this process runs on, or None when no actor can be on this machine for sure.

    Under Ray Client (``ray://``) the runtime context answers for the *server's* node (the head), while
    this process may be on another machine: an actor there with the same pid as a local process must
    never be signalled through psutil here, so a client driver treats no actor as local."""
    try:
        from ray.util.client import ray as client

        if client.is_connected():
            return None
    except Exception:  # noqa: BLE001 -- no client support installed: not a client
        pass
    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001 -- a driver on no node: no actor is "local"
        return None


# --- one Ray connection per process, shared -----------------------------------------------------------------
_session_lock = threading.Lock()
_session_users = 0  # RayRuntimes using the connection this module opened
_session_ours = False  # whether this module called ray.init (then its last user calls ray.shutdown)


def _session_acquire(address: str | None, options: dict[str, Any]) -> bool:
    """Open Ray (``ray.init``) unless this process is connected already; True if the caller now holds a
    share of a connection this module opened."""
    global _session_users, _session_ours
    with _session_lock:
        if not ray.is_initialized():
            ray.init(address=address, **options)
            _session_ours, _session_users = True, 0
        elif address is not None:
            log.info("procflow: Ray is already initialized in this process; RayRuntime(address=%r) "
                     "uses that connection", address)
        if not _session_ours:
            return False  # someone else's Ray (the user's ray.init): never ours to shut down
        _session_users += 1
        return True


def _session_release() -> None:
    global _session_users, _session_ours
    with _session_lock:
        _session_users -= 1
        if _session_users <= 0 and _session_ours:
            _session_ours, _session_users = False, 0
            ray.shutdown()


class RayRuntime(ProcessRuntime):
    """Run workflows on Ray: each worker is a Ray actor that Ray places on any node of the cluster.

    The same user code, the same handler, the same semantics as ``ProcessRuntime``: this *is* the process
    runtime's supervisor, with workers started by Ray instead of ``multiprocessing``.

    Args:
        address: the cluster to join ("auto", "head:6379", "ray://head:10001"). None follows Ray's rule:
            ``RAY_ADDRESS``, else a cluster started with ``ray start`` on this machine, else a new local
            instance (no dashboard, one logical CPU per core or per worker if there are more workers),
            which ``shutdown()`` ends; "local" always starts a new one. A connection this process already
            has (your own ``ray.init``) is used as it is and left open. Workers' stdout and stderr go to
            Ray's log files, not to this console (``init_options={"log_to_driver": True}`` forwards them).
        workers: pool size; default one per CPU (of the cluster: then the constructor connects to read it).
        num_cpus_per_worker: CPUs Ray reserves for each worker actor (default 1).
        actor_options: more ``.options()`` for the worker actors (``resources``, ``runtime_env``,
            ``scheduling_strategy``...).
        init_options: more ``ray.init`` arguments (``runtime_env``, ``namespace``, ``num_cpus``...).
        launch_timeout: seconds Ray may take to place and start one worker actor.
        kill_grace, cancel_grace, max_restarts, restart_window, async_capacity: as ``ProcessRuntime``.

    Import it as ``from runtime import RayRuntime`` (ray is an optional extra: ``pip install
    procflow[ray]``).
    """

    def __init__(self, address: str | None = None, workers: int | None = None, *,
                 num_cpus_per_worker: float = 1.0, actor_options: dict[str, Any] | None = None,
                 init_options: dict[str, Any] | None = None, launch_timeout: float = 120.0,
                 kill_grace: float = 0.1, cancel_grace: float = 1.0, max_restarts: int | None = None,
                 restart_window: float = 10.0, async_capacity: int = 64) -> None:
        launcher = RayLauncher(address, num_cpus_per_worker=num_cpus_per_worker,
                               actor_options=actor_options, init_options=init_options,
                               launch_timeout=launch_timeout)
        try:
            size = workers if workers is not None else launcher.default_workers()
            launcher.workers = size
            super().__init__(size, kill_grace=kill_grace, cancel_grace=cancel_grace,
                             max_restarts=max_restarts, restart_window=restart_window,
                             async_capacity=async_capacity, _launcher=launcher)
        except BaseException:
            launcher.disconnect()
            raise
        self.address = address
        self._ray_launcher = launcher
        _RAY_RUNTIMES.add(self)

    def start(self, wait: bool = False, timeout: float = 60.0) -> RayRuntime:
        """Connect to Ray (starting a local instance if there is no address), then start the pool."""
        with self._lock:
            if self._state is RuntimeState.NEW:
                self._ray_launcher.connect()
        super().start(wait, timeout)
        return self

    def __enter__(self) -> RayRuntime:
        return self.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        """End every worker actor, then the Ray connection if this runtime opened it. Idempotent."""
        with self._lock:
            started = self._state is RuntimeState.STARTED
        if started and not self._sup.in_loop_thread():
            # Close the pool (no respawns) before telling launches in progress to give up, so that their
            # failure is not taken for a crash; the supervisor's close() does the same first thing.
            with contextlib.suppress(Exception):
                self._sup.call(self._sup.pool.close).result(timeout)
        self._ray_launcher.closing.set()
        try:
            super().shutdown(timeout)
        finally:
            self._ray_launcher.disconnect()


_RAY_RUNTIMES: weakref.WeakSet[RayRuntime] = weakref.WeakSet()


@atexit.register
def _shutdown_ray_runtimes() -> None:
    # Registered after ``import ray``, so it runs before Ray's own atexit ray.shutdown (atexit is LIFO):
    # the workers are ended while Ray can still reach them.
    for rt in list(_RAY_RUNTIMES):
        try:
            rt.shutdown(timeout=2.0)
        except Exception:  # noqa: BLE001 -- at exit, finish the others whatever one does
            pass
