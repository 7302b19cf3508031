"""Scenario 4: many runs from several threads, about half of them hard-cancelled at random moments.

Scale 1 (default): 300 runs (``PROCFLOW_FAULTS_SCALE=3.34`` gives the issue's 1,000) from 8 threads on a
3-worker pool, ``Mixed`` and ``AllAsync`` runs of 2-5 parts alternating; each thread cancels about half of its
runs with ``handler.cancel()`` after a random 0-40 ms (so before, during and after their steps).

Promised, per run:
- ``cancel()`` returned True: the run ends with ``WorkflowCancelledByUser``;
- not cancelled, or ``cancel()`` returned False (it had ended): the run gives its right result. Failing
  with a cancel or crash error there is a "wrong kill" (a cancel that reached another run's step);
- no handle stays unresolved (``hang``); a run that was not cancelled and fails otherwise (e.g. stalls until
  its 30 s workflow timeout) counts as ``not_cancelled_but_failed``.
Afterwards: the pool is at full strength, new runs succeed, shutdown leaves no process.

Run by hand: ``python tests/faults/scenarios/hard_cancels.py``.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

from _child import (
    SCALE, AllAsync, Mixed, Tally, emit, expected_total, healed, leftovers_after, safe_repr, scaled, watchdog,
)

from actors import WorkerCrashedError, WorkflowCancelledByUser
from runtime import ProcessRuntime

watchdog(150)
THREADS = 8
RUNS = scaled(300)
WORKERS = 3
WAIT = 30 * max(1.0, SCALE)  # a run's workflow timeout; its handle must resolve within WAIT + 10 s

rt = ProcessRuntime(workers=WORKERS).start(wait=True)
counts: Counter[str] = Counter()
examples: dict[str, list[str]] = {}
lock = threading.Lock()


def record(what: str, example: str | None = None) -> None:
    with lock:
        counts[what] += 1
        if example is not None and len(examples.setdefault(what, [])) < 3:
            examples[what].append(example[:300])


def worker_thread(index: int, wfs: list[object]) -> None:
    rng = random.Random(index)
    for n in range(index, RUNS, THREADS):
        seed, parts = n + 1, rng.randint(2, 5)
        handler = wfs[n % 2].run(seed=seed, parts=parts)  # type: ignore[attr-defined]
        expected = expected_total(seed, parts)
        cancel = rng.random() < 0.5
        cancelled = False
        if cancel:
            time.sleep(rng.uniform(0, 0.04))
            cancelled = handler.cancel()
            record("cancel_true" if cancelled else "cancel_false_already_ended")
        try:
            got = handler.result(timeout=WAIT + 10)
        except TimeoutError:
            record("hang", f"run {handler.run_id} (cancel() gave {cancelled}) unresolved")
            continue
        except (WorkflowCancelledByUser, WorkerCrashedError) as exc:
            if cancelled and isinstance(exc, WorkflowCancelledByUser):
                record("cancelled_as_asked")
            elif cancelled:
                record("cancelled_but_other_error", safe_repr(exc))
            else:
                record("wrong_kill", f"not cancelled, yet {safe_repr(exc)}")
            continue
        except Exception as exc:  # noqa: BLE001 -- counted, with an example
            # e.g. WorkflowTimeoutError: the run stalled until its workflow timeout
            record("cancelled_but_other_error" if cancelled else "not_cancelled_but_failed",
                   f"{type(wfs[n % 2]).__name__} run: {safe_repr(exc)}")
            continue
        if cancelled:
            record("cancel_true_but_completed", f"cancel() gave True, the run gave {got!r}")
        elif got == expected:
            record("right")
        else:
            name = type(wfs[n % 2]).__name__
            record("wrong", f"{name} run, not cancelled: got {got!r}, expected {expected!r}")


try:
    wfs = [Mixed(runtime=rt, timeout=WAIT), AllAsync(runtime=rt, timeout=WAIT)]
    for h in [wf.run(seed=0, parts=WORKERS) for wf in wfs]:  # warm: both loaded in every worker
        assert h.result(timeout=WAIT) == expected_total(0, WORKERS)
    threads = [threading.Thread(target=worker_thread, args=(i, wfs), daemon=True) for i in range(THREADS)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, began + 120 * max(1.0, SCALE) - time.monotonic()))
    stuck_threads = sum(t.is_alive() for t in threads)
    pids = healed(rt, WORKERS, [])
    after = Tally()
    for i, h in enumerate([wfs[i % 2].run(seed=5000 + i, parts=3) for i in range(6)]):
        after.wait(h, expected_total(5000 + i, 3), WAIT)
    figures = {"runs": RUNS, "threads": THREADS, "workers": WORKERS, "counts": dict(counts),
               "examples": examples, "stuck_threads": stuck_threads, "pool_after": len(pids),
               "after_runs": after.figures()}
finally:
    rt.shutdown()
figures["leaked_processes"] = leftovers_after()
emit(figures)
