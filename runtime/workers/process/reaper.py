"""The reaper: a tiny process that ends the workers, and what their steps started, when the parent dies.

A worker exits on its own when its parent dies (it watches the parent's sentinel), and takes its process
group with it. Two things escape that: a worker that cannot run (stopped by SIGSTOP: it keeps the forkserver
and the resource tracker alive too), and processes its steps started in a session of their own (not in its
group). The reaper covers both, from outside:

    parent  --stdin pipe: "+ pid starttime" / "- pid" lines-->  reaper (python -I -S this file; stdlib only)
    every WALK_INTERVAL s the reaper walks /proc and remembers every descendant of every worker it was told
        about, by (pid, start time), even once it has been re-parented
    "- pid": that worker is closed; its remembered descendants still alive are killed
    "s+ prefix" / "s- prefix": the parent's runtime owns the shared memory segments named /dev/shm/prefix*
        (runtime.wire.segments) / no longer (it cleaned them up itself)
    "q": the parent closes the pipe on purpose (no worker left): what follows is not a death
    EOF (the parent died, or closed the pipe after "q"): freeze every worker, its group and every
        remembered descendant (SIGSTOP), walk again until no new process appears (frozen processes cannot
        fork), then SIGKILL them all (SIGKILL ends stopped processes too); if the parent died (no "q"),
        unlink the segments of the prefixes it named; and exit

It is started by ``subprocess`` (not by the forkserver, which it must outlive), in a session of its own (a
Ctrl-C or a signal to the parent's group does not end it before it is needed), lazily on the first worker's
launch, and stopped when the last registered worker is gone. A process is identified by its pid *and* its
start time, and signalled through a pidfd opened before its start time is checked: a pid reused by another
process is never signalled.

The parent's side is ``REAPER`` (``watch``/``forget``); a child made by ``os.fork()`` forgets the parent's
reaper (it has no workers of its own, and must not keep the pipe open).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Iterable

WALK_INTERVAL = 0.5  # seconds between walks of /proc (one walk costs a few ms)

Ident = tuple[int, int]  # (pid, start time in clock ticks since boot)


def read_stat(pid: int) -> tuple[int, int] | None:
    """``(ppid, starttime)`` of a live (or zombie) process from /proc, or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data.rpartition(b")")[2].split()  # the command name (in parentheses) may contain anything
    try:
        return int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def starttime(pid: int) -> int | None:
    stat = read_stat(pid)
    return None if stat is None else stat[1]


def send(ident: Ident, sig: int) -> bool:
    """Signal the process ``ident`` names, and no other: the pidfd pins the process the pid names when it
    is opened, and the start time check then tells whether that is still ours. False if it is gone."""
    pid, start = ident
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError) as exc:  # no pidfds (old kernel): a plain kill after the same check
        if isinstance(exc, ProcessLookupError):
            return False
        fd = -1
    try:
        if starttime(pid) != start:
            return False
        if fd >= 0:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(pid, sig)
        return True
    except OSError:
        return False
    finally:
        if fd >= 0:
            os.close(fd)


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, starttime) of every process."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None:
                table[int(name)] = stat
    return table


