"""Helpers for the regression tests: run a scenario in a child interpreter, bounded, and clean up after it.

A scenario that can hang (a deadlocked runtime, a lost run) runs in a child interpreter started in a session
of its own. ``run_child`` waits at most ``timeout`` seconds; a child still running then is a hang, reported
as a failure. Whatever the child left behind (its forkserver, workers, what their steps started, even after
the child itself died) is found by its session id and killed, so no scenario outlives its test.

The child reports by printing one line ``RESULT <json>``; ``ChildRun.result`` parses the last such line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]

# The preamble of every child scenario: the public API, and a way to report.
PREAMBLE = """\
import asyncio, json, os, signal, sys, threading, time
from actors import *
from runtime import ProcessRuntime, get_default_runtime, shutdown_default_runtime

def report(**fields):
    print("RESULT " + json.dumps(fields, default=repr), flush=True)
"""


@dataclass
class ChildRun:
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str

    @property
    def result(self) -> dict[str, Any] | None:
        lines = [ln for ln in self.stdout.splitlines() if ln.startswith("RESULT ")]
        return json.loads(lines[-1][len("RESULT "):]) if lines else None

    def describe(self) -> str:
        return (f"child {'TIMED OUT (hang)' if self.timed_out else f'exit code {self.returncode}'}\n"
                f"--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}")


def _session_members(sid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and os.getsid(p.pid) == sid:
                out.append(p)
        except (OSError, psutil.Error):
            pass
    return out


def _kill_session(sid: int) -> None:
    for _ in range(50):
        members = _session_members(sid)
        if not members:
            return
        for p in members:
            try:
                p.send_signal(signal.SIGCONT)  # a stopped process would not die of SIGKILL before continuing
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(members, timeout=0.2)


def run_child(code: str, timeout: float, preamble: bool = True) -> ChildRun:
    """Run ``code`` (dedented; after ``PREAMBLE`` unless ``preamble=False``) in a fresh interpreter with this
    worktree first on the path, for at most ``timeout`` seconds."""
    # Shortly before the deadline the child dumps its threads' stacks to stderr: where a hang hangs.
    watchdog = f"import faulthandler; faulthandler.dump_traceback_later({max(timeout - 2.0, 1.0)!r})\n"
    source = watchdog + (PREAMBLE if preamble else "") + textwrap.dedent(code)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Files, not pipes: a leftover worker holding a pipe would keep the reader waiting for EOF.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", source], stdout=out, stderr=err, env=env,
                                cwd=str(REPO), start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_session(proc.pid)
            proc.wait()
        out.seek(0)
        err.seek(0)
        return ChildRun(None if timed_out else proc.returncode, timed_out, out.read(), err.read())
