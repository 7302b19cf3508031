"""The process pool, the per-worker channels and wire protocol, the supervisor loop, run state, adapters.

``RayRuntime`` (the ``ray`` extra) is resolved on first access, so ``import runtime`` never imports ray.
"""

from runtime.engine import Engine, RunAdapter
from runtime.process_runtime import (
    ProcessRunAdapter, ProcessRuntime, get_default_runtime, shutdown_default_runtime,
)
from runtime.stream import END, EventStream

__all__ = [
    "END",
    "Engine",
    "EventStream",
    "ProcessRunAdapter",
    "ProcessRuntime",
    "RunAdapter",
    "get_default_runtime",
    "shutdown_default_runtime",
]


def __getattr__(name: str) -> object:
    if name == "RayRuntime":
        from runtime.workers.ray.ray import RayRuntime

        return RayRuntime
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
