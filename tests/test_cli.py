"""The ``procflow`` command, run as a subprocess: runs, --json, failures, Ctrl-C, graphs, usage errors.

Every command runs in a session of its own; after it exits, no process of that session may be left (its
workers, the forkserver and the resource tracker included).
"""

from __future__ import annotations

import json
import os
import pty
import queue
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
PROCFLOW = [str(Path(sys.executable).parent / "procflow")]
if not Path(PROCFLOW[0]).exists():  # not installed as a script: the module form is the same command
    PROCFLOW = [sys.executable, "-m", "handler"]

FLOWS = '''
import time
from pydantic import BaseModel
from actors import Context, Event, StartEvent, StopEvent, Workflow, step


class Hello(Workflow):
    @step
    def greet(self, ev: StartEvent) -> StopEvent:
        print("greetings from the worker")
        return StopEvent(result={"hello": ev.get("name", "world"), "n": ev.get("n")})


class Boom(Workflow):
    @step
    def explode(self, ev: StartEvent) -> StopEvent:
        raise ValueError("boom in the step")


class Spin(Workflow):
    @step
    def spin(self, ev: StartEvent) -> StopEvent:
        print("spinning in the worker")
        end = time.thread_time() + float(ev.seconds)
        while time.thread_time() < end:
            pass
        return StopEvent(result="spun")


class Orphan(Event):
    pass


class Invalid(Workflow):
    @step
    async def start(self, ev: StartEvent) -> Orphan:
        return Orphan()


class NotAWorkflow:
    pass


class Config(BaseModel):
    factor: int = 2


class Answer:
    def __init__(self, value: int) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Answer({self.value})"


class TypedStart(StartEvent):
    x: int
    config: Config = Config()


class Typed(Workflow):
    @step
    def compute(self, ev: TypedStart) -> StopEvent:
        return StopEvent(result=Answer(ev.x * ev.config.factor))
'''


@dataclass
class Done:
    code: int
    out: str
    err: str

    def json_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.out.splitlines()]


def _session_processes(sid: int) -> list[str]:
    left = []
    for p in psutil.process_iter():
        try:
            if p.pid != sid and os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
        except (psutil.Error, OSError):
            pass
    return left


def _assert_nothing_left(sid: int) -> None:
    assert wait_until(lambda: not _session_processes(sid), timeout=15), _session_processes(sid)


class Live:
    """A running ``procflow`` whose stdout and stderr lines arrive on queues as they are written."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.proc = subprocess.Popen([*PROCFLOW, *args], cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.out: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.err: queue.SimpleQueue[str] = queue.SimpleQueue()
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _pump(stream: object, lines: queue.SimpleQueue[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.put(line)
        lines.put("")  # end of the stream

    def wait_line(self, lines: queue.SimpleQueue[str], needle: str, timeout: float = 30) -> list[str]:
        seen = []
        while True:
            line = lines.get(timeout=timeout)
            assert line, f"the stream ended before a line with {needle!r}: {seen}"
            seen.append(line)
            if needle in line:
                return seen

    def ctrl_c(self) -> None:
        """What a terminal does on Ctrl-C: SIGINT to the foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def finish(self, timeout: float = 60) -> tuple[int, list[str], list[str]]:
        code = self.proc.wait(timeout)
        _assert_nothing_left(self.proc.pid)
        rest_out: list[str] = []
        rest_err: list[str] = []
        for lines, rest in ((self.out, rest_out), (self.err, rest_err)):
            while line := lines.get(timeout=10):
                rest.append(line)
        return code, rest_out, rest_err


