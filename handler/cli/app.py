"""``procflow``: the command line. Arguments, the two commands, exit codes.

    procflow run FILE.py[:Class] [--kw KEY=VALUE ...] [--workers N] [--timeout S] [--json] [--no-input]
                                 [--trace OUT.html] [--debug]
    procflow graph FILE.py[:Class] [--dot | --html OUT.html]
    procflow --version

Options may come anywhere, before or after the target (``--kw a=1 b=2 FILE.py`` leaves FILE.py to be the
target: ``--kw`` takes the KEY=VALUE words that follow it, and stops at the first that is not one). Every
usage error is one line on stderr and exit code 2.

The pieces: ``loading`` (the workflow class and the checks before a run), ``watch`` (the run's loop, Ctrl-C,
outcome), ``stats`` (what is known about the run), ``live`` / ``views`` (terminal panel; lines; JSON) with
``text`` (widths, clipping), ``prompt`` (questions to stdin), ``graph`` (Mermaid, DOT, SVG of the spec) with
``layout`` (where the boxes go) and ``pages`` (the HTML shell), ``trace`` (the page of a run).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import NoReturn

from actors import StartEvent, WorkflowError
from runtime import ProcessRuntime

from .graph import dot, html_page, mermaid
from .live import LiveView
from .loading import UsageError, checked_spec, load_workflow_class, make_workflow, parse_kw
from .prompt import Mode, Prompter
from .stats import RunStats, StepCounts
from .trace import trace_page
from .views import JsonView, LineView, View
from .watch import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, EXIT_USAGE, Interrupts, Watch, outcome_of, report

EXIT_CODES = """exit codes:
  0    the run completed (graph: the picture was written)
  1    the run failed or timed out, or the runtime could not start
  2    bad usage: options, file, class, --kw values the start event rejects, an invalid workflow
  130  cancelled with Ctrl-C (once: graceful, twice: running steps are killed)"""
COMMANDS = ("run", "graph")
TAKES_VALUE = {"--kw", "--workers", "--timeout", "--trace", "--html"}
KW_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2)."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see '{self.prog} --help')"
        self.exit(EXIT_USAGE, f"procflow: error: {message}{hint}\n")


def _version() -> str:
    try:
        return metadata.version("procflow")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def parser() -> Parser:
    top = Parser(prog="procflow", epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
                 description="Run LlamaIndex-Workflows-style workflows on worker processes, or draw them.")
    top.add_argument("--version", action="version", version=f"procflow {_version()}")
    sub = top.add_subparsers(dest="command", required=True, metavar="{run,graph}", parser_class=Parser)
    run = sub.add_parser("run", help="run a workflow with a live view and print its result",
                         epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Run a workflow: a live panel on a terminal, a line per second of "
                                     "progress otherwise, JSON lines with --json.")
    run.add_argument("target", help="FILE.py[:Class] or module:Class (the class may be left out when the "
                                    "file defines exactly one Workflow)")
    run.add_argument("--kw", action="append", default=[], metavar="KEY=VALUE",
                     help="a start event field, e.g. --kw limit=1000 parts=4 (VALUE is parsed as JSON when "
                          "it can be, else taken as a string)")
    run.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                     help="worker processes (default: one per CPU)")
    run.add_argument("--timeout", type=_timeout, default=False, metavar="S",
                     help="run timeout in seconds, or 'none' (default: the workflow's own)")
    run.add_argument("--json", action="store_true",
                     help="one JSON object per event, then the outcome; answers to questions are read "
                          "as JSON lines on stdin")
    run.add_argument("--no-input", action="store_true",
                     help="do not ask when a step needs input (InputRequiredEvent): it waits for its "
                          "timeout")
    run.add_argument("--trace", type=_html_path, default=None, metavar="OUT.html",
                     help="write a page of the run: which steps ran, and a timeline per worker")
    run.add_argument("--debug", action="store_true", help="show tracebacks")
    graph = sub.add_parser("graph", help="draw the workflow's steps and events (Mermaid by default)",
                           epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Print every possible flow of a workflow as a Mermaid flowchart, "
                                       "as Graphviz DOT, or write it as a self-contained HTML page.")
    graph.add_argument("target", help="FILE.py[:Class] or module:Class")
    form = graph.add_mutually_exclusive_group()
    form.add_argument("--dot", action="store_true", help="Graphviz DOT instead of Mermaid")
    form.add_argument("--html", type=_html_path, default=None, metavar="OUT.html",
                      help="write a self-contained HTML page (no network needed) with the drawing")
    graph.add_argument("--debug", action="store_true", help="show tracebacks")
    return top


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


def _html_path(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory")
    if not path.resolve().parent.is_dir():
        raise argparse.ArgumentTypeError(f"no such directory: {path.parent}")
    return path


def normalize(argv: list[str]) -> list[str]:
    """Options anywhere: ``--kw a=1 b=2`` becomes ``--kw=a=1 --kw=b=2`` (so --kw never swallows the
    target), and options given before the command move after it."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            out += argv[i:]
            break
        if word == "--kw" and i + 1 < len(argv):
            out.append(f"--kw={argv[i + 1]}")
            i += 2
            while i < len(argv) and KW_WORD.match(argv[i]):
                out.append(f"--kw={argv[i]}")
                i += 1
            continue
        out.append(word)
        i += 1
    for at, word in enumerate(out):
        if word in COMMANDS and (at == 0 or out[at - 1] not in TAKES_VALUE):
            before = [w for w in out[:at] if w not in ("-h", "--help", "--version")]
            kept = [w for w in out[:at] if w in ("-h", "--help", "--version")]
            return kept + [word] + before + out[at + 1:]
        if word == "--":
            break
    return out


