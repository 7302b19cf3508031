"""Fixtures of the compat suite: ``wf``, one implementation per parameter ("llama", "procflow").

``wf`` is module-scoped, so the tests of a module run first all on llama, then all on procflow, and the procflow
side shares one warm ``ProcessRuntime(workers=2)`` per module (started before the first procflow test's
leak check, shut down after the module's last test). The llama side is skipped when ``workflows`` is not
installed.

The per-test leak check of the root conftest is overridden here to allow for the shared runtime's workers: its
current worker processes (which the pool may replace, e.g. after a timeout killed a step) are not leaks of the
test. Any other child process left behind still fails the test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psutil
import pytest

from ._support import Impl

_INFRASTRUCTURE = ("forkserver", "resource_tracker")
_LIVE_RUNTIMES: list[object] = []


@pytest.fixture(scope="module", params=["llama", "procflow"])
def wf(request: pytest.FixtureRequest) -> Iterator[Impl]:
    if request.param == "llama":
        pytest.importorskip("workflows", reason="llama-index-workflows is not installed")
        yield Impl("llama")
        return
    from runtime import ProcessRuntime

    rt = ProcessRuntime(workers=2, restart_window=5.0).start(wait=True)
    _LIVE_RUNTIMES.append(rt)
    try:
        yield Impl("procflow", rt)
    finally:
        _LIVE_RUNTIMES.remove(rt)
        rt.shutdown()


def _shared_workers() -> set[int]:
    pids: set[int] = set()
    for rt in _LIVE_RUNTIMES:
        try:
            pids.update(rt.worker_pids(wait=False))  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a broken runtime has no workers to spare
            pass
    return pids


def _children() -> dict[int, psutil.Process]:
    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            if not any(word in " ".join(p.cmdline()) for word in _INFRASTRUCTURE):
                out[p.pid] = p
        except psutil.Error:
            pass
    return out


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Fail the test that leaves a child process behind, other than the shared runtime's workers."""
    before = set(_children())
    yield
    leaked: dict[int, psutil.Process] = {}
    for _ in range(30):
        spared = _shared_workers()
        leaked = {pid: p for pid, p in _children().items() if pid not in before and pid not in spared}
        if not leaked:
            return
        time.sleep(0.1)
    names = []
    for p in leaked.values():
        try:
            names.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
            p.kill()
        except psutil.Error:
            pass
    pytest.fail(f"test leaked {len(leaked)} child process(es): {names}")
