"""``procflow``: run a workflow file from the command line with live progress, or draw its graph.

    procflow run FILE.py[:Class] [--kw key=value ...] [--workers N] [--timeout S] [--json] [--debug]
    procflow graph FILE.py[:Class] [--dot]

How ``run`` watches a run:

    pump thread   handler.iter_events(expose_internal=True) --> queue (ends with _END)
    main thread   queue --> RunStats.feed() (per step running/queued/done/failed, busy worker pids, events/s)
                  --> one view: LiveView (stdout is a TTY: a panel redrawn in place with plain ANSI),
                  LineView (one line per step change), JsonView (--json: one JSON object per event line,
                  then the result line); views refresh after each batch and every 0.1 s while none comes.
    fd 1          taken over by the view before the runtime starts, because the workers inherit it: LiveView
                  pipes it (a reader thread shows what steps print above the panel), JsonView points it at
                  stderr (stdout stays pure JSON lines).
    SIGINT        the handler only counts; the main loop acts on the count: 1 -> cancel_run_sync (graceful:
                  running def steps finish), 2 -> handler.cancel() (hard: their workers are killed). The
                  runtime is shut down whatever happens, so no process outlives the command.

Exit codes: 0 completed, 1 the run failed or timed out, 2 bad usage (file, class, --kw, validation),
130 cancelled with Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import contextlib
import hashlib
import importlib.util
import json
import os
import pprint
import queue
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, Literal, TextIO

from pydantic_core import to_jsonable_python

from actors import (
    Event, InternalDispatchEvent, StepQueueChanged, StepStateChanged, StopEvent, Workflow,
    WorkflowCancelledByUser, WorkflowError, WorkflowTimeoutError, WorkflowValidationError,
)
from actors.host import WorkflowSpec, spec_of, validate, validated_spec

from runtime import ProcessRuntime

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130
TICK = 0.1  # seconds between redraws (and between looks at the Ctrl-C count) while no event comes
_END: Any = object()


class UsageError(Exception):
    """Something the user gave is wrong; printed as one line, exit code 2."""


# --- arguments ---------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="procflow", description="Run LlamaIndex-Workflows-style workflows on worker processes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,graph}")
    run = sub.add_parser("run", help="run a workflow with live progress and print its result")
    run.add_argument("target", help="path/to/file.py:WorkflowClass (the class may be left out when the "
                                    "file defines exactly one Workflow)")
    run.add_argument("--kw", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                     help="a start event field; VALUE is parsed as JSON when it can be, else a string")
    run.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                     help="worker processes (default: one per CPU)")
    run.add_argument("--timeout", type=_timeout, default=False, metavar="S",
                     help="run timeout in seconds, or 'none' (default: the workflow's own)")
    run.add_argument("--json", action="store_true", help="one JSON line per event, then the result")
    run.add_argument("--debug", action="store_true", help="show tracebacks")
    graph = sub.add_parser("graph", help="print the workflow's steps and events as a Mermaid flowchart")
    graph.add_argument("target", help="path/to/file.py:WorkflowClass")
    graph.add_argument("--dot", action="store_true", help="Graphviz DOT instead of Mermaid")
    graph.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _timeout(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds or 'none': {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (or 'none'): {text}")
    return value


def parse_kw(items: list[str]) -> dict[str, Any]:
    """``["n=3", "name=x"]`` -> ``{"n": 3, "name": "x"}``: JSON when the value parses, else the string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"bad --kw {item!r}: expected KEY=VALUE with KEY a Python identifier")
        if key in out:
            raise UsageError(f"bad --kw: {key!r} is given twice")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


