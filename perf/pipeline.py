"""The README's main job: a CPU-heavy pipeline, run with ``procflow run perf/pipeline.py:Pipeline``.

It finds the number below ``limit`` (default 1,000,000) whose Collatz sequence takes the most steps to reach
1 (Project Euler 14: 837,799, 524 steps), in pure Python, which holds the GIL the whole time:

    split (async)  --Chunk x parts-->  crunch (def, num_workers=64)  --Crunched x parts-->  gather (async)
                                       one process per running chunk                        --> StopEvent

Each ``crunch`` runs in a worker process of its own and measures the CPU seconds it used; ``gather`` sums
them. That sum is what the same work costs done sequentially in one process, so the result puts the run's
wall time beside it, with the speed-up (about the number of cores on an idle machine; ``cpu_share`` says
how much of a core each chunk got). Options: ``--kw limit=300000 parts=12``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from actors import Context, Event, StartEvent, StopEvent, Workflow, step


class Chunk(Event):
    """Numbers ``lo`` to ``hi - 1``: one unit of work."""

    index: int
    lo: int
    hi: int
    parts: int
    started: float  # time.time() when the run split the work, to measure wall time across processes


class Crunched(Event):
    """The longest chain found in one chunk, and what finding it cost."""

    index: int
    best_start: int
    best_steps: int
    cpu_s: float
    wall_s: float
    pid: int
    parts: int
    started: float


def collatz_steps(n: int) -> int:
    """Steps of ``n -> n/2 (even) | 3n+1 (odd)`` until 1."""
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def longest_chain(lo: int, hi: int) -> tuple[int, int]:
    """``(start, steps)`` of the longest chain starting in ``[lo, hi)`` (the smallest start on ties)."""
    best_start, best_steps = lo, -1
    for n in range(lo, hi):
        steps = collatz_steps(n)
        if steps > best_steps:
            best_start, best_steps = n, steps
    return best_start, best_steps


class Pipeline(Workflow):
    """Split ``[1, limit)`` into ``parts`` chunks, crunch them in parallel, gather the longest chain."""

    @step
    async def split(self, ctx: Context, ev: StartEvent) -> Chunk | None:
        limit, parts = int(ev.get("limit", 1_000_000)), int(ev.get("parts", 40))
        if limit < 2 or not 1 <= parts < limit:
            raise ValueError(f"need limit >= 2 and 1 <= parts < limit, got limit={limit} parts={parts}")
        started = time.time()
        bounds = [1 + (limit - 1) * i // parts for i in range(parts + 1)]
        for i in range(parts):
            ctx.send_event(Chunk(index=i, lo=bounds[i], hi=bounds[i + 1], parts=parts, started=started))
        return None

    # A plain def: it runs in a worker process of its own (one at a time per worker), so the chunks run in
    # parallel up to the pool's size. num_workers is high so that the pool, not the step, is the limit.
    @step(num_workers=64)
    def crunch(self, ev: Chunk) -> Crunched:
        cpu, wall = time.thread_time(), time.perf_counter()  # thread_time: this step's own thread only
        best_start, best_steps = longest_chain(ev.lo, ev.hi)
        return Crunched(index=ev.index, best_start=best_start, best_steps=best_steps,
                        cpu_s=time.thread_time() - cpu, wall_s=time.perf_counter() - wall,
                        pid=os.getpid(), parts=ev.parts, started=ev.started)

    @step
    async def gather(self, ctx: Context, ev: Crunched) -> StopEvent | None:
        done = ctx.collect_events(ev, [Crunched] * ev.parts)
        if done is None:
            return None
        wall = time.time() - ev.started
        return StopEvent(result=summarize(done, wall))


def summarize(done: list[Crunched], wall: float) -> dict[str, Any]:
    best = max(done, key=lambda c: (c.best_steps, -c.best_start))
    sequential = sum(c.cpu_s for c in done)
    return {
        "longest_chain": {"start": best.best_start, "steps": best.best_steps},
        "chunks": len(done),
        "processes": len({c.pid for c in done}),
        "wall_s": round(wall, 2),
        "sequential_s": round(sequential, 2),  # CPU seconds of every chunk, summed: the same work in a row
        "speedup": round(sequential / wall, 2) if wall > 0 else None,
        # The share of a core each chunk got while it ran: about 1.0 on an otherwise idle machine. Lower
        # means other programs took the CPUs, and the speed-up suffers with it.
        "cpu_share": round(sequential / sum(c.wall_s for c in done), 2),
    }
