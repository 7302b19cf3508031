"""Load generator: drive a ProcessRuntime with a realistic mix of runs and watch it stay healthy.

    .venv/bin/python perf/load.py [--concurrency 32] [--duration 60 | --runs N] [--workers N]
                                  [--seed 1] [--json out.json] [--png out.png] [--quick]

``--concurrency`` lanes each start a run, wait for its end, and start the next, for ``--duration`` seconds
or until ``--runs`` runs have ended, after ``--warmup`` seconds of the same mix that the figures leave out
(the parent's RSS climbs for the first ~1,000 runs, then stays flat). Every run is one ``LoadMix``
workflow (perf/_workloads.py: CPU ``def`` steps, async steps, the store, collect_events, streaming) with a
scenario drawn at random:

    ok               await the result
    ok_stream        consume stream_events(), then await the result
    fail_def         a def step raises InjectedFailure         -> the run fails with InjectedFailure
    fail_async       an async step raises InjectedFailure      -> the run fails with InjectedFailure
    hard_cancel      handler.cancel() (from a thread) while a def step spins; half start a grandchild
                     process (`sleep 997.25`) that must die with its worker -> WorkflowCancelledByUser
    graceful_cancel  await handler.cancel_run() while a def step spins    -> WorkflowCancelledByUser
    timeout          a Workflow(timeout=0.25) whose def step spins 3 s     -> WorkflowTimeoutError

Reported: throughput, latency p50/p95/p99 (overall and per scenario), outcomes by kind (expected or not),
and, sampled over time, RSS of this process and of the workers, the worker count and the runs in flight.
Written to JSON (default perf/results/load-<date>.json) and, if matplotlib is importable (extra ``plot``), a
PNG chart next to it. Exit status is non-zero if a run ended unexpectedly or hung, the pool is not back to
full strength at the end, a process leaked (a worker or a step's grandchild alive after shutdown), or memory
grew (parent + workers, second quarter of the test vs the last quarter, more than 1 KiB per run and more
than the 4 MiB allowed for allocator noise).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import random
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

import _workloads as W
from actors import WorkflowCancelledByUser, WorkflowTimeoutError
from runtime import ProcessRuntime

HERE = Path(__file__).resolve().parent
PER_RUN_LIMIT = 60.0  # a run not over by then counts as hung
MEMORY_SLACK = 4 * 2**20  # bytes of RSS drift allowed whatever the run count (allocator, arenas)
MEMORY_PER_RUN = 1024  # bytes per run: issue 5's target

SCENARIOS = {  # name: weight
    "ok": 40, "ok_stream": 30, "fail_def": 6, "fail_async": 6, "hard_cancel": 8, "graceful_cancel": 6,
    "timeout": 4,
}
EXPECTED = {
    "ok": "ok", "ok_stream": "ok", "fail_def": "InjectedFailure", "fail_async": "InjectedFailure",
    "hard_cancel": "WorkflowCancelledByUser", "graceful_cancel": "WorkflowCancelledByUser",
    "timeout": "WorkflowTimeoutError",
}


@dataclass(slots=True)
class Record:
    scenario: str
    outcome: str  # "ok", an exception class name, "hang" or "wrong result"
    expected: bool
    start: float  # seconds since the test began
    latency: float
    events: int = 0


@dataclass(slots=True)
class Sample:
    t: float
    done: int
    inflight: int
    rss_parent: int
    rss_workers: int
    workers: int
    descendants: int


class Load:
    def __init__(self, rt: ProcessRuntime, args: argparse.Namespace) -> None:
        self.rt, self.args = rt, args
        self.rng = random.Random(args.seed)
        self.wf = W.LoadMix(runtime=rt, timeout=PER_RUN_LIMIT)
        self.wf_short = W.LoadMix(runtime=rt, timeout=0.25)
        self.n = W.calibrate_cpu_unit(args.unit_ms / 1000)
        self.expected_value = args.parts * W.cpu_unit(self.n) + args.parts
        self.records: list[Record] = []
        self.warmup_records: list[Record] = []
        self.samples: list[Sample] = []
        self.inflight = 0
        self.started = 0
        self.ended = 0
        self.t0 = 0.0
        self.worker_pids_seen: set[int] = set()
        self.stop_sampling = threading.Event()

    # --- one run ---------------------------------------------------------------------------------------
    def _params(self, scenario: str) -> dict[str, Any]:
        a = self.args
        p: dict[str, Any] = dict(parts=a.parts, n=self.n, delay=0.002, stream=a.stream, fail_def=False,
                                 fail_async=False, spin_s=0.0, grandchild=False)
        if scenario == "fail_def":
            p["fail_def"] = True
        elif scenario == "fail_async":
            p["fail_async"] = True
        elif scenario == "hard_cancel":
            p["spin_s"], p["grandchild"] = 5.0, self.rng.random() < 0.5
        elif scenario == "graceful_cancel":
            p["spin_s"] = 0.15
        elif scenario == "timeout":
            p["spin_s"] = 3.0
        return p

    async def one(self, scenario: str) -> Record:
        wf = self.wf_short if scenario == "timeout" else self.wf
        start = time.perf_counter()
        handler = wf.run(**self._params(scenario))
        events = 0
        try:
            if scenario == "ok_stream":
                async for _ in handler.stream_events():
                    events += 1
            elif scenario in ("hard_cancel", "graceful_cancel"):
                await asyncio.sleep(self.rng.uniform(0.01, 0.1))
                if scenario == "hard_cancel":
                    await asyncio.to_thread(handler.cancel)  # blocking API, from another thread
                else:
                    await handler.cancel_run(timeout=PER_RUN_LIMIT)
            result = await asyncio.wait_for(asyncio.ensure_future(handler), PER_RUN_LIMIT)
            outcome = "ok" if result == self.expected_value else "wrong result"
        except asyncio.TimeoutError:
            outcome = "hang"
            await asyncio.to_thread(handler.cancel)
        except Exception as exc:  # noqa: BLE001 -- classified below
            outcome = type(exc).__name__
        latency = time.perf_counter() - start
        expected = outcome == EXPECTED[scenario]
        if not expected and scenario in ("hard_cancel", "graceful_cancel") and outcome == "ok":
            expected = True  # the cancel lost a race with the run's end: allowed, cancel() said False
        return Record(scenario, outcome, expected, start - self.t0, latency, events)

    async def lane(self, deadline: float, budget: list[int]) -> None:
        names, weights = list(SCENARIOS), list(SCENARIOS.values())
        while time.perf_counter() < deadline and budget[0] > 0:
            budget[0] -= 1
            scenario = self.rng.choices(names, weights)[0]
            self.inflight += 1
            self.started += 1
            try:
                self.records.append(await self.one(scenario))
            finally:
                self.inflight -= 1
                self.ended += 1

    # --- sampling --------------------------------------------------------------------------------------
    def sample(self) -> Sample:
        me = psutil.Process()
        pids = self.rt.worker_pids()
        self.worker_pids_seen.update(pids)
        workers_rss = 0
        for pid in pids:
            try:
                workers_rss += psutil.Process(pid).memory_info().rss
            except psutil.NoSuchProcess:
                pass
        # Absolute time here; made relative to the measured phase's start once that is known (main()).
        return Sample(time.perf_counter(), self.ended, self.inflight,
                      me.memory_info().rss, workers_rss, len(pids), len(me.children(recursive=True)))

    def sampler(self) -> None:
        while not self.stop_sampling.wait(self.args.sample_interval):
            try:
                self.samples.append(self.sample())
            except Exception as exc:  # noqa: BLE001 -- a sampling hiccup must not end the test
                print(f"[load] sampling failed: {exc!r}", file=sys.stderr)

    # --- the test --------------------------------------------------------------------------------------
    async def drive(self) -> float:
        """The warm-up (same mix, kept apart), then the measured phase; its wall time."""
        a = self.args
        if a.warmup > 0:
            await asyncio.gather(*(self.lane(time.perf_counter() + a.warmup, [10 ** 12])
                                   for _ in range(a.concurrency)))
            self.warmup_records, self.records = self.records, []
        self.t0 = time.perf_counter()
        deadline = self.t0 + (a.duration if a.runs is None else 10 ** 9)
        budget = [a.runs if a.runs is not None else 10 ** 12]
        await asyncio.gather(*(self.lane(deadline, budget) for _ in range(a.concurrency)))
        return time.perf_counter() - self.t0


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


def latency_stats(xs: list[float]) -> dict[str, Any]:
    return {"n": len(xs), **{f"p{q}_ms": (v * 1e3 if (v := percentile(xs, q)) is not None else None)
                             for q in (50, 95, 99)},
            "max_ms": max(xs) * 1e3 if xs else None}


def memory_check(samples: list[Sample]) -> dict[str, Any]:
    """Median RSS (parent + workers) over the test's second quarter vs its last quarter, per run between."""
    samples = [s for s in samples if s.t >= 0]  # after the warm-up
    if len(samples) < 8:
        return {"ok": True, "note": "too few samples to judge"}
    q = len(samples) // 4
    early, late = samples[q:2 * q], samples[-q:]
    med = lambda ss, f: statistics.median(f(s) for s in ss)  # noqa: E731
    total = lambda s: s.rss_parent + s.rss_workers  # noqa: E731
    growth = med(late, total) - med(early, total)
    parent_growth = med(late, lambda s: s.rss_parent) - med(early, lambda s: s.rss_parent)
    runs = max(1, med(late, lambda s: s.done) - med(early, lambda s: s.done))
    per_run = growth / runs
    ok = growth <= MEMORY_SLACK or per_run <= MEMORY_PER_RUN
    return {"ok": ok, "growth_bytes": growth, "parent_growth_bytes": parent_growth, "runs_between": runs,
            "growth_per_run_bytes": per_run, "parent_growth_per_run_bytes": parent_growth / runs,
            "rule": f"growth <= {MEMORY_SLACK} B or <= {MEMORY_PER_RUN} B/run"}