# --- inside the reaper process ----------------------------------------------------------------------------
class Watch:
    """What the reaper knows: the workers, and every descendant of each it has seen."""

    def __init__(self) -> None:
        self.workers: dict[int, int] = {}  # pid -> start time
        self.seen: dict[int, set[Ident]] = {}  # worker pid -> its descendants seen so far

    def walk(self) -> set[Ident]:
        """Add every live descendant of a worker or of a descendant seen before; forget the dead. Returns
        the descendants found this time that were not known."""
        table = process_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        new: set[Ident] = set()
        for worker, start in self.workers.items():
            known = {i for i in self.seen.get(worker, set()) if table.get(i[0], (0, -1))[1] == i[1]}
            roots = [i[0] for i in known]
            if table.get(worker, (0, -1))[1] == start:
                roots.append(worker)
            while roots:
                for child in children.get(roots.pop(), ()):
                    ident = (child, table[child][1])
                    if ident not in known:
                        known.add(ident)
                        new.add(ident)
                        roots.append(child)
            self.seen[worker] = known
        return new

    def add(self, pid: int, start: int) -> None:
        self.workers[pid] = start
        self.seen.setdefault(pid, set())

    def closed(self, pid: int) -> None:
        """The pool closed this worker: end what it left behind."""
        self.workers.pop(pid, None)
        leftovers = self.seen.pop(pid, set())
        self.walk_and_kill(leftovers, groups=[])

    def everything(self) -> None:
        """The parent is gone: end every worker, its group and every descendant seen."""
        alive = [(pid, start) for pid, start in self.workers.items() if starttime(pid) == start]
        targets = set(alive).union(*self.seen.values())
        self.walk_and_kill(targets, groups=alive)

    def walk_and_kill(self, targets: set[Ident], groups: Iterable[Ident]) -> None:
        """SIGKILL ``targets``, the process groups of the live workers ``groups``, and every process that
        appears under them meanwhile: frozen first (SIGSTOP), since a frozen process cannot fork."""
        groups = list(groups)
        try:
            for ident in groups:  # a live worker: its pid, hence its group id, is still its own
                if send(ident, signal.SIGSTOP):
                    _killpg(ident[0], signal.SIGSTOP)
            for ident in targets:
                send(ident, signal.SIGSTOP)
            for _ in range(50):  # walk until no process appears that was not frozen already
                table = process_table()
                parents = {pid for pid, start in (*targets, *groups) if table.get(pid, (0, -1))[1] == start}
                fresh = {(pid, stat[1]) for pid, stat in table.items()
                         if stat[0] in parents and (pid, stat[1]) not in targets}
                if not fresh:
                    break
                for ident in fresh:
                    send(ident, signal.SIGSTOP)
                targets |= fresh
        finally:
            for ident in groups:
                if starttime(ident[0]) == ident[1]:
                    _killpg(ident[0], signal.SIGKILL)
                send(ident, signal.SIGKILL)
            for ident in targets:
                send(ident, signal.SIGKILL)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


def unlink_prefixes(prefixes: Iterable[str], directory: str = "/dev/shm") -> int:
    """Unlink every file of ``directory`` whose name starts with one of ``prefixes``; the count."""
    heads = tuple(prefixes)
    if not heads:
        return 0
    removed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        if name.startswith(heads):
            try:
                os.unlink(os.path.join(directory, name))
                removed += 1
            except OSError:
                pass
    return removed


