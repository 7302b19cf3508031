"""The engine: ``ProcessRuntime`` (a supervisor loop and a pool of worker processes) behind the adapter
contract the handler talks to (``Engine``, ``RunAdapter``, ``EventStream``).

Every name is resolved on first access (PEP 562), so a module deep in the package (a worker's entry point,
the forkserver's) does not import the supervisor and the pool with it: a worker process never needs them,
and the forkserver imports fewer modules before the first worker can start. ``RayRuntime`` (the ``ray``
extra) is resolved the same way, so ``import runtime`` never imports ray.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from runtime.default import get_default_runtime, shutdown_default_runtime
    from runtime.engine import Engine, RunAdapter
    from runtime.pool import PoolStats
    from runtime.process_adapter import ProcessRunAdapter
    from runtime.process_runtime import ProcessRuntime
    from runtime.stream import END, EventStream
    from runtime.workers.ray.ray import RayRuntime

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

_WHERE = {
    "END": "runtime.stream",
    "Engine": "runtime.engine",
    "EventStream": "runtime.stream",
    "PoolStats": "runtime.pool",
    "ProcessRunAdapter": "runtime.process_adapter",
    "ProcessRuntime": "runtime.process_runtime",
    "RayRuntime": "runtime.workers.ray.ray",
    "RunAdapter": "runtime.engine",
    "get_default_runtime": "runtime.default",
    "shutdown_default_runtime": "runtime.default",
}


def __getattr__(name: str) -> _typing.Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    value = getattr(_importlib.import_module(where), name)
    if name != "RayRuntime":  # optional, so not among the names ``dir()`` lists: resolved on every access
        globals()[name] = value  # the next access does not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
