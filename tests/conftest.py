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

# multiprocessing's own helpers live as long as the test process and are not workers of any runtime.
_INFRASTRUCTURE = ("forkserver", "resource_tracker")


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
    """Fail the test that leaves a child process behind (retrying a moment: exits are asynchronous)."""
    before = set(_children())
    yield
    for _ in range(30):
        leaked = {pid: p for pid, p in _children().items() if pid not in before}
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


__all__ = ["pid_gone", "wait_until"]
