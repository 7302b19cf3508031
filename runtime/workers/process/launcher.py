"""Worker processes: how the pool starts, talks to, signals and reaps one (``multiprocessing``).

The pool itself (``_pool.py``) only sees ``Launcher`` and ``WorkerLink``; another engine provides its own.

    ProcessLauncher.launch()  [executor thread]  Pipe x2 + Process.start() (forkserver or spawn, __main__ hidden)
                                                 + the worker's identity (psutil) + the reaper watches it
    ProcessLauncher.attach()  [loop thread]      Channel on the pipes + loop reader on Process.sentinel
    sentinel readable -> on_death(); ProcessLink.close() reaps it and SIGKILLs what is left of its group

A pid names our worker only while the worker lives: the forkserver reaps its children the moment they die, so
by the time ``close()`` runs the number may name another process. So nothing is signalled by bare pid: the
worker and its descendants through ``psutil.Process`` objects taken while they were ours (psutil checks the
start time before it signals), and the worker's process group only while that group id is still the worker's
(see ``ProcessLink._group_is_ours``).

A worker stopped by SIGSTOP (or SIGTSTP) can take no work, yet its sentinel never fires: the link checks the
worker's state every ``FROZEN_CHECK`` seconds and kills a worker found stopped twice in a row, so the pool
replaces it (a death the pool sees, instead of invocations that hang on it).

The reaper (``reaper.py``) ends the workers, and what their steps started, if this process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import logging
import os
import signal
import sys
import threading
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, Callable, Iterator

from runtime.pool.link import Launcher, WorkerLink

if TYPE_CHECKING:
    import psutil
from runtime.wire.segment_table import SegmentTable, remove_orphans_once
from runtime.workers.process.channel import Channel
from runtime.workers.process.forkserver import prepare
from runtime.workers.process.inherit import FromParent
from runtime.workers.process.main import worker_main
from runtime.workers.process.reaper import REAPER

log = logging.getLogger("procflow")

FROZEN_CHECK = 0.5  # seconds between checks that a worker is not stopped


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
        prepare(ctx)
    return ctx


@dataclass
class Launched:
    """A started worker: its process, the parent's ends of its pipes, and its identity."""

    proc: BaseProcess
    inbox: Connection
    outbox: Connection
    process: psutil.Process | None  # taken right after the start, while the pid surely named the worker
    creator: int = 0  # the number its shared memory segments are named under (0: none)


def spawn_process(mp_ctx: BaseContext, index: int, segment_prefix: str | None = None,
                  creator: int = 0) -> Launched:
    """Start one worker; blocking (forkserver ~10 ms, spawn ~100 ms), so it runs in an executor thread.

    The child's ends of the pipes are closed here whatever happens; the parent's ends are handed to the
    caller once the worker started, and closed here if anything fails before."""
    _fill_closed_stdio()
    with contextlib.ExitStack() as child_ends, contextlib.ExitStack() as parent_ends:
        inbox_r, inbox_w = mp_ctx.Pipe(duplex=False)
        child_ends.callback(inbox_r.close)
        parent_ends.callback(inbox_w.close)
        outbox_r, outbox_w = mp_ctx.Pipe(duplex=False)
        child_ends.callback(outbox_w.close)
        parent_ends.callback(outbox_r.close)
        proc = mp_ctx.Process(target=worker_main,  # type: ignore[attr-defined]
                              args=(inbox_r, outbox_w, segment_prefix, FromParent()),
                              name=f"procflow-worker-{index}", daemon=False)
        with _main_module_hidden():
            _import_psutil_meanwhile()
            proc.start()
            _STARTED.add(proc)
            # Under the start lock: no other start's cleanup reaps it meanwhile (spawn), and a pid is
            # reused only after its process died: this names the worker unless it died in these microseconds.
            process = _identify(proc.pid)
        if process is not None:
            try:
                REAPER.watch(process.pid)
            except OSError as exc:  # the worker runs unguarded against our death rather than not at all
                log.warning("procflow: the reaper could not be started for worker pid %d: %r",
                            process.pid, exc)
        parent_ends.pop_all()
    return Launched(proc, inbox_w, outbox_r, process, creator)


