"""procflow benchmarks, side by side with their baselines, in one process run.

    .venv/bin/python perf/bench.py [--quick] [--only NAME[,NAME...]] [--json out.json] [--settle S]

Benchmarks (names for ``--only``), each printed as a ratio against a baseline measured in the same run,
because the machines are shared and noisy (chain, fanout and streaming alternate short rounds of procflow
and its baselines and report the median of the per-round ratios):

    chain       10-step chain of trivial async steps: per-hop overhead (run latency / 10) and the marginal
                hop ((T10 - T1) / 9); procflow vs LlamaIndex Workflows.
    throughput  1, 10, 100, 1000 runs in flight of a 3-step workflow, runs/s; procflow vs LlamaIndex.
    fanout      8 units of ~0.25 s pure-Python work (def steps): wall time for procflow, LlamaIndex, a warm
                ProcessPoolExecutor(os.cpu_count()) and a sequential loop; floor = sequential / cores.
    streaming   a step writes 10,000 events to the stream, a consumer of stream_events() reads them: events/s.
    cancel      hard cancel of a run whose def steps spin in pure Python on every worker: cancel() ->
                last of those workers gone (psutil); median and max. Also with steps that ignore SIGTERM.
    startup     fresh interpreter to first result of a trivial workflow (default runtime, pool start
                included), via subprocess; baselines: bare interpreter, LlamaIndex, ProcessPoolExecutor;
                and the floor of a worker process: a fresh interpreter starting a second one that imports
                what a worker needs (third-party only; then procflow's preload). Bytecode compiled first.
    poolstart   ProcessRuntime(...).start(wait=True) in this process (forkserver already up), and spawn.
    memory      RSS of this process plus all workers after 10, 1,000 and 10,000 sequential runs.

Targets (issue 5) are checked in the last column. LlamaIndex columns print "n/a" when the ``compare`` extra
is not installed. Results go to perf/results/bench-<date>.json unless ``--json`` says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime
import gc
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil

import _workloads as W
from actors import Context, Event, StartEvent, StepStateChanged, StopEvent, Workflow, step
from runtime import ProcessRuntime

HERE = Path(__file__).resolve().parent
CORES = os.cpu_count() or 1
NA = "n/a"


# --- results ---------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the table: a procflow figure against one baseline."""

    bench: str
    metric: str
    unit: str
    procflow: float | None
    baseline_name: str = ""
    baseline: float | None = None
    target: str = ""  # e.g. "<= 0.5x", ">= 1.5x", "<= 50 ms"
    ok: bool | None = None
    note: str = ""
    paired: float | None = None  # median of per-repetition ratios, when the benchmark pairs them

    @property
    def ratio(self) -> float | None:
        if self.paired is not None:
            return self.paired
        if self.procflow is None or not self.baseline:
            return None
        return self.procflow / self.baseline


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        if row.ok is None and row.target:
            row.ok = check(row)
        self.rows.append(row)
        return row


def check(row: Row) -> bool | None:
    """Whether ``row`` meets its target; None when it cannot be judged (no baseline)."""
    op, value, kind = row.target.split()
    if kind == "x":
        got = row.ratio
    else:
        got = row.procflow
    if got is None:
        return None
    limit = float(value)
    return got <= limit if op == "<=" else got >= limit