def leak_check(load: Load) -> dict[str, Any]:
    """After shutdown: no worker we ever saw, no step grandchild, no child but multiprocessing's helpers."""
    time.sleep(0.2)
    alive_workers = [p for p in load.worker_pids_seen if psutil.pid_exists(p)
                     and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    grandchildren = []
    for proc in psutil.process_iter(["cmdline"]):
        if (proc.info["cmdline"] or [])[:2] == ["sleep", W.GRANDCHILD_MARK]:
            grandchildren.append(proc.pid)
    helpers = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")
    others = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if not any(h in cmd for h in helpers):
            others.append({"pid": child.pid, "cmdline": cmd[:200]})
    return {"ok": not (alive_workers or grandchildren or others), "workers_alive": alive_workers,
            "grandchildren_alive": grandchildren, "other_children": others,
            "workers_seen": len(load.worker_pids_seen)}


def chart(path: Path, load: Load) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not importable (pip install -e '.[plot]'): no chart"
    s = load.samples
    t = [x.t for x in s]
    fig, ax = plt.subplots(2, 2, figsize=(13, 8))
    rate = [(b.done - a.done) / (b.t - a.t) for a, b in zip(s, s[1:])]
    ax[0][0].plot(t[1:], rate)
    ax[0][0].set_title("runs ended per second")
    window = max(1.0, (t[-1] if t else 1) / 30)
    buckets: dict[int, list[float]] = defaultdict(list)
    for r in load.records:
        if r.outcome == "ok":
            buckets[int((r.start + r.latency) / window)].append(r.latency * 1e3)
    keys = sorted(buckets)
    for q in (50, 95, 99):
        ax[0][1].plot([(k + 0.5) * window for k in keys], [percentile(buckets[k], q) for k in keys],
                      label=f"p{q}")
    ax[0][1].set_title(f"latency of successful runs, ms ({window:.1f} s windows)")
    ax[0][1].legend()
    ax[1][0].plot(t, [x.rss_parent / 2**20 for x in s], label="parent")
    ax[1][0].plot(t, [x.rss_workers / 2**20 for x in s], label="workers (sum)")
    ax[1][0].plot(t, [(x.rss_parent + x.rss_workers) / 2**20 for x in s], label="total")
    ax[1][0].set_title("RSS, MiB")
    ax[1][0].legend()
    ax[1][1].plot(t, [x.workers for x in s], label="live workers")
    ax[1][1].plot(t, [x.inflight for x in s], label="runs in flight")
    ax[1][1].plot(t, [x.descendants for x in s], label="descendant processes")
    ax[1][1].set_title("processes and runs")
    ax[1][1].legend()
    for a in ax.flat:
        a.set_xlabel("s (warm-up before 0)" if load.args.warmup > 0 else "s")
        a.grid(alpha=0.3)
        if load.args.warmup > 0:
            a.axvline(0, color="grey", linestyle=":")
    fig.suptitle(f"procflow load test, {load.args.concurrency} in flight, {len(load.records)} runs")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=32, help="runs in flight (default 32)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    ap.add_argument("--runs", type=int, default=None, help="stop after this many runs instead")
    ap.add_argument("--workers", type=int, default=None, help="pool size (default: one per CPU)")
    ap.add_argument("--parts", type=int, default=2, help="CPU def-step invocations per run (default 2)")
    ap.add_argument("--unit-ms", type=float, default=5.0, help="CPU work per part, ms (default 5)")
    ap.add_argument("--stream", type=int, default=5, help="events each part writes to the stream")
    ap.add_argument("--warmup", type=float, default=10.0,
                    help="seconds of the same mix first, left out of the figures (default 10)")
    ap.add_argument("--sample-interval", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="--duration 15 --warmup 5 --concurrency 16")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--png", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.concurrency = 15.0, 5.0, 16

    stamp = f"{datetime.datetime.now():%Y%m%d-%H%M%S}"
    out = args.json or HERE / "results" / f"load-{stamp}.json"
    png = args.png or out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)

    rt = ProcessRuntime(args.workers)
    rt.start(wait=True)
    load = Load(rt, args)
    sampler = threading.Thread(target=load.sampler, name="load-sampler", daemon=True)
    try:
        load.samples.append(load.sample())
        sampler.start()
        print(f"[load] {args.concurrency} in flight, {args.runs or ''}{' runs' if args.runs else ''}"
              f"{'' if args.runs else f'{args.duration:g} s'}, {rt.workers} workers, unit "
              f"{args.unit_ms:g} ms x {args.parts} parts", file=sys.stderr, flush=True)
        wall = asyncio.run(load.drive())
        try:
            rt.wait_ready(30)
            full_strength = True
        except Exception:  # noqa: BLE001 -- reported as a failed check
            full_strength = False
        gc.collect()
        load.stop_sampling.set()
        sampler.join()
        load.samples.append(load.sample())
        final_workers = load.samples[-1].workers
        for smp in load.samples:  # warm-up samples get negative times
            smp.t -= load.t0
    finally:
        load.stop_sampling.set()
        rt.shutdown()
    leaks = leak_check(load)

    recs = load.records
    outcomes = Counter((r.scenario, r.outcome) for r in recs)
    unexpected = [asdict(r) for r in load.warmup_records + recs if not r.expected]
    mem = memory_check(load.samples)
    summary: dict[str, Any] = {
        "runs": len(recs), "wall_s": wall, "runs_per_s": len(recs) / wall,
        "ok_runs_per_s": sum(r.outcome == "ok" for r in recs) / wall,
        "latency_ok": latency_stats([r.latency for r in recs if r.outcome == "ok"]),
        "latency_by_scenario": {s: latency_stats([r.latency for r in recs if r.scenario == s])
                                for s in SCENARIOS},
        "outcomes": {f"{s} -> {o}": n for (s, o), n in sorted(outcomes.items())},
        "errors_by_kind": dict(Counter(r.outcome for r in recs if r.outcome != "ok")),
        "unexpected": len(unexpected),
        "streamed_events": sum(r.events for r in recs),
    }
    checks = {
        "no_unexpected_outcomes": not unexpected,
        "pool_full_strength_at_end": full_strength and final_workers == rt.workers,
        "no_leaked_processes": leaks["ok"],
        "flat_memory": mem["ok"],
    }
    ok = all(checks.values())
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "args": vars(args),
            "workers": rt.workers, "cpu_count": os.cpu_count(), "loadavg": os.getloadavg(),
            "cpu_unit_n": load.n}
    result: dict[str, Any] = {
        "meta": meta, "summary": summary, "checks": checks, "memory": mem, "leaks": leaks,
        "unexpected": unexpected[:50], "samples": [asdict(s) for s in load.samples],
        "records": [asdict(r) for r in recs]}
    out.write_text(json.dumps(result, indent=1, default=str))
    note = chart(png, load)

    lat = summary["latency_ok"]
    print(f"\nprocflow load test {result['meta']['date']}: after {len(load.warmup_records)} warm-up runs, "
          f"{len(recs)} runs in {wall:.1f} s = "
          f"{summary['runs_per_s']:.1f} runs/s ({summary['ok_runs_per_s']:.1f} ok/s), {args.concurrency} in "
          f"flight, {rt.workers} workers, load avg {os.getloadavg()[0]:.2f}")
    fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    print(f"latency of ok runs: p50 {fmt(lat['p50_ms'])} ms, p95 {fmt(lat['p95_ms'])} ms, "
          f"p99 {fmt(lat['p99_ms'])} ms, max {fmt(lat['max_ms'])} ms")
    print("by scenario (p50 / p99 ms):", ", ".join(
        f"{s} {fmt(v['p50_ms'])}/{fmt(v['p99_ms'])} (n={v['n']})"
        for s, v in summary["latency_by_scenario"].items()))
    print("outcomes:", ", ".join(f"{k}: {v}" for k, v in summary["outcomes"].items()))
    print("errors by kind:", summary["errors_by_kind"] or "none")
    first, last = load.samples[0], load.samples[-1]
    print(f"RSS parent {first.rss_parent / 2**20:.1f} -> {last.rss_parent / 2**20:.1f} MiB, workers "
          f"{first.rss_workers / 2**20:.1f} -> {last.rss_workers / 2**20:.1f} MiB; memory growth "
          f"{mem.get('growth_bytes', 0) / 2**20:.2f} MiB over {mem.get('runs_between', 0):.0f} runs = "
          f"{mem.get('growth_per_run_bytes', 0):.0f} B/run; workers seen {leaks['workers_seen']}")
    for name, good in checks.items():
        print(f"  [{'ok' if good else 'FAIL'}] {name}")
    if unexpected:
        print("unexpected:", unexpected[:5])
    if not leaks["ok"]:
        print("leaks:", leaks)
    print(f"wrote {out}" + (f" and {png}" if note is None else f" ({note})"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
