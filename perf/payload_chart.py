"""Chart: payload size vs throughput of one hop, for procflow, a warm ProcessPoolExecutor and LlamaIndex.

    .venv/bin/python perf/payload_chart.py                      # measure (bench.py's ``payload``), then plot
    .venv/bin/python perf/payload_chart.py --from bench.json    # plot a bench.py JSON that has ``payload``
    .venv/bin/python perf/payload_chart.py --quick              # fewer rounds

procflow: a ``def`` step returns an event carrying ``bytes`` of the size, the next ``def`` step holds it (every
page read once): two processes, through the supervisor. ProcessPool: ``submit(identity, payload).result()``,
to a worker and back. LlamaIndex: the same two steps in one process (a reference handed on: what no copy
costs). Throughput = size / seconds, medians of rounds measured side by side. The dashed line is the
out-of-band threshold (``runtime/wire/codec.py``): below it payloads go through the pipes. Writes
perf/payload-throughput.png (needs the ``plot`` extra) and the measurements as JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "payload-throughput.png"


def measure(quick: bool) -> dict[str, Any]:
    import bench
    from runtime import ProcessRuntime

    rep = bench.Report()
    with ProcessRuntime(os.cpu_count() or 1) as rt:
        rt.start(wait=True)
        bench.bench_payload(rep, rt, quick)
    return {"raw": {"payload": rep.raw["payload"]}, "rows": [vars(r) for r in rep.rows]}


def plot(data: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from runtime.wire.oob import OOB_THRESHOLD

    seconds = data["raw"]["payload"]["seconds"]
    series: dict[str, list[tuple[int, float]]] = {}
    for key, by_name in seconds.items():
        kind, size_text = key.split()
        if kind != "bytes":
            continue
        size = int(size_text)
        for name, times in by_name.items():
            series.setdefault(name, []).append((size, size / 1e6 / statistics.median(times)))
    labels = {"procflow": "procflow: def step -> def step (2 processes)",
              "pool": "warm ProcessPoolExecutor: round trip",
              "llamaindex": "LlamaIndex: def step -> def step (1 process, a reference)"}
    fig, ax = plt.subplots(figsize=(8, 5))
    for name in ("procflow", "pool", "llamaindex"):
        points = sorted(series.get(name, []))
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=labels[name])
    ax.axvline(OOB_THRESHOLD, color="grey", linestyle="--", linewidth=1)
    ax.text(OOB_THRESHOLD * 1.1, ax.get_ylim()[0] * 1.5, "out of band from here", color="grey", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("payload (bytes)")
    ax.set_ylabel("throughput of one hop (MB/s)")
    ax.set_title("Payload size vs throughput (bytes payloads; medians of side-by-side rounds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="source", type=Path, default=None, help="a bench.py JSON with payload")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.source is not None:
        data = json.loads(args.source.read_text())
    else:
        data = measure(args.quick)
        args.out.with_suffix(".json").write_text(json.dumps(data, indent=2, default=str))
    plot(data, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