# --- loading the workflow class ----------------------------------------------------------------------
def load_workflow_class(target: str) -> tuple[type[Workflow], Path]:
    """The Workflow class named by ``path/to/file.py[:Class]``; ``UsageError`` when it cannot be had."""
    file_part, _, class_name = target.rpartition(":") if ":" in target else (target, "", "")
    path = Path(file_part)
    if not path.is_file():
        raise UsageError(f"no such file: {file_part}")
    module = _load_module(path)
    if not class_name:
        return _only_workflow(module, path), path
    obj: Any = module
    for part in class_name.split("."):
        if not hasattr(obj, part):
            found = ", ".join(c.__qualname__ for c in _workflows_in(module)) or "none"
            raise UsageError(f"{path} has no class {class_name!r} (Workflow classes there: {found})")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Workflow)):
        what = (f"a class based on {', '.join(b.__name__ for b in obj.__bases__)}"
                if isinstance(obj, type) else f"a {type(obj).__name__}")
        raise UsageError(f"{path}:{class_name} is not a Workflow subclass (it is {what})")
    return obj, path


def _load_module(path: Path) -> ModuleType:
    """Import ``path`` with its directory on ``sys.path`` (so its sibling imports work, in the workers too).

    Workers unpickle the file's classes by module name, so the name must import this very file there as
    well (they inherit ``sys.path``). That is the file's stem when the stem is free and finds the file (as
    ``python -c "import stem"`` would); otherwise (``json.py``, a stem already imported) a unique private
    name, made importable by a shim module in a temporary directory put on ``sys.path``.
    """
    path = path.resolve()
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    name = path.stem
    if "." in name or name in sys.modules or not _finds(name, path):
        name = _shim(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[name]
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise UsageError(f"cannot import {path}: {type(exc).__name__}: {exc}") from exc
    return module


def _finds(name: str, path: Path) -> bool:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None and Path(spec.origin).resolve() == path


_SHIM = """import importlib.util, sys
_spec = importlib.util.spec_from_file_location(__name__, {path!r})
_module = importlib.util.module_from_spec(_spec)
sys.modules[__name__] = _module  # the import statement returns what sys.modules holds at the end
_spec.loader.exec_module(_module)
"""


def _shim(path: Path) -> str:
    """A unique module name that imports ``path`` anywhere ``sys.path`` is inherited (the workers)."""
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    name = f"_procflow_file_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"
    folder = tempfile.mkdtemp(prefix="procflow-")
    atexit.register(shutil.rmtree, folder, True)
    Path(folder, f"{name}.py").write_text(_SHIM.format(path=str(path)))
    sys.path.insert(0, folder)
    return name


def _workflows_in(module: ModuleType) -> list[type[Workflow]]:
    return [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, Workflow)
            and v is not Workflow and v.__module__ == module.__name__]


def _only_workflow(module: ModuleType, path: Path) -> type[Workflow]:
    found = _workflows_in(module)
    if len(found) != 1:
        names = ", ".join(c.__qualname__ for c in found) or "none"
        raise UsageError(f"{path} defines {len(found)} Workflow classes ({names}); "
                         f"name one as {path}:Class")
    return found[0]


def _invalid(cls: type[Workflow], exc: WorkflowValidationError) -> UsageError:
    text = str(exc)
    prefix = "" if text.startswith(f"workflow {cls.__qualname__}") else f"workflow {cls.__qualname__}: "
    return UsageError(f"invalid {prefix}{text}")


def _spec_of(cls: type[Workflow]) -> WorkflowSpec:
    try:
        return spec_of(cls)
    except WorkflowValidationError as exc:
        raise _invalid(cls, exc) from exc


