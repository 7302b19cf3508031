"""The process runtime and the Ray runtime side by side, on this machine, in one process run.

    .venv/bin/python perf/bench_ray.py [--quick] [--json out.json] [--only hop,throughput,fanout,payload]

Needs the ``ray`` extra (``pip install -e '.[ray]'``). Both runtimes get one worker per core; the Ray one
starts its own local Ray instance (its start-up is reported apart). Measurements alternate between the two
runtimes in rounds, so that drift in the machine's load hits both alike; figures are medians.

    startup     ProcessRuntime(...).start(wait=True) vs RayRuntime(...).start(wait=True) (incl. ray.init)
    hop         a 10-step chain of trivial async steps, one run at a time: run latency / 10
    throughput  1, 10, 100 runs in flight of a 3-step workflow of trivial async steps: runs/s
    fanout      8 ``def`` steps of W ms of pure-Python work each (split -> 8 x crunch -> gather): wall time,
                for W from ~0 to 250 ms; the physical floor is 8 x W / cores
    payload     a 50 MB payload (bytes; a numpy array passed on; a numpy array the sender makes) and a 1 MB
                one handed from a def step to the next: from the sender's return to the receiver holding it
                (every page read once). Three contenders: the
                process runtime (shared memory), the Ray runtime (the object store: put once, owned by the
                driver) and a second Ray runtime with ``object_store_threshold=None`` (in band, inside the
                actor calls, as before issue 13 item 5); ratios against both

At the end: Ray's extra cost per step (from the fan-out rows of little work, where noise is smallest in
absolute terms), the crossover (the work per step from which that cost is under 10 % of the work, and where
Ray's measured wall time first comes within 10 % of the process runtime's: on one machine Ray cannot beat
processes, it only adds a transport), and the rule for a cluster with more cores than this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import _workloads as W
from runtime import ProcessRuntime

CORES = os.cpu_count() or 1
WORK_MS = [0.0, 1.0, 5.0, 25.0, 100.0, 250.0]


def say(msg: str) -> None:
    print(f"[bench_ray {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def med(xs: list[float]) -> float:
    return statistics.median(xs)


# --- measurements ----------------------------------------------------------------------------------------
def bench_hop(rts: dict[str, ProcessRuntime], quick: bool) -> dict[str, float]:
    """Median per-hop latency (us) of a 10-step chain, one run at a time."""
    flows = {name: W.Chain10(runtime=rt, timeout=120) for name, rt in rts.items()}
    n = 30 if quick else 90
    samples: dict[str, list[float]] = {name: [] for name in rts}

    async def main() -> None:
        for name, wf in flows.items():
            await W.latencies(lambda: wf.run(), 5, 0)  # warm: the workflow shipped to the workers
        for _ in range(3):
            for name, wf in flows.items():
                samples[name] += await W.latencies(lambda: wf.run(), n // 3, 0)

    asyncio.run(main())
    return {name: med(xs) / 10 * 1e6 for name, xs in samples.items()}


def bench_throughput(rts: dict[str, ProcessRuntime], quick: bool) -> dict[str, dict[int, float]]:
    flows = {name: W.Three(runtime=rt, timeout=300) for name, rt in rts.items()}
    out: dict[str, dict[int, float]] = {name: {} for name in rts}

    async def main() -> None:
        for wf in flows.values():
            await W.throughput(lambda: wf.run(), 10, 50)
        for inflight in (1, 10, 100):
            total = 100 if quick else 300
            rates: dict[str, list[float]] = {name: [] for name in rts}
            for _ in range(1 if quick else 2):
                for name, wf in flows.items():
                    rates[name].append(await W.throughput(lambda: wf.run(), inflight, total))
            for name in rts:
                out[name][inflight] = med(rates[name])

    asyncio.run(main())
    return out


def bench_fanout(rts: dict[str, ProcessRuntime], quick: bool) -> dict[str, Any]:
    unit_n = W.calibrate_cpu_unit(0.001)  # n per ms of work in this process
    flows = {name: W.FanOut(runtime=rt, timeout=600) for name, rt in rts.items()}
    for wf in flows.values():
        wf.run(parts=8, work=1).result(120)  # warm
    rows: dict[str, Any] = {}
    for ms in WORK_MS:
        work = max(1, int(unit_n * ms))
        reps = 15 if ms <= 5 else 5 if ms <= 25 else 3
        reps = max(1, reps // 2) if quick else reps
        walls: dict[str, list[float]] = {name: [] for name in rts}
        for _ in range(reps):
            for name, wf in flows.items():
                t = time.perf_counter()
                wf.run(parts=8, work=work).result(600)
                walls[name].append(time.perf_counter() - t)
        rows[f"{ms:g}"] = {name: med(xs) for name, xs in walls.items()}
        rows[f"{ms:g}"]["floor"] = 8 * ms / 1000 / CORES
        say(f"fanout {ms:g} ms/step: "
            + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in rows[f"{ms:g}"].items()))
    return rows


PAYLOADS = [("bytes", 50 << 20), ("numpy", 50 << 20), ("new numpy", 50 << 20), ("bytes", 1 << 20)]


def make_payload(kind: str, size: int) -> Any:
    data = bytes(range(256)) * (size // 256)
    if kind.endswith("numpy"):
        import numpy as np

        return np.frombuffer(data, dtype=np.uint8).copy()
    return data


def bench_payload(rts: dict[str, ProcessRuntime], quick: bool) -> dict[str, dict[str, float]]:
    """Median seconds of a def step -> def step hop of each payload, per runtime, rounds alternating: an
    array passed on as it came ("numpy"), or one the sender makes ("new numpy": a writable copy)."""
    rounds, k = (2, 3) if quick else (5, 5)
    out: dict[str, dict[str, float]] = {}
    for kind, size in PAYLOADS:
        data = make_payload(kind, size)
        flow = W.FreshHop if kind == "new numpy" else W.PayloadHop
        flows = {name: flow(runtime=rt, timeout=300) for name, rt in rts.items()}
        for wf in flows.values():
            wf.run(data=data).result(300)  # warm
        samples: dict[str, list[float]] = {name: [] for name in flows}
        for i in range(rounds):
            order = list(flows.items()) if i % 2 == 0 else list(flows.items())[::-1]
            for name, wf in order:
                samples[name].append(med([float(wf.run(data=data).result(300)) for _ in range(k)]))
        label = f"{size >> 20} MB {kind}"
        out[label] = {name: med(xs) for name, xs in samples.items()}
        say(f"payload {label}: " + ", ".join(f"{n} {v * 1000:.1f} ms" for n, v in out[label].items()))
    return out


# --- report ----------------------------------------------------------------------------------------------
def fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.3g}"


def table(lines: list[tuple[str, str, float, float, str]]) -> None:
    head = ("benchmark", "metric", "process", "ray", "ray / process")
    cells = [head] + [(b, m, f"{fmt(p)} {u}", f"{fmt(r)} {u}", f"{r / p:.2f}x" if p else "-")
                      for b, m, p, r, u in lines]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    for n, c in enumerate(cells):
        print("  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def crossover(fan: dict[str, Any]) -> tuple[float, float, str]:
    """Ray's extra cost per step (ms of one core): (Ray wall - process wall) x cores / 8, median over the
    rows of at most 5 ms of work, where the machine's noise is smallest in absolute terms; the work per step
    from which that cost is under 10 % of the work (10 x the cost); and the first measured work size where
    Ray's wall time is within 10 % of the process runtime's."""
    small = [row for ms, row in fan.items() if float(ms) <= 5]
    extra = med([(row["ray"] - row["process"]) * 1000 * CORES / 8 for row in small])
    within = next((f"{ms} ms" for ms, row in fan.items() if row["ray"] <= 1.10 * row["process"]),
                  f"> {WORK_MS[-1]:g} ms")
    return extra, 10 * extra, within


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    ap.add_argument("--only", default="hop,throughput,fanout,payload",
                    help="comma-separated: hop, throughput, fanout, payload (startup is always measured)")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    try:
        from runtime import RayRuntime
    except ImportError:
        print("ray is not installed: pip install -e '.[ray]'", file=sys.stderr)
        return 2

    t = time.perf_counter()
    proc_rt = ProcessRuntime(CORES).start(wait=True)
    start_proc = time.perf_counter() - t
    t = time.perf_counter()
    # Room for the in-band runtime's actors too (the payload case), in the local Ray this one starts.
    ray_rt = RayRuntime(workers=CORES, init_options={"num_cpus": 2 * CORES}).start(wait=True)
    start_ray = time.perf_counter() - t
    rts: dict[str, ProcessRuntime] = {"process": proc_rt, "ray": ray_rt}
    pay: dict[str, dict[str, float]] = {}
    try:
        hop: dict[str, float] = {}
        thr: dict[str, dict[int, float]] = {"process": {}, "ray": {}}
        fan: dict[str, Any] = {}
        if "hop" in only:
            say("hop ...")
            hop = bench_hop(rts, args.quick)
        if "throughput" in only:
            say("throughput ...")
            thr = bench_throughput(rts, args.quick)
        if "fanout" in only:
            say("fanout ...")
            fan = bench_fanout(rts, args.quick)
        if "payload" in only:
            say("payload ...")
            inband = RayRuntime(workers=CORES, object_store_threshold=None).start(wait=True)
            try:
                pay = bench_payload({**rts, "ray in band": inband}, args.quick)
            finally:
                inband.shutdown()
    finally:
        ray_rt.shutdown()
        proc_rt.shutdown()

    print(f"\nprocess runtime vs Ray runtime, {CORES} cores, {CORES} workers each"
          f"{' (quick)' if args.quick else ''}\n")
    lines: list[tuple[str, str, float, float, str]] = [
        ("startup", "start(wait=True)", start_proc * 1000, start_ray * 1000, "ms")]
    if hop:
        lines.append(("hop", "10-step chain, per hop", hop["process"], hop["ray"], "us"))
    lines += [("throughput", f"{k} in flight, 3 steps", thr["process"][k], thr["ray"][k], "runs/s")
              for k in thr["process"]]
    lines += [("fanout", f"8 x {ms} ms, wall", row["process"] * 1000, row["ray"] * 1000, "ms")
              for ms, row in fan.items()]
    table(lines)
    if pay:
        print("\nlarge payloads, def step -> def step (sender's return -> receiver holding it), median ms\n")
        head = ("payload", "process", "ray", "ray in band", "ray / in band", "ray / process")
        cells = [head] + [(label, *(f"{row[n] * 1000:,.1f}" for n in ("process", "ray", "ray in band")),
                           f"{row['ray'] / row['ray in band']:.3f}x", f"{row['ray'] / row['process']:.2f}x")
                          for label, row in pay.items()]
        widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
        for n, c in enumerate(cells):
            print("  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip())
            if n == 0:
                print("  ".join("-" * w for w in widths))
    figures: dict[str, Any] = {"cores": CORES, "startup_s": {"process": start_proc, "ray": start_ray},
                               "hop_us": hop, "throughput": thr, "fanout_s": fan, "payload_s": pay}
    if fan:
        extra, model, within = crossover(fan)
        print(f"\nfan-out physical floor (8 x work / {CORES} cores): "
              + ", ".join(f"{ms} ms -> {row['floor'] * 1000:.0f} ms" for ms, row in fan.items()))
        print(f"Ray's extra cost per step: about {extra:.1f} ms of a core.\n"
              f"crossover: Ray's overhead is under 10 % of a step's work from about {model:.0f} ms of work per "
              f"step (measured here: Ray within 10 % of processes from {within}).\n"
              f"on a cluster of C cores against this machine's {CORES}, Ray's fan-out wins once work per step "
              f"> {extra:.1f} ms x {CORES} / (C - {CORES}).")
        figures.update(ray_extra_ms_per_step=extra, crossover_model_ms=model, crossover_measured=within)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
