"""The worker process: its entry point, its mailbox, and its guards against being orphaned.

A worker runs in its own process group (so a kill reaches processes its steps started), ignores SIGINT (the
parent owns shutdown on Ctrl-C), and exits on its own when the parent dies: a daemon thread waits on the
parent's sentinel, and the inbox reports EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import pickle
import selectors
import signal
import threading
from multiprocessing.connection import Connection
from typing import Any

import uvloop

from actors.host import ActorHost
from actors.host import Packed, Ready, Request

from runtime.wire.framing import FrameReader, frame
from runtime.wire.codec import Codec


class PipeInbox:
    """The reading half of a ``Mailbox`` (an inbox pipe, framed pickles) and its codec; shared by the
    process worker and the Ray worker."""

    def __init__(self, inbox_fd: int) -> None:
        self._in_fd = inbox_fd
        self._reader = FrameReader(inbox_fd)
        self._codec = Codec()
        # For blocking waits (recv_wait): epoll takes any fd number (select.select fails from 1024 on).
        self._selector = selectors.DefaultSelector()
        self._selector.register(inbox_fd, selectors.EVENT_READ)

    def fileno(self) -> int:
        return self._in_fd

    def recv_ready(self) -> list[object]:
        frames = self._reader.read()
        if frames is None:
            raise EOFError("the inbox was closed: the supervisor is gone")
        return [pickle.loads(f) for f in frames]

    def recv_wait(self) -> list[object]:
        while True:
            self._selector.select()
            msgs = self.recv_ready()
            if msgs:
                return msgs

    def pack(self, obj: Any) -> Packed:
        return self._codec.pack(obj)

    def unpack(self, packed: Packed) -> Any:
        return self._codec.unpack(packed)

    def load_definition(self, packed: Packed) -> Any:
        return self._codec.load_definition(packed)


class WorkerMailbox(PipeInbox):
    """The worker's ends of its inbox and outbox plus its codec.

    Messages sent on the loop thread are framed into a buffer written once at the end of the loop
    iteration (or when it passes 64 KiB), like the supervisor's side: a step streaming many events, or many
    steps finishing together, cost one write. A ``Request`` is written at once (its sender waits for the
    reply), after what is buffered. The step thread writes directly: its messages have no order to keep
    with the loop thread's except its ``Done``, which the loop thread sends after the step returned.
    """

    def __init__(self, inbox: Connection, outbox: Connection) -> None:
        super().__init__(inbox.fileno())
        self._inbox, self._outbox = inbox, outbox  # kept: the Connections own the fds
        self._out_fd = outbox.fileno()
        self._send_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._buffer = bytearray()
        self._flush_pending = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Buffer the loop thread's sends on ``loop`` (called on that thread)."""
        self._loop, self._loop_thread = loop, threading.get_ident()

    def send(self, msg: object) -> None:
        data = frame(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))
        if self._loop is None or threading.get_ident() != self._loop_thread:
            self._write(data)
            return
        self._buffer += data
        if isinstance(msg, Request) or len(self._buffer) > 1 << 16:
            self.flush()
        elif not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what the loop thread buffered (loop thread only)."""
        self._flush_pending = False
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            self._write(data)

    def _write(self, data: bytes) -> None:
        # One lock for whole frames: the loop thread and the step thread both write here, and
        # interleaved halves of two frames would corrupt the outbox.
        with self._send_lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self._out_fd, view):]

    def orphaned(self) -> None:
        die_with_group()


def die_with_group() -> None:
    """Exit now, taking down the processes this worker's steps started (they share its process group)."""
    with contextlib.suppress(OSError):
        if os.getpgid(0) == os.getpid():
            os.killpg(0, signal.SIGKILL)  # includes this process
    os._exit(0)


def _exit_with_parent() -> None:
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        from multiprocessing.connection import wait

        wait([parent.sentinel])
        die_with_group()

    threading.Thread(target=watch, name="procflow-parent-watch", daemon=True).start()


def worker_main(inbox: Connection, outbox: Connection) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.setpgid(0, 0)
    except OSError:
        pass  # already a group leader, or not permitted: kills then reach this process only
    _exit_with_parent()
    mailbox = WorkerMailbox(inbox, outbox)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    host = ActorHost(mailbox, loop)
    mailbox.bind(loop)
    host.start()
    mailbox.send(Ready(os.getpid()))
    try:
        loop.run_forever()
    finally:
        # Leave without joining the step thread: a step still running is abandoned with the process.
        os._exit(0)
