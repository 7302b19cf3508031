"""Shapes of workers and the demand for them.

A step's ``ResourceRequest`` is mapped by the launcher to a *need*: the shape of worker that holds it (a
``ResourceRequest`` with every field filled in). The scheduler counts its unplaced invocations by need in a
``Demand``, kept exactly (added at enqueue, removed at dispatch or when an unplaced invocation is dropped),
so that the pool can see what waits, and for which shape, without scanning the queue:

    Scheduler.enqueue --add(need, is_async)--> Demand <--read-- Pool.placement (workers held for def steps)
    Scheduler.dispatch / release --remove-->           <--read-- Pool.grow (workers to start, of which shape)

``check_fits_machine`` is the process runtime's check of a request against this machine.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterator

from actors import WorkflowValidationError

if TYPE_CHECKING:
    from actors import ResourceRequest


class Demand:
    """Unplaced invocations counted by (need, is_async), in the order their keys first appeared.

    On every invocation's path (added at enqueue, removed at dispatch): a plain dict, not a ``Counter``,
    whose missing-key and delete hooks are Python-level, and a count of the ``def`` ones, so that a pass with
    none waiting (the common case) skips ``waiting_sync``'s scan."""

    def __init__(self) -> None:
        self._counts: dict[tuple[ResourceRequest, bool], int] = {}
        self._sync = 0  # unplaced def invocations, whatever their need

    def add(self, need: ResourceRequest, is_async: bool) -> None:
        key = (need, is_async)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        if not is_async:
            self._sync += 1

    def remove(self, need: ResourceRequest, is_async: bool) -> None:
        key = (need, is_async)
        counts = self._counts
        left = counts.get(key, 0) - 1
        if left > 0:
            counts[key] = left
        else:
            counts.pop(key, None)
        if not is_async and left >= 0:
            self._sync -= 1

    def items(self) -> Iterator[tuple[ResourceRequest, bool, int]]:
        for (need, is_async), count in list(self._counts.items()):
            yield need, is_async, count

    def waiting_sync(self) -> dict[ResourceRequest, int]:
        """Unplaced ``def`` invocations by need."""
        if not self._sync:
            return {}
        return {need: n for (need, is_async), n in self._counts.items() if not is_async}

    def total(self) -> int:
        return sum(self._counts.values())

    def __bool__(self) -> bool:
        return bool(self._counts)


# --- this machine ------------------------------------------------------------------------------------------
def local_gpus() -> int:
    """GPUs a process on this machine may use: ``CUDA_VISIBLE_DEVICES`` when set (as Ray reads it), else the
    NVIDIA driver's count (Linux); 0 when neither says."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def local_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_fits_machine(workflow: str, step: str, request: ResourceRequest) -> None:
    """Refuse a request no worker process on this machine can meet, naming the step: a GPU it lacks, any
    custom resource (those are a Ray cluster's), more CPUs or memory than it has."""
    where = f"step '{step}' of {workflow}"
    if request.resources:
        names = ", ".join(f"{n!r}" for n in request.resource_dict())
        raise WorkflowValidationError(
            f"{where} asks for the custom resource(s) {names}, which this machine does not have: the process "
            "runtime runs steps on this machine only. Run it on a Ray cluster whose nodes declare them "
            "(RayRuntime), or remove resources= from the step")
    gpus = local_gpus()
    if (request.num_gpus or 0) > gpus:
        raise WorkflowValidationError(
            f"{where} asks for num_gpus={request.num_gpus:g}, but this machine has {gpus} GPU(s) visible "
            "(CUDA_VISIBLE_DEVICES / the NVIDIA driver). Run it on a Ray cluster with GPU nodes (RayRuntime)")
    cpus = local_cpus()
    if (request.num_cpus or 0) > cpus:
        raise WorkflowValidationError(
            f"{where} asks for num_cpus={request.num_cpus:g}, but this machine has {cpus} CPU(s)")
    import psutil  # when first needed: the first run of a program does not wait for its import

    total = psutil.virtual_memory().total
    if (request.memory or 0) > total:
        raise WorkflowValidationError(
            f"{where} asks for memory={request.memory:.0f} bytes, but this machine has {total} bytes")
