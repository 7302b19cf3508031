"""``RayRuntime``: the process runtime's supervisor, run state and handler, with workers that are Ray actors.

Only the workers change. Routing, run state, placement (a ``def`` step gets a worker to itself), retries,
waits, timeouts, cancels and the handler are ``ProcessRuntime``'s own; this package provides the
``Launcher``/``WorkerLink`` pair (``runtime.pool.link``) whose workers are Ray actors placed by Ray,
anywhere in the cluster:

    actor.py      what runs inside the actor: an ActorHost fed by deliver() calls and drained by drain()
    link.py       the driver's side of one actor: RayLink (calls, retries, death, kill, where it runs)
    launcher.py   RayLauncher: shapes of actors, the cluster's room, the autoscaler's demand, the connection
    ray.py        RayRuntime: the options, and the pool's limits (a pool that follows the cluster)
    objects.py    large buffers as Ray objects: put once, owned by the driver, read zero-copy

Events and state travel as Ray actor calls and their results (Ray's transport and object store); the pipe
inside an actor only hands bytes from Ray's call thread to the host's loop, as the host's reader expects.
Large buffers (128 KiB and more) go into Ray's object store once, owned by the driver, and only their
ObjectRefs travel through it (``objects.py``).

Import it as ``from runtime import RayRuntime`` (the ``ray`` extra). The workers import procflow and the
modules your workflows live in: on a cluster install them on every node or ship them with
``init_options={"runtime_env": {"py_modules": [...]}}``. Classes defined in ``__main__`` or locally travel by
value, as with processes.
"""

from __future__ import annotations

import atexit
import contextlib
import weakref
from typing import Any

# Before anything that imports actors: with ray imported, ``import actors`` starts no forkserver (a program
# that reaches procflow through RayRuntime has no use for one: runtime/workers/process/forkserver.py).
import ray  # noqa: F401

from runtime.default import shut_down_each
from runtime.process_runtime import ProcessRuntime, RuntimeState
from runtime.wire.oob import OOB_THRESHOLD, threshold_of
from runtime.workers.ray import objects
from runtime.workers.ray.launcher import RayLauncher
from runtime.workers.ray.objects import RayObjects


