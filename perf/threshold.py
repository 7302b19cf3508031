"""Where should large buffers leave the pipes? The out-of-band threshold, measured.

    .venv/bin/python perf/threshold.py [--rounds N] [--json out.json]

For each payload size, the def step -> def step hop of ``bytes`` (and of numpy arrays) is timed with the
payload in band (through both pipes) and out of band (shared memory), alternating child interpreters (the
threshold is read when a process starts: ``PROCFLOW_OOB_THRESHOLD``) round by round; it prints the median
hop of each and their ratio per size, and the supervisor thread's CPU per hop (what a large payload in band
costs every other run: the supervisor reads and copies it). The threshold in ``runtime/wire/codec.py`` is
the smallest size from which out of band is no slower.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = (64 << 10, 96 << 10, 128 << 10, 192 << 10, 256 << 10, 384 << 10, 512 << 10, 1 << 20, 4 << 20)
IN_BAND = 1 << 40

CHILD = r"""
import json, statistics, sys, threading, time
import _workloads as W
from bench import make_payload
from runtime import ProcessRuntime

sizes, kinds, k = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
out = {}
with ProcessRuntime(2) as rt:
    rt.start(wait=True)
    wf = W.PayloadHop(runtime=rt, timeout=120)
    sup = next(t for t in threading.enumerate() if t.name == "procflow-supervisor")

    def sup_cpu():  # the supervisor thread's CPU time, in ns resolution (/proc schedstat)
        with open(f"/proc/self/task/{sup.native_id}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9

    for kind in kinds:
        for size in sizes:
            data = make_payload(kind, size)
            for _ in range(3):
                wf.run(data=data).result(60)
            c0 = sup_cpu()
            hops = [float(wf.run(data=data).result(60)) for _ in range(k)]
            out[f"{kind} {size}"] = {"hop": statistics.median(hops), "sup_cpu": (sup_cpu() - c0) / k}
print("RESULT", json.dumps(out))
"""


def child(threshold: int, sizes: tuple[int, ...], kinds: list[str], k: int) -> dict[str, dict[str, float]]:
    env = {**os.environ, "PROCFLOW_OOB_THRESHOLD": str(threshold)}
    root = str(HERE.parent)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), root, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(list(sizes)), json.dumps(kinds), str(k)],
                          capture_output=True, text=True, env=env, cwd=str(HERE), timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"child failed: {proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])  # type: ignore[no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--k", type=int, default=21, help="hops per size per round")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    kinds = ["bytes", "numpy"]
    samples: dict[str, dict[str, list[dict[str, float]]]] = {"in band": {}, "out of band": {}}
    for r in range(args.rounds):
        order = [("out of band", 1 << 16), ("in band", IN_BAND)]
        for name, threshold in (order if r % 2 == 0 else order[::-1]):
            for key, value in child(threshold, SIZES, kinds, args.k).items():
                samples[name].setdefault(key, []).append(value)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"{'payload':>16}  {'in band hop':>12}  {'out of band hop':>15}  {'oob/in':>7}  "
          f"{'supervisor CPU/hop in / oob':>28}")
    for key in samples["in band"]:
        ib, oob = samples["in band"][key], samples["out of band"][key]
        ratio = statistics.median(o["hop"] / i["hop"] for o, i in zip(oob, ib))
        kind, size = key.split()
        print(f"{kind:>6} {int(size) >> 10:>6} KB  {statistics.median(i['hop'] for i in ib) * 1e6:>9.0f} us  "
              f"{statistics.median(o['hop'] for o in oob) * 1e6:>12.0f} us  {ratio:>6.2f}x  "
              f"{statistics.median(i['sup_cpu'] for i in ib) * 1e6:>12.0f} / "
              f"{statistics.median(o['sup_cpu'] for o in oob) * 1e6:.0f} us")
    if args.json:
        args.json.write_text(json.dumps(samples, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