def fmt(v: float | None) -> str:
    if v is None:
        return NA
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def print_table(rows: list[Row]) -> None:
    head = ("benchmark", "metric", "procflow", "baseline", "baseline value", "ratio", "target", "ok")
    lines = [head]
    for r in rows:
        unit = f" {r.unit}" if r.unit else ""
        ok = {True: "yes", False: "NO", None: ""}[r.ok]
        lines.append((r.bench, r.metric, fmt(r.procflow) + unit, r.baseline_name or "-",
                      (fmt(r.baseline) + (unit if r.baseline is not None else "")) if r.baseline_name else "-",
                      f"{r.ratio:.2f}x" if r.ratio is not None else "-", r.target or "-", ok))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for n, line in enumerate(lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# --- noise: how much CPU other processes took while we measured ------------------------------------------
def _tree_cpu() -> float:
    """CPU seconds used so far by this process and its live descendants (workers, pool processes)."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:4])  # user, system, and those of children already reaped
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def _busy_cpu() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


class Noise:
    """External load: CPU seconds other processes used during a measurement, as cores on average.

    Approximate (a descendant that exits meanwhile counts as external), but it tells a quiet measurement
    from one taken while other helpers' tests were running.
    """

    def __init__(self) -> None:
        self.t, self.busy, self.ours = time.perf_counter(), _busy_cpu(), _tree_cpu()

    def cores(self) -> float:
        wall = time.perf_counter() - self.t
        other = (_busy_cpu() - self.busy) - (_tree_cpu() - self.ours)
        return max(0.0, other / wall) if wall > 0 else 0.0


# --- 1. chain ------------------------------------------------------------------------------------------
def bench_chain(rep: Report, rt: ProcessRuntime, quick: bool) -> None:
    rounds, per_round, warmup = (3, 20, 10) if quick else (8, 40, 10)
    pf10, pf1 = W.Chain10(runtime=rt, timeout=60), W.Chain1(runtime=rt, timeout=60)
    li10, li1 = W.llama("LChain10"), W.llama("LChain1")

    async def main() -> list[dict[str, list[float]]]:
        # Short rounds, both frameworks in each, order alternating: a burst of load from another process
        # spoils a round or two, and the ratio is the median of the per-round ratios.
        out: list[dict[str, list[float]]] = []
        for i in range(rounds):
            makers: list[tuple[str, Callable[[], Any]]] = [("pf10", lambda: pf10.run()),
                                                           ("pf1", lambda: pf1.run())]
            if li10 is not None:
                l10, l1 = li10(timeout=60), li1(timeout=60)
                makers += [("li10", lambda: l10.run()), ("li1", lambda: l1.run())]
            res: dict[str, list[float]] = {}
            for name, make in (makers if i % 2 == 0 else makers[::-1]):
                res[name] = await W.latencies(make, per_round, warmup if i == 0 else 2)
            out.append(res)
        return out

    per = asyncio.run(main())
    meds = [{k: median(v) * 1e6 for k, v in r.items()} for r in per]
    med = {k: median([m[k] for m in meds]) for k in meds[0]}
    rep.raw["chain"] = {"rounds": rounds, "runs_per_round": per_round, "median_run_us": med,
                        "per_round_median_us": meds}
    have_li = "li10" in med

    def hop(m: dict[str, float], fw: str) -> float:
        return m[f"{fw}10"] / 10

    def marginal(m: dict[str, float], fw: str) -> float:
        return (m[f"{fw}10"] - m[f"{fw}1"]) / 9

    for metric, fn, target in (("per-hop overhead (run/10)", hop, "<= 0.3 x"),
                               ("marginal hop ((T10-T1)/9)", marginal, "")):
        rep.add(Row("chain", metric, "us", fn(med, "pf"), "LlamaIndex", fn(med, "li") if have_li else None,
                    target, paired=median([fn(m, "pf") / fn(m, "li") for m in meds]) if have_li else None))
    rep.add(Row("chain", "1-step run latency", "us", med["pf1"], "LlamaIndex", med.get("li1")))


# --- 2. throughput -------------------------------------------------------------------------------------
def bench_throughput(rep: Report, rt: ProcessRuntime, quick: bool) -> None:
    pf = W.Three(runtime=rt, timeout=120)
    li_cls = W.llama("LThree")
    out: dict[str, dict[int, float]] = {"procflow": {}, "llamaindex": {}}

    async def main() -> None:
        await W.throughput(lambda: pf.run(), 10, 50)  # warm: workflow shipped to every worker
        for inflight in (1, 10, 100, 1000):
            total = max(inflight, 100) if quick else max(2 * inflight, 300)
            out["procflow"][inflight] = await W.throughput(lambda: pf.run(), inflight, total)
            if li_cls is not None:
                li = li_cls(timeout=120)
                out["llamaindex"][inflight] = await W.throughput(lambda: li.run(), inflight, total)
            gc.collect()

    asyncio.run(main())
    rep.raw["throughput"] = out
    for inflight, rate in out["procflow"].items():
        target = ">= 1.5 x" if inflight == 100 else ""
        rep.add(Row("throughput", f"{inflight} in flight, 3 steps", "runs/s", rate, "LlamaIndex",
                    out["llamaindex"].get(inflight), target))


# --- 3. CPU fan-out ------------------------------------------------------------------------------------
def _warm_pool() -> concurrent.futures.ProcessPoolExecutor:
    pool = concurrent.futures.ProcessPoolExecutor(
        CORES, mp_context=multiprocessing.get_context("forkserver"))
    # Workers start on demand: keep CORES tasks busy at once so that every worker exists and has run once.
    list(pool.map(time.sleep, [0.2] * CORES))
    list(pool.map(W.cpu_unit, [1000] * CORES))
    return pool


def paired(a: list[float], b: list[float]) -> float:
    """Median of the per-repetition ratios a[i] / b[i]: measured back to back, each pair saw the same
    machine, so this cancels most of the drift that comparing two medians would keep."""
    return median([x / y for x, y in zip(a, b)])


def bench_fanout(rep: Report, rt: ProcessRuntime, quick: bool) -> None:
    work = W.calibrate_cpu_unit(0.25)
    reps = 2 if quick else 5
    pf = W.FanOut(runtime=rt, timeout=300)
    pf.run(parts=8, work=1000).result(60)  # warm: definition in the workers
    li_cls = W.llama("LFanOut")
    pool = _warm_pool()
    times: dict[str, list[float]] = {}
    noise: dict[str, list[float]] = {}

    async def li_run() -> Any:
        return await li_cls(timeout=300).run(parts=8, work=work)

    contenders: list[tuple[str, Callable[[], Any]]] = [
        ("procflow", lambda: pf.run(parts=8, work=work).result(300)),
        ("pool", lambda: list(pool.map(W.cpu_unit, [work] * 8))),
        ("sequential", lambda: [W.cpu_unit(work) for _ in range(8)]),
    ]
    if li_cls is not None:
        contenders.append(("llamaindex", lambda: asyncio.run(li_run())))
    try:
        for i in range(reps):
            # Alternate the order so that neither side always runs first after the slow ones.
            for name, fn in (contenders if i % 2 == 0 else contenders[::-1]):
                probe = Noise()
                t = time.perf_counter()
                fn()
                times.setdefault(name, []).append(time.perf_counter() - t)
                noise.setdefault(name, []).append(probe.cores())
    finally:
        pool.shutdown()
    med = {k: median(v) for k, v in times.items()}
    floors = [x / CORES for x in times["sequential"]]
    rep.raw["fanout"] = {"unit_n": work, "unit_s": med["sequential"] / 8, "reps": reps, "wall_s": times,
                         "physical_floor_s": median(floors), "cores": CORES, "external_load_cores": noise}
    ext = median([x for v in noise.values() for x in v])
    pf_t = times["procflow"]
    label = f"8 x {med['sequential'] / 8:.2f} s, wall"
    rows = [("pool", f"warm ProcessPool({CORES})", "<= 1.03 x"), ("llamaindex", "LlamaIndex", "<= 0.55 x"),
            ("sequential", "sequential loop", "")]
    for key, name, target in rows:
        base = times.get(key)
        rep.add(Row("fanout", label, "s", med["procflow"], name,
                    median(base) if base else None, target, paired=paired(pf_t, base) if base else None))
    rep.add(Row("fanout", label, "s", med["procflow"], f"physical floor (seq/{CORES})",
                median(floors), paired=paired(pf_t, floors),
                note=f"other processes used {ext:.2f} of {CORES} cores meanwhile"))


# --- 4. streaming --------------------------------------------------------------------------------------
class MainTick(Event):
    """Defined in ``__main__`` (bench.py run as a script) and named by no step: no worker can import it."""

    i: int


class StreamMain(Workflow):
    @step
    async def produce(self, ctx: Context, ev: StartEvent) -> StopEvent:
        for i in range(ev.count):
            ctx.write_event_to_stream(MainTick(i=i))
        return StopEvent(result=ev.count)


def stream_local_workflow() -> type[Workflow]:
    """A workflow streaming a class defined inside this function (one class per call)."""

    class LocalTick(Event):
        i: int

    class StreamLocal(Workflow):
        @step
        async def produce(self, ctx: Context, ev: StartEvent) -> StopEvent:
            for i in range(ev.count):
                ctx.write_event_to_stream(LocalTick(i=i))
            return StopEvent(result=ev.count)

    return StreamLocal


STREAM_KINDS = (("async step, class from a module", ">= 1.5 x"),
                ("async step, class from __main__", ">= 1.5 x"),
                ("async step, class from a function", ">= 1.5 x"),
                ("def step, class from a module", ">= 1.5 x"))


def bench_streaming(rep: Report, rt: ProcessRuntime, quick: bool) -> None:
    count, reps = 10_000, (3 if quick else 8)
    rates: dict[str, list[float]] = {}

    async def consume(handler: Any) -> int:
        n = 0
        async for ev in handler.stream_events():
            n += 1
        await handler
        return n - 1  # the StopEvent

    async def one(name: str, make: Callable[[], Any]) -> None:
        t = time.perf_counter()
        got = await consume(make())
        took = time.perf_counter() - t
        if got != count:
            raise AssertionError(f"{name}: streamed {got} events, expected {count}")
        rates.setdefault(name, []).append(count / took)

    flows = [W.StreamAsync(runtime=rt, timeout=120), StreamMain(runtime=rt, timeout=120),
             stream_local_workflow()(runtime=rt, timeout=120), W.StreamDef(runtime=rt, timeout=120)]
    contenders: list[tuple[str, Callable[[], Any]]] = [
        (name, lambda wf=wf: wf.run(count=count)) for (name, _), wf in zip(STREAM_KINDS, flows)]
    li_cls = W.llama("LStreamAsync")
    if li_cls is not None:
        contenders.append(("llamaindex", lambda: li_cls(timeout=120).run(count=count)))

    async def main() -> None:
        for wf in flows:
            await consume(wf.run(count=10))
        for i in range(reps):
            for name, make in (contenders if i % 2 == 0 else contenders[::-1]):
                await one(name, make)

    asyncio.run(main())
    med = {k: median(v) for k, v in rates.items()}
    rep.raw["streaming"] = {"events": count, "reps": reps, "events_per_s": rates}
    li = rates.get("llamaindex")
    for name, target in STREAM_KINDS:
        rep.add(Row("streaming", f"10k events, {name}", "ev/s", med[name], "LlamaIndex",
                    median(li) if li else None, target, paired=paired(rates[name], li) if li else None))


# --- 4b. large payloads ----------------------------------------------------------------------------------
PAYLOAD_SIZES = (4 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 50 << 20)


def _identity(x: Any) -> Any:
    return x


def make_payload(kind: str, size: int) -> Any:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    if kind == "bytearray":
        return bytearray(data)
    if kind == "numpy":
        import numpy as np

        return np.frombuffer(data, dtype=np.uint8).copy()
    return data


def _size_label(n: int) -> str:
    return f"{n >> 20} MB" if n >= 1 << 20 else f"{n >> 10} KB"


def bench_payload(rep: Report, rt: ProcessRuntime, quick: bool, sizes: tuple[int, ...] = PAYLOAD_SIZES
                  ) -> None:
    """def step -> def step with a payload of each size: seconds from the sender's return to the receiver
    holding it (every page read once), against a warm ProcessPool round trip of the same payload and
    LlamaIndex's hop (in one process: a reference passed on)."""
    rounds = 2 if quick else 5
    pf = W.PayloadHop(runtime=rt, timeout=300)
    li_cls = W.llama("LPayloadHop")
    pool = _warm_pool()
    cases = [("bytes", n) for n in sizes]
    if sizes[-1] >= 50 << 20:
        cases += [("bytearray", 50 << 20), ("numpy", 50 << 20)]
    times: dict[str, dict[str, list[float]]] = {}

    async def li_hop(data: Any) -> float:
        return float(await li_cls(timeout=300).run(data=data))

    try:
        for kind, size in cases:
            data = make_payload(kind, size)
            k = 3 if size >= 16 << 20 else 10
            pf.run(data=data).result(300)  # warm
            pool.submit(_identity, data).result()
            contenders: list[tuple[str, Callable[[], float]]] = [
                ("procflow", lambda: float(pf.run(data=data).result(300))),
                ("pool", lambda: _timed(lambda: pool.submit(_identity, data).result())),
            ]
            if li_cls is not None:
                contenders.append(("llamaindex", lambda: asyncio.run(li_hop(data))))
            got = times.setdefault(f"{kind} {size}", {})
            for i in range(rounds):
                for name, fn in (contenders if i % 2 == 0 else contenders[::-1]):
                    got.setdefault(name, []).append(median([fn() for _ in range(k)]))
            del data
            gc.collect()
    finally:
        pool.shutdown()
    rep.raw["payload"] = {"rounds": rounds, "seconds": times}
    for kind, size in cases:
        got = times[f"{kind} {size}"]
        mbps = {k: [size / 1e6 / t for t in v] for k, v in got.items()}
        target = ">= 3 x" if size >= 50 << 20 else ""
        label = f"{_size_label(size)} {kind}, def step -> def step"
        rep.add(Row("payload", label, "MB/s", median(mbps["procflow"]), "warm ProcessPool round trip",
                    median(mbps["pool"]), target, paired=paired(mbps["procflow"], mbps["pool"])))
        if "llamaindex" in mbps and size >= 50 << 20:
            rep.add(Row("payload", label, "MB/s", median(mbps["procflow"]), "LlamaIndex (a reference)",
                        median(mbps["llamaindex"]), paired=paired(mbps["procflow"], mbps["llamaindex"])))


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_bigchain(rep: Report, rt: ProcessRuntime, quick: bool) -> None:
    """1 GB (256 MB with --quick) through a chain of 4 def steps: the parent's peak RSS growth, sampled every
    2 ms, against one copy of the payload; with a small result, and with the payload as the result."""
    import threading

    size = (256 << 20) if quick else (1 << 30)
    wf = W.BigChain(runtime=rt, timeout=600)
    me = psutil.Process()
    out: dict[str, dict[str, float]] = {}
    for kind, keep in (("bytes", False), ("bytes", True), ("numpy", True)):
        data = make_payload(kind, size)
        gc.collect()
        base = me.memory_info().rss
        peak = [base]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], me.memory_info().rss)
                time.sleep(0.002)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t = time.perf_counter()
        result = wf.run(data=data, keep=keep).result(600)
        took = time.perf_counter() - t
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], me.memory_info().rss)
        if keep:
            ok = (len(result) == size and bytes(result[:256]) == bytes(data[:256])
                  and bytes(result[-256:]) == bytes(data[-256:]))
        else:
            ok = result == size
        if not ok:
            raise AssertionError(f"bigchain {kind}: wrong result")
        out[f"{kind} keep={keep}"] = {"growth": peak[0] - base, "seconds": took}
        del data, result
        gc.collect()
    rep.raw["bigchain"] = {"size": size, "runs": out}
    label = f"{size >> 20} MB through 4 def steps"
    for key, what in (("bytes keep=False", "bytes, small result"), ("bytes keep=True", "bytes, returned"),
                      ("numpy keep=True", "numpy, returned")):
        r = out[key]
        # One copy: the returned payload is itself one copy in the parent; 1% over it is the bookkeeping
        # around it (and RSS sampling granularity), not a second copy.
        rep.add(Row("bigchain", f"{label} ({what}): parent RSS peak growth", "MB", r["growth"] / 1e6,
                    "one copy", size / 1e6, "<= 1.01 x", note=f"{what}: {r['seconds']:.2f} s end to end"))


