"""Starting Ray worker actors: ``RayLauncher``, the shapes of workers, the cluster's room, and the one Ray
connection a process shares between its ``RayRuntime``s.

    RayLauncher.launch_shaped()  [executor thread]  ask Ray for a RayWorker actor of the shape's resources
                                                    (returns at once; RayLink waits for it to start)
    RayLauncher.capacity()       [executor thread]  how many more actors of each shape the nodes' free
                                                    resources hold now
    RayLauncher.want()           [executor thread]  ray.autoscaler.sdk.request_resources(bundles=...): the
                                                    shapes the pool wants in all, for an autoscaler
    connect() / disconnect()     [caller thread]    ray.init unless this process is connected; the last
                                                    runtime using a connection this module opened ends it

Which cluster (Ray's own rule, ``ray.init``): an explicit address; else ``RAY_ADDRESS``; else the cluster
``ray start`` recorded on this machine; else a new local instance. "auto" is the same without the last
step: with no cluster found it is a clear one-line ``ConnectionError``, not Ray's traceback.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import threading
from typing import Any, Callable, Mapping

import ray

from actors import ResourceRequest

from runtime.pool.link import Launcher, WorkerLink
from runtime.workers.ray.actor import RemoteWorker
from runtime.workers.ray.link import RayLink, Starting
from runtime.workers.ray.objects import RayObjects, keep_in_memory

log = logging.getLogger("procflow")

SHAPE_OPTIONS = ("num_cpus", "num_gpus", "memory", "resources", "scheduling_strategy")


class RayLauncher(Launcher):
    """Starts ``RayWorker`` actors; owns the Ray connection a ``RayRuntime`` opened.

    A worker's shape is its actor's ``num_cpus``, ``num_gpus``, ``memory``, ``resources`` and
    ``scheduling_strategy``: the defaults come from ``num_cpus_per_worker`` and ``actor_options``, and a
    step's ``ResourceRequest`` overrides them (custom resources are merged)."""

    def __init__(self, address: str | None, *, num_cpus_per_worker: float = 1.0,
                 actor_options: dict[str, Any] | None = None, init_options: dict[str, Any] | None = None,
                 launch_timeout: float = 120.0, request_resources: bool = True) -> None:
        self.address = address
        options = dict(actor_options or {})
        shape = {name: options.pop(name) for name in SHAPE_OPTIONS if name in options}
        shape.setdefault("num_cpus", num_cpus_per_worker)
        self.default_shape = ResourceRequest(**shape)
        self.actor_options = options
        self.init_options = dict(init_options or {})
        self.launch_timeout = launch_timeout
        self.request_resources = request_resources
        self.workers = 1  # set by RayRuntime (sizes a local Ray instance)
        self.objects: RayObjects | None = None  # set by RayRuntime: large buffers through the object store
        self._node_id: str | None = None
        self._holds_session = False
        self._connected = False
        self._lock = threading.Lock()
        self.closing = threading.Event()  # set at shutdown: launches in progress give up

    # --- the Ray connection -----------------------------------------------------------------------------
    def starts_local(self) -> bool:
        """Whether ``connect`` will start a new local Ray instance: no connection yet, and ``address``
        resolves to none by Ray's rule (see the module docstring)."""
        if ray.is_initialized():
            return False
        if self.address == "local":
            return True
        try:
            from ray._private.services import canonicalize_bootstrap_address

            return canonicalize_bootstrap_address(self.address) is None  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 -- "auto" with no cluster, or a private helper that moved
            return self.address is None and not os.environ.get("RAY_ADDRESS")

    def connect(self) -> None:
        """Join the Ray connection this process has, or open one (idempotent)."""
        with self._lock:
            if self._connected:
                return
            options: dict[str, Any] = {"log_to_driver": False, **self.init_options}
            if self.starts_local():  # only a new instance takes these (joining one refuses num_cpus)
                options.setdefault("include_dashboard", False)
                options.setdefault("num_cpus", max(os.cpu_count() or 1, math.ceil(
                    self.workers * (self.default_shape.num_cpus or 0))))
            try:
                self._holds_session = _session_acquire(self.address, options)
            except ConnectionError as exc:
                raise ConnectionError(_no_cluster(self.address, exc)) from None
            self._connected = True
            self._node_id = local_node_id()

    def disconnect(self) -> None:
        """Give back the connection; the last runtime using one this module opened calls ray.shutdown (the
        large buffers still referred to are copied into this process first: their readers come later)."""
        with self._lock:
            if not self._connected:
                return
            self._connected = False
            if self._holds_session:
                self._holds_session = False
                _session_release()

    # --- shapes -----------------------------------------------------------------------------------------
    def shape_for(self, request: ResourceRequest | None) -> ResourceRequest:
        return self.default_shape if request is None else request.merged_over(self.default_shape)

    def check(self, workflow: str, step: str, request: ResourceRequest) -> None:
        """No node of the cluster holds the step's shape now: say so once (an autoscaler may add one; a
        worker that never starts fails the step's runs after ``launch_timeout``)."""
        shape = self.shape_for(request)
        try:
            nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        except Exception:  # noqa: BLE001 -- Ray Client or an old Ray: nothing to judge by
            return
        if not any(_fits(node, shape.bundle()) for node in nodes):
            log.warning("procflow: step '%s' of %s asks for %s, and no node of the Ray cluster has %s now; "
                        "its runs wait up to %g s for one (an autoscaler may add it)", step, workflow,
                        request.describe(), shape.bundle(), self.launch_timeout)

    def capacity(self, shapes: list[ResourceRequest]) -> Mapping[ResourceRequest, int]:
        """Actors of each shape the nodes' free resources hold now, shapes served in turn."""
        free = [dict(node) for node in _free_per_node()]
        out: dict[ResourceRequest, int] = {}
        for shape in shapes:
            bundle, count = shape.bundle(), 0
            for node in free:
                n = _fits(node, bundle)
                if n:
                    for name, amount in bundle.items():
                        node[name] = node.get(name, 0.0) - n * amount
                    count += n
            out[shape] = count
        return out

    def want(self, bundles: list[ResourceRequest]) -> None:
        if not self.request_resources:
            return
        try:
            import ray.autoscaler.sdk as autoscaler

            autoscaler.request_resources(bundles=[shape.bundle() for shape in bundles])
        except Exception as exc:  # noqa: BLE001 -- no autoscaler support here: only a hint was lost
            log.debug("procflow: request_resources failed: %r", exc)

    # --- workers ----------------------------------------------------------------------------------------
    def launch(self, index: int) -> Starting:
        return self.launch_shaped(index, self.default_shape)

    def launch_shaped(self, index: int, shape: ResourceRequest) -> Starting:
        """Ask Ray for worker actor ``index`` of ``shape``; its ``RayLink`` waits for it to start."""
        if self.closing.is_set():
            raise RuntimeError(f"the runtime is shutting down: worker {index} is not started")
        options = {**self.actor_options, **ray_options(shape), "max_restarts": 0, "max_task_retries": 0}
        threshold = self.objects.threshold if self.objects is not None else None
        actor = RemoteWorker.options(**options).remote(list(sys.path), threshold)
        return Starting(actor, shape, self.launch_timeout, self._node_id, self.closing, self.objects)

    def attach(self, loop: asyncio.AbstractEventLoop, launched: Any,
               on_message: Callable[[object], None], on_death: Callable[[], None]) -> WorkerLink:
        return RayLink(loop, launched, on_message, on_death)


