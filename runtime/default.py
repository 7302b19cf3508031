"""The default runtime: made on first use by ``Workflow.run()``, replaced when broken, shut down at exit.

Every ``ProcessRuntime`` registers here (weakly) so that interpreter exit ends its workers; a process forked
from one that used a runtime starts with none (its supervisor thread did not survive the fork).
"""

from __future__ import annotations

import atexit
import multiprocessing.util  # noqa: F401 -- see _shutdown_all: its exit hook must be registered first
import os
import threading
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.process_runtime import ProcessRuntime

_ALL: weakref.WeakSet[ProcessRuntime] = weakref.WeakSet()
_default: ProcessRuntime | None = None
_default_lock = threading.Lock()


def register(rt: ProcessRuntime) -> None:
    _ALL.add(rt)


def get_default_runtime() -> ProcessRuntime:
    """The runtime ``Workflow.run()`` uses when the workflow names none; replaced if broken."""
    from runtime.process_runtime import ProcessRuntime

    global _default
    with _default_lock:
        if _default is None or _default.broken or _default.is_shut_down:
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


def _forget_after_fork() -> None:
    """In a forked child the parent's runtimes are shells (no supervisor thread, the workers are the
    parent's): forget them without touching them, so the child's first run makes a runtime of its own."""
    global _default, _default_lock
    _default = None
    _default_lock = threading.Lock()
    for rt in list(_ALL):
        rt._forked_away()
    _ALL.clear()


# atexit runs hooks last-registered first. multiprocessing's own hook joins every live child process, so
# ours, which ends the workers, must be registered after it (hence the import above), or exit waits for
# workers nobody will ever stop.
def shut_down_each(runtimes: Iterable[ProcessRuntime]) -> None:
    """Shut each runtime down (at exit: briefly), whatever one of them does."""
    for rt in list(runtimes):
        try:
            rt.shutdown(timeout=2.0)
        except Exception:  # noqa: BLE001 -- at exit, finish the others whatever one does
            pass


@atexit.register
def _shutdown_all() -> None:
    shut_down_each(_ALL)


os.register_at_fork(after_in_child=_forget_after_fork)
