"""Scenario 6: steps raising hostile exceptions, and a step exhausting its memory.

Cases, each as a def step and as an async step (all runs at once, on a 3-worker pool):
- ``broken_str``: an exception whose ``__str__`` raises;
- ``bad_notes``: an exception whose ``__notes__`` is a string, not a list;
- ``not_an_exception``: an exception whose ``__reduce__`` makes it unpickle as a ``str``;
and ``memory`` (def step only): the step lowers its own worker's RLIMIT_AS to 256 MiB above its current size,
allocates until ``MemoryError``, restores the limit and lets the error propagate.

Promised: every run ends with an error (which one is recorded), promptly: within 10 s (``PROMPT``) though
its workflow timeout is 60 s; a run still going at 10 s counts as ``not_prompt`` and is then hard-cancelled.
Afterwards the runtime serves new runs correctly (6 ``Mixed``/``AllAsync`` runs), and shutdown leaves no
process. The scale multiplies the number of copies of each case (1 by default).

Run by hand: ``python tests/faults/scenarios/hostile_steps.py``.
"""

from __future__ import annotations

import time
from typing import Any

from _child import (
    AllAsync, Mixed, Tally, emit, expected_total, healed, leftovers_after, safe_repr, scaled, watchdog,
)

from actors import StartEvent, StopEvent, Workflow, step
from runtime import ProcessRuntime

watchdog(90)
WORKERS = 3
PROMPT = 10.0
WAIT = 60.0
COPIES = scaled(1)


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ of BrokenStr is broken on purpose")


class BadNotes(Exception):
    pass


class Masquerade(Exception):
    """Unpickles as a plain string."""

    def __reduce__(self) -> Any:
        return (str, ("I was an exception once",))


def hostile(case: str) -> None:
    if case == "broken_str":
        raise BrokenStr("unprintable")
    if case == "bad_notes":
        exc = BadNotes("notes that are not a list")
        exc.__notes__ = "a string where a list belongs"  # type: ignore[attr-defined]
        raise exc
    if case == "not_an_exception":
        raise Masquerade("masquerading")
    raise AssertionError(case)


def exhaust_memory() -> None:
    import resource

    import psutil

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (psutil.Process().memory_info().vms + 256 * 2**20, hard))
    hoard = []
    try:
        while True:
            hoard.append(bytearray(8 * 2**20))
    finally:
        hoard.clear()
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class HostileDef(Workflow):
    @step
    def act(self, ev: StartEvent) -> StopEvent:
        if ev.case == "memory":
            exhaust_memory()
        else:
            hostile(ev.case)
        return StopEvent(result="unreachable")


class HostileAsync(Workflow):
    @step
    async def act(self, ev: StartEvent) -> StopEvent:
        hostile(ev.case)
        return StopEvent(result="unreachable")


CASES = [("def", "broken_str"), ("def", "bad_notes"), ("def", "not_an_exception"), ("def", "memory"),
         ("async", "broken_str"), ("async", "bad_notes"), ("async", "not_an_exception")]

rt = ProcessRuntime(workers=WORKERS).start(wait=True)
try:
    wfs = {"def": HostileDef(runtime=rt, timeout=WAIT), "async": HostileAsync(runtime=rt, timeout=WAIT)}
    normal = [Mixed(runtime=rt, timeout=WAIT), AllAsync(runtime=rt, timeout=WAIT)]
    for h in [wf.run(seed=0, parts=2) for wf in normal]:
        assert h.result(timeout=WAIT) == expected_total(0, 2)
    began = time.monotonic()
    runs = [(f"{kind} {case}", wfs[kind].run(case=case)) for kind, case in CASES for _ in range(COPIES)]
    results: dict[str, list[str]] = {}
    for name, h in runs:
        try:
            got = h.result(timeout=max(0.1, began + PROMPT - time.monotonic()))
            outcome = f"returned {got!r}"
        except TimeoutError:
            outcome = "not_prompt"
            h.cancel()
        except Exception as exc:  # noqa: BLE001 -- the error is the outcome
            outcome = f"error {safe_repr(exc)}"
        except BaseException as exc:  # noqa: BLE001 -- an error that is not even an Exception
            outcome = f"base_exception {safe_repr(exc)}"
        results.setdefault(name, []).append(outcome)
    pids = healed(rt, WORKERS, [])
    after = Tally()
    for i, h in enumerate([normal[i % 2].run(seed=100 + i, parts=3) for i in range(6)]):
        after.wait(h, expected_total(100 + i, 3), WAIT)
    figures = {"cases": results, "pool_after": len(pids), "workers": WORKERS, "after_runs": after.figures()}
finally:
    rt.shutdown()
figures["leaked_processes"] = leftovers_after()
emit(figures)
