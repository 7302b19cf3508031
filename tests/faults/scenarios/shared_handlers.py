"""Scenario 5: 32 threads sharing handlers across event loops.

Scale 1 (default): 32 threads on a 2-worker pool. Each thread starts 4 runs of ``Slow`` (an async step
waits 0.5-1 s, then a def step computes the result from the input; even threads call ``run()`` from inside
an event loop of their own, odd ones from plain sync code) and publishes the handlers. Once all threads have
published (a barrier), each thread awaits 8 handlers made by OTHER threads, concurrently, on an event loop of
its own (asyncio or uvloop, alternately; half with ``await handler``, half with ``await
handler.stop_event_result()``), then blocks in ``result()`` on 4 more. The runs last about a second, so that
most awaits begin before their run ends. ``PROCFLOW_FAULTS_SCALE`` multiplies the runs per thread and the
handlers each thread waits on.

Promised: every await and every ``result()`` returns the right result (``wrong`` 0, ``error`` 0) and none
waits past its bound (``hang`` 0); afterwards the shutdown leaves no process.

Run by hand: ``python tests/faults/scenarios/shared_handlers.py``.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from typing import Any

import uvloop
from _child import emit, expected_total, leftovers_after, safe_repr, scaled, watchdog

from actors import Event, StartEvent, StopEvent, Workflow, step
from runtime import ProcessRuntime

watchdog(120)
THREADS = 32
PER_THREAD = scaled(4)
AWAITS, BLOCKING = scaled(8), scaled(4)
WAIT = 60.0

rt = ProcessRuntime(workers=2).start(wait=True)


class Delayed(Event):
    seed: int
    parts: int


class Slow(Workflow):
    """Waits ``delay`` seconds in an async step; a def step then computes the result from the input."""

    @step
    async def wait(self, ev: StartEvent) -> Delayed:
        await asyncio.sleep(ev.delay)
        return Delayed(seed=ev.seed, parts=ev.parts)

    @step
    def finish(self, ev: Delayed) -> StopEvent:
        return StopEvent(result=expected_total(ev.seed, ev.parts))


counts: Counter[str] = Counter()
examples: dict[str, list[str]] = {}
lock = threading.Lock()
published: list[tuple[int, Any, Any]] = []  # (thread, handler, expected)
barrier = threading.Barrier(THREADS)


def record(what: str, example: str | None = None) -> None:
    with lock:
        counts[what] += 1
        if example is not None and len(examples.setdefault(what, [])) < 3:
            examples[what].append(example[:300])


def check(got: Any, expected: Any, how: str) -> None:
    if got == expected:
        record("right")
    else:
        record("wrong", f"{how}: got {got!r}, expected {expected!r}")


def thread(index: int, wf: Slow) -> None:
    rng = random.Random(index)
    make = uvloop.new_event_loop if index % 2 else asyncio.new_event_loop

    def start(n: int) -> tuple[int, Any, Any]:
        seed, parts = index * 1000 + n, rng.randint(2, 4)
        return index, wf.run(seed=seed, parts=parts, delay=rng.uniform(0.5, 1.0)), expected_total(seed, parts)

    if index % 2 == 0:
        async def start_in_loop() -> list[tuple[int, Any, Any]]:
            return [start(n) for n in range(PER_THREAD)]

        mine = asyncio.run(start_in_loop())
    else:
        mine = [start(n) for n in range(PER_THREAD)]
    with lock:
        published.extend(mine)
    barrier.wait(WAIT)
    others = [item for item in published if item[0] != index]
    to_await = rng.sample(others, min(AWAITS, len(others)))
    to_block = rng.sample(others, min(BLOCKING, len(others)))

    async def await_one(k: int, handler: Any, expected: Any) -> None:
        try:
            if k % 2:
                got = await asyncio.wait_for(handler, WAIT)
            else:
                got = (await asyncio.wait_for(handler.stop_event_result(), WAIT)).result
        except (asyncio.TimeoutError, TimeoutError):
            record("hang", f"await of {handler.run_id} from thread {index}")
            return
        except Exception as exc:  # noqa: BLE001 -- counted
            record("error", safe_repr(exc))
            return
        check(got, expected, f"await in thread {index}")

    async def await_all() -> None:
        await asyncio.gather(*(await_one(k, h, e) for k, (_, h, e) in enumerate(to_await)))

    loop = make()
    try:
        loop.run_until_complete(await_all())
    finally:
        loop.close()
    for _, handler, expected in to_block:
        try:
            got = handler.result(timeout=WAIT)
        except TimeoutError:
            record("hang", f"result() of {handler.run_id} from thread {index}")
            continue
        except Exception as exc:  # noqa: BLE001 -- counted
            record("error", safe_repr(exc))
            continue
        check(got, expected, f"result() in thread {index}")


try:
    wf = Slow(runtime=rt, timeout=WAIT)
    assert wf.run(seed=0, parts=2, delay=0.0).result(timeout=WAIT) == expected_total(0, 2)
    threads = [threading.Thread(target=thread, args=(i, wf), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT + 30)
    figures = {"threads": THREADS, "runs": THREADS * PER_THREAD,
               "awaits": THREADS * AWAITS, "blocking_results": THREADS * BLOCKING,
               "counts": dict(counts), "examples": examples,
               "stuck_threads": sum(t.is_alive() for t in threads)}
finally:
    rt.shutdown()
figures["leaked_processes"] = leftovers_after()
emit(figures)
