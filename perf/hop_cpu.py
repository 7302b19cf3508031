"""Where a hop's time goes: the 10-step chain's run latency and the CPU its threads spend per run, side by side
for one or more source trees.

    .venv/bin/python perf/hop_cpu.py [--runs 800] [--rounds 4] [--pin CPU] [--quiet 0.15] [TREE ...]

Each round runs every tree once, in a fresh interpreter (``PYTHONPATH=TREE``; the order flips every round):
a 2-worker ``ProcessRuntime``, 50 warm-up runs of ``Chain10`` (perf/_workloads.py), then ``--runs`` sequential
runs. It prints, per run: the median latency, and the CPU time (``/proc/.../schedstat``: on-CPU time,
kernel included) of the caller's thread, the supervisor thread and the workers (every thread); divide by
10 for a hop. Trees default to this checkout; give another (``git worktree add /tmp/main main``) to compare.

``--pin CPU`` runs everything on one CPU (the child sets its affinity before the runtime starts, so the
forkserver and the workers inherit it): no wake-up crosses CPUs, which leaves the CPU the code itself costs
(the chain is sequential, so nothing is lost to the pinning). Unpinned on an idle VM, every hop also pays
for waking idle vCPUs (see perf/README.md, "Where a hop goes"). ``--quiet`` waits (up to 2 min) before each
run until other processes use less than that many cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _task_cpu(pid: int, tid: int) -> float:
    with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
        return int(fh.read().split()[0]) / 1e9


def _process_cpu(pid: int) -> float:
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += _task_cpu(pid, int(tid))
        except OSError:
            pass  # a thread that just ended
    return total


def child(runs: int, pin: int | None) -> None:
    """One measurement, in this interpreter (its tree is on sys.path): prints one JSON line."""
    if pin is not None:
        os.sched_setaffinity(0, {pin})
    sys.path.insert(0, str(HERE))
    import _workloads as W
    from runtime import ProcessRuntime

    rt = ProcessRuntime(2).start(wait=True)
    wf = W.Chain10(runtime=rt, timeout=60)
    workers = rt.worker_pids()
    me, caller = os.getpid(), threading.get_native_id()
    sup = next(t.native_id for t in threading.enumerate() if t.name == "procflow-supervisor")
    assert sup is not None

    def cpu() -> tuple[float, float, float]:
        return _task_cpu(me, caller), _task_cpu(me, sup), sum(_process_cpu(p) for p in workers)

    async def main() -> dict[str, float]:
        for _ in range(50):
            await wf.run()
        before, took = cpu(), []
        for _ in range(runs):
            t = time.perf_counter()
            await wf.run()
            took.append(time.perf_counter() - t)
        after = cpu()
        per = [(b - a) / runs * 1e6 for a, b in zip(before, after)]
        return {"run_us": statistics.median(took) * 1e6, "caller_us": per[0], "supervisor_us": per[1],
                "workers_us": per[2]}

    out = asyncio.run(main())
    rt.shutdown()
    print(json.dumps(out))


def _other_cores(seconds: float = 2.0) -> float:
    import psutil

    a = psutil.cpu_times()
    time.sleep(seconds)
    b = psutil.cpu_times()
    return max(0.0, ((sum(b) - b.idle) - (sum(a) - a.idle)) / seconds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs="*", default=[str(HERE.parent)])
    ap.add_argument("--runs", type=int, default=800)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--pin", type=int, default=None)
    ap.add_argument("--quiet", type=float, default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.runs, args.pin)
        return 0
    trees = [str(Path(t).resolve()) for t in args.trees]
    results: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
    for i in range(args.rounds):
        for tree in (trees if i % 2 == 0 else trees[::-1]):
            if args.quiet is not None:
                deadline = time.time() + 120
                while _other_cores() >= args.quiet and time.time() < deadline:
                    pass
            cmd = [sys.executable, __file__, "--child", "--runs", str(args.runs)]
            if args.pin is not None:
                cmd += ["--pin", str(args.pin)]
            # In the tree: a forkserver started by Python 3.11 preloads procflow from its working directory.
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tree,
                                  env={**os.environ, "PYTHONPATH": tree})
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            results[tree].append(row)
            print(f"round {i + 1} {tree}: " + ", ".join(f"{k} {v:,.0f}" for k, v in row.items()), flush=True)
    print(f"\nmedians per run of {args.rounds} rounds x {args.runs} runs (a hop: / 10)"
          + (f", pinned to CPU {args.pin}" if args.pin is not None else ""))
    for tree, rows in results.items():
        print(f"  {tree}: " + ", ".join(f"{k} {statistics.median(r[k] for r in rows):,.0f}" for k in rows[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