def bench_gap(rep: Report, rt: ProcessRuntime, quick: bool) -> None:
    """Back-to-back def steps on one worker: from one returning to the next starting (median, p90)."""
    runs = 100 if quick else 400
    gaps: list[float] = []
    with ProcessRuntime(1) as one:
        one.start(wait=True)
        wf = W.BackToBack(runtime=one, timeout=60)
        for i in range(runs + 20):
            g1, g2, pids = wf.run().result(60)
            if len(pids) != 1:
                raise AssertionError(f"back-to-back steps ran on {pids}")
            if i >= 20:
                gaps += [g1, g2]
    gaps.sort()
    rep.raw["gap"] = {"runs": runs, "gaps_s": gaps}
    rep.add(Row("gap", "def step -> next def step, one worker: median", "ms", median(gaps) * 1e3,
                target="<= 0.3 ms"))
    rep.add(Row("gap", "def step -> next def step, one worker: p90", "ms", gaps[int(len(gaps) * 0.9)] * 1e3))


# --- 5. hard cancel ------------------------------------------------------------------------------------
def _gone_times(pids: list[int], t0: float, limit: float = 10.0) -> tuple[float, float]:
    """Seconds from ``t0`` until every pid is dead (zombie or gone) and until every pid is reaped (gone)."""
    dead: dict[int, float] = {}
    reaped: dict[int, float] = {}
    while len(reaped) < len(pids):
        now = time.perf_counter()
        if now - t0 > limit:
            raise TimeoutError(f"workers {pids} still alive {limit} s after cancel()")
        for pid in pids:
            if pid in reaped:
                continue
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    dead.setdefault(pid, now)
            except psutil.NoSuchProcess:
                dead.setdefault(pid, now)
                reaped[pid] = now
        time.sleep(0.0002)
    return max(dead.values()) - t0, max(reaped.values()) - t0