# --- graph -------------------------------------------------------------------------------------------
def graph_of(spec: WorkflowSpec) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """The nodes as ``(id, label, kind)`` (kind: "step", "event" or "stop"), events numbered in order of
    first mention, and the edges as ``(from id, to id)``: event -> step accepting it -> event it returns."""
    nodes: list[tuple[str, str, str]] = []
    edges: list[tuple[str, str]] = []
    event_ids: dict[type, str] = {}

    def event(t: type) -> str:
        if t not in event_ids:
            event_ids[t] = f"e{len(event_ids)}"
            nodes.append((event_ids[t], t.__qualname__, "stop" if issubclass(t, StopEvent) else "event"))
        return event_ids[t]

    for i, (name, s) in enumerate(spec.steps.items()):
        sid = f"s{i}"
        edges += [(event(t), sid) for t in s.accepts] + [(sid, event(t)) for t in s.emits]
        kind = "async" if s.is_async else "def"
        nodes.append((sid, f"{name} ({kind}, num_workers={s.num_workers})", "step"))
    order = {"event": 0, "stop": 0, "step": 1}
    nodes.sort(key=lambda n: (order[n[2]], int(n[0][1:])))
    return nodes, edges


def mermaid(spec: WorkflowSpec) -> str:
    """A Mermaid flowchart: steps as boxes, events as rounded nodes, StopEvents as circles."""
    nodes, edges = graph_of(spec)
    shapes = {"step": '["{}"]', "event": '(["{}"])', "stop": '(("{}"))'}
    lines = ["flowchart TD"]
    for nid, label, kind in nodes:
        text = label.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
        lines.append(f"    {nid}{shapes[kind].format(text)}")
    lines += [f"    {a} --> {b}" for a, b in edges]
    return "\n".join(lines) + "\n"


def dot(spec: WorkflowSpec) -> str:
    """Graphviz DOT of the same graph."""
    nodes, edges = graph_of(spec)
    shapes = {"step": "box", "event": "ellipse", "stop": "doublecircle"}
    lines = [f'digraph "{spec.name}" {{', "    rankdir=TB;", '    node [fontname="Helvetica"];']
    lines += [f'    {nid} [label={json.dumps(label, ensure_ascii=False)}, shape={shapes[kind]}];' for nid, label, kind in nodes]
    lines += [f"    {a} -> {b};" for a, b in edges]
    return "\n".join(lines + ["}"]) + "\n"


def cmd_graph(args: argparse.Namespace) -> int:
    cls, _ = load_workflow_class(args.target)
    spec = _spec_of(cls)
    try:
        validate(spec)
    except WorkflowValidationError as exc:
        raise _invalid(cls, exc) from exc
    sys.stdout.write(dot(spec) if args.dot else mermaid(spec))
    return EXIT_OK


# --- watching a run ----------------------------------------------------------------------------------
@dataclass
class StepCounts:
    running: int = 0
    queued: int = 0
    done: int = 0
    failed: int = 0


