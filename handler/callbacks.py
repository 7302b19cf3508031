"""Where ``handler.add_done_callback`` callbacks run: one thread of their own, never the runtime's.

    supervisor thread: run ends -> adapter.result resolves -> its done-callback only *queues* (fn, handler)
    procflow-callbacks thread: takes each entry in order, calls fn(handler)

So a callback may block (``result()``, ``iter_events()``, ``ctx.store.get_sync``, ``send_event_sync``...) and
may raise anything, ``SystemExit`` included, without freezing or ending the runtime: what it raises is
logged. Callbacks run one at a time, in the order their runs ended: a callback that waits for another
callback's effect would wait for ever (documented).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("procflow")


class CallbackThread:
    """A daemon thread running queued callbacks, started on first use (and again after a fork)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[Any], object], Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[[Any], object], arg: Any) -> None:
        self._queue.put((fn, arg))
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="procflow-callbacks", daemon=True)
                self._thread.start()

    @staticmethod
    def call_now(fn: Callable[[Any], object], arg: Any) -> None:
        """Call ``fn(arg)`` in this thread, logging an ``Exception`` it raises (as ``Future`` does)."""
        try:
            fn(arg)
        except Exception:  # noqa: BLE001 -- as concurrent.futures: a callback's error is logged
            log.exception("procflow: a done callback raised")

    def is_current(self) -> bool:
        return threading.current_thread() is self._thread

    def _serve(self) -> None:
        while True:
            fn, arg = self._queue.get()
            try:
                fn(arg)
            except BaseException as exc:  # noqa: BLE001 -- a user's callback: nothing it does ends us
                try:
                    log.error("procflow: a done callback raised %s", type(exc).__name__, exc_info=exc)
                except BaseException:  # noqa: BLE001 -- even a hostile exception's logging
                    pass

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._thread = None
        self._queue = queue.SimpleQueue()


callbacks = CallbackThread()
os.register_at_fork(after_in_child=callbacks._after_fork)