def _one_cancel(wf: W.Spinner, width: int, stubborn: bool) -> dict[str, float]:
    handler = wf.run(width=width, stubborn=stubborn)
    pids: list[int] = []
    for ev in handler.iter_events(timeout=30):
        if isinstance(ev, W.Started):
            pids.append(ev.pid)
            if len(pids) == width:
                break
    time.sleep(0.01)  # let the loops run a little: the steps are deep in pure Python, not at an await
    t0 = time.perf_counter()
    assert handler.cancel(), "cancel() returned False on a running run"
    returned = time.perf_counter() - t0
    dead, reaped = _gone_times(pids, t0)
    assert handler.cancelled()
    return {"cancel_returned": returned, "dead": dead, "gone": reaped}


def bench_cancel(rep: Report, rt: ProcessRuntime, quick: bool) -> None:
    n, n_stubborn = (8, 3) if quick else (20, 6)
    wf = W.Spinner(runtime=rt, timeout=120)
    width = rt.workers
    out: dict[str, list[dict[str, float]]] = {"plain": [], "ignores SIGTERM": []}
    for kind, count, stubborn in (("plain", n, False), ("ignores SIGTERM", n_stubborn, True)):
        for _ in range(count):
            rt.wait_ready(60)
            out[kind].append(_one_cancel(wf, width, stubborn))
    rt.wait_ready(60)
    rep.raw["cancel"] = {"width": width, "samples": out}
    gone = [s["gone"] * 1e3 for s in out["plain"]]
    dead = [s["dead"] * 1e3 for s in out["plain"]]
    ret = [s["cancel_returned"] * 1e3 for s in out["plain"]]
    stub = [s["gone"] * 1e3 for s in out["ignores SIGTERM"]]
    label = f"{width} spinning def steps"
    rep.add(Row("cancel", f"{label}: cancel()->all gone, median", "ms", median(gone), target="<= 50 ms"))
    rep.add(Row("cancel", f"{label}: cancel()->all gone, max", "ms", max(gone)))
    rep.add(Row("cancel", f"{label}: cancel()->all dead (zombie ok), median", "ms", median(dead)))
    rep.add(Row("cancel", "cancel() call returns, median", "ms", median(ret)))
    rep.add(Row("cancel", "steps ignore SIGTERM: ->all gone, median", "ms", median(stub),
                note="SIGKILL after kill_grace"))


