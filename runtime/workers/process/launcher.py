"""Worker processes: how the pool starts, talks to, signals and reaps one (``multiprocessing``).

The pool itself (``_pool.py``) only sees ``Launcher`` and ``WorkerLink``; another engine provides its own.

    ProcessLauncher.launch()  [executor thread]  Pipe x2 + Process.start() (forkserver or spawn, __main__ hidden)
    ProcessLauncher.attach()  [loop thread]      Channel on the pipes + loop reader on Process.sentinel
    sentinel readable -> on_death(); ProcessLink.close() reaps it and SIGKILLs what is left of its group
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, Callable, Iterator

import psutil

from runtime.pool.link import Launcher, WorkerLink
from runtime.workers.process.channel import Channel
from runtime.workers.process.main import worker_main

PRELOAD = ["actors", "runtime.workers.process.main"]


_main_lock = threading.Lock()


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start processes without re-importing the parent's ``__main__`` in them.

    spawn and forkserver re-import the main script in the child so that ``__main__.X`` unpickles; we ship
    definitions with cloudpickle instead, and re-importing a script without an ``if __name__ ==
    "__main__"`` guard would run it again in every worker. Hiding ``__file__``/``__spec__`` for the moment of
    the start makes multiprocessing's preparation data leave the main module out. The lock serialises starts;
    other threads reading ``__main__.__file__`` in that instant would see it missing (accepted: a few ms).
    """
    main = sys.modules["__main__"]
    with _main_lock:
        saved: dict[str, Any] = {k: main.__dict__[k] for k in ("__file__", "__spec__")
                                 if k in main.__dict__}
        main.__dict__.pop("__file__", None)
        main.__dict__["__spec__"] = None
        try:
            yield
        finally:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


def make_context(start_method: str) -> BaseContext:
    import multiprocessing

    if start_method not in ("forkserver", "spawn"):
        raise ValueError(f"start_method must be 'forkserver' or 'spawn', not {start_method!r} "
                         "(fork is unsafe from a parent with threads and a running loop)")
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def spawn_process(mp_ctx: BaseContext, index: int) -> tuple[BaseProcess, Any, Any]:
    """Start one worker; blocking (forkserver ~10 ms, spawn ~100 ms), so it runs in an executor thread."""
    inbox_r, inbox_w = mp_ctx.Pipe(duplex=False)
    outbox_r, outbox_w = mp_ctx.Pipe(duplex=False)
    proc = mp_ctx.Process(target=worker_main, args=(inbox_r, outbox_w),  # type: ignore[attr-defined]
                          name=f"procflow-worker-{index}", daemon=False)
    try:
        with _main_module_hidden():
            proc.start()
    finally:
        inbox_r.close()
        outbox_w.close()
    return proc, inbox_w, outbox_r


def signal_tree(pid: int, sig: int, descendants: list[psutil.Process]) -> None:
    """Send ``sig`` to the worker's process group and to every descendant seen; gone is success."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.send_signal(sig)


class ProcessLink(WorkerLink):
    def __init__(self, loop: asyncio.AbstractEventLoop, proc: BaseProcess, channel: Channel,
                 on_death: Callable[[], None]) -> None:
        self.loop, self.proc, self.channel = loop, proc, channel
        self.pid = proc.pid or -1
        self._descendants: list[psutil.Process] | None = None
        loop.add_reader(proc.sentinel, on_death)

    def send(self, msg: object) -> None:
        self.channel.send(msg)

    def signal(self, sig: int) -> None:
        if self._descendants is None:  # seen once, at the first signal: a dead parent hides them later
            self._descendants = []
            with contextlib.suppress(psutil.Error):
                self._descendants = psutil.Process(self.pid).children(recursive=True)
        signal_tree(self.pid, sig, self._descendants)

    def close(self) -> None:
        self.loop.remove_reader(self.proc.sentinel)
        self.proc.join(timeout=1.0)
        self.exitcode = self.proc.exitcode
        # A dead worker's process group may still hold processes its steps started: they go with it.
        signal_tree(self.pid, signal.SIGKILL, self._descendants or [])
        self.channel.close()
        with contextlib.suppress(ValueError):
            self.proc.close()


class ProcessLauncher(Launcher):
    def __init__(self, start_method: str) -> None:
        self.mp_ctx = make_context(start_method)

    def launch(self, index: int) -> tuple[BaseProcess, Any, Any]:
        return spawn_process(self.mp_ctx, index)

    def attach(self, loop: asyncio.AbstractEventLoop, launched: Any,
               on_message: Callable[[object], None], on_death: Callable[[], None]) -> WorkerLink:
        proc, inbox, outbox = launched
        channel = Channel(loop, inbox, outbox, on_message)
        return ProcessLink(loop, proc, channel, on_death)
