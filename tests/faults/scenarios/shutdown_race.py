"""Scenario 7: blocking handler calls racing ``rt.shutdown()``.

Scale 1 (default): at most 15 rounds (``PROCFLOW_FAULTS_SCALE`` multiplies them), each on a fresh 2-worker
runtime. 12 threads loop over ``wf.run()``, ``handler.send_event_sync()``, ``handler.result(timeout)`` and,
for one run in three, ``handler.cancel()``; 4 more hammer ``send_event_sync()`` in a tight loop on a run that
never ends, so that some calls land in the middle of the shutdown. The main thread calls ``rt.shutdown()``
after a random 0-400 ms. Each thread goes on for 3 more iterations once it has seen the runtime refuse work,
so calls made after the shutdown are exercised too. The rounds stop at the first round with a hang.

Promised: every call returns (a result, or one of the README's errors: a ``WorkflowError`` such as
``RuntimeBrokenError``, ``WorkflowRuntimeError`` for an event sent to an ended run,
``WorkflowCancelledByUser``) within a bound. Counted: ``hang`` (a thread still inside a call 10 s after
``shutdown()`` returned, or a ``result(timeout=10)`` that timed out), ``undocumented`` (any other
exception), ``wrong`` (a result that is not the right one), ``shutdown_hang`` (``shutdown()`` itself not
returning within 30 s). Afterwards no process is left.

Run by hand: ``python tests/faults/scenarios/shutdown_race.py``.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from typing import Any, Callable

from _child import emit, leftovers_after, safe_repr, scaled, watchdog

from actors import Context, Event, HumanResponseEvent, StartEvent, StopEvent, Workflow, WorkflowError, step
from runtime import ProcessRuntime

watchdog(150)
THREADS = 16
ROUNDS = scaled(15)
PINGS = 2
RESULT_WAIT = 10.0
AFTER_SHUTDOWN = 3  # iterations each thread makes once the runtime refused work


class Opened(Event):
    seed: int


class Ping(HumanResponseEvent):  # sent by the caller only: LlamaIndex validation wants a HumanResponseEvent
    n: int


class Pinged(Workflow):
    """Ends once the run has opened (a def step, so a hard cancel has a worker to kill) and got PINGS
    pings from outside; its result is ``seed`` plus the pings' numbers."""

    @step
    def open(self, ev: StartEvent) -> Opened:
        time.sleep(ev.nap)
        return Opened(seed=ev.seed)

    @step
    async def gather(self, ctx: Context, ev: Opened | Ping) -> StopEvent | None:
        got = ctx.collect_events(ev, [Opened] + [Ping] * PINGS)
        if got is None:
            return None
        return StopEvent(result=got[0].seed + sum(p.n for p in got[1:]))


class Endless(Workflow):
    """Takes pings forever."""

    @step
    async def open(self, ev: StartEvent) -> Opened:
        return Opened(seed=0)

    @step
    async def gather(self, ctx: Context, ev: Opened | Ping) -> StopEvent | None:
        return None


counts: Counter[str] = Counter()
examples: dict[str, list[str]] = {}
lock = threading.Lock()


def record(what: str, example: str | None = None) -> None:
    with lock:
        counts[what] += 1
        if example is not None and len(examples.setdefault(what, [])) < 4:
            examples[what].append(example[:300])


class Caller:
    """One thread's loop; ``inside`` names the call it is in (for the report, should it hang there)."""

    def __init__(self, index: int, rt: ProcessRuntime, wf: Pinged, endless: Any, round_: int) -> None:
        self.index, self.rt, self.wf, self.endless = index, rt, wf, endless
        self.rng = random.Random(round_ * 1000 + index)
        self.inside: str | None = None
        self.refused = 0
        target = self.hammer if index % 4 == 3 else self.loop
        self.thread = threading.Thread(target=target, daemon=True, name=f"caller-{index}")

    def call(self, name: str, fn: Callable[[], Any]) -> tuple[bool, Any]:
        """(True, value) or (False, None) after recording what the call raised."""
        self.inside = name
        try:
            return True, fn()
        except TimeoutError:
            record("hang", f"{name}: TimeoutError after {RESULT_WAIT} s")
        except WorkflowError as exc:
            record(f"documented {type(exc).__name__}")
            if "shut down" in str(exc) or "broken" in str(exc):
                self.refused += 1
        except Exception as exc:  # noqa: BLE001 -- counted: not what the README lists
            record("undocumented", f"{name}: {safe_repr(exc)}")
        finally:
            self.inside = None
        return False, None

    def hammer(self) -> None:
        n = 0
        while self.refused <= AFTER_SHUTDOWN:
            n += 1
            ok, _ = self.call("send_event_sync (hammer)", lambda: self.endless.send_event_sync(Ping(n=n)))
            if ok and n % 200 == 0:
                record("hammer_sends_200")

    def loop(self) -> None:
        n = 0
        while self.refused <= AFTER_SHUTDOWN:
            n += 1
            seed = self.index * 100_000 + n
            ok, handler = self.call("run", lambda: self.wf.run(seed=seed, nap=self.rng.uniform(0, 0.01)))
            if not ok:
                continue
            cancel = self.rng.random() < 1 / 3
            for p in range(1, PINGS + 1):
                self.call("send_event_sync", lambda: handler.send_event_sync(Ping(n=p)))
                if cancel and p == 1:
                    self.call("cancel", handler.cancel)
            ok, got = self.call("result", lambda: handler.result(timeout=RESULT_WAIT))
            if ok:
                right = seed + sum(range(1, PINGS + 1))
                record("right" if got == right else "wrong",
                       None if got == right else f"got {got!r}, expected {right!r}")


def one_round(round_: int) -> dict[str, Any]:
    rt = ProcessRuntime(workers=2).start(wait=True)
    wf = Pinged(runtime=rt, timeout=30)
    endless = Endless(runtime=rt, timeout=None).run()
    callers = [Caller(i, rt, wf, endless, round_) for i in range(THREADS)]
    for c in callers:
        c.thread.start()
    time.sleep(random.Random(round_).uniform(0, 0.4))
    returned = threading.Event()
    threading.Thread(target=lambda: (rt.shutdown(), returned.set()), daemon=True).start()
    shutdown_returned = returned.wait(30)
    if not shutdown_returned:
        record("shutdown_hang")
    deadline = time.monotonic() + 10  # every run failed at shutdown: no call has a reason to wait now
    for c in callers:
        c.thread.join(max(0.1, deadline - time.monotonic()))
    stuck = [f"thread {c.index} in {c.inside}" for c in callers if c.thread.is_alive()]
    for s in stuck:
        record("hang", s)
    return {"shutdown_returned": shutdown_returned, "stuck": stuck}


rounds = []
for r in range(ROUNDS):
    rounds.append(one_round(r))
    if rounds[-1]["stuck"] or not rounds[-1]["shutdown_returned"]:
        break  # one round with a hang is the finding; more would only cost time
figures = {"threads": THREADS, "rounds": len(rounds), "counts": dict(counts), "examples": examples,
           "per_round": rounds, "leaked_processes": leftovers_after()}
emit(figures)
os._exit(0)  # threads stuck in a call would keep a normal exit waiting