# --- 6. start-up ---------------------------------------------------------------------------------------
_CHILD_PROCFLOW = """
import time
t0 = time.perf_counter()
from actors import StartEvent, StopEvent, Workflow, step
class Hello(Workflow):
    @step
    async def hi(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result="hi")
t1 = time.perf_counter()
r = Hello().run().result(60)
print("RESULT", r, t1 - t0, time.perf_counter() - t1, flush=True)
"""

_CHILD_LLAMA = """
import asyncio, time
t0 = time.perf_counter()
from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent
class Hello(Workflow):
    @step
    async def hi(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result="hi")
async def main():
    return await Hello().run()
t1 = time.perf_counter()
r = asyncio.run(main())
print("RESULT", r, t1 - t0, time.perf_counter() - t1, flush=True)
"""

_CHILD_POOL = """
import time
t0 = time.perf_counter()
import multiprocessing, os
from concurrent.futures import ProcessPoolExecutor
t1 = time.perf_counter()
if __name__ == "__main__":
    with ProcessPoolExecutor(os.cpu_count(), mp_context=multiprocessing.get_context("forkserver")) as p:
        r = p.submit(abs, -1).result()
        print("RESULT", r, t1 - t0, time.perf_counter() - t1, flush=True)
"""

_CHILD_BARE = 'print("RESULT bare 0 0", flush=True)'

