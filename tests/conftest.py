"""Shared fixtures: a fresh runtime per test, a per-test process-leak check, and async tests run on both
asyncio and uvloop (a four-line hook instead of a plugin)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import uvloop

from runtime import ProcessRuntime, shutdown_default_runtime

# multiprocessing's own servers live as long as the test process and belong to no runtime. They are recognised
# by the code their interpreter was started with; a worker forked by the forkserver inherits the forkserver's
# command line, so a process with that command line is a server only if its parent is not a server too.
_SERVER_MAINS = (
    "from multiprocessing.forkserver import main",
    "from multiprocessing.resource_tracker import main",
)


def _is_server(cmdline: str) -> bool:
    return any(main in cmdline for main in _SERVER_MAINS)


def live_descendants() -> dict[int, psutil.Process]:
    """Every live (not zombie) descendant of this process -- workers, what their steps started, child
    interpreters -- except multiprocessing's forkserver and resource tracker themselves."""
    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if _is_server(" ".join(p.cmdline())):
                parent = p.parent()
                if parent is None or not _is_server(" ".join(parent.cmdline())):
                    continue  # the server itself, not one of the processes it forked
            out[p.pid] = p
        except psutil.Error:
            pass  # gone meanwhile
    return out


def leaked_since(before: set[int], attempts: int = 30, interval: float = 0.1) -> dict[int, psutil.Process]:
    """Descendants that were not in ``before`` and are still alive after waiting up to ``attempts *
    interval`` seconds for them to end (exits are asynchronous: a worker being shut down may take a moment
    to go). ``psutil.wait_procs`` waits on the processes themselves; the census is taken again at the end,
    since a process seen going may have started another meanwhile."""
    deadline = time.monotonic() + attempts * interval
    while True:
        leaked = {pid: p for pid, p in live_descendants().items() if pid not in before}
        if not leaked:
            return {}
        left = deadline - time.monotonic()
        if left <= 0:
            return leaked
        _, alive = psutil.wait_procs(list(leaked.values()), timeout=min(left, 1.0))
        if alive and time.monotonic() >= deadline:
            return {p.pid: p for p in alive}


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Fail the test that leaves a child process behind (retrying a moment: exits are asynchronous)."""
    before = set(live_descendants())
    yield
    leaked = leaked_since(before)
    if not leaked:
        return
    names = []
    for p in leaked.values():
        try:
            names.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
            p.kill()
        except psutil.Error:
            pass
    pytest.fail(f"test leaked {len(leaked)} child process(es): {names}")


@pytest.fixture
def rt() -> Iterator[ProcessRuntime]:
    """A warm two-worker runtime, shut down after the test."""
    runtime = ProcessRuntime(workers=2, restart_window=5.0).start(wait=True)
    try:
        yield runtime
    finally:
        runtime.shutdown()


@pytest.fixture
def default_runtime() -> Iterator[None]:
    """For tests that use the implicit default runtime: shut it down afterwards."""
    yield
    shutdown_default_runtime()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if inspect.iscoroutinefunction(metafunc.function):
        metafunc.fixturenames.append("_loop")
        metafunc.parametrize("_loop", ["asyncio", "uvloop"])


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    factory: Any = uvloop.new_event_loop if pyfuncitem.callspec.params["_loop"] == "uvloop" else None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(pyfuncitem.obj(**kwargs))
    return True


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until true or ``timeout``; for states only observable from outside (processes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


__all__ = ["leaked_since", "live_descendants", "pid_gone", "wait_until"]
