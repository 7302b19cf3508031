"""The supervisor's end of one worker's two pipes, driven by the event loop.

Each worker owns a private pair of one-way pipes (``multiprocessing.Pipe(duplex=False)``): an *inbox* the
supervisor writes and an *outbox* the worker writes. Each pipe has exactly one writer and one reader, so it
is a single-producer single-consumer queue that needs no lock, and a worker killed mid-write can corrupt only
its own outbox, which is thrown away with it (a shared ``mp.Queue`` whose lock holder is SIGKILLed stays
locked for every other process).

On this side both pipes are uvloop transports (``connect_read_pipe``/``connect_write_pipe``: reads and
writes in C, never blocking the loop): what arrives is cut into frames (``runtime.wire.framing``; a
half-written frame never stalls the loop) and decoded by ``_received``; what goes out is framed and coalesced
per loop iteration by the shared ``FrameWriter`` (``runtime.wire.writer``), then handed to the transport,
which buffers what the pipe does not take at once (a worker slow to read never blocks the supervisor).

Frames in (``runtime.wire.raw``): pickled messages; raw ``Done`` frames (the result stays pickled: it is
routed by class key); raw ``Publish`` frames, passed on still pickled (the event is unpickled by the stream's
reader, never here) with the definitions of the worker's local classes kept as bytes in this channel's table;
``Ack`` and ``Forget`` handled here. Frames out: a plain first ``Invoke`` raw, the rest pickled; those that
name shared memory segments (an ``Invoke`` or ``Reply`` carrying a large payload) hold those segments here
until the worker acknowledges it has opened them: the parent may drop its own last reference meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
from collections import deque
from multiprocessing.connection import Connection
from typing import Any, Callable

from actors.host import Invoke, Reply

from runtime.wire import raw
from runtime.wire.codec import ClassEntry
from runtime.wire.framing import FrameParser
from runtime.wire.writer import FrameWriter

log = logging.getLogger("procflow")


class _Fd:
    """A pipe end handed to a uvloop transport, which owns (and closes) the descriptor from then on."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        pass  # the transport closed the descriptor itself


class _ReadProtocol(asyncio.Protocol):
    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def data_received(self, data: bytes) -> None:
        self.channel._received(data)

    def eof_received(self) -> bool:
        self.channel.close()  # the worker is gone or going: its sentinel reports the death
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.channel.close()


class _WriteProtocol(asyncio.BaseProtocol):
    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def connection_lost(self, exc: Exception | None) -> None:
        self.channel._writer.close()  # the worker is gone; its sentinel reports that


def _held_segments(msg: object) -> list[Any]:
    """The segment handles a message to a worker names (only ``Invoke`` and ``Reply`` carry payloads)."""
    t = type(msg)
    if t is Invoke:
        found = [b[0] for b in msg.event.buffers if type(b) is tuple]  # type: ignore[attr-defined]
        for _, packed in msg.resumed:  # type: ignore[attr-defined]
            found += [b[0] for b in packed.buffers if type(b) is tuple]
        return found
    if t is Reply:
        return [b[0] for b in msg.value.buffers if type(b) is tuple]  # type: ignore[attr-defined]
    return []