def _fill_closed_stdio() -> None:
    """A program that closed fd 0, 1 or 2 would have the next pipe take its number: the worker would then
    find its pipe where its stdout should be, and uvloop refuses to close fds 0-2 (it aborts the process).
    A closed standard fd gets ``/dev/null`` instead (a program that restores it later is not hindered); so
    the fds 1 and 2 each start hands over (``FromParent``) are open."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


_psutil_import: threading.Thread | None = None


def _import_psutil_meanwhile() -> None:
    """Import psutil on a thread of its own while the first worker starts (``_identify`` needs it right
    after): a program's first start waits on the forkserver, which is often still importing, and the import
    (~10 ms) then costs the first result nothing. ``_identify``'s own import waits for this one's end.

    Called with ``_main_lock`` held, so that a fork (``_before_fork`` takes the lock, then joins this thread)
    never happens while the import holds psutil's module lock: the child, without the thread, would wait on
    that lock for ever at its own first start."""
    global _psutil_import
    if _psutil_import is None and "psutil" not in sys.modules:
        thread = threading.Thread(target=importlib.import_module, args=("psutil",),
                                  name="procflow-import-psutil", daemon=True)
        thread.start()
        _psutil_import = thread


def _identify(pid: int | None) -> psutil.Process | None:
    import psutil  # imported when first needed: a worker process never needs it

    if pid is None:
        return None
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None  # already gone: its sentinel reports it


class ProcessLink(WorkerLink):
    def __init__(self, loop: asyncio.AbstractEventLoop, launched: Launched, channel: Channel,
                 on_death: Callable[[], None], segments: SegmentTable | None = None) -> None:
        self.loop, self.proc, self.channel = loop, launched.proc, channel
        self._segments, self._creator = segments, launched.creator
        self.pid = launched.proc.pid or -1
        self._process = launched.process
        self._descendants: set[psutil.Process] = set()  # psutil hashes a process by pid and start time
        self._closed = False
        self._stopped_once = False
        self._signal_lock = threading.Lock()
        loop.add_reader(self.proc.sentinel, on_death)
        self._frozen_check: asyncio.TimerHandle | None = loop.call_later(FROZEN_CHECK, self._check_frozen)

    def send(self, msg: object) -> None:
        self.channel.send(msg)

    def _alive(self) -> bool:
        """Whether the worker is still the process we started (alive, or dead but not reaped)."""
        return self._process is not None and self._process.is_running()

    def _group_is_ours(self) -> bool:
        """Whether the process group numbered like the worker's pid is still the worker's. A group id is not
        given to a new group while a member lives, and a new group takes the id of its leader's pid: so the
        group is ours if the worker still is, or if no process has that pid now."""
        import psutil

        if self._alive():
            return True
        try:
            psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            return False
        return False  # another process has the pid: the worker's group was empty when it got it

    def signal(self, sig: int) -> None:
        # The pool signals from its signalling thread; close() runs on the loop thread.
        with self._signal_lock:
            self._signal_locked(sig)

    def _signal_locked(self, sig: int) -> None:
        import psutil

        if self._alive():  # the descendants it has now (a dead parent hides its children later)
            with contextlib.suppress(psutil.Error):
                self._descendants.update(self._process.children(recursive=True))  # type: ignore[union-attr]
        if self._group_is_ours():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
        for p in (self._process, *self._descendants):
            if p is not None:
                with contextlib.suppress(psutil.Error):
                    p.send_signal(sig)  # psutil refuses a pid that names another process now

    def stopped(self) -> bool:
        """Whether the worker is stopped (SIGSTOP, SIGTSTP): alive, but it can do nothing."""
        import psutil

        try:
            return self._process is not None and self._process.status() == psutil.STATUS_STOPPED
        except psutil.Error:
            return False

    def _check_frozen(self) -> None:
        self._frozen_check = None
        if self._closed:
            return
        stopped = self.stopped()
        if stopped and self._stopped_once:
            why = f"stopped (SIGSTOP?) for over {FROZEN_CHECK:g} s: it can take no work"
            if self.on_frozen is not None:
                self.on_frozen(why)  # the pool kills it as its own decision: its work is re-queued
            else:
                log.warning("procflow: worker pid %d %s; killing it", self.pid, why)
                self.signal(signal.SIGKILL)
            return
        self._stopped_once = stopped
        self._frozen_check = self.loop.call_later(FROZEN_CHECK, self._check_frozen)

    def close(self) -> None:
        self._closed = True
        if self._frozen_check is not None:
            self._frozen_check.cancel()
        self.loop.remove_reader(self.proc.sentinel)
        self.proc.join(timeout=1.0)
        self.exitcode = self.proc.exitcode
        # A dead worker's process group may still hold processes its steps started: they go with it.
        self.signal(signal.SIGKILL)
        REAPER.forget(self.pid)  # and so do those it started in sessions of their own
        self.channel.close()
        if self._segments is not None and self._creator:
            # What it wrote and never handed over (it died mid-message, or its last frames were never read).
            self._segments.forget_creator(self._creator)
        with contextlib.suppress(ValueError):
            self.proc.close()


_STARTED: weakref.WeakSet[BaseProcess] = weakref.WeakSet()  # the workers this process started


def _before_fork() -> None:
    # A fork waits for a worker start in progress to end: the start holds our lock and, inside
    # Process.start(), multiprocessing's forkserver and resource-tracker locks, and hides __main__'s
    # __file__; a child forked in that instant would inherit them held (its own starts would wait for ever)
    # and __main__ without its file. It waits for the psutil import too (a module lock held by a thread the
    # child lacks would hang the child's own import of it).
    _main_lock.acquire()
    if _psutil_import is not None:
        _psutil_import.join()


def _after_fork_in_parent() -> None:
    _main_lock.release()


def _after_fork_in_child() -> None:
    """In a child made by ``os.fork()``: the workers are the parent's, not the child's. multiprocessing would
    make the child join them at exit (an AssertionError): forget them (``forkserver.py`` forgets the
    parent's forkserver), so that a runtime made in the child starts workers of its own."""
    import multiprocessing.process

    global _main_lock
    _main_lock = threading.Lock()  # held by the forking thread (``_before_fork``), which the child lacks
    children = getattr(multiprocessing.process, "_children", None)
    for proc in list(_STARTED):
        if isinstance(children, set):
            children.discard(proc)
    _STARTED.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


class ProcessLauncher(Launcher):
    """Starts worker processes; with ``segments`` (the runtime's ``SegmentTable``), their large payloads go
    through shared memory, each worker writing under a creator number of its own."""

    def __init__(self, start_method: str, segments: SegmentTable | None = None) -> None:
        _fill_closed_stdio()  # before the supervisor's loop makes its own fds
        self.mp_ctx = make_context(start_method)
        self.segments = segments
        self._creators = itertools.count(1)

    def launch(self, index: int) -> Launched:
        if self.segments is None:
            return spawn_process(self.mp_ctx, index)
        remove_orphans_once()  # segments of procflow parents SIGKILLed before anything cleaned up
        creator = next(self._creators)
        return spawn_process(self.mp_ctx, index, self.segments.creator_prefix(creator), creator)

    def attach(self, loop: asyncio.AbstractEventLoop, launched: Any,
               on_message: Callable[[object], None], on_death: Callable[[], None]) -> WorkerLink:
        channel = Channel(loop, launched.inbox, launched.outbox, on_message)
        return ProcessLink(loop, launched, channel, on_death, self.segments)