@dataclass
class RunStats:
    """What the views show, fed by the run's published events (internal ones included)."""

    steps: dict[str, StepCounts]
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    events: int = 0
    recent: collections.deque[float] = field(default_factory=collections.deque)
    inflight: dict[int, tuple[str, int | None, float]] = field(default_factory=dict)
    step_seconds: float = 0.0
    pids: set[int] = field(default_factory=set)
    last_event: str = ""
    unfinished: int = 0  # invocations still running when the run ended (stopped, or their result dropped)

    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def rate(self) -> float:
        """Events per second over the last second."""
        now = time.monotonic()
        while self.recent and now - self.recent[0] > 1.0:
            self.recent.popleft()
        return len(self.recent) / min(1.0, max(now - self.started, 1e-3))

    def busy(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for step, pid, _ in self.inflight.values():
            if pid is not None:
                out.setdefault(pid, []).append(step)
        return out

    def feed(self, ev: Event) -> None:
        self.events += 1
        self.recent.append(time.monotonic())
        if isinstance(ev, StepStateChanged):
            self._state_changed(ev)
        elif isinstance(ev, StepQueueChanged):
            self.steps.setdefault(ev.step, StepCounts()).queued = ev.queued
        elif not isinstance(ev, (InternalDispatchEvent, StopEvent)):
            self.last_event = repr(ev)

    def _state_changed(self, ev: StepStateChanged) -> None:
        counts = self.steps.setdefault(ev.step, StepCounts())
        if ev.state == "running":
            counts.running += 1
            self.inflight[ev.invocation] = (ev.step, ev.worker_pid, time.monotonic())
            if ev.worker_pid is not None:
                self.pids.add(ev.worker_pid)
            return
        began = self.inflight.pop(ev.invocation, None)
        if began is not None:
            counts.running -= 1
            self.step_seconds += time.monotonic() - began[2]
        if ev.state == "done":
            counts.done += 1
        elif ev.state == "failed":
            counts.failed += 1

    def finish(self) -> None:
        """The run ended: the clock stops, and what still ran was stopped with it (or its result dropped)."""
        self.ended = time.monotonic()
        self.unfinished = len(self.inflight)
        for step, _, began in self.inflight.values():
            self.steps[step].running -= 1
            self.step_seconds += time.monotonic() - began
        self.inflight.clear()

    def totals(self) -> dict[str, Any]:
        return {"wall_s": round(self.elapsed(), 3), "step_s": round(self.step_seconds, 3),
                "step_runs": sum(c.done + c.failed for c in self.steps.values()),
                "failed": sum(c.failed for c in self.steps.values()), "unfinished": self.unfinished,
                "workers_used": len(self.pids), "events": self.events}

    def summary(self, status: str, workers: int) -> str:
        t = self.totals()
        stopped = f", {t['unfinished']} unfinished" if t["unfinished"] else ""
        runs = f"{t['step_runs']} step run" + ("" if t["step_runs"] == 1 else "s")
        return (f"{status} in {t['wall_s']:.2f} s wall · {runs} ({t['failed']} failed"
                f"{stopped}) on {t['workers_used']} of {workers} workers · {t['step_s']:.2f} s of step "
                f"time, {t['step_s'] / max(t['wall_s'], 1e-9):.2f}x the wall time · {t['events']} events")


class View:
    """How a run is shown. ``event`` is called per event, ``refresh`` after each batch of events and every
    ``TICK`` seconds while none comes; ``owning_stdout`` wraps the whole run, the runtime's start included."""

    def __init__(self, stats: RunStats, out: TextIO) -> None:
        self.stats, self.out = stats, out

    @contextlib.contextmanager
    def owning_stdout(self) -> Iterator[None]:
        yield

    def begin(self, title: str) -> None: ...
    def event(self, ev: Event) -> None: ...

    def refresh(self) -> None:
        self.out.flush()

    def notice(self, text: str) -> None:
        print(f"procflow: {text}", file=sys.stderr, flush=True)

    def end(self, summary: str, outcome: dict[str, Any]) -> None: ...


class LineView(View):
    """Not a terminal: one plain line per step change and per published event."""

    def begin(self, title: str) -> None:
        print(f"procflow: {title}", file=self.out, flush=True)

    def event(self, ev: Event) -> None:
        t = f"{self.stats.elapsed():8.3f}s"
        if isinstance(ev, StepStateChanged):
            line = f"{t}  {ev.step:<16} {ev.state:<8} pid {ev.worker_pid}  {ev.input_event}"
        elif isinstance(ev, (InternalDispatchEvent, StopEvent)):
            return
        else:
            line = f"{t}  event            {ev!r}"
        print(line, file=self.out)

    def end(self, summary: str, outcome: dict[str, Any]) -> None:
        print(summary, file=self.out)
        _print_result(outcome, self.out)


class JsonView(View):
    """--json: every event as one JSON object per line, then one line with the outcome."""

    @contextlib.contextmanager
    def owning_stdout(self) -> Iterator[None]:
        """Whatever else writes to fd 1 (a step's print in a worker, which inherits the fd when the runtime
        starts it) goes to stderr, so that stdout stays one JSON object per line."""
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
        self.out = open(saved, "w", closefd=False)  # noqa: SIM115 -- closed in the finally below
        try:
            yield
        finally:
            self.out.flush()
            sys.stdout.flush()
            os.dup2(saved, 1)
            self.out.close()
            os.close(saved)
            self.out = sys.stdout

    def event(self, ev: Event) -> None:
        line = {"t": round(self.stats.elapsed(), 6), "type": type(ev).__name__,
                "internal": isinstance(ev, InternalDispatchEvent),
                "event": to_jsonable_python(ev, fallback=repr)}
        self.out.write(json.dumps(line) + "\n")

    def end(self, summary: str, outcome: dict[str, Any]) -> None:
        line = {"t": round(self.stats.elapsed(), 6), **outcome, "stats": self.stats.totals()}
        self.out.write(json.dumps(to_jsonable_python(line, fallback=repr)) + "\n")
        self.out.flush()


class LiveView(View):
    """A terminal: a panel redrawn in place (cursor up, clear down), at most every ``TICK`` seconds; what
    steps print appears above it."""

    def __init__(self, stats: RunStats, out: TextIO, workers: int) -> None:
        super().__init__(stats, out)
        self.workers = workers
        self.title = ""
        self.note = ""
        self.drawn = 0
        self.last_draw = 0.0
        self.printed: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.partial = b""  # printed text after its last newline, held back until the line is complete
        self.passthrough = False
        self.cursor_hidden = False

    @contextlib.contextmanager
    def owning_stdout(self) -> Iterator[None]:
        """Route fd 1 through a pipe while the panel is up: the workers inherit it when the runtime starts
        them, and what they (or this process) print is shown above the panel instead of tearing it. The
        forkserver keeps a copy of the pipe until this process exits, so the reader thread lives on as a
        plain pass-through to the terminal once the panel is gone."""
        sys.stdout.flush()
        saved = os.dup(1)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 1)
        os.close(write_end)
        self.out = open(saved, "w", closefd=False)  # noqa: SIM115 -- closed in the finally below
        threading.Thread(target=self._read_prints, args=(read_end,), name="procflow-cli-prints",
                         daemon=True).start()
        try:
            yield
        finally:
            self._show_cursor()
            self.out.flush()
            sys.stdout.flush()
            self.passthrough = True
            os.dup2(saved, 1)
            self.out.close()
            self.out = sys.stdout
            self._show_printed(sys.stdout, complete_lines=False)

    def _read_prints(self, fd: int) -> None:
        while chunk := os.read(fd, 65536):
            if self.passthrough:
                os.write(1, chunk)
            else:
                self.printed.put(chunk)

    def _show_printed(self, out: TextIO, complete_lines: bool = True) -> None:
        data = self.partial
        while not self.printed.empty():
            data += self.printed.get()
        cut = data.rfind(b"\n") + 1 if complete_lines else len(data)
        self.partial = data[cut:]
        if cut:
            out.write(data[:cut].decode(errors="replace"))

    def _show_cursor(self) -> None:
        if self.cursor_hidden:
            self.cursor_hidden = False
            self.out.write("\x1b[?25h")

    def begin(self, title: str) -> None:
        self.title = title
        self.cursor_hidden = True
        self.out.write("\x1b[?25l")  # hide the cursor while the panel moves
        self.draw()

    def refresh(self) -> None:
        if time.monotonic() - self.last_draw >= TICK or not self.printed.empty():
            self.draw()

    def notice(self, text: str) -> None:
        self.note = text
        self.draw()

    def panel(self) -> list[str]:
        s = self.stats
        lines = [f"procflow  {self.title}",
                 f"  {s.elapsed():6.1f} s   {s.events} events ({s.rate():.0f}/s)",
                 f"  {'step':<20} {'running':>8} {'queued':>8} {'done':>8} {'failed':>8}"]
        lines += [f"  {name:<20} {c.running:>8} {c.queued:>8} {c.done:>8} {c.failed:>8}"
                  for name, c in s.steps.items()]
        busy = s.busy()
        desc = "  ".join(f"{pid}:{','.join(sorted(set(steps)))}" for pid, steps in sorted(busy.items()))
        lines.append(f"  busy workers {len(busy)}/{self.workers}  {desc}".rstrip())
        if s.last_event:
            lines.append(f"  last event   {s.last_event}")
        if self.note:
            lines.append(f"  {self.note}")
        return lines

    def draw(self) -> None:
        width = max(20, shutil.get_terminal_size().columns - 1)  # a wrapped line would break the redraw
        lines = [line[:width] for line in self.panel()]
        self.out.write(f"\x1b[{self.drawn}A\r\x1b[J" if self.drawn else "\r\x1b[J")
        self._show_printed(self.out)  # above the panel, where the panel was
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self.drawn = len(lines)
        self.last_draw = time.monotonic()

    def end(self, summary: str, outcome: dict[str, Any]) -> None:
        self.note = ""
        self.draw()
        self._show_cursor()
        print(summary, file=self.out)
        _print_result(outcome, self.out)


