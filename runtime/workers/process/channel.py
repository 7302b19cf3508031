"""The supervisor's end of one worker's two pipes, driven by the event loop.

Each worker owns a private pair of one-way pipes (``multiprocessing.Pipe(duplex=False)``): an *inbox* the
supervisor writes and an *outbox* the worker writes. Each pipe has exactly one writer and one reader, so it
is a single-producer single-consumer queue that needs no lock, and a worker killed mid-write can corrupt only
its own outbox, which is thrown away with it (a shared ``mp.Queue`` whose lock holder is SIGKILLed stays
locked for every other process).

On this side both fds are non-blocking and served by the loop: reads by a reader callback that parses frames
incrementally (``runtime.wire.framing``; a half-written frame never stalls the loop), writes by a buffer
flushed from a writer callback (a worker that is slow to read never blocks the supervisor).
"""

from __future__ import annotations

import asyncio
import os
import pickle
from multiprocessing.connection import Connection
from typing import Callable

from runtime.wire.framing import FrameReader, frame


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
