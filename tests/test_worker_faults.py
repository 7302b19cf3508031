"""Faults inside and around a worker process, each of which used to hang a run, leak, or hit a bystander:

- a step's own CancelledError (not a cancel its run asked for), blocking store calls in an async step,
  exceptions that cannot be printed, annotated or pickled, a step that runs out of memory;
- event classes made per call never released;
- pipe ends leaked by a failed start, a dead worker's pid signalled after another process took it, a worker
  inbox on a file descriptor above 1024, a stopped worker kept in the pool, processes left running after the
  parent was SIGKILLed, and a process forked after using the default runtime.

Scenarios that could hang or take a process down run in a child interpreter.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import psutil
import pytest

from actors import (
    Context, Event, HumanResponseEvent, StartEvent, StopEvent, WorkerCrashedError, Workflow, WorkflowRuntimeError, step,
)
from conftest import pid_gone, wait_until
from runtime import ProcessRuntime

REPO = Path(__file__).resolve().parents[1]
WAIT = 30  # seconds a healthy run may take on a loaded machine before we call it a hang
HANG = 8  # the timeout of runs that used to hang: they must end well before it, with their own error


def child_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with this checkout first on its path."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=str(REPO))


@pytest.fixture
def rt1() -> Any:
    """A warm one-worker runtime: every invocation of a test lands on the same worker."""
    runtime = ProcessRuntime(workers=1).start(wait=True)
    try:
        yield runtime
    finally:
        runtime.shutdown()


class Double(Workflow):
    @step
    async def double(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.x * 2)


class SyncDouble(Workflow):
    @step
    def double(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.x * 2)


def assert_worker_serves(rt: ProcessRuntime) -> None:
    assert Double(runtime=rt, timeout=WAIT).run(x=21).result(WAIT) == 42
    assert SyncDouble(runtime=rt, timeout=WAIT).run(x=4).result(WAIT) == 8


# --- (8) a CancelledError the run did not ask for ------------------------------------------------------------
class InnerTaskCancelled(Workflow):
    @step
    async def go(self, ev: StartEvent) -> StopEvent:
        inner = asyncio.ensure_future(asyncio.sleep(60))
        asyncio.get_running_loop().call_soon(inner.cancel)
        await inner  # raises CancelledError here: the step's own failure, not a cancel of the run
        return StopEvent(result="unreachable")


def test_a_cancelled_error_from_a_task_a_step_awaited_fails_the_run_instead_of_hanging_it(
        rt1: ProcessRuntime) -> None:
    with pytest.raises(WorkflowRuntimeError, match="raised CancelledError, but its run did not cancel it"):
        InnerTaskCancelled(runtime=rt1, timeout=HANG).run().result(WAIT)
    assert_worker_serves(rt1)


# --- (9) blocking store calls in an async step -----------------------------------------------------------------
class SyncStoreInAsyncStep(Workflow):
    @step
    async def go(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.store.set_sync("x", ev.x)
        with ctx.store.edit_state_sync() as state:
            state["x"] = state["x"] * 10
            state["y"] = "edited"
        return StopEvent(result=(ctx.store.get_sync("x"), ctx.store.get_sync("y"),
                                 ctx.store.get_sync("missing", default="default")))


def test_blocking_store_calls_in_an_async_step_work_and_see_each_others_writes(rt1: ProcessRuntime) -> None:
    result = SyncStoreInAsyncStep(runtime=rt1, timeout=HANG).run(x=4).result(WAIT)
    assert result == (40, "edited", "default")
    assert_worker_serves(rt1)


class Go(HumanResponseEvent):  # sent by the caller only: LlamaIndex validation wants a HumanResponseEvent
    pass


class LockHeldInTheSameWorker(Workflow):
    @step
    async def holder(self, ctx: Context, ev: StartEvent) -> StopEvent:
        async with ctx.store.edit_state() as state:
            state["by"] = "holder"
            ctx.send_event(Go())  # the blocker runs on this same worker while this step holds the lock
            await asyncio.sleep(60)
        return StopEvent(result="unreachable")

    @step
    async def blocker(self, ctx: Context, ev: Go) -> StopEvent:
        with ctx.store.edit_state_sync() as state:  # blocking the loop would keep the holder from releasing
            state["by"] = "blocker"
        return StopEvent(result="unreachable")


def test_edit_state_sync_in_an_async_step_refuses_to_wait_for_a_lock_a_step_of_its_own_worker_holds(
        rt1: ProcessRuntime) -> None:
    with pytest.raises(WorkflowRuntimeError, match="edit_state_sync.*would deadlock"):
        LockHeldInTheSameWorker(runtime=rt1, timeout=HANG).run().result(WAIT)
    assert_worker_serves(rt1)


# --- (10) exceptions that cannot be described, and running out of memory ----------------------------------------
class Unprintable(Exception):
    """``str()`` raises: the supervisor cannot describe it."""

    def __str__(self) -> str:
        return str(self.args[5])


class NotesNotAList(Exception):
    """``add_note`` raises: the supervisor cannot annotate it."""

    __notes__ = "not a list"


class UnpicklesAsAString(Exception):
    """Pickles fine, and unpickles as a str, not as an exception."""

    def __reduce__(self) -> Any:
        return (str, ("not an exception",))


class UnpicklableAndUnprintable(Exception):
    """Cannot be pickled, and ``str()`` raises: the substitute error has to be described without it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()

    def __str__(self) -> str:
        raise ValueError("no str for you")


