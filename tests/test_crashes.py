"""Robustness: whatever a worker does (raise, exit, segfault, get killed), at whatever moment (unpickling its
input, running the step, pickling its result) or whatever the parent fails to unpickle, the run resolves
promptly with the documented error, the pool is back to full strength and the next run succeeds.

The table follows loky's ``crash_cases`` and CPython's ``test_concurrent_futures/test_deadlock.py``. Cases
that take the *parent* down run in a child interpreter, so a hang or a death cannot leak into this process.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from actors import (
    Context, Event, PayloadError, RemoteTraceback, RuntimeBrokenError, StartEvent, StopEvent,
    WorkerCrashedError, Workflow, WorkflowFailedEvent, WorkflowRuntimeError, step,
)
from conftest import pid_gone, wait_until
from runtime import ProcessRuntime

REPO = Path(__file__).resolve().parents[1]
WAIT = 30  # seconds a healthy run may take on a loaded machine before we call it a hang
PROMPT = 10  # seconds within which a crash must resolve its handler (detection itself takes ~ms)


# --- detonators -------------------------------------------------------------------------------------------
class Detonated(Exception):
    """What a "raise" detonation raises."""


def detonate(how: str) -> None:
    """Do ``how`` right here, in whatever process and thread calls it."""
    if how == "raise":
        raise Detonated(f"detonated ({how}) in pid {os.getpid()}")
    if how == "exit":
        os._exit(3)
    if how == "sysexit":
        sys.exit(9)
    if how == "segfault":
        ctypes.string_at(0)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(30)
    raise AssertionError(f"unknown detonation {how!r}")


class UnpickleBomb:
    """Pickles quietly; detonates in the process that unpickles it."""

    def __init__(self, how: str) -> None:
        self.how = how

    def __reduce__(self) -> tuple[Any, ...]:
        return (detonate, (self.how,))


class PickleBomb:
    """Detonates in the process that pickles it."""

    def __init__(self, how: str) -> None:
        self.how = how

    def __reduce__(self) -> tuple[Any, ...]:
        detonate(self.how)
        raise AssertionError("unreachable")


# --- workflows --------------------------------------------------------------------------------------------
class Sink(Workflow):
    """The StartEvent carries a bomb in ``payload``: it goes off when the worker unpickles the input."""

    @step
    def swallow(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result="unreachable")


class RunBomb(Workflow):
    @step
    def explode(self, ev: StartEvent) -> StopEvent:
        detonate(ev.how)
        return StopEvent(result="unreachable")


class AsyncRunBomb(Workflow):
    @step
    async def explode(self, ev: StartEvent) -> StopEvent:
        detonate(ev.how)
        return StopEvent(result="unreachable")


class ReturnBomb(Workflow):
    """Returns a result that goes off while the worker pickles it."""

    @step
    def give(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=PickleBomb(ev.how))


class ParentBomb(Workflow):
    """Returns a result that pickles fine and goes off when the parent unpickles it."""

    @step
    def give(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=UnpickleBomb(ev.how))


class Square(Workflow):
    @step
    def square(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.x * ev.x)


class AsyncSquare(Workflow):
    @step
    async def square(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.x * ev.x)


def start_bomb_run(where: str, how: str, rt: ProcessRuntime) -> tuple[Any, str]:
    """Start the run that detonates ``how`` at ``where``; return its handler and the step that runs it."""
    if where == "unpickle input in worker":
        return Sink(timeout=WAIT, runtime=rt).run(payload=UnpickleBomb(how)), "swallow"
    if where == "run the step":
        return RunBomb(timeout=WAIT, runtime=rt).run(how=how), "explode"
    if where == "run an async step":
        return AsyncRunBomb(timeout=WAIT, runtime=rt).run(how=how), "explode"
    if where == "pickle result in worker":
        return ReturnBomb(timeout=WAIT, runtime=rt).run(how=how), "give"
    if where == "unpickle result in parent":
        return ParentBomb(timeout=WAIT, runtime=rt).run(how=how), "give"
    raise AssertionError(where)


DEATHS = {"exit": 3, "segfault": -signal.SIGSEGV, "sigkill": -signal.SIGKILL}
DEATH_WORDS = {"exit": "exit code 3", "segfault": "SIGSEGV", "sigkill": "SIGKILL"}


# The parent-side rows other than "raise" take the parent down: they are the child-interpreter tests below.
def case(where: str, how: str, expected: type[BaseException], *words: str) -> Any:
    """One row: (where, how) -> the exception ``result()`` raises and the words its message names."""
    return pytest.param(where, how, expected, words, id=f"{where}-{how}")


CRASH_CASES = [
    case("unpickle input in worker", "raise", PayloadError, "StartEvent"),
    case("run the step", "raise", Detonated, "detonated"),
    case("run an async step", "raise", Detonated, "detonated"),
    case("pickle result in worker", "raise", PayloadError, "StopEvent"),
    case("unpickle result in parent", "raise", WorkflowRuntimeError, "StopEvent"),
] + [
    case(where, how, WorkerCrashedError, DEATH_WORDS[how])
    for where in ("unpickle input in worker", "run the step", "run an async step",
                  "pickle result in worker")
    for how in DEATHS
]


def assert_pool_healed(rt: ProcessRuntime, before: list[int], dead: int | None = None) -> None:
    """The pool is back to two workers, without ``dead``, and runs work on it."""
    if dead is not None:
        assert wait_until(lambda: pid_gone(dead), 10), f"worker {dead} is still there"
    assert wait_until(lambda: len(rt.worker_pids()) == 2 and dead not in rt.worker_pids(), 10), (
        f"pool not back to full strength: {rt.worker_pids()} (before: {before}, dead: {dead})")
    assert Square(timeout=WAIT, runtime=rt).run(x=7).result(timeout=WAIT) == 49
    assert AsyncSquare(timeout=WAIT, runtime=rt).run(x=8).result(timeout=WAIT) == 64


@pytest.mark.timeout(40)
@pytest.mark.parametrize(("where", "how", "expected", "words"), CRASH_CASES)
def test_a_crash_anywhere_fails_only_its_run_with_the_documented_error_and_the_pool_heals(
        rt: ProcessRuntime, where: str, how: str, expected: type[BaseException],
        words: tuple[str, ...]) -> None:
    before = rt.worker_pids()
    handler, step_name = start_bomb_run(where, how, rt)
    with pytest.raises(expected) as info:
        handler.result(timeout=PROMPT)
    err = info.value
    text = " ".join([str(err), *getattr(err, "__notes__", [])])
    assert f"'{step_name}'" in text, text
    for word in words:
        assert word in text, text
    stop = handler.get_stop_event()
    assert isinstance(stop, WorkflowFailedEvent) and stop.step == step_name
    dead = None
    if isinstance(err, WorkerCrashedError):
        assert err.step == step_name
        assert err.exitcode == DEATHS[how]
        assert err.pid in before
        dead = err.pid
    else:
        assert set(rt.worker_pids()) == set(before), "a raise must not cost a worker"
        if expected is Detonated:
            assert isinstance(err.__cause__, RemoteTraceback) and "detonate" in err.__cause__.tb
    assert_pool_healed(rt, before, dead)


# --- the parent is the one that dies: in a child interpreter ----------------------------------------------
CHILD_PRELUDE = f"""
import os, sys, time
sys.path[:0] = [{str(REPO)!r}, {str(REPO / "tests")!r}]
from runtime import ProcessRuntime
"""


def marked_processes(marker: str) -> list[psutil.Process]:
    """Every live process started (directly or not) by the child interpreter tagged with ``marker``."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("PROCFLOW_TEST_MARK") == marker and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            pass
    return found