@pytest.fixture
def live() -> Iterator[Callable[..., Live]]:
    """Start ``procflow`` commands that a test watches; whatever a failed test leaves running is killed (its
    workers follow: they exit when their parent dies)."""
    started: list[Live] = []

    def start(*args: str) -> Live:
        started.append(Live(*args, cwd=ROOT))
        return started[-1]

    yield start
    for one in started:
        if one.proc.poll() is None:
            os.killpg(one.proc.pid, signal.SIGKILL)
            one.proc.wait(10)


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    path = tmp_path / "flows.py"
    path.write_text(FLOWS)
    return path


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 90) -> Done:
    """Run ``procflow`` to its end in a session of its own; fail if any process of that session is left."""
    proc = subprocess.Popen([*PROCFLOW, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    out, err = proc.communicate(timeout=timeout)
    _assert_nothing_left(proc.pid)
    return Done(proc.returncode, out, err)


# --- running ----------------------------------------------------------------------------------------
def test_the_shipped_pipeline_runs_and_prints_one_speed_figure_beside_its_result() -> None:
    done = run_cli("run", "perf/pipeline.py:Pipeline", "--kw", "limit=20000", "parts=4", "--workers", "2")
    assert done.code == 0, done.err
    lines = done.out.splitlines()
    summary = next(i for i, line in enumerate(lines) if line.startswith("completed in "))
    assert lines[0].startswith("procflow: Pipeline · perf/pipeline.py · run ")
    progress = lines[1:summary]  # not a terminal: a line per second of progress, not one per change
    assert all(line.startswith("[") for line in progress), progress
    assert "9 step runs, 0 failed" in lines[summary] and "of 2 workers used" in lines[summary]
    assert lines[summary + 1].startswith("speed: ") and "x = CPU time of the workers" in lines[summary + 1]
    result = json.loads(done.out[done.out.index("\n{") + 1:])
    assert result["longest_chain"] == {"start": 17647, "steps": 278}  # the longest chain below 20,000
    assert result["chunks"] == 4
    assert {"wall_s", "sequential_s", "speedup"} <= set(result)


def test_json_prints_one_event_per_line_then_the_result(flows: Path) -> None:
    done = run_cli("run", f"{flows}:Hello", "--json", "--kw", "name=ada", "n=[1, 2]", "--workers", "1")
    assert done.code == 0, done.err
    *events, last = done.json_lines()
    states = [(e["event"]["step"], e["event"]["state"]) for e in events if e["type"] == "StepStateChanged"]
    assert [s for s in states if s[1] != "pending"] == [("greet", "running"), ("greet", "done")]
    assert all(e["internal"] for e in events if e["type"] == "StepStateChanged")
    running = [e for e in events if e["type"] == "StepStateChanged" and e["event"]["state"] == "running"]
    assert isinstance(running[0]["event"]["worker_pid"], int)
    assert events[-1]["type"] == "StopEvent"
    assert last["status"] == "completed"
    assert last["result"] == {"hello": "ada", "n": [1, 2]}  # --kw values are JSON when they parse
    assert last["stats"]["step_runs"] == 1
    assert "greetings from the worker" in done.err  # a step's print goes to stderr, not into the JSON


def test_python_dash_m_runtime_is_the_same_command(flows: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "handler", "run", f"{flows}:Hello", "--json",
                           "--workers", "1"], cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["result"] == {"hello": "world", "n": None}


@pytest.mark.parametrize("name", ["my-flow.py", "queue.py"])
def test_a_file_whose_name_is_no_free_module_name_still_ships_its_classes(tmp_path: Path, name: str) -> None:
    # "my-flow" is imported by that name; "queue" is taken by the standard library, so a shim module
    # must make the file importable in the workers under another name.
    (tmp_path / name).write_text(FLOWS)
    done = run_cli("run", f"{tmp_path / name}:Typed", "--kw", "x=21", "--json", "--workers", "1")
    assert done.code == 0, done.err
    assert done.json_lines()[-1]["result"] == "Answer(42)"


def test_a_terminal_gets_a_panel_redrawn_in_place(flows: Path) -> None:
    leader, follower = pty.openpty()
    proc = subprocess.Popen([*PROCFLOW, "run", f"{flows}:Spin", "--kw", "seconds=0.3", "--workers", "1"],
                            cwd=ROOT, stdout=follower, stderr=subprocess.PIPE, start_new_session=True)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        assert ready, "no output from procflow for 60 s"
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the other end closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(30) == 0
    _assert_nothing_left(proc.pid)
    text = b"".join(chunks).decode()
    assert "\x1b[J" in text and "A\r" in text  # cursor up and clear: the panel redraws in place
    assert "workers 1/1 busy" in text and "spin" in text
    assert "\r\x1b[2Kspinning in the worker\x1b[K" in text  # a step's print shows above the panel
    assert text.rstrip().endswith("spun")


# --- failures ---------------------------------------------------------------------------------------
def test_a_failing_step_exits_1_with_one_line_naming_the_step_and_the_error(flows: Path) -> None:
    done = run_cli("run", f"{flows}:Boom", "--workers", "1")
    assert done.code == 1
    assert done.err.strip().splitlines() == [
        "procflow: run failed: step 'explode' raised ValueError: boom in the step "
        "(--debug shows the traceback)"]


def test_debug_shows_the_workers_traceback_of_a_failing_step(flows: Path) -> None:
    done = run_cli("run", f"{flows}:Boom", "--workers", "1", "--debug", "--json")
    assert done.code == 1
    assert 'raise ValueError("boom in the step")' in done.err  # the worker's own traceback text
    assert "raised in step 'explode'" in done.err
    last = done.json_lines()[-1]
    assert (last["status"], last["error_type"], last["step"]) == ("failed", "ValueError", "explode")


def test_a_timeout_exits_1_and_stops_the_step(flows: Path) -> None:
    done = run_cli("run", f"{flows}:Spin", "--kw", "seconds=60", "--timeout", "0.5", "--workers", "1")
    assert done.code == 1
    assert "procflow: run timed out" in done.err


# --- Ctrl-C -----------------------------------------------------------------------------------------
def test_ctrl_c_during_a_cpu_step_cancels_gracefully_and_exits_130(
        flows: Path, live: Callable[..., Live]) -> None:
    cli = live("run", f"{flows}:Spin", "--kw", "seconds=1", "--json", "--workers", "1")
    cli.wait_line(cli.out, '"state": "running"')
    cli.ctrl_c()
    code, out, err = cli.finish()
    assert code == 130
    last = json.loads(out[-1])
    assert (last["status"], last["hard"]) == ("cancelled", False)  # the def step was let finish
    assert "procflow: the run was cancelled" in "".join(err)


def test_a_second_ctrl_c_kills_the_running_step_and_leaves_no_process(
        flows: Path, live: Callable[..., Live]) -> None:
    cli = live("run", f"{flows}:Spin", "--kw", "seconds=300", "--json", "--workers", "1")
    cli.wait_line(cli.out, '"state": "running"')
    cli.ctrl_c()
    cli.wait_line(cli.err, "cancelling")  # the first one was acted on: the run waits for the step
    cli.ctrl_c()
    code, out, err = cli.finish(timeout=30)  # not the 300 s the step would take
    assert code == 130
    last = json.loads(out[-1])
    assert (last["status"], last["hard"]) == ("cancelled", True)


# --- graph ------------------------------------------------------------------------------------------
def test_graph_prints_a_mermaid_flowchart_of_steps_and_events() -> None:
    done = run_cli("graph", "perf/pipeline.py:Pipeline")
    assert done.code == 0, done.err
    assert done.out.splitlines() == [
        "flowchart TD",
        '    e0(["StartEvent"])',
        '    e1(["Chunk"])',
        '    e2(["Crunched"])',
        '    e3(("StopEvent"))',
        '    s0["split (async, num_workers=4)"]',
        '    s1["crunch (def, num_workers=64)"]',
        '    s2["gather (async, num_workers=4)"]',
        "    e0 --> s0",
        "    s0 --> e1",
        "    e1 --> s1",
        "    s1 --> e2",
        "    e2 --> s2",
        "    s2 --> e3",
    ]


def test_graph_dot_prints_graphviz() -> None:
    done = run_cli("graph", "perf/pipeline.py", "--dot")  # the file's only Workflow class
    assert done.code == 0, done.err
    assert done.out.startswith('digraph "Pipeline" {')
    assert "e1 -> s1;" in done.out and "shape=doublecircle" in done.out
    assert done.out.rstrip().endswith("}")


# --- usage errors -----------------------------------------------------------------------------------
USAGE_ERRORS = [
    (["run", "missing.py:Hello"], "no such file: missing.py"),
    (["run", "{flows}:Nope"], "has no class 'Nope' (Workflow classes there: Hello, Boom, Spin, Invalid, Typed)"),
    (["run", "{flows}:NotAWorkflow"], "NotAWorkflow is not a Workflow subclass"),
    (["run", "{flows}"], "defines 5 Workflow classes"),
    (["run", "{flows}:Hello", "--kw", "name"], "bad --kw 'name': expected KEY=VALUE"),
    (["run", "{flows}:Typed", "--kw", "x=notanint"], "bad --kw for TypedStart:"),
    (["run", "{flows}:Invalid"], "invalid workflow Invalid: no step returns a StopEvent"),
    (["graph", "{flows}:Invalid"], "invalid workflow Invalid:"),
    (["run", "{broken}:X"], "cannot import"),
]


@pytest.mark.parametrize(("args", "message"), USAGE_ERRORS, ids=[m[:24] for _, m in USAGE_ERRORS])
def test_usage_errors_are_one_line_and_exit_2(flows: Path, args: list[str], message: str) -> None:
    broken = flows.with_name("broken.py")
    broken.write_text("import no_such_module_anywhere\n")
    argv = [a.format(flows=flows, broken=broken) for a in args]
    done = run_cli(*argv, cwd=flows.parent)
    assert done.code == 2
    assert done.out == ""
    lines = done.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("procflow: error: "), done.err
    assert message in lines[0]


def test_debug_shows_the_traceback_of_a_usage_error(flows: Path) -> None:
    done = run_cli("run", f"{flows}:Invalid", "--debug")
    assert done.code == 2
    # LlamaIndex's rules: a workflow whose stop event cannot be inferred fails at construction.
    assert "Traceback" in done.err and "WorkflowConfigurationError" in done.err
