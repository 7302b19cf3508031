"""What every fault scenario shares, inside the child interpreter that runs it.

A scenario script imports this module first: it puts the repository on the path (also for the worker
processes, through ``PYTHONPATH``), arms a watchdog that dumps every thread's stack and exits if the scenario
overruns its bound, and offers the shared workflows (whose right result is computed from their input), a
tally of outcomes, a census of processes, fds and threads, and ``emit()``, which prints the scenario's figures
as one ``FIGURES {json}`` line for the pytest side to parse.

Scale: ``PROCFLOW_FAULTS_SCALE`` (default 1) multiplies each scenario's counts (runs, threads' loops, kills,
rounds); ``scaled(n)`` applies it.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
for _path in (str(HERE), str(REPO)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
# Workers import this module (the shared workflows are pickled by reference): they inherit the environment.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO), str(HERE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])

import psutil  # noqa: E402

from actors import Context, Event, StartEvent, StopEvent, Workflow, step  # noqa: E402

SCALE = float(os.environ.get("PROCFLOW_FAULTS_SCALE", "1"))
INFRASTRUCTURE = ("forkserver", "resource_tracker", "reaper.py")  # helpers, not workers (reaper.py: procflow's parent-death reaper)


def scaled(n: int, minimum: int = 1) -> int:
    return max(minimum, round(n * SCALE))


def watchdog(seconds: float) -> None:
    """If the scenario is still going after ``seconds`` (scaled), dump every thread's stack and exit 3."""
    faulthandler.dump_traceback_later(seconds * max(1.0, SCALE), exit=True)


def emit(figures: dict[str, Any]) -> None:
    """Print the scenario's figures: one line, parsed by the test."""
    print("FIGURES " + json.dumps(figures, sort_keys=True, default=str), flush=True)


# --- outcomes ---------------------------------------------------------------------------------------------
class Tally:
    """Counts of what runs ended with: ``right``, ``wrong``, ``hang`` or the exception's type name; keeps a
    few examples of each unexpected outcome for the report."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, outcome: str, example: str | None = None) -> None:
        self.counts[outcome] += 1
        if example is not None:
            self.examples.setdefault(outcome, [])
            if len(self.examples[outcome]) < 3:
                self.examples[outcome].append(example[:300])

    def wait(self, handler: Any, expected: Any, timeout: float) -> str:
        """Wait for ``handler``; record and return ``right``, ``wrong``, ``hang`` or the error's type name."""
        try:
            got = handler.result(timeout=timeout)
        except TimeoutError:
            outcome, example = "hang", f"{handler.run_id} unresolved after {timeout:g} s"
        except Exception as exc:  # noqa: BLE001 -- every failure is an outcome to count
            outcome, example = type(exc).__name__, safe_repr(exc)
        else:
            outcome = "right" if got == expected else "wrong"
            example = None if outcome == "right" else f"got {got!r}, expected {expected!r}"
        self.add(outcome, example)
        return outcome

    def figures(self) -> dict[str, Any]:
        return {"outcomes": dict(self.counts), "examples": self.examples}


def safe_repr(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 -- a hostile __str__
        return f"{type(exc).__name__}: <str() failed>"


# --- processes, fds, threads ------------------------------------------------------------------------------
def workers_alive() -> list[int]:
    """PIDs of this interpreter's live descendants (zombies excluded) other than multiprocessing's helpers
    themselves: the forkserver and the resource tracker are direct children; forkserver workers are the
    forkserver's children and carry the same command line, so helpers are told apart by being direct."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            helper = p.ppid() == os.getpid() and any(w in " ".join(p.cmdline()) for w in INFRASTRUCTURE)
            if not helper:
                found.append(p.pid)
        except psutil.Error:
            pass
    return found


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def leftovers_after(within: float = 5.0) -> list[int]:
    """Descendants still alive ``within`` seconds from now (exits are asynchronous): after a shutdown, []."""
    deadline = time.monotonic() + within
    while (left := workers_alive()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def healed(rt: Any, size: int, gone: list[int], within: float = 20.0) -> list[int]:
    """Wait until the pool has ``size`` live workers, none of them in ``gone`` (deaths are noticed
    asynchronously); the pool's pids then, or at the end of ``within`` seconds if it never got there."""
    deadline = time.monotonic() + within
    while True:
        pids = rt.worker_pids()
        if (len(pids) == size and not set(pids) & set(gone)) or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)


def usage() -> dict[str, Any]:
    import gc
    import threading

    gc.collect()
    me = psutil.Process()
    return {"fds": me.num_fds(), "threads_python": threading.active_count(),
            "threads_os": me.num_threads(), "children": len(workers_alive()),
            "rss_mb": round(me.memory_info().rss / 2**20, 1)}


# --- shared workflows -------------------------------------------------------------------------------------
def part_value(seed: int, i: int) -> int:
    """What part ``i`` of run ``seed`` computes (a little CPU work so that steps are in flight a while)."""
    acc = seed * 1_000_003 + i
    for k in range(20_000):
        acc = (acc * 31 + k) % 1_000_000_007
    return acc


def expected_total(seed: int, parts: int) -> dict[str, Any]:
    """The right result of a ``Mixed`` or ``AllAsync`` run started with ``seed`` and ``parts``."""
    return {"seed": seed, "parts": list(range(parts)),
            "total": sum(part_value(seed, i) for i in range(parts))}


class Part(Event):
    seed: int
    i: int
    parts: int


class Piece(Event):
    seed: int
    i: int
    parts: int
    value: int


def gathered(ctx: Context, ev: Piece) -> StopEvent | None:
    got = ctx.collect_events(ev, [Piece] * ev.parts)
    if got is None:
        return None
    return StopEvent(result={"seed": got[0].seed, "parts": sorted(p.i for p in got),
                             "total": sum(p.value for p in got)})


class Mixed(Workflow):
    """async split -> ``parts`` x def crunch (in worker processes) -> async gather (collect)."""

    @step
    async def split(self, ctx: Context, ev: StartEvent) -> Part | None:
        for i in range(ev.parts):
            ctx.send_event(Part(seed=ev.seed, i=i, parts=ev.parts))
            await asyncio.sleep(0.003)  # emitted over time, so that a kill can land between two sends
        return None

    @step(num_workers=4)
    def crunch(self, ev: Part) -> Piece:
        return Piece(seed=ev.seed, i=ev.i, parts=ev.parts, value=part_value(ev.seed, ev.i))

    @step
    async def gather(self, ctx: Context, ev: Piece) -> StopEvent | None:
        return gathered(ctx, ev)


class AllAsync(Workflow):
    """The same shape with only async steps (they share workers)."""

    @step
    async def split(self, ctx: Context, ev: StartEvent) -> Part | None:
        for i in range(ev.parts):
            ctx.send_event(Part(seed=ev.seed, i=i, parts=ev.parts))
            await asyncio.sleep(0.003)
        return None

    @step(num_workers=4)
    async def crunch(self, ev: Part) -> Piece:
        await asyncio.sleep(0.03)
        return Piece(seed=ev.seed, i=ev.i, parts=ev.parts, value=part_value(ev.seed, ev.i))

    @step
    async def gather(self, ctx: Context, ev: Piece) -> StopEvent | None:
        return gathered(ctx, ev)


class Started(Event):
    pid: int


class Spin(Workflow):
    """A def step that announces its worker's pid, then never ends (until killed or cancelled)."""

    @step
    def spin(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Started(pid=os.getpid()))
        while True:
            time.sleep(0.01)