def run_child(code: str, timeout: float = 40) -> tuple[int | None, str, str, str]:
    """Run ``code`` in a child interpreter tagged with a fresh marker; (returncode, out, err, marker).
    A child that hangs past ``timeout`` is SIGKILLed and reported with returncode None."""
    marker = uuid.uuid4().hex
    env = {**os.environ, "PROCFLOW_TEST_MARK": marker}
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(code)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return None, out, err, marker
    return proc.returncode, proc.stdout, proc.stderr, marker


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("how", "returncode"), [("exit", 3), ("segfault", -signal.SIGSEGV),
                                                ("sigkill", -signal.SIGKILL)])
def test_a_parent_that_dies_unpickling_a_result_leaves_no_worker_behind(how: str, returncode: int) -> None:
    code, out, err, marker = run_child(f"""
        from test_crashes import ParentBomb
        rt = ProcessRuntime(workers=2).start(wait=True)
        print("PIDS", *rt.worker_pids(), flush=True)
        ParentBomb(timeout=20, runtime=rt).run(how={how!r}).result(timeout=20)
        print("SURVIVED", flush=True)
    """)
    assert code == returncode, (code, out, err[-3000:])
    assert "SURVIVED" not in out
    pids = [int(p) for p in out.split("PIDS", 1)[1].split("\n", 1)[0].split()]
    assert len(pids) == 2
    assert wait_until(lambda: all(pid_gone(p) for p in pids), 10), "workers outlived their dead parent"
    assert wait_until(lambda: not marked_processes(marker), 10), marked_processes(marker)
    assert "leaked" not in err and "resource_tracker" not in err, err[-3000:]


