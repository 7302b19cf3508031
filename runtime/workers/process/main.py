"""The worker process: its entry point, its mailbox, and its guards against being orphaned.

A worker runs in its own process group (so a kill reaches processes its steps started), ignores SIGINT (the
parent owns shutdown on Ctrl-C), and exits on its own when the parent dies: a daemon thread waits on the
parent's sentinel, and the inbox reports EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import multiprocessing
import os
import pickle
import selectors
import signal
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

import uvloop

from actors.host import ActorHost
from actors.host import Done, Packed, Publish, Ready, Request

from runtime.wire import raw
from runtime.wire import segments as shm
from runtime.wire.codec import Codec
from runtime.wire.framing import FrameReader
from runtime.wire.writer import FrameWriter
from runtime.workers.process.inherit import FromParent


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
        out: list[object] = []
        held = 0
        for f in frames:
            tag = f[0]
            if tag == raw.INVOKE:
                out.append(raw.parse_invoke(f))
            elif tag == raw.HELD:  # names segments: unpickling opens them; the parent waits for our word
                held += 1
                out.append(pickle.loads(memoryview(f)[1:]))
            else:
                out.append(pickle.loads(f))
        if held:
            self._opened(held)
        return out

    def _opened(self, frames: int) -> None:
        """The segments named by ``frames`` held frames are open here (the parent may let go of them)."""

    def recv_wait(self) -> list[object]:
        while True:
            self._selector.select()
            msgs = self.recv_ready()
            if msgs:
                return msgs

    def pack(self, obj: Any, keys: frozenset[int] | None = None) -> Packed:
        return self._codec.pack(obj, keys=keys)

    def pack_stream(self, obj: Any) -> Packed:
        return self._codec.pack(obj)

    def unpack(self, packed: Packed) -> Any:
        return self._codec.unpack(packed)

    def load_definition(self, packed: Packed) -> Any:
        return self._codec.load_definition(packed)


class WorkerMailbox(PipeInbox):
    """The worker's ends of its inbox and outbox plus its codec.

    Every message goes through one ``FrameWriter``: what the loop thread sends during one loop iteration
    leaves in one write at its end (or once 64 KiB wait), like the supervisor's side, so a step streaming
    many events, or many steps finishing together, cost one write. A ``Request`` goes at once (its sender
    waits for the reply), and so does the outcome of the last invocation in flight (``send(now=True)``:
    nothing else would join it) and whatever the step thread sends, each after what is already queued.

    ``Publish`` leaves as a raw frame (``runtime.wire.raw``): the event's pickle as it is, with the
    definitions of the local classes it uses that the parent has not had yet; so does a ``Done`` whose result
    is plain, and a plain first ``Invoke`` arrives raw. Large buffers go out of band
    through shared memory segments named under ``segment_prefix``.
    """

    def __init__(self, inbox: Connection, outbox: Connection, segment_prefix: str | None = None) -> None:
        super().__init__(inbox.fileno())
        self._inbox, self._outbox = inbox, outbox  # kept: the Connections own the fds
        self._out_fd = outbox.fileno()
        self._writer = FrameWriter(self._write)
        if segment_prefix and shm.AVAILABLE:
            self._codec.oob = shm.Creator(segment_prefix)
        self._classes_sent: set[int] = set()  # local class keys whose definition went to the parent

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Coalesce the loop thread's sends on ``loop`` (called on that thread)."""
        self._writer.bind(loop)

    def send(self, msg: object, now: bool = False) -> None:
        t = type(msg)
        if t is Done:
            found = raw.done_parts(msg)  # type: ignore[arg-type]
            if found is not None:
                parts, size = found
                self._writer.write_parts(parts, size, urgent=now)
                return
        elif t is Publish:
            self._publish(msg)  # type: ignore[arg-type]
            return
        self._writer.write(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL), urgent=now or t is Request)

    def _publish(self, msg: Publish) -> None:
        packed, codec = msg.event, self._codec
        if not codec.forgotten and (not packed.classes or self._classes_sent.issuperset(packed.classes)):
            # The common case: no definition to send (any sent before is queued before this frame: it was
            # queued under the writer's lock, which this frame's queuing takes too).
            parts, size = raw.publish_parts(msg.inv, packed, ())
            self._writer.write_parts(parts, size)
            return
        with self._writer.lock:  # the definitions go with the first frame the parent reads that uses them
            fresh = [(k, codec.local_definitions[k]) for k in packed.classes if k not in self._classes_sent]
            self._classes_sent.update(k for k, _ in fresh)
            parts, size = raw.publish_parts(msg.inv, packed, fresh)
            self._writer.write_parts(parts, size)
            while codec.forgotten:  # classes that died here: the parent may drop their definitions
                key = codec.forgotten.pop()
                codec.forget_local(key)
                if key in self._classes_sent:
                    self._classes_sent.discard(key)
                    self._writer.write(raw.count_frame(raw.FORGET, key))

    def _opened(self, frames: int) -> None:
        self._writer.write(raw.count_frame(raw.ACK, frames))

    def pack_stream(self, obj: Any) -> Packed:
        return self._codec.pack(obj, local_classes=True)

    def flush(self) -> None:
        """Write what the loop thread queued."""
        self._writer.flush()

    def _write(self, data: bytearray) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._out_fd, view):]
        except BrokenPipeError:
            # The supervisor closed its end (it gave this worker up, or shut down) or died: nobody will read
            # anything from here again. Leave as when the inbox ends, without a traceback on stderr.
            self.orphaned()

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


def worker_main(inbox: Connection, outbox: Connection, segment_prefix: str | None = None,
                parent: FromParent | None = None) -> None:
    """Entry point of a worker process; large payloads go out of band under ``segment_prefix``; ``parent``
    is what the worker takes from its parent as it starts (environment, stdout/stderr, limits, umask,
    affinity, nice value: a forked worker would otherwise have the forkserver's, which may be older)."""
    if parent is not None:
        parent.apply()
    _line_buffered_stdout()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.setpgid(0, 0)
    except OSError:
        pass  # already a group leader, or not permitted: kills then reach this process only
    _exit_with_parent()
    mailbox = WorkerMailbox(inbox, outbox, segment_prefix)
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
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                if stream is not None:
                    stream.flush()  # os._exit skips it: a last line without its newline
        os._exit(0)


def _line_buffered_stdout() -> None:
    """Make ``print`` in a step reach fd 1 line by line, as on a terminal, whatever fd 1 is. Python buffers a
    pipe's or a file's output in blocks and flushes it at a normal exit, which a worker never makes (it
    leaves with ``os._exit``, or is killed): a program run as ``python prog.py > out.log`` lost every line its
    steps printed. stderr is line-buffered already."""
    out = sys.stdout
    if isinstance(out, io.TextIOWrapper) and not (out.line_buffering or out.write_through):
        with contextlib.suppress(Exception):
            out.reconfigure(line_buffering=True)  # flushes what is buffered first