def serve(stdin_fd: int = 0) -> None:
    """The reaper's main loop (see the module docstring)."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    watch = Watch()
    prefixes: set[str] = set()
    quitting = False
    buf = b""
    next_walk = time.monotonic()
    while True:
        timeout = max(0.0, next_walk - time.monotonic())
        ready, _, _ = select.select([stdin_fd], [], [], timeout)  # fd 0: select is fine here
        if ready:
            try:
                data = os.read(stdin_fd, 65536)
            except OSError:
                data = b""
            if not data:
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                parts = line.split()
                try:
                    if len(parts) == 3 and parts[0] == b"+":
                        watch.add(int(parts[1]), int(parts[2]))
                    elif len(parts) == 2 and parts[0] == b"-":
                        watch.closed(int(parts[1]))
                    elif len(parts) == 2 and parts[0] == b"s+" and parts[1].startswith(b"procflow."):
                        prefixes.add(parts[1].decode())
                    elif len(parts) == 2 and parts[0] == b"s-":
                        prefixes.discard(parts[1].decode())
                    elif parts == [b"q"]:
                        quitting = True
                except ValueError:
                    pass  # not a line of ours
        if time.monotonic() >= next_walk:
            watch.walk()
            next_walk = time.monotonic() + WALK_INTERVAL
    watch.walk()
    watch.everything()
    if not quitting:  # the parent died: nobody else will unlink its segments (the workers are dead now)
        unlink_prefixes(prefixes)


# --- the parent's side ------------------------------------------------------------------------------------
class Reaper:
    """The parent's handle on its reaper process: started with the first worker, stopped after the last.

    The pipe is written with ``os.write`` (whole lines, no buffer): a child forked mid-write has no buffered
    half-line to flush into it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd = -1  # the pipe's write end
        self._workers: dict[int, int] = {}  # pid -> start time, told again to a reaper started again
        self._prefixes: set[str] = set()  # shared memory prefixes, told again to a reaper started again

    def watch(self, pid: int) -> None:
        """Have the reaper end worker ``pid`` (and what it starts) if this process dies. Call it right after
        starting the worker, while its pid surely names it."""
        start = starttime(pid)
        if start is None:
            return  # already gone: the pool sees its death
        with self._lock:
            self._workers[pid] = start
            self._write(f"+ {pid} {start}\n".encode())

    def forget(self, pid: int) -> None:
        """Worker ``pid`` is closed: the reaper ends what it left and stops watching it; the reaper itself
        stops with the last worker."""
        with self._lock:
            if self._workers.pop(pid, None) is None:
                return
            self._write(f"- {pid}\n".encode())
            if not self._workers:
                self._stop()

    def watch_segments(self, prefix: str) -> None:
        """Have the reaper unlink the shared memory segments named ``prefix*`` if this process dies (told
        to the reaper running now, or to the next one started)."""
        with self._lock:
            if prefix not in self._prefixes:
                self._prefixes.add(prefix)
                if self._proc is not None:
                    self._write(f"s+ {prefix}\n".encode())

    def forget_segments(self, prefix: str) -> None:
        """The runtime cleaned its segments up itself."""
        with self._lock:
            if prefix in self._prefixes:
                self._prefixes.discard(prefix)
                if self._proc is not None:
                    self._write(f"s- {prefix}\n".encode())

    def pid(self) -> int | None:
        """The reaper's pid while it runs."""
        with self._lock:
            return None if self._proc is None else self._proc.pid

    def _write(self, line: bytes) -> None:
        for _ in range(2):
            if self._proc is None or self._proc.poll() is not None:
                self._stop()
                if not self._workers:
                    return
                self._start()
            try:
                os.write(self._fd, line)  # a line is far below PIPE_BUF: written whole
                return
            except OSError:  # the reaper died (killed from outside): start another, tell it everything
                self._stop()

    def _start(self) -> None:
        read_end, self._fd = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__)], stdin=read_end,
                stdout=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise
        finally:
            os.close(read_end)
        os.write(self._fd, b"".join([f"+ {pid} {st}\n".encode() for pid, st in self._workers.items()]
                                    + [f"s+ {prefix}\n".encode() for prefix in self._prefixes]))

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if self._fd >= 0:
            try:
                os.write(self._fd, b"q\n")  # on purpose: not a death (the segments stay)
            except OSError:
                pass
            os.close(self._fd)  # EOF: the reaper ends what it still watches (nothing) and exits
            self._fd = -1
        if proc is not None:
            # Reap it without blocking the caller (the supervisor's loop): it exits within milliseconds.
            threading.Thread(target=proc.wait, name="procflow-reaper-wait", daemon=True).start()

    def _after_fork_in_child(self) -> None:
        """In a child of ``os.fork()``: the reaper and the workers are the parent's. Drop them without a
        word (closing our copy of the pipe tells the reaper nothing: the parent still holds it)."""
        self._lock = threading.Lock()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._proc is not None:
            self._proc.returncode = 0  # not our child: nothing to wait for
            self._proc = None
        self._workers = {}
        self._prefixes = set()


REAPER = Reaper()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=REAPER._after_fork_in_child)


if __name__ == "__main__":
    serve()