@pytest.mark.timeout(60)
def test_system_exit_while_the_parent_unpickles_a_result_fails_only_that_run() -> None:
    # sys.exit() in a __setstate__/__reduce__ callable is a BaseException raised on the supervisor's loop:
    # it must not stop the supervisor (every later run would hang) nor escape to the caller as SystemExit.
    code, out, err, marker = run_child("""
        from actors import WorkflowRuntimeError
        from test_crashes import ParentBomb, Square
        rt = ProcessRuntime(workers=2).start(wait=True)
        try:
            ParentBomb(timeout=20, runtime=rt).run(how="sysexit").result(timeout=10)
        except WorkflowRuntimeError as exc:
            print("RUN FAILED", type(exc).__name__, "|", exc, flush=True)
        except BaseException as exc:
            print("WRONG", type(exc).__name__, exc, flush=True)
            os._exit(1)  # the runtime is wedged: leave at once (the workers must follow on their own)
        print("NEXT", Square(timeout=20, runtime=rt).run(x=5).result(timeout=10), flush=True)
        rt.shutdown()
    """)
    assert "RUN FAILED" in out and "'give'" in out and "StopEvent" in out, (out, err[-3000:])
    assert "NEXT 25" in out, (out, err[-3000:])
    assert code == 0, (code, err[-3000:])
    assert wait_until(lambda: not marked_processes(marker), 10), marked_processes(marker)
    assert "leaked" not in err and "resource_tracker" not in err, err[-3000:]


# --- outside kills, stray exits, bad payloads --------------------------------------------------------------
class Pid(Event):
    pid: int


class Tick(Event):
    i: int


class Streamer(Workflow):
    @step
    def chatter(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Pid(pid=os.getpid()))
        i = 0
        while True:  # streams until someone kills the worker
            ctx.write_event_to_stream(Tick(i=i))
            i += 1
            time.sleep(0.002)


@pytest.mark.timeout(40)
def test_a_worker_sigkilled_from_outside_mid_step_and_mid_stream_fails_the_run_naming_step_and_signal(
        rt: ProcessRuntime) -> None:
    before = rt.worker_pids()
    handler = Streamer(timeout=WAIT, runtime=rt).run()
    events = handler.iter_events(timeout=WAIT)
    first = next(events)
    assert isinstance(first, Pid) and first.pid in before
    assert isinstance(next(events), Tick)
    os.kill(first.pid, signal.SIGKILL)
    events = handler.iter_events(timeout=PROMPT)  # a fresh iterator: the same stream, a tight bound
    rest = list(events)  # ends: no hang on a worker killed mid-stream
    assert isinstance(rest[-1], WorkflowFailedEvent)
    assert rest[-1].step == "chatter" and rest[-1].error_type == "WorkerCrashedError"
    with pytest.raises(WorkerCrashedError, match="SIGKILL") as info:
        handler.result(timeout=PROMPT)
    assert info.value.step == "chatter" and info.value.pid == first.pid
    assert info.value.exitcode == -signal.SIGKILL
    assert "'chatter'" in str(info.value)
    assert_pool_healed(rt, before, first.pid)


@pytest.mark.timeout(30)
def test_a_worker_killed_while_idle_is_replaced_and_no_run_notices(rt: ProcessRuntime) -> None:
    before = rt.worker_pids()
    os.kill(before[0], signal.SIGKILL)
    assert_pool_healed(rt, before, before[0])


class StrayExit(Workflow):
    @step
    def leave(self, ev: StartEvent) -> StopEvent:
        if ev.kind == "SystemExit":
            raise SystemExit(4)
        raise KeyboardInterrupt


class AsyncStrayExit(Workflow):
    @step
    async def leave(self, ev: StartEvent) -> StopEvent:
        if ev.kind == "SystemExit":
            raise SystemExit(4)
        raise KeyboardInterrupt


