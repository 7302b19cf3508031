"""Scenario 8: many mixed runs; fds, threads, child processes and RSS must not grow.

Scale 1 (default): 400 runs (``PROCFLOW_FAULTS_SCALE=5`` gives the issue's 2,000) after a warm-up of 80, on
a 3-worker pool, submitted from 4 caller threads, in a fixed rotation of 8 kinds:

    mixed        ``Mixed`` run: right result            all_async   ``AllAsync`` run: right result
    fails        a def step raises ValueError           hard_cancel a spinning def step, ``cancel()``
    timeout      a def step outlives a 0.3 s timeout    streamed    ``Mixed`` consumed by ``iter_events``
    graceful     ``cancel_run_sync()`` of an awaiting   send        ``send_event_sync`` into a run waiting
                 async step                                         (``wait_for_event``) for it

(hard_cancel and timeout kill a worker each time, so the pool respawns ~100 workers.)

Measured after the warm-up and at the end (after a garbage collection, the pool at full strength): the
parent's fds (psutil ``num_fds``), threads (``threading.active_count()`` and psutil ``num_threads``), live
descendants other than multiprocessing's helpers (must equal the pool size) and RSS. Promised: fds within
+-5, threads within +-2, children == pool size, RSS growth < 50 MB; every run ends as its kind says
(``unexpected`` 0, ``hang`` 0); shutdown leaves no process.

Run by hand: ``python tests/faults/scenarios/leak_census.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import Counter
from typing import Any

from _child import (
    SCALE, AllAsync, Mixed, Spin, Started, emit, expected_total, healed, leftovers_after, safe_repr, scaled,
    usage, watchdog,
)

from actors import (
    Context, Event, StartEvent, StopEvent, Workflow, WorkflowCancelledByUser, WorkflowTimeoutError, step,
)
from runtime import ProcessRuntime

watchdog(170)
WORKERS = 3
CALLERS = 4
RUNS, WARM_UP = scaled(400), 80
WAIT = 30.0
KINDS = ("mixed", "all_async", "fails", "hard_cancel", "timeout", "streamed", "graceful", "send")


class Boom(Workflow):
    @step
    def boom(self, ev: StartEvent) -> StopEvent:
        raise ValueError(f"boom {ev.seed}")


class Sleepy(Workflow):
    @step
    def sleepy(self, ev: StartEvent) -> StopEvent:
        time.sleep(5)
        return StopEvent(result="too late")


class Napping(Workflow):
    @step
    async def nap(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Started(pid=0))
        await asyncio.sleep(60)
        return StopEvent(result="unreachable")


class Answer(Event):
    value: int


class Asked(Event):
    """Published once the run waits for its ``Answer``."""


class Asking(Workflow):
    """Waits for an ``Answer`` from outside; its result is the answer plus the seed."""

    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> StopEvent:
        answer = await ctx.wait_for_event(Answer, waiter_event=Asked(), timeout=WAIT)
        return StopEvent(result=answer.value + ev.seed)


rt = ProcessRuntime(workers=WORKERS).start(wait=True)
wf: dict[str, Any] = {
    "mixed": Mixed(runtime=rt, timeout=WAIT), "all_async": AllAsync(runtime=rt, timeout=WAIT),
    "fails": Boom(runtime=rt, timeout=WAIT), "hard_cancel": Spin(runtime=rt, timeout=WAIT),
    "timeout": Sleepy(runtime=rt, timeout=0.3), "streamed": Mixed(runtime=rt, timeout=WAIT),
    "graceful": Napping(runtime=rt, timeout=WAIT), "send": Asking(runtime=rt, timeout=WAIT),
}
counts: Counter[str] = Counter()
examples: dict[str, list[str]] = {}
lock = threading.Lock()


def record(what: str, example: str | None = None) -> None:
    with lock:
        counts[what] += 1
        if example is not None and len(examples.setdefault(what, [])) < 3:
            examples[what].append(example[:300])


def one(n: int) -> None:
    """Run number ``n`` (its kind by rotation) to its end; record ``ok`` or what went otherwise."""
    kind, seed = KINDS[n % len(KINDS)], n
    try:
        outcome = drive(kind, seed)
    except Exception as exc:  # noqa: BLE001 -- counted with an example
        outcome = f"raised {safe_repr(exc)}"
    if outcome == "ok":
        record("ok")
    elif outcome == "hang":
        record("hang", kind)
    else:
        record("unexpected", f"{kind}: {outcome}")


def drive(kind: str, seed: int) -> str:
    h = wf[kind].run(seed=seed, parts=3)
    if kind in ("mixed", "all_async", "streamed"):
        if kind == "streamed":
            for _ in h.iter_events(timeout=WAIT):
                pass
        got = h.result(timeout=WAIT)
        return "ok" if got == expected_total(seed, 3) else f"wrong result {got!r}"
    if kind == "send":
        next(ev for ev in h.iter_events(timeout=WAIT) if isinstance(ev, Asked))
        h.send_event_sync(Answer(value=7))
        got = h.result(timeout=WAIT)
        return "ok" if got == 7 + seed else f"wrong result {got!r}"
    if kind in ("hard_cancel", "graceful"):
        next(ev for ev in h.iter_events(timeout=WAIT) if isinstance(ev, Started))
        if kind == "hard_cancel":
            if not h.cancel():
                return "cancel() returned False on a running run"
        else:
            h.cancel_run_sync(timeout=WAIT)
    expected_error = {"fails": ValueError, "hard_cancel": WorkflowCancelledByUser,
                      "graceful": WorkflowCancelledByUser, "timeout": WorkflowTimeoutError}[kind]
    try:
        got = h.result(timeout=WAIT)
    except TimeoutError:
        return "hang"
    except expected_error:
        return "ok"
    return f"returned {got!r}"


def batch(pool: concurrent.futures.ThreadPoolExecutor, first: int, count: int) -> None:
    for fut in [pool.submit(one, n) for n in range(first, first + count)]:
        fut.result(timeout=WAIT * 3)


try:
    with concurrent.futures.ThreadPoolExecutor(CALLERS) as callers:
        batch(callers, 0, WARM_UP)
        healed(rt, WORKERS, [])
        before = usage()
        began = time.monotonic()
        batch(callers, WARM_UP, RUNS)
        took = time.monotonic() - began
        healed(rt, WORKERS, [])
        time.sleep(0.5)  # let respawn threads and dead workers' reaping settle
        after = usage()
    figures = {"runs": RUNS, "warm_up": WARM_UP, "workers": WORKERS, "callers": CALLERS,
               "counts": dict(counts), "examples": examples, "before": before, "after": after,
               "growth": {k: round(after[k] - before[k], 1) for k in before}, "seconds": round(took, 1),
               "scale": SCALE}
finally:
    rt.shutdown()
figures["leaked_processes"] = leftovers_after()
emit(figures)
