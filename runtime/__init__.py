"""The process pool, the per-worker channels and wire protocol, the supervisor loop, run state, adapters."""

from ._adapter import Engine, RunAdapter
from ._runtime import ProcessRunAdapter, ProcessRuntime, get_default_runtime, shutdown_default_runtime
from ._stream import END, EventStream

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