@pytest.mark.timeout(40)
@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt"])
@pytest.mark.parametrize("flavour", [StrayExit, AsyncStrayExit], ids=["def", "async"])
def test_system_exit_or_keyboard_interrupt_raised_in_a_step_fails_the_run_but_the_worker_lives_on(
        rt: ProcessRuntime, kind: str, flavour: type[Workflow]) -> None:
    before = rt.worker_pids()
    handler = flavour(timeout=WAIT, runtime=rt).run(kind=kind)
    # The step's exception reaches the caller as its own type (as with concurrent.futures).
    with pytest.raises(BaseException) as info:
        handler.result(timeout=WAIT)
    assert type(info.value).__name__ == kind
    assert any("'leave'" in note for note in getattr(info.value, "__notes__", [])), info.value
    stop = handler.get_stop_event()
    assert isinstance(stop, WorkflowFailedEvent) and stop.error_type == kind
    assert set(rt.worker_pids()) == set(before), "the worker must survive its step's exit"
    assert_pool_healed(rt, before)
    assert set(rt.worker_pids()) == set(before)


class Locked(Event):
    lock: Any


class SendsALock(Workflow):
    @step
    def send(self, ctx: Context, ev: StartEvent) -> Locked | None:
        ctx.send_event(Locked(lock=threading.Lock()))
        return None

    @step
    def take(self, ev: Locked) -> StopEvent:
        return StopEvent(result="unreachable")


class ReturnsALock(Workflow):
    @step
    async def give(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=threading.Lock())


class StreamsALock(Workflow):
    @step
    async def give(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Locked(lock=threading.Lock()))
        return StopEvent(result="unreachable")


@pytest.mark.timeout(60)
def test_an_unpicklable_event_sent_a_hundred_times_fails_each_run_and_costs_no_worker(
        rt: ProcessRuntime) -> None:
    before = rt.worker_pids()
    wf = SendsALock(timeout=WAIT, runtime=rt)
    handlers = [wf.run() for _ in range(100)]
    for handler in handlers:
        with pytest.raises(PayloadError) as info:
            handler.result(timeout=WAIT)
        assert "'send'" in str(info.value) and "Locked" in str(info.value)
    assert set(rt.worker_pids()) == set(before)
    assert_pool_healed(rt, before)
    assert set(rt.worker_pids()) == set(before)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("flavour", "step_name", "type_name"),
                         [(ReturnsALock, "give", "StopEvent"), (StreamsALock, "give", "Locked")],
                         ids=["returned", "streamed"])
def test_an_unpicklable_result_or_streamed_event_fails_the_run_naming_step_and_type(
        rt: ProcessRuntime, flavour: type[Workflow], step_name: str, type_name: str) -> None:
    before = rt.worker_pids()
    with pytest.raises(PayloadError) as info:
        flavour(timeout=WAIT, runtime=rt).run().result(timeout=WAIT)
    assert f"'{step_name}'" in str(info.value) and type_name in str(info.value)
    assert set(rt.worker_pids()) == set(before)
    assert_pool_healed(rt, before)


@pytest.mark.timeout(30)
def test_an_unpicklable_start_argument_is_a_payload_error_naming_the_start_event(
        rt: ProcessRuntime) -> None:
    with pytest.raises(PayloadError, match="StartEvent"):
        Square(timeout=WAIT, runtime=rt).run(x=threading.Lock()).result(timeout=WAIT)
    assert Square(timeout=WAIT, runtime=rt).run(x=3).result(timeout=WAIT) == 9


class BigThenDie(Workflow):
    @step
    def give(self, ev: StartEvent) -> StopEvent:
        # The worker dies while (or just after) it writes a frame far larger than the pipe buffer.
        threading.Timer(ev.delay, os.kill, (os.getpid(), signal.SIGKILL)).start()
        return StopEvent(result=b"x" * ev.size)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("delay", [0.002, 0.01])
def test_a_worker_killed_while_writing_a_huge_result_never_hangs_the_supervisor(
        rt: ProcessRuntime, delay: float) -> None:
    before = rt.worker_pids()
    size = 16 << 20
    handler = BigThenDie(timeout=WAIT, runtime=rt).run(size=size, delay=delay)
    try:
        assert handler.result(timeout=PROMPT) == b"x" * size  # the frame made it out before the kill
    except WorkerCrashedError as exc:
        assert exc.step == "give" and exc.exitcode == -signal.SIGKILL
    # The timer fires within ``delay`` of the step starting, whether or not the frame got out first.
    assert wait_until(lambda: any(pid_gone(p) for p in before), 10)
    assert_pool_healed(rt, before, next(p for p in before if pid_gone(p)))


