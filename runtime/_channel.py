"""The supervisor's end of one worker's two channels, driven by the event loop.

Each worker owns a private pair of one-way pipes (``multiprocessing.Pipe(duplex=False)``): an *inbox* the
supervisor writes and an *outbox* the worker writes. Each pipe has exactly one writer and one reader, so it
is a single-producer single-consumer queue that needs no lock, and a worker killed mid-write can corrupt only
its own outbox, which is thrown away with it (a shared ``mp.Queue`` whose lock holder is SIGKILLed stays
locked for every other process).

On this side both fds are non-blocking and served by the loop: reads by a reader callback that parses
``multiprocessing.connection`` frames incrementally (so a half-written frame never stalls the loop), writes
by a buffer flushed from a writer callback (so a worker that is slow to read never blocks the supervisor).
The worker's side uses plain blocking ``Connection.send_bytes``/``recv_bytes``; the framing is the same.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import struct
from multiprocessing.connection import Connection
from typing import Callable

_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")
# 64 KiB: os.read allocates the whole chunk on every call, and a 256 KiB one cost ~17 us per read.
_READ_CHUNK = 1 << 16


def frame(payload: bytes) -> bytes:
    """``payload`` with the length header ``Connection.recv_bytes`` expects."""
    n = len(payload)
    if n > 0x7FFFFFFF:
        return _HEADER.pack(-1) + _LONG_HEADER.pack(n) + payload
    return _HEADER.pack(n) + payload


class FrameReader:
    """Reads ``multiprocessing.connection`` frames from a non-blocking fd, however the bytes arrive."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = bytearray()
        os.set_blocking(fd, False)

    def read(self) -> list[bytes] | None:
        """The frames completed by what can be read now; [] if nothing is there; None at EOF."""
        try:
            chunk = os.read(self.fd, _READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            chunk = b""
        if not chunk:
            return None
        self._buf += chunk
        out: list[bytes] = []
        buf, pos = self._buf, 0
        while len(buf) - pos >= 4:
            (n,) = _HEADER.unpack_from(buf, pos)
            head = 4
            if n == -1:
                if len(buf) - pos < 12:
                    break
                (n,) = _LONG_HEADER.unpack_from(buf, pos + 4)
                head = 12
            if len(buf) - pos - head < n:
                break
            out.append(bytes(buf[pos + head:pos + head + n]))
            pos += head + n
        del buf[:pos]
        return out


class Channel:
    """Non-blocking, loop-driven ends of a worker's inbox (write) and outbox (read)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, inbox: Connection, outbox: Connection,
                 on_message: Callable[[object], None]) -> None:
        self._loop = loop
        self._inbox, self._outbox = inbox, outbox
        self._wfd, self._rfd = inbox.fileno(), outbox.fileno()
        self._on_message = on_message
        self._reader = FrameReader(self._rfd)
        self._wbuf = bytearray()
        self._flush_pending = False
        self._closed = False
        os.set_blocking(self._wfd, False)
        loop.add_reader(self._rfd, self._on_readable)

    # --- reading ---------------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        frames = self._reader.read()
        if frames is None:
            self.close()  # the worker is gone or going: its sentinel reports the death
            return
        for payload in frames:
            if self._closed:
                return
            self._on_message(pickle.loads(payload))

    # --- writing ---------------------------------------------------------------------------------------
    def send(self, msg: object) -> None:
        """Queue ``msg`` for the worker; never blocks. Dropped silently once the channel is closed.

        Frames queued during one loop iteration go out in one write at its end: under load this turns
        many small syscalls (each waking the worker) into one."""
        if self._closed:
            return
        self._wbuf += frame(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        if self._closed or not self._wbuf:
            return
        try:
            sent = os.write(self._wfd, self._wbuf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._wbuf.clear()
            return  # the worker is gone; its sentinel reports that
        del self._wbuf[:sent]
        if self._wbuf:
            self._loop.add_writer(self._wfd, self._on_writable)

    def _on_writable(self) -> None:
        if self._closed:
            return
        try:
            sent = os.write(self._wfd, self._wbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._wbuf.clear()
            self._loop.remove_writer(self._wfd)
            return
        del self._wbuf[:sent]
        if not self._wbuf:
            self._loop.remove_writer(self._wfd)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._rfd)
        self._loop.remove_writer(self._wfd)
        self._inbox.close()
        self._outbox.close()
