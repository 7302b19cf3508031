"""A run's published-event stream: written by the supervisor thread, read from any thread or loop.

Events are consumed: each one goes to exactly one reader (several concurrent readers split the stream and
together see every event once). ``close()`` ends it; readers drain what is left, then see ``END``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any

END: Any = object()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class EventStream:
    """Thread-safe, multi-loop FIFO of events with an end."""

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._closed = False
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def put(self, item: Any) -> None:
        with self._cond:
            if self._closed:
                return
            self._items.append(item)
            self._wake_locked()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._wake_locked()

    def _wake_locked(self) -> None:
        self._cond.notify_all()
        waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:
                pass  # that reader's loop is closed: nobody is waiting there any more

    def get(self, timeout: float | None = None) -> Any:
        """The next event, or ``END``; raises TimeoutError when nothing came within ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                raise TimeoutError(f"no event within {timeout} s")
            return self._items.popleft() if self._items else END

    async def aget(self) -> Any:
        """The next event, or ``END``, on whatever loop awaits it."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._items:
                    return self._items.popleft()
                if self._closed:
                    return END
                fut: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, fut))
            await fut