def _print_result(outcome: dict[str, Any], out: TextIO) -> None:
    if outcome["status"] != "completed":
        return
    result = outcome["result"]
    if isinstance(result, str):
        text = result
    else:
        try:
            text = json.dumps(result, indent=2)
        except (TypeError, ValueError):
            text = pprint.pformat(result)
    print(text, file=out, flush=True)


class _Interrupts:
    """Counts SIGINTs instead of raising KeyboardInterrupt at an arbitrary point of the main thread."""

    def __init__(self) -> None:
        self.count = 0
        self._old: Any = None

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def __enter__(self) -> _Interrupts:
        self._old = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._old)


def _pump(handler: Any, out: queue.SimpleQueue[Any]) -> None:
    try:
        for ev in handler.iter_events(expose_internal=True):
            out.put(ev)
    except BaseException as exc:  # noqa: BLE001 -- handed to the main thread, which reports it
        out.put(exc)
    finally:
        out.put(_END)


class Watch:
    """Drives one run: feeds its events to a view and turns Ctrl-Cs into graceful then hard cancels."""

    def __init__(self, handler: Any, view: View, interrupts: _Interrupts) -> None:
        self.handler, self.view, self.interrupts = handler, view, interrupts
        self.acted = 0  # how many of the counted Ctrl-Cs have been acted on

    def run(self) -> None:
        events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=_pump, args=(self.handler, events), name="procflow-cli-events",
                         daemon=True).start()
        while True:
            self._act_on_interrupts()
            try:
                batch = [events.get(timeout=TICK)]
                while not events.empty() and len(batch) < 1000:
                    batch.append(events.get())
            except queue.Empty:
                batch = []
            for ev in batch:
                if ev is _END:
                    return
                if isinstance(ev, BaseException):
                    self.view.notice(f"reading the event stream failed: {ev!r}")
                    continue
                self.view.stats.feed(ev)
                self.view.event(ev)
            self.view.refresh()

    def _act_on_interrupts(self) -> None:
        count = self.interrupts.count
        if count > self.acted and self.acted == 0:
            self.acted = 1
            self.view.notice("cancelling: no new steps start, running def steps finish first; "
                             "press Ctrl-C again to stop them now")
            try:
                self.handler.cancel_run_sync(timeout=0)  # returns at once; the stream shows the end
            except WorkflowError:
                pass  # the run or the runtime has ended meanwhile
        if count > self.acted and self.acted == 1:
            self.acted = 2
            self.view.notice("stopping now: killing the workers that run this run's steps")
            try:
                self.handler.cancel()
            except WorkflowError:
                pass  # the runtime has ended meanwhile