# --- the commands ------------------------------------------------------------------------------------
def cmd_graph(args: argparse.Namespace) -> int:
    cls, _ = load_workflow_class(args.target)
    spec = checked_spec(cls)
    if args.html is not None:
        args.html.write_text(html_page(spec), encoding="utf-8")
        print(f"procflow: wrote {args.html}", file=sys.stderr)
    else:
        sys.stdout.write(dot(spec) if args.dot else mermaid(spec))
    return EXIT_OK


def _pick_view(args: argparse.Namespace, stats: RunStats) -> View:
    if args.json:
        return JsonView(stats, sys.stdout)
    if sys.stdout.isatty() and os.environ.get("TERM") != "dumb":
        return LiveView(stats, sys.stdout)
    return LineView(stats, sys.stdout)


def cmd_run(args: argparse.Namespace) -> int:
    kw = parse_kw(args.kw)
    cls, where = load_workflow_class(args.target)
    wf, spec, start = make_workflow(cls, args.timeout, kw)
    rt = ProcessRuntime(workers=args.workers)
    wf.runtime = rt
    stats = RunStats({name: StepCounts() for name in spec.steps}, workers=rt.workers, exact=True,
                     first_steps={name for name, s in spec.steps.items()
                                  if all(issubclass(t, StartEvent) for t in s.accepts)})
    view = _pick_view(args, stats)
    title = f"{cls.__qualname__} · {where}"
    with Interrupts() as interrupts, view.owning_stdout():
        try:
            rt.start(wait=True)
            if interrupts.count:
                view.notice("interrupted while starting the workers")
                return EXIT_CANCELLED
            stats.cpu.watch(rt.worker_pids())
            stats.started = time.monotonic()
            stats.cpu.sample(stats.started)
            try:
                handler = wf.run(start_event=start)
            except WorkflowError as err:  # e.g. the workflow object cannot be pickled to the workers
                raise UsageError(f"cannot start {cls.__qualname__}: {err}") from err
            title += f" · run {handler.run_id[:8]} · {rt.workers} worker{'s' if rt.workers != 1 else ''}"
            view.begin(title)
            mode: Mode = "off" if args.no_input else "json" if args.json else "text"
            Watch(handler, view, interrupts, Prompter(mode, view, handler)).run()
            outcome, exc = outcome_of(handler)
            stats.cpu.sample()
            stats.finish()
        finally:
            rt.shutdown()
        view.end(outcome["status"], outcome)
    if args.trace is not None:
        args.trace.write_text(trace_page(spec, stats, outcome, title), encoding="utf-8")
        print(f"procflow: wrote {args.trace}", file=sys.stderr)
    return report(outcome, exc, args.debug)


# --- entry point -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(normalize(sys.argv[1:] if argv is None else argv))
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
    except OSError as exc:  # the trace or the page could not be written
        print(f"procflow: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