class RayRuntime(ProcessRuntime):
    """Run workflows on Ray: each worker is a Ray actor that Ray places on any node of the cluster.

    The same user code, the same handler, the same semantics as ``ProcessRuntime``: this *is* the process
    runtime's supervisor, with workers started by Ray instead of ``multiprocessing``.

    Args:
        address: the cluster to join ("auto", "head:6379", "ray://head:10001"). None follows Ray's rule:
            ``RAY_ADDRESS``, else the cluster ``ray start`` recorded on this machine, else a new local
            instance (no dashboard, one logical CPU per core, or per worker if ``max_workers`` is more),
            which ``shutdown()`` ends; "local" always starts a new one; "auto" never does (no cluster found
            is a ``ConnectionError``). A connection this process already has (your own ``ray.init``) is
            used as it is and left open. Workers' stdout and stderr go to Ray's log files, not to this
            console (``init_options={"log_to_driver": True}`` forwards them).
        workers: a pool of exactly this many workers (the same as ``min_workers=max_workers=workers``).
        min_workers, max_workers: the pool's limits (default 1 and None: as many as the cluster holds).
            It grows while work waits and the cluster has room for a worker of the shape that work needs
            (nodes that join are used; what does not fit is asked of an autoscaler, see
            ``request_resources``), and shrinks back to ``min_workers`` after ``idle_timeout``.
        idle_timeout: seconds a worker beyond ``min_workers`` may stay idle before it is retired.
        num_cpus_per_worker: CPUs Ray reserves for each worker actor (default 1), unless a step asks for
            other resources (``@step(num_cpus=..., num_gpus=..., resources=..., memory=...)``): a step runs
            only on a worker that holds what it asked for, and the pool starts workers of that shape.
        actor_options: more ``.options()`` for every worker actor (``runtime_env``, ``resources``,
            ``scheduling_strategy``...); resources given here are part of every worker's shape.
        init_options: more ``ray.init`` arguments (``runtime_env``, ``namespace``, ``num_cpus``...).
        launch_timeout: seconds Ray may take to place and start one worker actor; a step whose workers
            never start fails after it, naming the step and Ray's reason.
        request_resources: while work waits for room, tell an autoscaler the shapes the pool wants
            (``ray.autoscaler.sdk.request_resources``; withdrawn once nothing waits). It replaces any
            request made with that call before, by anyone: pass False if something else manages it.
        object_store_threshold: a buffer of at least this many bytes (``bytes``, ``bytearray``, a numpy
            array, a ``memoryview``) inside an event, a result, a store value or a reply is put into Ray's
            object store once and read there (zero-copy for arrays and memoryviews, which arrive read-only);
            only its reference passes through the driver. Default: ``PROCFLOW_OOB_THRESHOLD`` or 128 KiB (64
            KiB at least); None keeps every payload in band, inside the actor calls.
        kill_grace, cancel_grace, max_restarts, restart_window, async_capacity: as ``ProcessRuntime``.

    Import it as ``from runtime import RayRuntime`` (ray is an optional extra: ``pip install
    procflow[ray]``).
    """

    def __init__(self, address: str | None = None, workers: int | None = None, *,
                 min_workers: int | None = None, max_workers: int | None = None, idle_timeout: float = 60.0,
                 num_cpus_per_worker: float = 1.0, actor_options: dict[str, Any] | None = None,
                 init_options: dict[str, Any] | None = None, launch_timeout: float = 120.0,
                 request_resources: bool = True, kill_grace: float = 0.1, cancel_grace: float = 1.0,
                 max_restarts: int | None = None, restart_window: float = 10.0,
                 async_capacity: int = 64, object_store_threshold: int | None = OOB_THRESHOLD) -> None:
        low, high = _limits(workers, min_workers, max_workers)
        launcher = RayLauncher(address, num_cpus_per_worker=num_cpus_per_worker,
                               actor_options=actor_options, init_options=init_options,
                               launch_timeout=launch_timeout, request_resources=request_resources)
        launcher.workers = high if high is not None else low
        threshold = threshold_of(object_store_threshold)
        self._objects = launcher.objects = RayObjects(threshold) if threshold is not None else None
        super().__init__(max(low, 1), kill_grace=kill_grace, cancel_grace=cancel_grace,
                         max_restarts=max_restarts if max_restarts is not None else 5 * max(low, high or 4),
                         restart_window=restart_window, async_capacity=async_capacity, _launcher=launcher)
        self.workers = low
        self.min_workers, self.max_workers = low, high
        self._sup.pool.resize(low, high, idle_timeout)
        self.address = address
        self._ray_launcher = launcher
        self._sup.codec.oob = self._objects
        _RAY_RUNTIMES.add(self)

    def start(self, wait: bool = False, timeout: float = 60.0) -> RayRuntime:
        """Connect to Ray (starting a local instance if there is no cluster), then start the pool."""
        with self._lock:
            if self._state is RuntimeState.NEW:
                self._ray_launcher.connect()
        super().start(wait, timeout)
        return self

    def __enter__(self) -> RayRuntime:
        return self.start()

    def _shared_memory(self) -> dict[str, int]:
        """Large buffers in Ray's object store that the driver refers to: ``objects`` and ``bytes`` held now
        (by events, stream items, store values or snapshots), ``put`` by the driver and ``fetched`` from
        workers so far, ``released``."""
        if self._objects is None:
            return {"objects": 0, "bytes": 0, "put": 0, "fetched": 0, "released": 0}
        return self._objects.stats()

    def shutdown(self, timeout: float = 5.0) -> None:
        """End every worker actor, then the Ray connection if this runtime opened it. Idempotent."""
        with self._lock:
            started = self._state is RuntimeState.STARTED
        if started and not self._sup.in_loop_thread():
            # Close the pool (no respawns) before telling launches in progress to give up, so that their
            # failure is not taken for a failed launch; the supervisor's close() does the same first thing.
            with contextlib.suppress(Exception):
                self._sup.call(self._sup.pool.close).result(timeout)
        self._ray_launcher.closing.set()
        try:
            super().shutdown(timeout)
        finally:
            self._ray_launcher.disconnect()


def _limits(workers: int | None, low: int | None, high: int | None) -> tuple[int, int | None]:
    if workers is not None:
        if low is not None or high is not None:
            raise ValueError("RayRuntime: give workers= (a fixed pool) or min_workers=/max_workers=, "
                             "not both")
        if workers < 1:
            raise ValueError(f"RayRuntime(workers={workers!r}): need at least one worker")
        return workers, workers
    low = low if low is not None else min(1, high if high is not None else 1)
    if low < 0 or (high is not None and (high < 1 or high < low)):
        raise ValueError(f"RayRuntime(min_workers={low!r}, max_workers={high!r}): need 0 <= min_workers "
                         "<= max_workers and max_workers >= 1")
    return low, high


_RAY_RUNTIMES: weakref.WeakSet[RayRuntime] = weakref.WeakSet()


@atexit.register
def _shutdown_ray_runtimes() -> None:
    # Registered after ``import ray`` (by launcher.py), so it runs before Ray's own atexit ray.shutdown
    # (atexit is LIFO): the workers are ended while Ray can still reach them. Nothing is left to read the
    # large buffers the runtimes hold, so none is copied out of Ray first.
    objects.EXITING = True
    shut_down_each(_RAY_RUNTIMES)