def _outcome(handler: Any) -> tuple[dict[str, Any], BaseException | None]:
    exc = handler.exception(timeout=30)
    stop = handler.get_stop_event()
    if exc is None:
        return {"status": "completed", "result": handler.result(timeout=0)}, None
    if isinstance(exc, WorkflowCancelledByUser):
        return {"status": "cancelled", "hard": bool(getattr(stop, "hard", False))}, exc
    status = "timed out" if isinstance(exc, WorkflowTimeoutError) else "failed"
    return {"status": status, "error": str(exc), "error_type": type(exc).__name__,
            "step": getattr(stop, "step", None)}, exc


def _report(outcome: dict[str, Any], exc: BaseException | None, debug: bool) -> int:
    if exc is None:
        return EXIT_OK
    if debug:
        traceback.print_exception(exc)
    if outcome["status"] == "cancelled":
        hard = " (hard: its running steps were killed)" if outcome["hard"] else ""
        print(f"procflow: the run was cancelled{hard}", file=sys.stderr)
        return EXIT_CANCELLED
    where = f"step {outcome['step']!r} raised " if outcome["step"] else ""
    hint = "" if debug or outcome["status"] != "failed" else " (--debug shows the traceback)"
    print(f"procflow: run {outcome['status']}: {where}{type(exc).__name__}: {exc}{hint}", file=sys.stderr)
    return EXIT_FAILED


