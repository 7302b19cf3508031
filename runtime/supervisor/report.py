"""What a run tells its watchers about its steps: ``StepStateChanged`` / ``StepQueueChanged`` on its stream,
and the ``verbose`` lines.

The verbose lines are printed by a thread of their own: the supervisor thread never blocks on a terminal or
a pipe (a reader that stops reading stdout would otherwise freeze every run).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from typing import TYPE_CHECKING

from actors import StepQueueChanged, StepState, StepStateChanged
from actors.events import WorkflowIdleEvent

if TYPE_CHECKING:
    from runtime.run.state import Invocation, RunState


class _Printer:
    """One daemon thread printing queued lines, started on first use."""

    def __init__(self) -> None:
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def print(self, line: str) -> None:
        self._lines.put(line)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="procflow-verbose", daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        while True:
            line = self._lines.get()
            try:
                print(line, file=sys.stdout, flush=True)
            except Exception:  # noqa: BLE001 -- a closed stdout must not end the printer
                pass


_printer = _Printer()


_STEP_STATES = {"pending": StepState.PREPARING, "running": StepState.RUNNING}


def step_changed(run: RunState, inv: Invocation, state: str, output: str | None = None) -> None:
    """An invocation waits for a worker ("pending": ``StepState.PREPARING``), started ("running":
    ``StepState.RUNNING``) or ended ("done", "failed", "waiting", "cancelled": ``StepState.NOT_RUNNING``);
    ``output`` names the event a finished one returned."""
    pid = inv.worker.pid if inv.worker is not None else None
    # Two per invocation on the hot path: only the values are recorded here; the reader that takes the
    # event builds it (pydantic's model_construct costs ~15 us, paid only if someone reads internal events).
    run.adapter.events.put_lazy(_step_state_changed, inv.step, state, pid, inv.event.type_name, inv.inv,
                                output, time.monotonic())
    if run.workflow.verbose and state != "pending":
        _printer.print(f"[{run.wspec.name} {run.run_id[:8]}] {inv.step} {state} "
                       f"(worker {pid}, input {inv.event.type_name})")


def _step_state_changed(step: str, state: str, pid: int | None, input_event: str, invocation: int,
                        output: str | None, t: float) -> StepStateChanged:
    # model_construct: built from trusted values, so validation is skipped.
    return StepStateChanged.model_construct(
        name=step, step_state=_STEP_STATES.get(state, StepState.NOT_RUNNING),
        worker_id=str(pid) if pid is not None else "", input_event_name=input_event, output_event_name=output,
        state=state, worker_pid=pid, invocation=invocation, step=step, input_event=input_event, t=t)


def _step_queue_changed(step: str, queued: int, active: int) -> StepQueueChanged:
    return StepQueueChanged.model_construct(step=step, queued=queued, active=active)


def queue_changed(run: RunState, step: str) -> None:
    run.adapter.events.put_lazy(_step_queue_changed, step, len(run.queued[step]), run.active[step])


def maybe_idle(run: RunState) -> None:
    """Publish ``WorkflowIdleEvent`` when the run has just become idle: running, nothing in progress, queued
    or retrying, and at least one step waiting in ``wait_for_event`` (only an event from outside can move it)."""
    if not run.waiters or run.idle or run.invs or run.retries or not run.status.accepts_work:
        return
    if any(run.queued.values()) or not any(run.waiters.values()):
        return
    run.idle = True
    run.adapter.events.put(WorkflowIdleEvent())
