"""procflow's forkserver: the process every worker is forked from, started as early as the program allows.

A worker forked from the forkserver starts in ~10 ms because the forkserver, a fresh interpreter, imported
the worker's modules once (``PRELOAD``). Starting it takes that interpreter's start and imports (~200-300 ms
on a small machine), and a program's first result waits for it. So ``import actors`` starts it
(``actors._launch.prewarm`` -> ``start_early``), and it imports its modules on another core while the
program goes on importing and defining its workflows:

    parent:      import actors ─┬─ (the rest of actors, the program's imports, run(): runtime, handler) ─ fork ─ run
    forkserver:                 └─ interpreter start ── import PRELOAD ──────────────────────────────── ready

``start_early`` does nothing (and the forkserver starts at the first run, as before) when:
- ``PROCFLOW_PREWARM`` is ``0``/``false``/``no``/``off``;
- this process is a child of ``multiprocessing`` (a spawn worker, a user's pool process) or a forkserver
  (ours, preloading ``actors``, or anyone's), or a Ray worker (``ray`` imported before ``actors``);
- it is imported from a thread other than the main thread, or the platform has no forkserver.

A worker forked from the forkserver would take from it, not from the parent, the process state of the
moment the forkserver started: the modules it imported (fine: the same files), the environment, the
standard output and error, the resource limits, the umask, the CPU affinity and the nice value. So each
worker is given the parent's, as they are when that worker starts (``FromParent`` in ``inherit.py``):
``os.environ`` set after ``import actors`` (``load_dotenv()``) reaches the steps, and so do fds 1 and 2
redirected meanwhile (the CLI sends the workers' prints to stderr under ``--json``) and a ``setrlimit`` made
meanwhile. ``sys.path`` and the working directory are multiprocessing's own preparation data, sent with
every start.

A process forked (``os.fork``) from one that started the forkserver must not use it (it is not the child's
child): the at-fork hook here forgets it, so the child starts a forkserver of its own when it needs one.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

# The worker's modules, imported once by the forkserver (every worker forked from it has them); the last one
# freezes them for the garbage collector (``preloaded.py``).
PRELOAD = ["actors", "runtime.workers.process.main", "runtime.workers.process.preloaded"]
_OFF = {"0", "false", "no", "off"}


def prepare(ctx: object) -> None:
    """Give a forkserver context procflow's preload list (before the forkserver starts)."""
    ctx.set_forkserver_preload(PRELOAD)  # type: ignore[attr-defined]


def start_early() -> bool:
    """Start the forkserver now if this process is a program's main process (see the module docstring);
    True if it was started (or already ran). Never raises: a failure only means the first run starts it."""
    if os.environ.get("PROCFLOW_PREWARM", "").strip().lower() in _OFF:
        return False
    if threading.current_thread() is not threading.main_thread() or "ray" in sys.modules:
        return False
    if in_forkserver():
        return False
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        return False
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    try:
        import multiprocessing.forkserver

        prepare(multiprocessing.get_context("forkserver"))
        multiprocessing.forkserver.ensure_running()
    except Exception as exc:  # noqa: BLE001 -- the first run will start it (and report what fails)
        import logging

        logging.getLogger("procflow").debug("procflow: the forkserver could not be started early: %r", exc)
        return False
    return True


def in_forkserver() -> bool:
    """Whether this process is a ``multiprocessing`` forkserver (its command line runs forkserver.main), or
    the child of one (a worker: then this is a program a step started). Both are checked: a forkserver
    that started a forkserver would start one in turn, without end."""
    marker = "multiprocessing.forkserver import main"
    if any(marker in arg for arg in sys.orig_argv):
        return True
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            return marker.encode() in f.read()
    except OSError:
        return False


def _forget_in_forked_child() -> None:
    """After ``os.fork()``: the parent's forkserver is not this process's child (``ensure_running`` would
    fail waiting for it); forget it, keeping the preload list, and close our copy of its alive pipe (which
    would keep it running after the parent)."""
    fs = sys.modules.get("multiprocessing.forkserver")
    server = getattr(fs, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is None:
        return
    alive_fd, preload = server._forkserver_alive_fd, server._preload_modules
    server.__init__()
    server._preload_modules = preload
    if alive_fd is not None:
        with contextlib.suppress(OSError):
            os.close(alive_fd)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_forked_child)
