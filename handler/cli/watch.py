"""Driving one run from the command line: its events to a view, Ctrl-C to cancels, questions to stdin.

    pump thread   handler.iter_events(expose_internal=True) --> queue of (time, event), ends with _END
    main thread   queue --> RunStats.feed() --> view.event(); InputRequiredEvent --> Prompter;
                  view.refresh() after each batch and every TICK seconds while none comes; while a
                  question is up, the wait is on stdin (Prompter.poll) instead of on the queue.
    SIGINT        the handler only counts; the loop acts on the count: 1 -> cancel_run_sync (graceful:
                  running def steps finish), 2 -> handler.cancel() (hard: their workers are killed).

The time of an event is read off the clock by the pump thread as it takes the event off the stream (the
events carry no time of their own), so batching in the main thread does not skew the trace.
"""

from __future__ import annotations

import queue
import signal
import sys
import threading
import time
import traceback
from types import FrameType
from typing import Any

from actors import (
    InputRequiredEvent, InternalDispatchEvent, WorkflowCancelledByUser, WorkflowError,
    WorkflowTimeoutError,
)

from .prompt import Prompter
from .views import View

TICK = 0.1  # seconds between looks at the Ctrl-C count (and redraws) while no event comes
CPU_EVERY = 0.5  # seconds between samples of the workers' CPU time
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130
_END: Any = object()


class Interrupts:
    """Counts SIGINTs instead of raising KeyboardInterrupt at an arbitrary point of the main thread."""

    def __init__(self) -> None:
        self.count = 0
        self._old: Any = None

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def __enter__(self) -> Interrupts:
        self._old = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._old)


def _pump(handler: Any, out: queue.SimpleQueue[Any]) -> None:
    try:
        for ev in handler.iter_events(expose_internal=True):
            out.put((time.monotonic(), ev))
    except BaseException as exc:  # noqa: BLE001 -- handed to the main thread, which reports it
        out.put((time.monotonic(), exc))
    finally:
        out.put((time.monotonic(), _END))


class Watch:
    """Feeds one run's events to a view, asks its questions, turns Ctrl-Cs into graceful then hard
    cancels."""

    def __init__(self, handler: Any, view: View, interrupts: Interrupts, prompter: Prompter) -> None:
        self.handler, self.view, self.interrupts, self.prompter = handler, view, interrupts, prompter
        self.acted = 0  # how many of the counted Ctrl-Cs have been acted on
        self.sampled = 0.0

    def run(self) -> None:
        events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=_pump, args=(self.handler, events), name="procflow-cli-events",
                         daemon=True).start()
        try:
            while True:
                self._act_on_interrupts()
                batch = []
                if self.prompter.busy:
                    self.prompter.poll(TICK)
                else:
                    try:
                        batch.append(events.get(timeout=TICK))
                    except queue.Empty:
                        pass
                while not events.empty() and len(batch) < 1000:
                    batch.append(events.get())
                for t, ev in batch:
                    if ev is _END:
                        return
                    if isinstance(ev, BaseException):
                        self.view.notice(f"reading the event stream failed: {ev!r}")
                        continue
                    self.view.stats.feed(ev, t)
                    self.view.event(ev, t)
                    if isinstance(ev, InputRequiredEvent) and not isinstance(ev, InternalDispatchEvent):
                        self.prompter.request(ev)
                self._sample()
                self.view.refresh()
        finally:
            self.prompter.stop()
            self.view.stats.cpu.sample()

    def _sample(self) -> None:
        now = time.monotonic()
        if now - self.sampled >= CPU_EVERY:
            self.sampled = now
            self.view.stats.cpu.sample(now)

    def _act_on_interrupts(self) -> None:
        count = self.interrupts.count
        if count > self.acted and self.acted == 0:
            self.acted = 1
            self.prompter.stop()
            self.view.notice("cancelling: no new steps start, running def steps finish first; "
                             "press Ctrl-C again to stop them now")
            try:
                self.handler.cancel_run_sync(timeout=0)  # returns at once; the stream shows the end
            except WorkflowError:
                pass  # the run or the runtime has ended meanwhile
        if count > self.acted and self.acted == 1:
            self.acted = 2
            self.view.notice("stopping now: killing the workers that run this run's steps")
            try:
                self.handler.cancel()
            except WorkflowError:
                pass  # the runtime has ended meanwhile


def outcome_of(handler: Any) -> tuple[dict[str, Any], BaseException | None]:
    exc = handler.exception(timeout=30)
    stop = handler.get_stop_event()
    if exc is None:
        return {"status": "completed", "result": handler.result(timeout=0)}, None
    if isinstance(exc, WorkflowCancelledByUser):
        return {"status": "cancelled", "hard": bool(getattr(stop, "hard", False))}, exc
    status = "timed out" if isinstance(exc, WorkflowTimeoutError) else "failed"
    return {"status": status, "error": str(exc), "error_type": type(exc).__name__,
            "step": getattr(stop, "step", None)}, exc


def report(outcome: dict[str, Any], exc: BaseException | None, debug: bool) -> int:
    """The exit code of the run, and its one line on stderr when it did not complete."""
    if exc is None:
        return EXIT_OK
    if debug:
        traceback.print_exception(exc)
    if outcome["status"] == "cancelled":
        hard = " (hard: its running steps were killed)" if outcome["hard"] else ""
        print(f"procflow: the run was cancelled{hard}", file=sys.stderr)
        return EXIT_CANCELLED
    where = f"step {outcome['step']!r} raised " if outcome["step"] else ""
    hint = "" if debug or outcome["status"] != "failed" else " (--debug shows the traceback)"
    print(f"procflow: run {outcome['status']}: {where}{type(exc).__name__}: {exc}{hint}", file=sys.stderr)
    return EXIT_FAILED