HOSTILE = {"unprintable": Unprintable, "notes": NotesNotAList, "reduce": UnpicklesAsAString,
           "unpicklable": UnpicklableAndUnprintable}


class RaiseHostile(Workflow):
    @step
    def fail(self, ev: StartEvent) -> StopEvent:
        raise HOSTILE[ev.kind]("hostile")


@pytest.mark.parametrize(("kind", "expected", "words"), [
    pytest.param("unpicklable", WorkflowRuntimeError,
                 ("UnpicklableAndUnprintable", "str() failed", "cannot be sent"), id="unpicklable"),
    pytest.param("reduce", WorkflowRuntimeError, ("UnpicklesAsAString", "not as an exception"), id="reduce"),
    pytest.param("unprintable", Unprintable, (), id="unprintable"),
    pytest.param("notes", NotesNotAList, (), id="notes"),
])
def test_a_step_raising_an_exception_that_cannot_be_described_fails_its_run_and_keeps_its_worker(
        rt1: ProcessRuntime, kind: str, expected: type[BaseException], words: tuple[str, ...]) -> None:
    with pytest.raises(expected) as info:
        RaiseHostile(runtime=rt1, timeout=HANG).run(kind=kind).result(WAIT)
    text = Exception.__str__(info.value)
    for word in words:
        assert word in text
    assert_worker_serves(rt1)


