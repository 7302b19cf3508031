"""Summarise a py-spy raw profile per process and thread: top frames by self and inclusive samples.

    .venv/bin/py-spy record --subprocesses --threads -r 400 -f raw -o prof.raw -- \
        .venv/bin/python perf/bench.py --only streaming --quick
    .venv/bin/python perf/pyspy_summary.py prof.raw [TOP] [SUBSTRING]

py-spy cannot tell a thread blocked inside uvloop's C code or a ``ThreadPoolExecutor`` idle wait from a
busy one; read ``Supervisor._serve`` / ``_worker`` self time as idle.
"""

from __future__ import annotations

import collections
import sys
from typing import Any


def main() -> None:
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    only = sys.argv[3] if len(sys.argv) > 3 else None
    groups: dict[tuple[str, ...], list[Any]] = collections.defaultdict(
        lambda: [0, collections.Counter(), collections.Counter()])
    with open(path) as fh:
        for line in fh:
            stack, _, n_text = line.rstrip().rpartition(" ")
            n = int(n_text)
            frames = stack.split(";")
            key: list[str] = []
            while frames and frames[0].startswith(("process ", "thread ")):
                key.append(frames.pop(0)[:70])
            if only and only not in stack:
                continue
            group = groups[tuple(key)]
            group[0] += n
            if frames:
                group[1][frames[-1]] += n
            for frame in set(frames):
                group[2][frame] += n
    for where, (total, own, incl) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
        if total < 20:
            continue
        print("=" * 100)
        print(" | ".join(where), "samples", total)
        for title, counter in (("self", own), ("inclusive", incl)):
            print(f"-- {title}")
            for frame, count in counter.most_common(top):
                print(f"{count:6d} {100 * count / total:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
