"""What the views show about a run, fed by its stream (internal events included) and the workers' CPU.

Per step, every invocation is in one place:

    pending    created, waiting for a worker of the pool      (state "pending", or derived: see below)
    queued     waiting for one of the step's ``num_workers`` slots   (StepQueueChanged.queued)
    running    on a worker                                     (state "running" .. a final state)
    waiting    suspended in ``ctx.wait_for_event``            (state "waiting", until the step re-runs)
    done / failed / cancelled

The runtime reports "waiting for a worker" exactly when it publishes ``StepStateChanged(state="pending")``
for every invocation it could not place at once (``exact``: procflow's ProcessRuntime does; an invocation
placed at once goes straight to "running", as LlamaIndex skips PREPARING when there is capacity). Without it the count is derived: from ``StepQueueChanged.active``
(invocations created, running or not) for steps that have a queue report, as 0 for every step while some
worker is idle (nothing waits for a worker then), and is unknown (None) otherwise.

Time comes with each event (read off the clock by the thread that takes it off the stream). CPU time is
the worker processes' own (user + system, ``psutil``), sampled while the run goes: the one speed figure
shown is that CPU time divided by the wall time.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from actors import Event, InternalDispatchEvent, StepQueueChanged, StepStateChanged, StopEvent

FINAL = ("done", "failed", "cancelled", "waiting")
MAX_RECORDS = 100_000  # invocations kept for the trace page; past that finished ones are forgotten


@dataclass
class StepCounts:
    running: int = 0
    pending: int = 0
    derived: int | None = None  # pending as derived from a queue report (no "pending" states)
    queued: int = 0
    waiting: int = 0  # suspended in wait_for_event now
    suspended: int = 0  # invocations that ended by suspending, in all
    done: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.cancelled


@dataclass
class Invocation:
    """One step invocation, for the live view and the trace page. Times are ``time.monotonic()``."""

    id: int
    step: str
    input_event: str
    state: str = "pending"
    created: float | None = None
    started: float | None = None
    ended: float | None = None
    pid: int | None = None
    resumed: bool = False  # a "waiting" invocation whose step has since run again on the same input


@dataclass
class Published:
    """A non-internal event written to the stream (what the user sees), for the trace page."""

    t: float
    type: str
    text: str


class CpuMeter:
    """CPU seconds used by the worker processes since ``start``; a pid that has gone keeps its last value."""

    def __init__(self) -> None:
        self.procs: dict[int, psutil.Process | None] = {}
        self.base: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.samples: collections.deque[tuple[float, float]] = collections.deque(maxlen=50)

    def watch(self, pids: list[int] | set[int]) -> None:
        for pid in pids:
            if pid not in self.procs:
                try:
                    self.procs[pid] = psutil.Process(pid)
                except psutil.Error:
                    self.procs[pid] = None
                self.base[pid] = self._read(pid) or 0.0

    def _read(self, pid: int) -> float | None:
        proc = self.procs.get(pid)
        if proc is None:
            return None
        try:
            t = proc.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            self.procs[pid] = None
            return None

    def sample(self, now: float | None = None) -> float:
        """Read every live worker; the total CPU seconds since each was first watched."""
        for pid in self.procs:
            value = self._read(pid)
            if value is not None:
                self.last[pid] = value
        total = sum(self.last.get(pid, base) - base for pid, base in self.base.items())
        self.samples.append((time.monotonic() if now is None else now, total))
        return total

    def total(self) -> float:
        return self.samples[-1][1] if self.samples else 0.0

    def cores(self, window: float = 1.5) -> float | None:
        """CPU seconds per wall second over about the last ``window`` seconds: how many cores are busy."""
        if len(self.samples) < 2:
            return None
        t1, c1 = self.samples[-1]
        for t0, c0 in self.samples:
            if t1 - t0 <= window:
                break
        return (c1 - c0) / (t1 - t0) if t1 > t0 else None


@dataclass
class Question:
    """A question asked on stdin (HITL), for the trace page: when asked and answered (None: never)."""

    text: str
    asked: float
    answered: float | None = None
    answer: str = ""


@dataclass
class RunStats:
    steps: dict[str, StepCounts]
    workers: int = 1
    first_steps: set[str] = field(default_factory=set)  # steps that accept only the start event: run once
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    exact: bool | None = None  # None: no step state seen yet; True: the runtime reports "pending"
    invs: dict[int, Invocation] = field(default_factory=dict)
    dropped: int = 0  # finished invocations forgotten (past MAX_RECORDS)
    suspended: dict[str, list[Invocation]] = field(default_factory=dict)
    active: dict[int, Invocation] = field(default_factory=dict)  # pending or running now
    pids: set[int] = field(default_factory=set)  # workers that ran something
    unfinished: int = 0  # invocations still pending or running when the run ended
    events: int = 0
    published: list[Published] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)
    last_event: str = ""
    finishes: collections.deque[float] = field(default_factory=collections.deque)
    cpu: CpuMeter = field(default_factory=CpuMeter)
    _after_queue: str | None = None  # the step whose StepQueueChanged was the event just before

    def now(self) -> float:
        return self.ended or time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the run started (to the millisecond once it has ended: one figure everywhere)."""
        return round(self.ended - self.started, 3) if self.ended else time.monotonic() - self.started

    def counts(self, step: str) -> StepCounts:
        return self.steps.setdefault(step, StepCounts())

    # --- feeding -------------------------------------------------------------------------------------
    def feed(self, ev: Event, t: float | None = None) -> None:
        # A step event carries the moment the supervisor saw the change (same monotonic clock, same
        # process): better than when this reader took it off the stream.
        stamped = getattr(ev, "t", 0.0) if isinstance(ev, StepStateChanged) else 0.0
        t = stamped or (time.monotonic() if t is None else t)
        self.events += 1
        after_queue, self._after_queue = self._after_queue, None
        if isinstance(ev, StepStateChanged):
            self._state_changed(ev, t, after_queue == ev.step)
        elif isinstance(ev, StepQueueChanged):
            c = self.counts(ev.step)
            c.queued = ev.queued
            if not self.exact:
                c.derived = max(0, ev.active - c.running)
            self._after_queue = ev.step
        elif not isinstance(ev, InternalDispatchEvent):
            text = repr(ev)
            if not isinstance(ev, StopEvent):
                self.last_event = text
            if len(self.published) < 5000:
                self.published.append(Published(t, type(ev).__name__, text[:300]))

    def _record(self, ev: StepStateChanged) -> Invocation:
        inv = self.invs.get(ev.invocation)
        if inv is None:
            inv = self.invs[ev.invocation] = Invocation(ev.invocation, ev.step, ev.input_event)
        return inv

    def _state_changed(self, ev: StepStateChanged, t: float, just_released: bool) -> None:
        if self.exact is None:
            self.exact = ev.state == "pending"
        c = self.counts(ev.step)
        known = ev.invocation in self.invs
        inv = self._record(ev)
        if ev.state == "pending":
            self.exact = True
            if known and inv.state != "pending":
                return
            inv.created = t
            c.pending += 1
            self.active[inv.id] = inv
            self._resume(ev)
            return
        if ev.state == "running":
            if inv.state == "running":
                return
            if inv.state == "pending" and inv.created is not None:
                c.pending -= 1
            elif c.derived:
                c.derived -= 1
            if inv.created is None:
                self._resume(ev)
            inv.state, inv.started, inv.pid = "running", t, ev.worker_pid
            c.running += 1
            self.active[inv.id] = inv
            if ev.worker_pid is not None:
                self.pids.add(ev.worker_pid)
                self.cpu.watch([ev.worker_pid])
            return
        if ev.state not in FINAL or inv.state in FINAL:
            return
        if inv.state == "running":
            c.running -= 1
            if just_released and c.derived is not None:
                c.derived += 1  # released before the queue report that came just before: it counted it
        elif inv.state == "pending" and inv.created is not None:
            c.pending -= 1
        inv.state, inv.ended = ev.state, t
        self.active.pop(inv.id, None)
        if ev.state == "waiting":
            c.waiting += 1
            c.suspended += 1
            self.suspended.setdefault(ev.step, []).append(inv)
        else:
            setattr(c, ev.state, getattr(c, ev.state) + 1)
        self.finishes.append(t)
        if len(self.invs) > MAX_RECORDS and ev.state != "waiting":
            del self.invs[inv.id]  # the trace page keeps the first MAX_RECORDS invocations
            self.dropped += 1

    def _resume(self, ev: StepStateChanged) -> None:
        """A step suspended in wait_for_event runs again from its start, on the same input event."""
        waiting = self.suspended.get(ev.step)
        for inv in waiting or ():
            if inv.input_event == ev.input_event:
                inv.resumed = True
                waiting.remove(inv)  # type: ignore[union-attr]
                self.counts(ev.step).waiting -= 1
                return

    def finish(self) -> None:
        """The run ended: the clock stops; what still ran or waited was stopped with it."""
        self.ended = time.monotonic()
        for inv in self.active.values():
            inv.state, inv.ended = "unfinished", self.ended
            self.unfinished += 1
        self.active.clear()
        for c in self.steps.values():
            c.running = c.pending = c.queued = 0
            c.derived = None

    # --- reading -------------------------------------------------------------------------------------
    def busy(self) -> dict[int, list[Invocation]]:
        """The workers running something, with what they run."""
        out: dict[int, list[Invocation]] = {}
        for inv in self.active.values():
            if inv.state == "running" and inv.pid is not None:
                out.setdefault(inv.pid, []).append(inv)
        return out

    def pending(self, step: str, idle: bool | None = None) -> int | None:
        """Invocations of ``step`` waiting for a worker; None when the runtime does not say. ``idle``:
        whether some worker is idle, if the caller knows."""
        c = self.counts(step)
        if self.exact:
            return c.pending
        if c.derived is not None:
            return c.derived
        if step in self.first_steps and (c.running or c.done) and not (c.waiting or c.failed):
            return 0  # its one invocation has started (and will not be run again: no retry, no wait)
        if idle if idle is not None else len(self.busy()) < self.workers:
            return 0  # a worker is idle: the pool would have placed anything waiting for one
        return None

    def totals(self) -> dict[str, Any]:
        """Finished, running, waiting invocations; ``known`` is every invocation the run has made so far
        (None when the runtime does not report what waits for a worker)."""
        cs = self.steps.values()
        finished = sum(c.finished + c.suspended for c in cs)
        running = sum(c.running for c in cs)
        queued = sum(c.queued for c in cs)
        idle = len(self.busy()) < self.workers
        pending = [self.pending(s, idle) for s in self.steps]
        waiting_worker = None if any(p is None for p in pending) else sum(p or 0 for p in pending)
        known = finished + running + queued + (waiting_worker or 0) if self.exact else None
        return {"finished": finished, "running": running, "queued": queued, "pending": waiting_worker,
                "known": known, "failed": sum(c.failed for c in cs)}

    def eta(self, remaining: int, window: float = 5.0) -> float | None:
        """Seconds until ``remaining`` more invocations finish, at the pace of the last ``window`` s."""
        now = self.now()
        while self.finishes and now - self.finishes[0] > window:
            self.finishes.popleft()
        span = min(window, now - self.started)
        if remaining <= 0 or len(self.finishes) < 3 or span < 1.0:
            return None
        return remaining / (len(self.finishes) / span)

    def summary(self) -> dict[str, Any]:
        """The figures of the closing lines and of ``--json``'s last line."""
        wall = self.elapsed()
        cpu = self.cpu.total()
        cs = self.steps.values()
        return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                "cpu_per_wall": round(cpu / wall, 2) if wall > 0 else None,
                "step_runs": sum(c.finished + c.suspended for c in cs), "failed": sum(c.failed for c in cs),
                "suspended": sum(c.suspended for c in cs),
                "unfinished": self.unfinished, "workers": self.workers, "workers_used": len(self.pids),
                "events": self.events}


def clock(seconds: float) -> str:
    """``4.2s``, ``1:05``, ``1:02:03``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def runs(n: int) -> str:
    return f"{n} step run" + ("" if n == 1 else "s")


def summary_lines(status: str, s: dict[str, Any]) -> list[str]:
    """The closing lines: short enough for a 40-column terminal once wrapped at their separators."""
    left = f", {s['unfinished']} unfinished" if s["unfinished"] else ""
    left += f", {s['suspended']} suspended in wait_for_event" if s["suspended"] else ""
    lines = [f"{status} in {clock(s['wall_s'])} · {runs(s['step_runs'])}, {s['failed']} failed{left} · "
             f"{s['workers_used']} of {s['workers']} workers used"]
    if s["cpu_per_wall"] is not None:
        lines.append(f"speed: {s['cpu_per_wall']:.2f}x = CPU time of the workers "
                     f"{s['cpu_s']:.2f}s / wall time {s['wall_s']:.2f}s")
    return lines