class Hog(Workflow):
    @step
    def hog(self, ev: StartEvent) -> StopEvent:
        import resource

        # This worker only: its address space may grow by 256 MB more, then allocations fail.
        vms = psutil.Process().memory_info().vms
        resource.setrlimit(resource.RLIMIT_AS, (vms + (256 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
        hog = []
        while True:
            hog.append("x" * 4096 + str(len(hog)))


def test_a_step_that_runs_out_of_memory_fails_its_run_with_memory_error_and_its_worker_serves_the_next(
        rt1: ProcessRuntime) -> None:
    with pytest.raises(MemoryError):
        Hog(runtime=rt1, timeout=HANG).run().result(WAIT)
    assert_worker_serves(rt1)


# --- (15) per-call event classes ------------------------------------------------------------------------------
def run_a_workflow_made_in_a_function(rt: ProcessRuntime) -> weakref.ref[type]:
    class Mid(Event):
        x: int

    class Flow(Workflow):
        @step
        async def first(self, ev: StartEvent) -> Mid:
            return Mid(x=ev.x)

        @step
        async def second(self, ev: Mid) -> StopEvent:
            return StopEvent(result=ev.x + 1)

    assert Flow(runtime=rt, timeout=WAIT).run(x=41).result(WAIT) == 42
    return weakref.ref(Mid)


class CountMidClasses(Workflow):
    """Counts, in its worker, the event classes ``run_a_workflow_made_in_a_function`` made there."""

    @step
    async def count(self, ev: StartEvent) -> StopEvent:
        gc.collect()
        return StopEvent(result=sum(
            1 for o in gc.get_objects()
            if isinstance(o, type) and o.__qualname__ == "run_a_workflow_made_in_a_function.<locals>.Mid"))


def test_event_classes_made_per_call_are_released_in_the_parent_and_in_the_worker_once_unused(
        rt1: ProcessRuntime) -> None:
    mid = run_a_workflow_made_in_a_function(rt1)
    assert wait_until(lambda: gc.collect() >= 0 and mid() is None, timeout=10, interval=0.05), \
        "the parent keeps the event class of a workflow that is gone"
    # The worker was told to drop the workflow before it gets this run (one pipe, in order).
    assert CountMidClasses(runtime=rt1, timeout=WAIT).run().result(WAIT) == 0


# --- (17) process hygiene --------------------------------------------------------------------------------------
def test_worker_starts_that_fail_close_the_parents_ends_of_their_pipes() -> None:
    out = child_python("""
        import logging, logging.handlers, os, tempfile, time
        from runtime import ProcessRuntime

        # A handler that keeps its records (as pytest's log capture, or any buffering handler, does): the
        # pool logs each failed start with its exception, whose traceback holds the frame that opened the
        # pipes. Ends closed only when that frame is freed stay open as long as the record is kept.
        logging.getLogger("procflow").addHandler(logging.handlers.BufferingHandler(10**6))

        def open_fds():
            return len(os.listdir("/proc/self/fd"))

        def break_a_runtime(restarts):
            rt = ProcessRuntime(workers=1, max_restarts=restarts, restart_window=60.0)
            rt.start()
            while not rt.broken:
                time.sleep(0.01)
            rt.shutdown()

        where = tempfile.mkdtemp()
        os.chdir(where)
        os.rmdir(where)  # multiprocessing reads the cwd while it starts a process: every start fails now
        break_a_runtime(0)  # once first: what a runtime opens for good (imports, ...)
        before = open_fds()
        break_a_runtime(20)  # 21 failed starts
        print("LEAKED", open_fds() - before)
    """)
    assert "LEAKED" in out.stdout, out.stderr[-3000:]
    leaked = int(out.stdout.split("LEAKED")[1])
    assert leaked <= 2, f"{leaked} file descriptors leaked by 21 failed worker starts"


def test_the_worker_inbox_waits_on_a_file_descriptor_above_1024() -> None:
    out = child_python("""
        import os, pickle, resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < 2048:
            print("SKIP: the hard limit on open files is", hard)
            raise SystemExit
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
        from runtime.workers.process.main import PipeInbox
        from runtime.wire.framing import frame

        r, w = os.pipe()
        os.dup2(r, 1500)
        os.close(r)
        inbox = PipeInbox(1500)
        os.write(w, frame(pickle.dumps(("hello", 1500))))
        print("GOT", inbox.recv_wait())
    """)
    if "SKIP" in out.stdout:
        pytest.skip(out.stdout.strip())
    assert "GOT [('hello', 1500)]" in out.stdout, out.stderr[-3000:]


NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")


def take_pid(pid: int) -> subprocess.Popen[bytes]:
    """Start a bystander (``sleep``, leading a session and group of its own) with pid ``pid``."""
    for _ in range(50):
        if psutil.pid_exists(pid):
            pytest.skip(f"another process took pid {pid} first")
        NS_LAST_PID.write_text(str(pid - 1))
        bystander = subprocess.Popen(["sleep", "120"], start_new_session=True)
        if bystander.pid == pid:
            return bystander
        bystander.kill()  # someone else forked in between: try again
        bystander.wait()
    pytest.skip(f"could not start a process with pid {pid}")


@pytest.mark.skipif(not os.access(NS_LAST_PID, os.W_OK), reason="needs a writable ns_last_pid (root)")
@pytest.mark.timeout(90)
def test_a_dead_workers_pid_taken_by_another_process_is_never_signalled(tmp_path: Path) -> None:
    pid_file, go = tmp_path / "pid", tmp_path / "go"
    code = textwrap.dedent("""
        import os, sys, time
        from pathlib import Path
        from actors import StartEvent, StopEvent, Workflow, step
        from runtime import ProcessRuntime

        class Crash(Workflow):
            @step
            def crash(self, ev: StartEvent) -> StopEvent:
                Path(sys.argv[1]).write_text(str(os.getpid()))
                while not Path(sys.argv[2]).exists():
                    time.sleep(0.01)
                os._exit(3)

        with ProcessRuntime(workers=1) as rt:  # forkserver: it reaps the worker the moment it dies
            try:
                Crash(runtime=rt, timeout=60).run().result(90)
            except Exception as exc:
                print("RESULT", type(exc).__name__, flush=True)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    parent = subprocess.Popen([sys.executable, "-c", code, str(pid_file), str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    bystander = None
    try:
        assert wait_until(lambda: pid_file.exists() and pid_file.read_text() != "", 30), "the step never ran"
        worker = int(pid_file.read_text())
        os.kill(parent.pid, signal.SIGSTOP)  # the supervisor cannot close the dead worker until SIGCONT
        try:
            go.touch()
            assert wait_until(lambda: not psutil.pid_exists(worker), 10), "the worker did not exit"
            bystander = take_pid(worker)
        finally:
            os.kill(parent.pid, signal.SIGCONT)
        out, err = parent.communicate(timeout=60)
        assert "RESULT WorkerCrashedError" in out, err[-3000:]
        # The run failed after the supervisor closed the dead worker's link: that close is over.
        assert bystander.poll() is None, f"the bystander that took pid {worker} was killed"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.communicate()
        if bystander is not None:
            bystander.kill()
            bystander.wait()


def test_a_stopped_idle_worker_is_replaced_and_runs_go_on(rt1: ProcessRuntime) -> None:
    [frozen] = rt1.worker_pids()
    os.kill(frozen, signal.SIGSTOP)
    try:
        assert wait_until(lambda: frozen not in rt1.worker_pids(wait=False), 15), \
            "a stopped worker stays in the pool"
        assert pid_gone(frozen)
        assert_worker_serves(rt1)
    finally:
        if not pid_gone(frozen):
            os.kill(frozen, signal.SIGCONT)  # so that the shutdown can end it


PARENT_WITH_FROZEN_WORKER_AND_NEW_SESSION_GRANDCHILD = """
    import json, os, signal, subprocess, time
    from actors import Context, Event, StartEvent, StopEvent, Workflow, step
    from runtime import ProcessRuntime

    class Pids(Event):
        worker: int
        grandchild: int

    class Spawn(Workflow):
        @step
        def spawn(self, ctx: Context, ev: StartEvent) -> StopEvent:
            child = subprocess.Popen(["sleep", "300"], start_new_session=True)
            ctx.write_event_to_stream(Pids(worker=os.getpid(), grandchild=child.pid))
            time.sleep(300)
            return StopEvent()

    rt = ProcessRuntime(workers=2).start(wait=True)
    pids = next(e for e in Spawn(timeout=None, runtime=rt).run().iter_events() if isinstance(e, Pids))
    idle = [w for w in rt.worker_pids() if w != pids.worker][0]
    time.sleep(1.2)  # the reaper looks for new descendants every 0.5 s: let it see the grandchild
    os.kill(idle, signal.SIGSTOP)  # killed now, this worker cannot run its own parent watch
    print(json.dumps({"worker": pids.worker, "grandchild": pids.grandchild, "idle": idle}), flush=True)
    time.sleep(300)
"""


@pytest.mark.timeout(90)
def test_after_the_parent_is_sigkilled_no_worker_stopped_or_not_and_no_process_its_steps_started_survives(
        tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # stderr to a file: survivors would hold a pipe open, and reading it to its end would wait for them.
    with open(tmp_path / "stderr", "w") as stderr:
        parent = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(PARENT_WITH_FROZEN_WORKER_AND_NEW_SESSION_GRANDCHILD)],
            env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    everything: list[psutil.Process] = []
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line, (tmp_path / "stderr").read_text()[-3000:]
        pids = json.loads(line)
        # Everything the parent started: forkserver, resource tracker, workers, the reaper, the grandchild.
        everything = psutil.Process(parent.pid).children(recursive=True)
        assert {pids["worker"], pids["idle"], pids["grandchild"]} <= {p.pid for p in everything}
        parent.kill()
        parent.wait()

        def survivors() -> list[str]:
            out = []
            for p in everything:
                try:
                    if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                        out.append(f"{p.pid} {p.status()} {' '.join(p.cmdline())[:70]}")
                except psutil.Error:
                    pass
            return out

        # "within about two seconds"; the bound is generous for a loaded machine, not a benchmark.
        assert wait_until(lambda: not survivors(), 10), survivors()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for p in everything:
            try:
                p.kill()
            except psutil.Error:
                pass
        if parent.stdout is not None:
            parent.stdout.close()


def test_a_process_forked_after_using_the_default_runtime_runs_workflows_on_a_runtime_of_its_own() -> None:
    out = child_python("""
        import os, sys
        from actors import StartEvent, StopEvent, Workflow, step

        class Double(Workflow):
            @step
            async def double(self, ev: StartEvent) -> StopEvent:
                return StopEvent(result=ev.x * 2)

        print("PARENT", Double(timeout=30).run(x=1).result(40), flush=True)
        pid = os.fork()
        if pid == 0:
            try:
                print("CHILD", Double(timeout=15).run(x=21).result(20), flush=True)
            except BaseException as exc:
                print("CHILD FAILED", type(exc).__name__, exc, flush=True)
            sys.exit(0)  # through atexit, which shuts the child's runtime down (and not the parent's)
        _, status = os.waitpid(pid, 0)
        print("CHILD EXIT", os.waitstatus_to_exitcode(status), flush=True)
        print("PARENT AGAIN", Double(timeout=30).run(x=5).result(40), flush=True)
    """, timeout=90)
    assert "PARENT 2" in out.stdout, out.stderr[-3000:]
    assert "CHILD 42" in out.stdout, (out.stdout, out.stderr[-3000:])
    assert "CHILD EXIT 0" in out.stdout and "PARENT AGAIN 10" in out.stdout, (out.stdout, out.stderr[-3000:])
    assert "can only join a child process" not in out.stderr, out.stderr[-3000:]


@pytest.mark.timeout(150)
def test_a_fork_while_workers_are_starting_gives_the_child_a_runtime_that_works() -> None:
    # A worker start holds locks (procflow's, multiprocessing's forkserver and resource-tracker ones) and
    # hides __main__.__file__ for a moment: a child forked then inherited them held, and its own runtime
    # never got a worker (its run timed out, its exit hung). Forks now wait for a start in progress.
    out = child_python("""
        import os, time
        from actors import StartEvent, StopEvent, Workflow, step
        from runtime import ProcessRuntime

        class Double(Workflow):
            @step
            async def double(self, ev: StartEvent) -> StopEvent:
                return StopEvent(result=ev.x * 2)

        hung, wrong = 0, 0
        for i in range(12):
            rt = ProcessRuntime(workers=4).start(wait=False)  # its workers are starting as we fork
            time.sleep(0.002 * (i % 4))
            pid = os.fork()
            if pid == 0:
                try:
                    ok = Double(timeout=15).run(x=i).result(20) == 2 * i
                except BaseException:
                    ok = False
                os._exit(0 if ok else 1)
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    wrong += os.waitstatus_to_exitcode(status) != 0
                    break
                time.sleep(0.05)
            else:
                hung += 1
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            rt.shutdown()
        print("HUNG", hung, "WRONG", wrong, flush=True)
    """, timeout=140)
    assert "HUNG 0 WRONG 0" in out.stdout, (out.stdout, out.stderr[-3000:])
