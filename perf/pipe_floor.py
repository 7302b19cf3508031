"""The floor under a hop: one pipe round trip of a small pickled event between two processes.

    .venv/bin/python perf/pipe_floor.py [N]

A parent and a child (forkserver) bounce a framed, pickled trivial event over a pair of pipes N times
(blocking reads, nothing else running): the median round trip is the cost of the two wake-ups and four
syscalls that any hop through a supervisor in another process pays at least, without routing, scheduling
or running a step. Compare it with bench.py's chain hop (perf/README.md).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import statistics
import sys
import time
from typing import Any

from runtime.wire.framing import FrameReader, frame


def _echo(inbox: Any, outbox: Any) -> None:
    r, w = inbox.fileno(), outbox.fileno()
    reader = FrameReader(r)
    os.set_blocking(r, True)
    while True:
        frames = reader.read()
        if frames is None:
            return
        for payload in frames:
            os.write(w, frame(payload))


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _workloads import E1

    ctx = multiprocessing.get_context("forkserver")
    inbox_r, inbox_w = ctx.Pipe(duplex=False)
    outbox_r, outbox_w = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_echo, args=(inbox_r, outbox_w), daemon=True)
    child.start()
    inbox_r.close()
    outbox_w.close()
    a_w, b_r = inbox_w.fileno(), outbox_r.fileno()
    reader = FrameReader(b_r)
    os.set_blocking(b_r, True)
    data = frame(pickle.dumps(E1(), protocol=pickle.HIGHEST_PROTOCOL))
    times = []
    for i in range(n + 200):
        t = time.perf_counter()
        os.write(a_w, data)
        got: list[bytes] = []
        while not got:
            got = reader.read() or []
        pickle.loads(got[0])
        if i >= 200:
            times.append(time.perf_counter() - t)
    inbox_w.close()
    child.join(5)
    print(f"pipe round trip of a small pickled event: median {statistics.median(times) * 1e6:.1f} us, "
          f"p10 {sorted(times)[len(times) // 10] * 1e6:.1f} us, p90 {sorted(times)[9 * len(times) // 10] * 1e6:.1f}"
          f" us ({n} round trips)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
