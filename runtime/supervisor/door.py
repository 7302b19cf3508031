"""The door: the supervisor's thread, its uvloop loop, and the one way other threads reach it.

    caller threads --Door.call(fn, *args)--> loop.call_soon_threadsafe --> fn runs on the loop thread
                   <-- concurrent.futures.Future (its result or exception) --

Invariants, each stated where two threads meet:

- **Every call gets an answer.** A call is registered in ``_pending`` under ``_lock`` while the door is OPEN,
  and leaves it when it runs. ``close()`` and a dying thread fail whatever is still registered with
  ``RuntimeBrokenError``, and a call made once the door is no longer OPEN fails at once. So no future
  returned by ``call`` is ever left unresolved, whatever races ``shutdown()``.
- **Nothing ends the loop thread but ``close()``.** A callback that raises ``SystemExit`` or
  ``KeyboardInterrupt`` (which asyncio lets out of ``run_forever``) is logged and the loop runs on. Should the
  thread end any other way, the door is BROKEN: ``on_death`` fails every run and every pending call fails.
- **The loop thread is recognised by identity** (``threading.current_thread() is thread``), not by ident: a
  later thread may reuse a dead thread's ident.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

from actors import RuntimeBrokenError

log = logging.getLogger("procflow")
T = TypeVar("T")


class DoorState(enum.Enum):
    """NEW -> OPEN -> CLOSING -> CLOSED; OPEN or CLOSING -> BROKEN when the thread dies."""

    NEW = "new"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    BROKEN = "broken"


_LEGAL = {
    DoorState.NEW: {DoorState.OPEN, DoorState.CLOSED},
    DoorState.OPEN: {DoorState.CLOSING, DoorState.BROKEN},
    DoorState.CLOSING: {DoorState.CLOSED, DoorState.BROKEN},
    DoorState.CLOSED: set(),
    DoorState.BROKEN: {DoorState.CLOSED},
}


class Door:
    """A loop in a thread of its own, reached from any thread through ``call``."""

    def __init__(self, name: str, on_death: Callable[[str], None]) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.state = DoorState.NEW
        self.reason = "the procflow runtime has not been started"
        self._on_death = on_death
        # Re-entrant: a garbage collection at any allocation under the lock may run a workflow's finalizer,
        # which calls the door from the same thread (it is refused while closing, accepted while open).
        self._lock = threading.RLock()
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._stop_requested = False

    def _become(self, to: DoorState, reason: str) -> None:
        # Called with _lock held.
        if to not in _LEGAL[self.state]:
            raise RuntimeError(f"the supervisor's door cannot go from {self.state.value} to {to.value}")
        self.state, self.reason = to, reason

    # --- opening and calling ---------------------------------------------------------------------------
    def open(self) -> None:
        with self._lock:
            self._become(DoorState.OPEN, "")
        self.thread.start()

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self.thread

    def call(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Run ``fn(*args)`` on the loop thread; the only way other threads reach run state."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self.state is not DoorState.OPEN:
                fut.set_exception(RuntimeBrokenError(self.reason or "the procflow runtime has been shut down"))
                return fut
            self._pending.add(fut)
            # Under the lock: close() cannot slip between the check above and the hand-over, so a call
            # either reaches the loop before close() collects the pending set, or is refused.
            self.loop.call_soon_threadsafe(self._run, fut, fn, args)
        return fut

    def _run(self, fut: concurrent.futures.Future[T], fn: Callable[..., T], args: tuple[Any, ...]) -> None:
        with self._lock:
            if fut not in self._pending:
                return  # answered already by close() or a dying thread
            self._pending.discard(fut)
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller through the future
            fut.set_exception(exc)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Fire and forget onto the loop (from any thread); dropped once the door is not OPEN."""
        with self._lock:
            if self.state is DoorState.OPEN:
                self.loop.call_soon_threadsafe(fn, *args)

    # --- the loop thread --------------------------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        why = "the supervisor thread ended unexpectedly"
        try:
            while True:
                try:
                    self.loop.run_forever()
                except (SystemExit, KeyboardInterrupt) as exc:
                    log.error("procflow: %s escaped a callback on the supervisor thread; ignored: %r",
                              type(exc).__name__, exc)
                    continue
                if self._stop_requested:
                    return
        except BaseException as exc:  # noqa: BLE001 -- recorded, then every waiter is told
            why = f"the supervisor thread died: {type(exc).__name__}: {exc}"
            log.exception("procflow: %s", why)
        finally:
            if not self._stop_requested:
                self._die(why)

    def _die(self, why: str) -> None:
        with self._lock:
            if self.state in (DoorState.OPEN, DoorState.CLOSING):
                self._become(DoorState.BROKEN, why)
            pending, self._pending = self._pending, set()
        try:
            self._on_death(why)
        finally:
            _fail_all(pending, why)

    # --- closing ----------------------------------------------------------------------------------------
    def close(self, work: Callable[[], Coroutine[Any, Any, None]], timeout: float) -> None:
        """Run ``work()`` on the loop (ending runs and workers), stop the loop, join the thread, and fail
        every call still pending. Idempotent; never from the loop thread."""
        if self.in_loop_thread():
            raise RuntimeError("shutdown() cannot be called from the supervisor's own thread")
        with self._lock:
            if self.state is DoorState.NEW:
                self._become(DoorState.CLOSED, "the procflow runtime has been shut down")
                return
            if self.state is not DoorState.OPEN:
                broken = self.state is DoorState.BROKEN
            else:
                broken = False
                self._become(DoorState.CLOSING, "the procflow runtime is shutting down")
                # Submitted under the lock, after the state change: later calls are refused, and this
                # coroutine is the last thing handed to the loop by a caller.
                done = asyncio.run_coroutine_threadsafe(work(), self.loop)
        if self.state is DoorState.CLOSING and not broken:
            try:
                done.result(timeout + 5)
            except Exception:  # noqa: BLE001 -- shutting down regardless
                log.exception("procflow: shutting the supervisor down failed")
        self._stop_requested = True
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:
            pass  # the loop is closed already
        if self.thread.is_alive():
            self.thread.join(timeout + 5)
        with self._lock:
            if self.state is not DoorState.CLOSED:
                self._become(DoorState.CLOSED, "the procflow runtime has been shut down")
            pending, self._pending = self._pending, set()
        _fail_all(pending, "the procflow runtime has been shut down")
        if not self.thread.is_alive() and not self.loop.is_closed():
            self.loop.close()


def _fail_all(futures: set[concurrent.futures.Future[Any]], why: str) -> None:
    for fut in futures:
        if fut.set_running_or_notify_cancel():
            fut.set_exception(RuntimeBrokenError(why))