# --- concurrency, retries and the restart budget ----------------------------------------------------------
class Slow(Workflow):
    @step
    def crunch(self, ev: StartEvent) -> StopEvent:
        total = sum(i * i for i in range(ev.n))
        return StopEvent(result=total)


class AsyncSlow(Workflow):
    @step
    async def nap(self, ev: StartEvent) -> StopEvent:
        import asyncio

        await asyncio.sleep(ev.delay)
        return StopEvent(result=ev.delay)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["segfault"])
def test_concurrent_runs_are_unaffected_by_another_runs_crash(rt: ProcessRuntime, how: str) -> None:
    before = rt.worker_pids()
    good = [Slow(timeout=WAIT, runtime=rt).run(n=20_000 + i) for i in range(4)]
    naps = [AsyncSlow(timeout=WAIT, runtime=rt).run(delay=0.05 * i) for i in range(4)]
    bad = RunBomb(timeout=WAIT, runtime=rt).run(how=how)
    more = [Slow(timeout=WAIT, runtime=rt).run(n=30_000 + i) for i in range(4)]
    with pytest.raises(WorkerCrashedError):
        bad.result(timeout=PROMPT)
    for i, h in enumerate(good):
        assert h.result(timeout=WAIT) == sum(j * j for j in range(20_000 + i))
    for i, h in enumerate(more):
        assert h.result(timeout=WAIT) == sum(j * j for j in range(30_000 + i))
    for i, h in enumerate(naps):
        assert h.result(timeout=WAIT) == 0.05 * i
    assert_pool_healed(rt, before)


class RetryTwice:
    def next(self, elapsed_time: float, attempts: int, error: Exception) -> float | None:
        return 0.0 if attempts < 2 else None


class CrashesFirstTime(Workflow):
    @step(retry_policy=RetryTwice())
    def flaky(self, ev: StartEvent) -> StopEvent:
        marker = Path(ev.marker)
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(5)
        return StopEvent(result=int(marker.read_text()))


@pytest.mark.timeout(30)
def test_a_step_whose_worker_dies_is_retried_by_its_retry_policy(rt: ProcessRuntime,
                                                                   tmp_path: Path) -> None:
    before = rt.worker_pids()
    marker = tmp_path / "crashed-once"
    dead = CrashesFirstTime(timeout=WAIT, runtime=rt).run(marker=str(marker)).result(timeout=WAIT)
    assert dead in before
    assert_pool_healed(rt, before, dead)


class AlwaysCrash(Workflow):
    @step
    def doomed(self, ev: StartEvent) -> StopEvent:
        os._exit(7)


@pytest.mark.timeout(60)
def test_a_step_that_always_kills_its_worker_spends_the_restart_budget_then_the_runtime_fails_clearly(
        ) -> None:
    rt = ProcessRuntime(workers=2, max_restarts=2, restart_window=30).start(wait=True)
    try:
        crashes = 0
        broken = False
        for _ in range(6):
            try:
                AlwaysCrash(timeout=WAIT, runtime=rt).run().result(timeout=PROMPT)
            except WorkerCrashedError as exc:
                assert exc.step == "doomed" and exc.exitcode == 7
                crashes += 1
            except RuntimeBrokenError:
                broken = True
                break
        assert broken, f"still respawning after {crashes} crashes with max_restarts=2"
        # Two restarts are within budget; the third death is not: its run fails (as a crash, or already as
        # broken) and the pool gives up.
        assert crashes in (2, 3)
        # Later runs fail at once and clearly, even good ones; no respawn loop in the background.
        with pytest.raises(RuntimeBrokenError, match="broken"):
            Square(timeout=WAIT, runtime=rt).run(x=2).result(timeout=WAIT)
        pids = rt.worker_pids()
        assert len(pids) <= 1
        children = {p.pid for p in psutil.Process().children(recursive=True)}
        time.sleep(0.5)
        assert rt.worker_pids() == pids
        assert {p.pid for p in psutil.Process().children(recursive=True)} <= children
    finally:
        rt.shutdown()
