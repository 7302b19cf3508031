"""Running ``procflow`` from the CLI tests: as a plain subprocess, or on a pseudo-terminal of a given size.

Every command runs in a session of its own; after it exits, no process of that session may be left (its
workers, the forkserver and the resource tracker included).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
FLOWS = Path(__file__).resolve().parent / "flows.py"
PROCFLOW = [str(Path(sys.executable).parent / "procflow")]
if not Path(PROCFLOW[0]).exists():  # not installed as a script: the module form is the same command
    PROCFLOW = [sys.executable, "-m", "handler"]


@dataclass
class Done:
    code: int
    out: str
    err: str

    def json_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.out.splitlines()]


def session_processes(sid: int) -> list[str]:
    left = []
    for p in psutil.process_iter():
        try:
            if p.pid != sid and os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
        except (psutil.Error, OSError):
            pass
    return left


def assert_nothing_left(sid: int) -> None:
    deadline = time.monotonic() + 15
    while session_processes(sid):
        assert time.monotonic() < deadline, session_processes(sid)
        time.sleep(0.05)


def run_cli(*args: str, stdin: str | None = None, cwd: Path = ROOT, timeout: float = 90) -> Done:
    """Run ``procflow`` to its end (stdout and stderr are pipes); fail if any process of it is left."""
    proc = subprocess.Popen([*PROCFLOW, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert_nothing_left(proc.pid)
    return Done(proc.returncode, out, err)


def run_on_terminal(*args: str, columns: int, rows: int = 30, answers: tuple[tuple[str, str], ...] = (),
                    timeout: float = 60) -> tuple[int, str, str]:
    """Run ``procflow`` with stdin and stdout on a pseudo-terminal of ``columns`` x ``rows``, typing each
    answer (and Enter) once its prompt has appeared; the exit code, everything shown, and stderr."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    # PYTHONUNBUFFERED (set in some CI shells) makes each print two writes, the text and then the newline:
    # two workers printing at once into the one pipe could then interleave mid-line, as any processes sharing
    # a pipe do. The panel is what these tests check, so the workers print with their default buffering
    # (line by line: one write per line).
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "PYTHONUNBUFFERED")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen([*PROCFLOW, *args], cwd=ROOT, stdin=follower, stdout=follower,
                            stderr=subprocess.PIPE, start_new_session=True, env=env)
    os.close(follower)
    shown = b""
    todo = list(answers)
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"procflow showed nothing new for {timeout} s: {shown[-2000:]!r}"
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: every process holding the terminal has closed it
                break
            if not data:
                break
            shown += data
            if todo and todo[0][0].encode() in shown:
                os.write(leader, todo.pop(0)[1].encode() + b"\r")
        code = proc.wait(30)
    finally:
        os.close(leader)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert_nothing_left(proc.pid)
    return code, shown.decode(errors="replace"), err
