"""Scenario 3: the parent is SIGKILLed while its workers are busy and their steps have started processes.

This script is the parent. On a 4-worker pool, one run (``Busy``) keeps every worker busy:

- ``same_group``: a def step starts a grandchild (``subprocess.Popen``, the worker's process group), spins;
- ``new_session``: a def step starts a grandchild with ``start_new_session=True`` (out of the worker's
  process group), spins;
- ``deaf``: a def step makes its worker ignore SIGTERM (``SIG_IGN`` through libc: ``signal.signal`` is for
  the main thread only), spins;
- ``nap``: an async step sleeps.

Each step writes ``<role> <worker pid> <grandchild pid>`` to a file in the directory given as argv[1];
once all are there the script writes the pool's pids to ``workers`` there, prints ``READY`` and sleeps. The
test then SIGKILLs this interpreter and counts, 2 s later, which of those pids still live. The scale does not
apply (one run).

Run by hand: ``python tests/faults/scenarios/parent_sigkill.py DIR``, then ``kill -9`` it.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from _child import emit, watchdog

from actors import Context, Event, HumanResponseEvent, StartEvent, StopEvent, Workflow, step
from runtime import ProcessRuntime

watchdog(90)
DIR = Path(sys.argv[1])
ROLES = ("same_group", "new_session", "deaf", "nap")


class Go(HumanResponseEvent):  # sent by the caller only: LlamaIndex validation wants a HumanResponseEvent
    role: str
    dir: str


class Nap(Event):
    dir: str


def note(directory: str, role: str, grandchild: int = 0) -> None:
    tmp = Path(directory) / f".{role}"
    tmp.write_text(f"{role} {os.getpid()} {grandchild}\n")
    tmp.rename(Path(directory) / role)  # atomic: the parent never reads half a line


def ignores_sigterm() -> bool:
    status = Path("/proc/self/status").read_text()
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)
    return bool(mask & (1 << (signal.SIGTERM - 1)))


def sleeper(new_session: bool) -> int:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                            start_new_session=new_session).pid


class Busy(Workflow):
    @step
    async def fan(self, ctx: Context, ev: StartEvent) -> Go | Nap | None:
        for role in ROLES[:3]:
            ctx.send_event(Go(role=role, dir=ev.dir))
        ctx.send_event(Nap(dir=ev.dir))
        return None

    @step(num_workers=4)
    def work(self, ev: Go) -> StopEvent:
        if ev.role == "same_group":
            note(ev.dir, ev.role, sleeper(new_session=False))
        elif ev.role == "new_session":
            note(ev.dir, ev.role, sleeper(new_session=True))
        elif ev.role == "deaf":
            libc = ctypes.CDLL(None)
            libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
            libc.signal(signal.SIGTERM, int(signal.SIG_IGN))
            assert ignores_sigterm(), "SIGTERM is not ignored"
            note(ev.dir, ev.role)
        while True:
            sum(range(10_000))

    @step
    async def nap(self, ev: Nap) -> StopEvent:
        note(ev.dir, "nap")
        await asyncio.sleep(600)
        return StopEvent(result="unreachable")


rt = ProcessRuntime(workers=4).start(wait=True)
handler = Busy(runtime=rt, timeout=None).run(dir=str(DIR))
while not all((DIR / role).exists() for role in ROLES):
    if handler.done():
        handler.result()  # raises what ended it
    time.sleep(0.02)
(DIR / "workers").write_text(" ".join(map(str, rt.worker_pids())) + "\n")
emit({"roles": {role: (DIR / role).read_text().split()[1:] for role in ROLES},
      "workers": rt.worker_pids(wait=False), "parent": os.getpid()})
print("READY", flush=True)
time.sleep(300)
