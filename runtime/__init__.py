"""The engine: ``ProcessRuntime`` (a supervisor loop and a pool of worker processes) behind the adapter
contract the handler talks to (``Engine``, ``RunAdapter``, ``EventStream``).

``RayRuntime`` (the ``ray`` extra) is resolved on first access, so ``import runtime`` never imports ray.
"""

from runtime.default import get_default_runtime, shutdown_default_runtime
from runtime.engine import Engine, RunAdapter
from runtime.pool import PoolStats
from runtime.process_adapter import ProcessRunAdapter
from runtime.process_runtime import ProcessRuntime
from runtime.stream import END, EventStream

__all__ = [
    "END",
    "Engine",
    "EventStream",
    "PoolStats",
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
