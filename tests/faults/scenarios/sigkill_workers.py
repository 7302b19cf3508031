"""Scenario 1: random SIGKILLs of workers while many fan-out/collect runs are in flight.

Scale 1 (default): 150 runs (half ``Mixed``: async split, def crunch, async gather; half ``AllAsync``) of
2-6 parts each on a 4-worker pool, all started at once; a killer thread SIGKILLs a random pid of
``rt.worker_pids()`` every 20-100 ms until every run has ended or 40 kills were made. The restart budget
is raised out of the way (``max_restarts=10_000``): this scenario is about what each run gets, not about the
budget. ``PROCFLOW_FAULTS_SCALE=4`` makes it 600 runs and up to 160 kills.

Promised: every run returns EXACTLY its right result (computed from its input) or fails with
``WorkerCrashedError``. A run that stalls until its 20 s workflow timeout is counted as
``WorkflowTimeoutError``, a handle that does not resolve within 35 s as ``hang``. Afterwards the pool is
back to full strength (none of the killed pids), new runs succeed, fds did not grow, and shutdown leaves no
process.

Run by hand: ``python tests/faults/scenarios/sigkill_workers.py`` (prints one FIGURES line).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

from _child import (
    SCALE, AllAsync, Mixed, Tally, emit, expected_total, healed, leftovers_after, scaled, usage, watchdog,
)

from runtime import ProcessRuntime

watchdog(150)
RUNS = scaled(150)
MAX_KILLS = scaled(40)
WORKERS = 4
# Every run's workflow timeout: at scale 1 all runs are over within ~10 s on 2 busy cores, so a run still
# going at 20 s has stalled (it then ends with WorkflowTimeoutError, counted as such).
WAIT = 20 * max(1.0, SCALE)
HANG = WAIT + 15  # the bound on result(), from the moment all runs were started: past it, a hang

rng = random.Random(int(os.environ.get("PROCFLOW_FAULTS_SEED", "1")))
rt = ProcessRuntime(workers=WORKERS, max_restarts=10_000).start(wait=True)
try:
    mixed, all_async = Mixed(runtime=rt, timeout=WAIT), AllAsync(runtime=rt, timeout=WAIT)
    # Warm up: both workflows loaded in every worker, then measure.
    for h in [wf.run(seed=0, parts=WORKERS) for wf in (mixed, all_async)]:
        assert h.result(timeout=WAIT) == expected_total(0, WORKERS)
    before = usage()

    plan = [(n + 1, rng.randint(2, 6)) for n in range(RUNS)]
    expected = [expected_total(seed, parts) for seed, parts in plan]  # first: so that all start at once
    runs = []
    for n, (seed, parts) in enumerate(plan):
        wf = mixed if n % 2 == 0 else all_async
        runs.append((wf.run(seed=seed, parts=parts), expected[n], type(wf).__name__))

    killed: list[int] = []

    def killer() -> None:
        while len(killed) < MAX_KILLS and not all(h.done() for h, _, _ in runs):
            time.sleep(rng.uniform(0.02, 0.1))
            pids = rt.worker_pids(wait=False)
            if pids:
                pid = rng.choice(pids)
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass

    k = threading.Thread(target=killer, name="killer")
    k.start()
    tally = {"Mixed": Tally(), "AllAsync": Tally()}
    deadline = time.monotonic() + HANG
    for h, expected, name in runs:
        tally[name].wait(h, expected, max(0.1, deadline - time.monotonic()))
    k.join(WAIT)

    # The pool heals: full strength, none of the killed pids, new runs right.
    pids = healed(rt, WORKERS, killed)
    after_runs = [wf.run(seed=10_000 + i, parts=3) for i, wf in enumerate([mixed, all_async] * 4)]
    after = Tally()
    for i, h in enumerate(after_runs):
        after.wait(h, expected_total(10_000 + i, 3), WAIT)
    end = usage()
    figures = {
        "runs": RUNS, "kills": len(killed), "workers": WORKERS,
        "mixed": tally["Mixed"].figures(), "all_async": tally["AllAsync"].figures(),
        "pool_after": len(pids), "killed_pids_in_pool_after": sorted(set(pids) & set(killed)),
        "after_runs": after.figures(), "usage_before": before, "usage_after": end,
    }
finally:
    rt.shutdown()
figures["leaked_processes"] = leftovers_after()
emit(figures)