def ray_options(shape: ResourceRequest) -> dict[str, Any]:
    """A shape as ``.options()`` of a Ray actor."""
    out: dict[str, Any] = {"num_cpus": shape.num_cpus or 0, "num_gpus": shape.num_gpus or 0}
    if shape.memory:
        out["memory"] = shape.memory
    if shape.resources:
        out["resources"] = shape.resource_dict()
    if shape.scheduling_strategy is not None:
        out["scheduling_strategy"] = shape.scheduling_strategy
    return out


def _fits(node: Mapping[str, float], bundle: Mapping[str, float]) -> int:
    """How many ``bundle``s ``node``'s resources hold."""
    counts = [math.floor(node.get(name, 0.0) / amount + 1e-9) for name, amount in bundle.items() if amount]
    return max(0, min(counts)) if counts else 1_000


def _free_per_node() -> list[dict[str, float]]:
    try:
        from ray._private.state import available_resources_per_node

        return list(available_resources_per_node().values())
    except Exception:  # noqa: BLE001 -- Ray Client, or the private helper moved: the cluster as one node
        return [dict(ray.available_resources())]


def _no_cluster(address: str | None, exc: BaseException) -> str:
    """Ray's ConnectionError as one line that says which rule picked which cluster, and what to do."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    env = os.environ.get("RAY_ADDRESS")
    if address in (None, "auto") and env:
        return f"RayRuntime(address={address!r}): RAY_ADDRESS={env!r} does not answer: {first}"
    if address in (None, "auto") and "Could not find any running Ray instance" in text:
        return (f"RayRuntime(address={address!r}): no running Ray cluster was found (none in RAY_ADDRESS, "
                "none started with `ray start` on this machine). Start one with `ray start --head`, pass its "
                "address, or use RayRuntime() to start a local Ray")
    if address is None:
        return (f"RayRuntime(): the cluster `ray start` recorded on this machine does not answer: {first} "
                "(`ray stop` forgets it; RayRuntime() then starts a local Ray)")
    return f"RayRuntime(address={address!r}) cannot connect to Ray: {first}"


def local_node_id() -> str | None:
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
            keep_in_memory()  # what the runtimes' results, streams and stores still refer to
            ray.shutdown()
