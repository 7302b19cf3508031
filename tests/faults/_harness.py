"""The pytest side of the fault scenarios: run a scenario script in a child interpreter, under a hard
timeout, and hand back the figures it printed.

Every process a scenario starts (its interpreter, the forkserver, the workers, whatever steps start, also in
a new session) inherits the environment marker ``PROCFLOW_FAULTS_MARK``; ``marked(marker)`` finds whichever
of them is still alive, so a test can check that nothing outlived the scenario and kill what did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"
REPO = HERE.parents[1]
SCALE = float(os.environ.get("PROCFLOW_FAULTS_SCALE", "1"))


def budget(seconds: float) -> int:
    """A time bound that grows with the scale (a bigger scenario takes longer)."""
    return int(seconds * max(1.0, SCALE))


def marked(marker: str) -> list[psutil.Process]:
    """Live (not zombie) processes carrying ``marker`` in their environment."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("PROCFLOW_FAULTS_MARK") == marker and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            pass
    return found


def describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} {p.status()} {' '.join(p.cmdline())[:90]}")
        except psutil.Error:
            pass
    return out


def kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


class Scenario:
    """One scenario script running in a child interpreter (its own session, so that it can be killed
    whole); its output is read to files, so that nothing can block on a full pipe."""

    def __init__(self, name: str, tmp_path: Path, *args: str) -> None:
        self.name = name
        self.marker = uuid.uuid4().hex
        self.tmp = tmp_path
        self.out_path, self.err_path = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        env = {**os.environ, "PROCFLOW_FAULTS_MARK": self.marker, "PROCFLOW_FAULTS_SCALE": str(SCALE),
               "PYTHONPATH": os.pathsep.join([str(REPO), str(SCENARIOS)]), "PYTHONUNBUFFERED": "1"}
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, str(SCENARIOS / f"{name}.py"), *args], env=env,
                                         stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=tmp_path,
                                         start_new_session=True)

    @property
    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def until(self, prefix: str, timeout: float) -> list[str]:
        """Wait for a stdout line starting with ``prefix``; its words after the prefix."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.out.splitlines():
                if line.startswith(prefix):
                    return line[len(prefix):].split()
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"{self.name}: no {prefix!r} line within {timeout} s (exit code "
                             f"{self.proc.poll()})\nstdout: {self.out[-2000:]}\nstderr: {self.err[-4000:]}")

    def finish(self, timeout: float) -> dict[str, Any]:
        """Wait for the scenario to end (killing it past ``timeout``: a hang); its figures."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name}: the scenario itself hung (killed after {timeout} s)\n"
                                 f"stdout: {self.out[-3000:]}\nstderr: {self.err[-6000:]}") from None
        return self.figures()

    def figures(self) -> dict[str, Any]:
        lines = [line for line in self.out.splitlines() if line.startswith("FIGURES ")]
        if not lines:
            raise AssertionError(f"{self.name}: printed no figures (exit code {self.proc.returncode})\n"
                                 f"stdout: {self.out[-3000:]}\nstderr: {self.err[-6000:]}")
        figures: dict[str, Any] = json.loads(lines[-1][len("FIGURES "):])
        figures["exit_code"] = self.proc.returncode
        print(f"{self.name} figures: {json.dumps(figures, sort_keys=True)}")  # shown by pytest -rP
        return figures

    def leftovers(self, within: float = 10.0) -> list[str]:
        """What still lives of the scenario ``within`` seconds from now; killed, then described."""
        deadline = time.monotonic() + within
        while (left := marked(self.marker)) and time.monotonic() < deadline:
            time.sleep(0.1)
        names = describe(left)
        kill_all(left)
        return names

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait()
        kill_all(marked(self.marker))

    def stderr_tail(self) -> str:
        return self.err[-3000:]


def run_scenario(name: str, tmp_path: Path, timeout: float, *args: str) -> tuple[dict[str, Any], Scenario]:
    """Run scenario ``name`` to its end; its figures (with ``leftovers``: what outlived it) and itself."""
    scenario = Scenario(name, tmp_path, *args)
    try:
        figures = scenario.finish(timeout)
    finally:
        left = scenario.leftovers()
    figures["leftovers_after_exit"] = left
    return figures, scenario
