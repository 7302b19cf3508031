"""One framing and coalescing writer, for every link (the supervisor's channels, the worker's mailbox, and any
other link that frames messages on a byte stream).

    write(payload)               -> appended; the whole buffer goes out in ONE sink call at the end of the
                                    loop iteration (or once it passes ``limit``). From another thread than
                                    the loop's, the flush is handed to the loop (one wake-up per batch)
    write(payload, urgent=True)  -> appended, and the buffer goes out now, from the caller's thread

Many small messages in one iteration (a step streaming events, many steps finishing together, a ``def``
step streaming from its own thread) cost one syscall and wake the reader once. One lock orders every frame:
the stream carries frames in the order they were queued, whichever thread queued them, and a frame is never
split by another.

The sink receives a buffer it owns from then on (never touched again by the writer): a transport may keep it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Callable, Iterable

from runtime.wire.framing import frame_header

Sink = Callable[[bytearray], None]
LIMIT = 1 << 16  # bytes waiting before a loop-thread write goes out without waiting for the iteration's end


class FrameWriter:
    """Frames, coalesces and hands buffers to ``sink`` (see the module docstring)."""

    __slots__ = ("_sink", "_limit", "_buf", "lock", "_loop", "_loop_thread", "_pending", "_closed")

    def __init__(self, sink: Sink, limit: int = LIMIT) -> None:
        self._sink = sink
        self._limit = limit
        self._buf = bytearray()
        # Held while a frame is queued and while a buffer is handed to the sink; callers may hold it to make a
        # decision atomically with queuing (re-entrant for that).
        self.lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = -1
        self._pending = False
        self._closed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Coalesce what ``loop``'s thread writes (called on that thread)."""
        self._loop, self._loop_thread = loop, threading.get_ident()

    def write(self, payload: bytes | bytearray | memoryview, urgent: bool = False) -> None:
        """Queue one frame holding ``payload``."""
        with self.lock:
            if self._closed:
                return
            buf = self._buf
            buf += frame_header(len(payload))
            buf += payload
            self._after_append(urgent)

    def write_parts(self, parts: Iterable[bytes | bytearray | memoryview], size: int, urgent: bool = False
                    ) -> None:
        """Queue one frame whose payload is ``parts`` concatenated (``size`` bytes in all), without building
        the payload first."""
        with self.lock:
            if self._closed:
                return
            buf = self._buf
            buf += frame_header(size)
            for part in parts:
                buf += part
            self._after_append(urgent)

    def _after_append(self, urgent: bool) -> None:
        if urgent or self._loop is None or len(self._buf) > self._limit:
            self._flush_locked()
        elif not self._pending:
            self._pending = True
            if threading.get_ident() == self._loop_thread:
                self._loop.call_soon(self.flush)
            else:
                try:
                    self._loop.call_soon_threadsafe(self.flush)
                except RuntimeError:  # the loop is closed: nobody would flush
                    self._flush_locked()

    def flush(self) -> None:
        """Hand what is queued to the sink now."""
        with self.lock:
            self._pending = False
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._buf or self._closed:
            return
        data, self._buf = self._buf, bytearray()
        self._sink(data)

    def buffered(self) -> int:
        """Bytes queued and not yet handed to the sink."""
        return len(self._buf)

    def close(self) -> None:
        """Drop what is queued; later writes are dropped too."""
        with self.lock:
            self._closed = True
            self._buf = bytearray()