def _make_workflow(cls: type[Workflow], timeout: float | None | Literal[False], kw: dict[str, Any]
                   ) -> Workflow:
    """Instantiate and check everything that can be checked before a process starts."""
    try:
        wf = cls()
    except WorkflowError as exc:
        raise UsageError(f"cannot create {cls.__qualname__}(): {exc}") from exc
    except Exception as exc:
        raise UsageError(f"cannot create {cls.__qualname__}(): {type(exc).__name__}: {exc}") from exc
    if timeout is not False:  # False: --timeout not given, the workflow's own stands
        wf.timeout = timeout
    try:
        spec = validated_spec(wf)
    except WorkflowValidationError as exc:
        raise _invalid(cls, exc) from exc
    start = spec.start_event_type
    if start is not None:
        try:
            start(**kw)
        except Exception as exc:
            raise UsageError(f"bad --kw for {start.__name__}: {exc}".replace("\n", " ")) from exc
    return wf


def cmd_run(args: argparse.Namespace) -> int:
    kw = parse_kw(args.kw)
    cls, path = load_workflow_class(args.target)
    wf = _make_workflow(cls, args.timeout, kw)
    rt = ProcessRuntime(workers=args.workers)
    wf.runtime = rt
    stats = RunStats({name: StepCounts() for name in spec_of(cls).steps})
    view = _pick_view(args, stats, rt.workers)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")  # the workers' prints show as they happen
    with _Interrupts() as interrupts, view.owning_stdout():
        try:
            rt.start(wait=True)
            if interrupts.count:
                view.notice("interrupted while starting the workers")
                return EXIT_CANCELLED
            stats.started = time.monotonic()
            try:
                handler = wf.run(**kw)
            except WorkflowError as err:  # e.g. the workflow object cannot be pickled to the workers
                raise UsageError(f"cannot start {cls.__qualname__}: {err}") from err
            view.begin(f"{cls.__qualname__} from {path} · run {handler.run_id[:8]} · "
                       f"{rt.workers} workers (pid {os.getpid()})")
            Watch(handler, view, interrupts).run()
            outcome, exc = _outcome(handler)
            stats.finish()
        finally:
            rt.shutdown()
        view.end(stats.summary(outcome["status"], rt.workers), outcome)
    return _report(outcome, exc, args.debug)


def _pick_view(args: argparse.Namespace, stats: RunStats, workers: int) -> View:
    if args.json:
        return JsonView(stats, sys.stdout)
    if sys.stdout.isatty() and os.environ.get("TERM") != "dumb":
        return LiveView(stats, sys.stdout, workers)
    return LineView(stats, sys.stdout)


# --- entry point -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return cmd_run(args) if args.command == "run" else cmd_graph(args)
    except UsageError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"procflow: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("procflow: interrupted", file=sys.stderr)
        return EXIT_CANCELLED
    except WorkflowError as exc:  # the runtime itself failed (it could not start its workers, ...)
        if args.debug:
            traceback.print_exc()
        print(f"procflow: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
