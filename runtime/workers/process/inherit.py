"""What a worker takes from its parent as it starts, rather than from the forkserver it is forked from.

The forkserver is started early (``forkserver.py``), so its process state is the parent's of that moment; a
worker forked from it is given the parent's state of the moment the worker starts instead.
"""

from __future__ import annotations

import contextlib
import os
import resource
from multiprocessing import reduction
from typing import Any


class FromParent:
    """What a worker takes from its parent as it starts, rather than from the forkserver: the environment,
    fds 1 and 2 (passed as file descriptors: the launcher gives a closed one ``/dev/null`` before any start),
    the resource limits, the umask, the CPU affinity and the nice value. Made in the parent for each start;
    ``apply()``, first thing in the worker, makes them the worker's own (a limit or priority the worker may
    not take, one raised above what the forkserver had, is left as it is)."""

    def __init__(self) -> None:
        self.environ = dict(os.environ)
        self.stdio = {1: 1, 2: 2}  # target fd -> the fd holding it
        self.limits = {r: resource.getrlimit(r) for r in _LIMITS}
        self.umask = _umask()
        self.affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        self.nice = os.getpriority(os.PRIO_PROCESS, 0)

    def __reduce__(self) -> tuple[Any, ...]:
        # DupFd registers each fd with the start under way, which sends it to the child (SCM_RIGHTS under
        # forkserver, inherited under spawn); so this pickles only inside Process.start().
        state = (self.environ, self.limits, self.umask, self.affinity, self.nice)
        return (_received, (state, {fd: reduction.DupFd(fd) for fd in self.stdio}))

    def apply(self) -> None:
        if self.environ != os.environ:
            os.environ.clear()
            os.environ.update(self.environ)
        for target, fd in self.stdio.items():
            if fd != target:
                os.dup2(fd, target)
                os.close(fd)
        self.stdio = {}
        for r, limit in self.limits.items():
            if resource.getrlimit(r) != limit:
                with contextlib.suppress(ValueError, OSError):
                    resource.setrlimit(r, limit)
        if self.umask is not None:
            os.umask(self.umask)
        with contextlib.suppress(OSError):
            if self.affinity is not None and os.sched_getaffinity(0) != self.affinity:
                os.sched_setaffinity(0, self.affinity)
            if os.getpriority(os.PRIO_PROCESS, 0) != self.nice:
                os.setpriority(os.PRIO_PROCESS, 0, self.nice)


_LIMITS = [getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")]


def _umask() -> int | None:
    """This process's umask, read without setting it (os.umask would, for an instant, for every thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return None


def _received(state: tuple[Any, ...], stdio: dict[int, Any]) -> FromParent:
    """A ``FromParent`` unpickled in the worker: the fds are received, nothing is applied yet."""
    made = FromParent.__new__(FromParent)
    made.environ, made.limits, made.umask, made.affinity, made.nice = state
    made.stdio = {target: dup.detach() for target, dup in stdio.items()}
    return made