class Channel:
    """Loop-driven ends of a worker's inbox (write) and outbox (read)."""

    # True while the lone frame of a read is handled and nothing has been sent for it yet (every channel of
    # a supervisor lives on its loop thread): see ``send``.
    _send_now = False

    def __init__(self, loop: asyncio.AbstractEventLoop, inbox: Connection, outbox: Connection,
                 on_message: Callable[[object], None]) -> None:
        self._loop = loop
        self._on_message = on_message
        self._parser = FrameParser()
        self._classes: dict[int, ClassEntry] = {}  # the worker's local class keys -> definitions
        self._held: deque[list[Any]] = deque()  # segments of frames sent, until the worker opened them
        self._writer = FrameWriter(self._sink)
        self._writer.bind(loop)
        self._early: list[bytearray] = []  # written before the write transport was up
        self._wtransport: asyncio.WriteTransport | None = None
        self._rtransport: asyncio.ReadTransport | None = None
        self._closed = False
        # The transports own the descriptors from here on: they get duplicates, the Connections are closed.
        rfd, wfd = os.dup(outbox.fileno()), os.dup(inbox.fileno())
        inbox.close()
        outbox.close()
        loop.create_task(self._connect(rfd, wfd))

    async def _connect(self, rfd: int, wfd: int) -> None:
        try:
            self._rtransport, _ = await self._loop.connect_read_pipe(lambda: _ReadProtocol(self), _Fd(rfd))
        except BaseException:
            log.exception("procflow: could not read a worker's outbox")
            os.close(wfd)
            self.close()
            return
        try:
            self._wtransport, _ = await self._loop.connect_write_pipe(lambda: _WriteProtocol(self), _Fd(wfd))
        except BaseException:
            log.exception("procflow: could not write a worker's inbox")
            self.close()
            return
        if self._closed:
            self._close_transports()
            return
        early, self._early = self._early, []
        for data in early:
            self._wtransport.write(data)

    # --- reading ---------------------------------------------------------------------------------------
    def _received(self, data: bytes) -> None:
        frames = self._parser.feed(data)
        lone = len(frames) == 1
        for payload in frames:
            if self._closed:
                return
            msg: object
            try:
                tag = payload[0]
                if tag == raw.DONE:
                    msg = raw.parse_done(payload)
                elif tag == raw.PICKLE:
                    msg = pickle.loads(payload)
                elif tag == raw.PUBLISH:
                    msg = raw.parse_publish(payload, self._classes)
                elif tag == raw.ACK:
                    for _ in range(raw.parse_count(payload)):
                        if self._held:
                            self._held.popleft()
                    continue
                elif tag == raw.FORGET:
                    self._classes.pop(raw.parse_count(payload), None)
                    continue
                else:
                    raise ValueError(f"unknown frame tag {tag:#x}")
            except Exception:  # noqa: BLE001 -- a frame we cannot read is logged; the next one may be fine
                log.exception("procflow: could not decode a message from a worker")
                continue
            Channel._send_now = lone
            try:
                self._on_message(msg)
            finally:
                Channel._send_now = False

    # --- writing ---------------------------------------------------------------------------------------
    def send(self, msg: object) -> None:
        """Queue ``msg`` for the worker; never blocks. Dropped silently once the channel is closed.

        Frames queued during one loop iteration go out in one write at its end: under load this turns
        many small syscalls (each waking the worker) into one. The exception: the first message sent while
        the lone frame of a read is handled (a hop's Invoke after its Done, a Reply to a Request) leaves at
        once, so that its worker wakes while this thread finishes the hop's bookkeeping; what follows it
        coalesces as usual, and reads of several frames (load) coalesce from their first message on."""
        if self._closed:
            return
        now = Channel._send_now
        Channel._send_now = False
        if type(msg) is Invoke:
            found = raw.invoke_parts(msg)  # type: ignore[arg-type]
            if found is not None:
                parts, size = found
                self._writer.write_parts(parts, size, urgent=now)
                return
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        segments = _held_segments(msg)
        if segments:
            self._held.append(segments)
            self._writer.write_parts((b"H", data), len(data) + 1, urgent=now)
        else:
            self._writer.write(data, urgent=now)

    def _sink(self, data: bytearray) -> None:
        if self._wtransport is None:
            self._early.append(data)
        elif not self._wtransport.is_closing():
            self._wtransport.write(data)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        self._held.clear()
        self._early.clear()
        self._close_transports()

    def _close_transports(self) -> None:
        if self._rtransport is not None:
            self._rtransport.close()
        if self._wtransport is not None:
            self._wtransport.abort()  # no flush: the worker is gone or being killed