# The floor of any design that runs steps in another process: a second interpreter, started first thing by a
# fresh one, is ready once it imported what a worker needs. "third-party": pydantic (one model built),
# asyncio, uvloop, cloudpickle; "preload": procflow's forkserver preload (actors and the worker's modules).
_SECOND = """
import subprocess, sys, time
t0 = time.perf_counter()
second = subprocess.Popen([sys.executable, "-c", {code!r}], stdout=subprocess.PIPE)
second.stdout.readline()
print("RESULT second", 0, time.perf_counter() - t0, flush=True)
second.wait()
"""
_THIRD_PARTY = ("import asyncio, cloudpickle, pydantic, uvloop\n"
                "class M(pydantic.BaseModel):\n    x: int\nprint('ready', flush=True)")
_PRELOAD = ("import os; os.environ['PROCFLOW_PREWARM'] = '0'\n"
            "import actors, runtime.workers.process.main\nprint('ready', flush=True)")


def _child_env() -> dict[str, str]:
    """The children read bytecode as any program's second run does (and a regular install's first: pip
    compiles it): without this a PYTHONDONTWRITEBYTECODE=1 shell would have procflow (an editable install
    here) compile its modules on every start, while LlamaIndex's were compiled by pip."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _fresh(code: str) -> dict[str, float]:
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(HERE), env=_child_env())
    assert proc.stdout is not None
    line = proc.stdout.readline()
    first = time.perf_counter() - t
    _, err = proc.communicate(timeout=60)
    total = time.perf_counter() - t
    if not line.startswith("RESULT") or proc.returncode != 0:
        raise RuntimeError(f"child failed (rc {proc.returncode}): {line!r} {err[-2000:]}")
    _, _, imports, run = line.split()
    return {"first_result": first, "exit": total, "imports": float(imports), "run": float(run)}


def bench_startup(rep: Report, rt: ProcessRuntime, quick: bool) -> None:
    reps = 3 if quick else 9
    kids = {"procflow": _CHILD_PROCFLOW, "bare": _CHILD_BARE, "pool": _CHILD_POOL,
            "floor": _SECOND.format(code=_THIRD_PARTY), "preload": _SECOND.format(code=_PRELOAD)}
    if W.LLAMA is not None:
        kids["llamaindex"] = _CHILD_LLAMA
    for code in kids.values():
        _fresh(code)  # not timed: writes the bytecode of whatever was never compiled
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in kids}
    for i in range(reps):
        for name, code in (kids.items() if i % 2 == 0 else reversed(kids.items())):
            samples[name].append(_fresh(code))
    med = {k: {m: median([s[m] for s in v]) for m in v[0]} for k, v in samples.items()}
    rep.raw["startup"] = {"reps": reps, "samples": samples, "median": med}
    pf = med["procflow"]
    li = med.get("llamaindex", {})

    def vs_llama(name: str) -> float | None:
        return paired([s["first_result"] for s in samples[name]],
                      [s["first_result"] for s in samples["llamaindex"]]) if li else None

    rep.add(Row("startup", "fresh interpreter -> first result", "s", pf["first_result"], "LlamaIndex",
                li.get("first_result"), "<= 1 x", paired=vs_llama("procflow")))
    rep.add(Row("startup", "fresh interpreter -> first result", "s", pf["first_result"],
                "ProcessPool(forkserver)", med["pool"]["first_result"]))
    rep.add(Row("startup", "fresh interpreter -> first result", "s", pf["first_result"],
                "bare interpreter", med["bare"]["first_result"]))
    rep.add(Row("startup", "  of which run() -> result (pool start)", "s", pf["run"], "LlamaIndex",
                li.get("run")))
    rep.add(Row("startup", "  of which imports", "s", pf["imports"], "LlamaIndex", li.get("imports")))
    rep.add(Row("startup", "interpreter exit after result", "s", pf["exit"] - pf["first_result"]))
    rep.add(Row("startup", "floor: 2nd interpreter ready, third-party", "s", med["floor"]["first_result"],
                "LlamaIndex", li.get("first_result"), paired=vs_llama("floor"),
                note="a fresh interpreter starts a 2nd one that imports pydantic, asyncio, uvloop, cloudpickle"))
    rep.add(Row("startup", "floor: 2nd interpreter ready, our preload", "s", med["preload"]["first_result"],
                "LlamaIndex", li.get("first_result"), paired=vs_llama("preload"),
                note="the same 2nd interpreter importing the forkserver's preload (actors, worker modules)"))


# --- 7. pool start -------------------------------------------------------------------------------------
def bench_poolstart(rep: Report, rt: ProcessRuntime, quick: bool) -> None:
    reps = 3 if quick else 7
    times: dict[str, list[float]] = {"forkserver": [], "spawn": []}
    for method, count in (("forkserver", reps), ("spawn", max(2, reps // 2))):
        for _ in range(count):
            t = time.perf_counter()
            fresh = ProcessRuntime(CORES, start_method=method).start(wait=True, timeout=60)
            times[method].append(time.perf_counter() - t)
            fresh.shutdown()
    rep.raw["poolstart"] = {"workers": CORES, "seconds": times}
    rep.add(Row("poolstart", f"start(wait=True), {CORES} workers, forkserver", "ms",
                median(times["forkserver"]) * 1e3, note="forkserver process already up"))
    rep.add(Row("poolstart", f"start(wait=True), {CORES} workers, spawn", "ms",
                median(times["spawn"]) * 1e3))


# --- 8. memory -----------------------------------------------------------------------------------------
def tree_rss(pids: list[int]) -> tuple[int, int]:
    """(RSS of this process, summed RSS of ``pids``) in bytes."""
    workers = 0
    for pid in pids:
        try:
            workers += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return psutil.Process().memory_info().rss, workers


def bench_memory(rep: Report, rt: ProcessRuntime, quick: bool) -> None:
    marks = (10, 300, 2_000) if quick else (10, 1_000, 10_000)
    with ProcessRuntime(CORES) as fresh:
        fresh.start(wait=True)
        wf = W.MemoryMix(runtime=fresh, timeout=60)
        points: list[dict[str, Any]] = []
        done = 0
        t = time.perf_counter()
        for mark in marks:
            while done < mark:
                assert wf.run(i=done).result(60) == done
                done += 1
            gc.collect()
            pids = fresh.worker_pids()
            parent, workers = tree_rss(pids)
            points.append({"runs": done, "parent": parent, "workers": workers, "total": parent + workers,
                           "worker_pids": pids, "elapsed_s": time.perf_counter() - t})
            say(f"memory: {done} runs, RSS parent {parent / 2**20:.1f} MiB + workers "
                f"{workers / 2**20:.1f} MiB")
    rep.raw["memory"] = {"points": points}
    mid, last = points[1], points[2]
    per_run = (last["total"] - mid["total"]) / (last["runs"] - mid["runs"])
    parent_per_run = (last["parent"] - mid["parent"]) / (last["runs"] - mid["runs"])
    same_workers = mid["worker_pids"] == last["worker_pids"]
    for p in points:
        rep.add(Row("memory", f"RSS parent+workers after {p['runs']:,} runs", "MiB", p["total"] / 2**20))
    rep.add(Row("memory", f"growth per run ({mid['runs']:,} -> {last['runs']:,})", "B", per_run,
                target="<= 1024 B", note="" if same_workers else "workers were replaced meanwhile"))
    rep.add(Row("memory", "  of which parent", "B", parent_per_run))
    rep.add(Row("memory", f"sequential runs/s over {last['runs']:,} mixed runs", "runs/s",
                last["runs"] / last["elapsed_s"]))


# --- main ----------------------------------------------------------------------------------------------
BENCHES: dict[str, Callable[[Report, ProcessRuntime, bool], None]] = {
    "chain": bench_chain,
    "throughput": bench_throughput,
    "fanout": bench_fanout,
    "streaming": bench_streaming,
    "payload": bench_payload,
    "bigchain": bench_bigchain,
    "gap": bench_gap,
    "cancel": bench_cancel,
    "startup": bench_startup,
    "poolstart": bench_poolstart,
    "memory": bench_memory,
}


def meta(quick: bool) -> dict[str, Any]:
    def version(dist: str) -> str | None:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as v
        try:
            return v(dist)
        except PackageNotFoundError:
            return None

    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": quick,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": CORES,
        "loadavg_at_start": os.getloadavg(),
        "versions": {d: version(d) for d in ("procflow", "llama-index-workflows", "pydantic", "uvloop",
                                             "cloudpickle")},
    }


def settle(limit: float, quiet: float = 0.3) -> float:
    """Wait up to ``limit`` seconds for other processes to use under ``quiet`` cores (over 1 s); the
    external load last seen."""
    deadline = time.perf_counter() + limit
    while True:
        probe = Noise()
        time.sleep(1.0)
        load = probe.cores()
        if load < quiet or time.perf_counter() > deadline:
            return load
        if int(time.perf_counter() - deadline + limit) % 10 == 0:
            say(f"waiting for a quieter machine: other processes use {load:.2f} cores")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and runs (under a minute)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHES)}")
    ap.add_argument("--json", type=Path, default=None, help="where to write the JSON results")
    ap.add_argument("--settle", type=float, default=0.0, metavar="S",
                    help="before each benchmark, wait up to S s for other processes to go quiet")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")

    info = meta(args.quick)
    if W.LLAMA is None:
        say("LlamaIndex Workflows not importable (pip install -e '.[compare]'): its columns print n/a")
    rep = Report()
    timings: dict[str, float] = {}
    external: dict[str, float] = {}
    t_all = time.perf_counter()
    with ProcessRuntime(CORES) as rt:
        rt.start(wait=True)
        for name in names:
            if args.settle:
                settle(args.settle)
            say(f"{name} ...")
            t, probe = time.perf_counter(), Noise()
            BENCHES[name](rep, rt, args.quick)
            timings[name] = time.perf_counter() - t
            # Processes that exit during a benchmark (killed workers, a runtime shut down, child interpreters
            # and their workers) take their CPU time with them and would count as other processes'.
            blind = name in ("cancel", "startup", "poolstart", "memory", "gap")
            external[name] = float("nan") if blind else probe.cores()
            gc.collect()
    info["bench_seconds"] = timings
    info["external_load_cores"] = {k: v for k, v in external.items() if v == v}
    info["total_seconds"] = time.perf_counter() - t_all
    info["loadavg_at_end"] = os.getloadavg()

    print()
    print(f"procflow benchmarks, {info['date']}, Python {info['python']}, {CORES} cores, "
          f"load avg {info['loadavg_at_start'][0]:.2f} -> {info['loadavg_at_end'][0]:.2f}"
          f"{' (quick)' if args.quick else ''}")
    print("ratio = procflow / baseline; chain, fanout, streaming: median of the ratios of back-to-back "
          "rounds (values are medians)")
    print_table(rep.rows)
    print("\nother processes' CPU use during each benchmark (cores of " + str(CORES) + "): "
          + ", ".join(f"{k} {v:.2f}" for k, v in external.items() if v == v))
    notes = [f"{r.bench} / {r.metric.strip()}: {r.note}" for r in rep.rows if r.note]
    if notes:
        print("notes: " + "; ".join(notes))
    missed = [r for r in rep.rows if r.ok is False]
    print(f"\n{len([r for r in rep.rows if r.ok])} targets met, {len(missed)} missed"
          + (": " + "; ".join(f"{r.bench} {r.metric.strip()} vs {r.baseline_name or r.target}"
                              for r in missed) if missed else ""))

    out = args.json or HERE / "results" / f"bench-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [{**asdict(r), "ratio": r.ratio} for r in rep.rows]
    out.write_text(json.dumps({"meta": info, "rows": rows, "raw": rep.raw}, indent=2, default=str))
    print(f"wrote {out} ({info['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
