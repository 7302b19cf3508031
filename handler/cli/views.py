"""How a run is shown when stdout is not a terminal: ``LineView`` (a line per second of progress, for logs
and CI) and ``JsonView`` (``--json``: one JSON object per event, then the outcome). ``View`` is the
interface the watch loop drives; the terminal's view is ``live.LiveView``.

    begin(title)          the run has started
    event(ev, t)          every event of the stream, internal ones included, as it comes
    refresh()             after each batch of events, and every TICK seconds while none comes
    notice(text)          something the user should know now (cancelling, ...)
    prompt(text)          a step asks for input (HITL): show the question; answered(...) when answered
    end(status, ...)      the run is over: closing lines and the result
"""

from __future__ import annotations

import contextlib
import json
import os
import pprint
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from pydantic_core import to_jsonable_python

from actors import Event, InternalDispatchEvent, StepStateChanged

from .stats import RunStats, clock, runs, summary_lines

LINE_EVERY = 1.0  # seconds between progress lines (when something changed)
QUIET_EVERY = 30.0  # seconds between progress lines when nothing changed


def event_fields(ev: Event) -> dict[str, Any]:
    """An event's fields as JSON values: its declared fields and the free-form ones (which LlamaIndex-style
    events keep apart, in ``_data``)."""
    declared = {k: v for k, v in ev.model_dump().items() if k != "_data"}
    return to_jsonable_python({**declared, **ev.to_dict()}, fallback=repr)  # type: ignore[no-any-return]


class View:
    def __init__(self, stats: RunStats, out: TextIO) -> None:
        self.stats, self.out = stats, out

    @contextlib.contextmanager
    def owning_stdout(self) -> Iterator[None]:
        """Wraps the whole run, the runtime's start included (the workers inherit fd 1 then)."""
        yield

    def begin(self, title: str) -> None: ...
    def event(self, ev: Event, t: float) -> None: ...

    def refresh(self) -> None:
        self.out.flush()

    def notice(self, text: str) -> None:
        print(f"procflow: {text}", file=sys.stderr, flush=True)

    def prompt(self, text: str) -> None: ...
    def answered(self, text: str, answer: str, echoed: bool) -> None: ...

    def end(self, status: str, outcome: dict[str, Any]) -> None: ...


def progress_parts(stats: RunStats) -> list[str]:
    """The run's state as short phrases: progress, what runs and waits per step, the pool, the CPU."""
    t = stats.totals()
    parts = []
    if t["known"]:
        parts.append(f"{t['finished']}/{t['known']} step runs ({t['finished'] / t['known']:.0%})")
    else:
        parts.append(f"{runs(t['finished'])} finished")
    if t["failed"]:
        parts.append(f"{t['failed']} failed")
    per_step: dict[str, list[str]] = {"running": [], "waiting for a worker": [], "waiting for num_workers": [],
                "waiting for an event": []}
    for name, c in stats.steps.items():
        pending = stats.pending(name)
        for key, n in (("running", c.running), ("waiting for a worker", pending),
                       ("waiting for num_workers", c.queued), ("waiting for an event", c.waiting)):
            if n is None:
                per_step[key].append(f"{name} ?")
            elif n:
                per_step[key].append(f"{name} {n}")
    parts += [f"{key}: {', '.join(v)}" for key, v in per_step.items() if v]
    busy = len(stats.busy())
    parts.append(f"workers {busy}/{stats.workers} busy")
    cores = stats.cpu.cores()
    if cores is not None:
        parts.append(f"CPU {cores:.1f} cores")
    return parts


class LineView(View):
    """Not a terminal: a line per second while the run moves (every 30 s while it does not), failures and
    questions as they come, then the closing lines and the result."""

    def __init__(self, stats: RunStats, out: TextIO) -> None:
        super().__init__(stats, out)
        self.last_line = 0.0
        self.last_text = ""

    def begin(self, title: str) -> None:
        print(f"procflow: {title}", file=self.out, flush=True)
        self.last_line = time.monotonic()

    def event(self, ev: Event, t: float) -> None:
        if isinstance(ev, StepStateChanged) and ev.state == "failed":
            print(f"[{clock(self.stats.elapsed())}] step {ev.step!r} failed on {ev.input_event} "
                  f"(worker {ev.worker_pid})", file=self.out, flush=True)

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self.last_line < LINE_EVERY:
            return
        parts = progress_parts(self.stats)
        text = " · ".join(p for p in parts if not p.startswith("CPU"))
        if text == self.last_text and now - self.last_line < QUIET_EVERY:
            return
        self.last_text, self.last_line = text, now
        print(f"[{clock(self.stats.elapsed())}] " + " · ".join(parts), file=self.out, flush=True)

    def prompt(self, text: str) -> None:
        print(f"[{clock(self.stats.elapsed())}] input required: {text}", file=self.out, flush=True)
        if sys.stdin.isatty() and not _isatty(self.out) and sys.stderr.isatty():
            print(f"procflow: input required: {text}", file=sys.stderr, flush=True)

    def answered(self, text: str, answer: str, echoed: bool) -> None:
        print(f"[{clock(self.stats.elapsed())}] answered: {answer}", file=self.out, flush=True)

    def end(self, status: str, outcome: dict[str, Any]) -> None:
        for line in summary_lines(status, self.stats.summary()):
            print(line, file=self.out)
        print_result(outcome, self.out)


class JsonView(View):
    """--json: every event as one JSON object per line, then one line with the outcome and the figures."""

    @contextlib.contextmanager
    def owning_stdout(self) -> Iterator[None]:
        """Whatever else writes to fd 1 (a step's print in a worker, which inherits the fd when the runtime
        starts it) goes to stderr, so that stdout stays one JSON object per line."""
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
        self.out = open(saved, "w", closefd=False)  # noqa: SIM115 -- closed in the finally below
        try:
            yield
        finally:
            self.out.flush()
            sys.stdout.flush()
            os.dup2(saved, 1)
            self.out.close()
            os.close(saved)
            self.out = sys.stdout

    def event(self, ev: Event, t: float) -> None:
        line = {"t": round(t - self.stats.started, 6), "type": type(ev).__name__,
                "internal": isinstance(ev, InternalDispatchEvent),
                "event": event_fields(ev)}
        self.out.write(json.dumps(line) + "\n")

    def end(self, status: str, outcome: dict[str, Any]) -> None:
        line = {"t": round(self.stats.elapsed(), 6), **outcome, "stats": self.stats.summary()}
        self.out.write(json.dumps(to_jsonable_python(line, fallback=repr)) + "\n")
        self.out.flush()


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (ValueError, OSError):
        return False


def print_result(outcome: dict[str, Any], out: TextIO) -> None:
    if outcome["status"] != "completed":
        return
    result = outcome["result"]
    if isinstance(result, str):
        text = result
    else:
        try:
            text = json.dumps(result, indent=2)
        except (TypeError, ValueError):
            text = pprint.pformat(result)
    print(text, file=out, flush=True)
