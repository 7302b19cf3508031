"""A run's published-event stream: written by the supervisor thread, read from any thread or loop.

    supervisor thread --put(event) / put_packed(Packed)--> memory FIFO --(over the memory bound)--> spill file
    reader (any thread or loop) <--get() / aget()-- memory FIFO, then the spill file, in order

Events are consumed: each goes to exactly one reader (concurrent readers split the stream and together see
every event once). ``close()`` ends it; readers drain what is left, then see ``END``.

Two promises, by construction:

- **Nothing user-defined runs on the supervisor thread.** Events a step streams arrive pickled and stay
  pickled (``put_packed``) until a reader takes them: the reader's thread unpickles them.
- **An unread stream holds bounded memory, and loses nothing.** Past ``memory_limit`` bytes waiting in
  memory, further items are appended to an anonymous temporary file (deleted by the OS when closed) and read
  back in order. Writing never blocks a producer on a reader, so a run that nobody streams cannot stall a
  worker, and the memory it holds stays under the bound; the disk holds the rest until the run's handler
  is dropped.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
import threading
from collections import deque
from typing import IO, Any, Callable

from runtime.wire.oob import materialize, payload_size

END: Any = object()
MEMORY_LIMIT = 32 << 20  # bytes of events held in memory per unread stream before spilling to disk
_SMALL = 256  # what an unpickled internal event is taken to weigh
_LEN = struct.Struct("!Q")


class _Packed:
    """A pickled event waiting in the stream; unpickled by whoever takes it."""

    __slots__ = ("payload",)

    def __init__(self, payload: Any) -> None:
        self.payload = payload


class _Lazy:
    """An event the runtime publishes about itself, built by the reader that takes it: ``fn(*args)``. The
    supervisor thread only records the values (a tuple), and a stream nobody reads never builds it."""

    __slots__ = ("fn", "args")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, ...]:  # spilled to disk like any item (fn is a module-level function)
        return (_Lazy, (self.fn, self.args))


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Spill:
    """An append-only file of pickled items, read from the front."""

    def __init__(self) -> None:
        import tempfile  # only a stream nobody reads needs it

        self.file: IO[bytes] = tempfile.TemporaryFile(prefix="procflow-stream-")
        self.write_pos = 0
        self.read_pos = 0
        self.count = 0

    def append(self, item: Any) -> None:
        if isinstance(item, _Packed) and item.payload.buffers:
            item = _Packed(materialize(item.payload))  # on disk, not in shared memory
        data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        self.file.seek(self.write_pos)
        self.file.write(_LEN.pack(len(data)) + data)
        self.write_pos += _LEN.size + len(data)
        self.count += 1

    def pop(self) -> Any:
        self.file.seek(self.read_pos)
        (n,) = _LEN.unpack(self.file.read(_LEN.size))
        item = pickle.loads(self.file.read(n))
        self.read_pos += _LEN.size + n
        self.count -= 1
        return item

    def close(self) -> None:
        self.file.close()


class EventStream:
    """Thread-safe, multi-loop FIFO of events with an end, bounded in memory."""

    def __init__(self, decode: Callable[[Any], Any] | None = None, memory_limit: int = MEMORY_LIMIT) -> None:
        self._items: deque[Any] = deque()
        self._bytes = 0
        self._limit = memory_limit
        self._spill: _Spill | None = None
        self._decode = decode
        self._closed = False
        # The hot paths take the plain lock (a C call); blocking readers wait on a Condition over it, made by
        # the first of them (most streams have none), and are notified only when some are waiting
        # (``_sync_waiting``): a put costs no Python-level notify.
        self._lock = threading.Lock()
        self._cond: threading.Condition | None = None
        self._sync_waiting = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    # --- writing (supervisor thread) ---------------------------------------------------------------------
    def put(self, item: Any) -> None:
        self._append(item, _SMALL)

    def put_lazy(self, fn: Callable[..., Any], *args: Any) -> None:
        """An event ``fn(*args)`` builds, on the reader's thread, when a reader takes it."""
        item = _Lazy(fn, args)
        with self._lock:  # twice per invocation: the common case (in memory, room left) inline
            if self._spill is None and self._bytes + _SMALL <= self._limit and not self._closed:
                self._items.append((item, _SMALL))
                self._bytes += _SMALL
                if self._sync_waiting or self._waiters:
                    self._wake_locked()
                return
        self._append(item, _SMALL)

    def put_packed(self, packed: Any) -> None:
        """A pickled event (``actors.host.Packed``): unpickled by the reader that takes it. Its out-of-band
        buffers (shared memory) count towards the memory bound; spilled, they are copied to the file."""
        self._append(_Packed(packed), payload_size(packed) if packed.buffers else len(packed.data))

    def _append(self, item: Any, size: int) -> None:
        with self._lock:
            if self._closed:
                return
            if self._spill is not None and self._spill.count:
                self._spill.append(item)  # the order holds: older items are already on disk
            elif self._bytes + size > self._limit and self._items:
                if self._spill is None:
                    self._spill = _Spill()
                self._spill.append(item)
            else:
                self._items.append((item, size))
                self._bytes += size
            self._wake_locked()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake_locked()

    def _wake_locked(self) -> None:
        if self._sync_waiting:
            assert self._cond is not None
            self._cond.notify_all()
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:
                pass  # that reader's loop is closed: nobody is waiting there any more

    # --- reading (any thread) ----------------------------------------------------------------------------
    def _available(self) -> bool:
        return bool(self._items) or (self._spill is not None and self._spill.count > 0)

    def _take_locked(self) -> Any:
        if self._items:
            item, size = self._items.popleft()
            self._bytes -= size
            return item
        if self._spill is not None and self._spill.count:
            return self._spill.pop()
        return END

    def _finish(self, item: Any) -> Any:
        # Outside the lock, on the reader's thread: the one place a streamed event is unpickled.
        if isinstance(item, _Packed):
            assert self._decode is not None
            return self._decode(item.payload)
        if isinstance(item, _Lazy):
            return item.fn(*item.args)
        return item

    def get(self, timeout: float | None = None) -> Any:
        """The next event, or ``END``; raises TimeoutError when nothing came within ``timeout``."""
        with self._lock:
            if not (self._items or self._closed or self._available()):
                if self._cond is None:
                    self._cond = threading.Condition(self._lock)
                self._sync_waiting += 1
                try:
                    if not self._cond.wait_for(lambda: self._available() or self._closed, timeout):
                        raise TimeoutError(f"no event within {timeout} s")
                finally:
                    self._sync_waiting -= 1
            item = self._take_locked()
        return self._finish(item)

    async def aget(self) -> Any:
        """The next event, or ``END``, on whatever loop awaits it."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._items:  # the common case, inline
                    item, size = self._items.popleft()
                    self._bytes -= size
                    break
                if self._available() or self._closed:
                    item = self._take_locked()
                    break
                fut: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, fut))
            await fut
        return self._finish(item)

    def buffered_bytes(self) -> int:
        """Bytes of events waiting in memory (not counting what spilled to disk)."""
        with self._lock:
            return self._bytes

    def __del__(self) -> None:
        spill = self._spill
        if spill is not None:
            spill.close()
