"""Scenario 2: SIGSTOP of a busy worker and of idle workers.

On a 2-worker pool (scale 1; ``PROCFLOW_FAULTS_SCALE`` multiplies the runs of each phase):

- ``busy_stopped``: a def step's worker is stopped mid-step and left stopped; the pool kills it within about
  a second, so its run (workflow timeout 3 s) ends with ``WorkerCrashedError`` naming the stop, and 4
  ``Mixed`` runs started beside it must give their right results.
- ``idle_stopped_then_continued``: an idle worker is stopped, 6 runs (``Mixed`` and ``AllAsync``, timeout
  20 s) start, the worker gets SIGCONT 1 s later: every run gives its right result.
- ``idle_left_stopped``: an idle worker is stopped for good, 6 runs with a 3 s timeout start: each gives its
  right result or ends with ``WorkflowTimeoutError`` (bounded by its timeout); none hangs.
- ``stopped_at_shutdown``: one more idle worker is stopped right before ``rt.shutdown()``: shutdown returns,
  and no process is left, the stopped ones included.

A handle that does not resolve within its workflow timeout + 15 s counts as a ``hang``.

Run by hand: ``python tests/faults/scenarios/sigstop_workers.py``.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from _child import (
    AllAsync, Mixed, Spin, Started, Tally, alive, emit, expected_total, healed, leftovers_after, scaled,
    watchdog,
)

from runtime import ProcessRuntime

watchdog(120)
WORKERS = 2
SHORT, LONG = 3.0, 20.0
RUNS = scaled(6)

rt = ProcessRuntime(workers=WORKERS).start(wait=True)
figures: dict[str, object] = {"workers": WORKERS}
stopped: list[int] = []


def stop(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)
    if pid not in stopped:
        stopped.append(pid)


def start_runs(n: int, timeout: float, base: int) -> list[tuple[object, dict[str, object]]]:
    wfs = [Mixed(runtime=rt, timeout=timeout), AllAsync(runtime=rt, timeout=timeout)]
    return [(wfs[i % 2].run(seed=base + i, parts=3), expected_total(base + i, 3)) for i in range(n)]


def settle(runs: list[tuple[object, dict[str, object]]], timeout: float) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + timeout + 15
    for h, expected in runs:
        tally.wait(h, expected, max(0.1, deadline - time.monotonic()))
    return tally


try:
    # Warm both workflows in every worker.
    assert settle(start_runs(2 * WORKERS, LONG, 0), LONG).counts["right"] == 2 * WORKERS

    # 1. A busy worker stopped mid-step, left stopped.
    spin = Spin(runtime=rt, timeout=SHORT).run()
    busy_pid = next(ev.pid for ev in spin.iter_events(timeout=LONG) if isinstance(ev, Started))
    stop(busy_pid)
    beside = start_runs(scaled(4), LONG, 100)
    spun = Tally()
    spun.wait(spin, None, SHORT + 15)
    figures["busy_stopped"] = {"stopped_run": spun.figures(), "runs_beside": settle(beside, LONG).figures(),
                               "pool_after": len(healed(rt, WORKERS, [busy_pid]))}

    # 2. An idle worker stopped, continued after 1 s.
    idle_pid = rt.worker_pids()[0]
    stop(idle_pid)
    runs = start_runs(RUNS, LONG, 200)
    threading.Timer(1.0, os.kill, (idle_pid, signal.SIGCONT)).start()
    figures["idle_stopped_then_continued"] = {"runs": settle(runs, LONG).figures()}

    # 3. An idle worker stopped for good.
    idle_pid = rt.worker_pids()[0]
    stop(idle_pid)
    runs = start_runs(RUNS, SHORT, 300)
    settled = settle(runs, SHORT)
    time.sleep(2.0)  # past cancel_grace (1 s): informational, whether the runtime replaced the stopped worker
    figures["idle_left_stopped"] = {"runs": settled.figures(),
                                    "stopped_worker_still_in_pool": idle_pid in rt.worker_pids(wait=False)}

    # 4. Shut down with a stopped worker (the one of phase 3 if the runtime kept it, and one more).
    pids = rt.worker_pids(wait=False)
    if len([p for p in pids if p not in stopped]) > 0:
        stop([p for p in pids if p not in stopped][0])
finally:
    began = time.monotonic()
    done = threading.Event()

    def shut() -> None:
        rt.shutdown()
        done.set()

    threading.Thread(target=shut, daemon=True).start()
    figures["shutdown_returned"] = done.wait(60)
    figures["shutdown_s"] = round(time.monotonic() - began, 2)

figures["stopped_pids"] = stopped
figures["stopped_pids_alive_after_shutdown"] = [p for p in stopped if alive(p)]
figures["leaked_processes"] = leftovers_after()
for pid in stopped:  # let the harness see the truth, but never leave a stopped process lying around
    try:
        os.kill(pid, signal.SIGCONT)
    except OSError:
        pass
emit(figures)
os._exit(0)
