"""Every Python snippet in the README and docs/ runs as written, and a user's program type-checks against
the installed package (``py.typed``).

The snippets of one page run in order in one child interpreter, as a reader pasting them one after the other
would (a later snippet may use what an earlier one defined). A snippet preceded by ``<!-- not run: why -->``
is skipped (say why); one that uses ``RayRuntime`` runs only where ray is installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!--\s*not run:[^>]*-->\s*\n)?```python\n(.*?)```", re.S)


def snippets(page: Path) -> list[str]:
    found = []
    for skip, code in BLOCK.findall(page.read_text()):
        if skip:
            continue
        if "RayRuntime" in code and importlib.util.find_spec("ray") is None:
            continue
        found.append(code)
    return found


def script_of(blocks: list[str]) -> str:
    # Each block is announced, so a failure names the block it came from.
    parts = [f"print('--- snippet {i + 1}', flush=True)\n{code}" for i, code in enumerate(blocks)]
    return "\n".join(parts)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("page", [p for p in PAGES if snippets(p)], ids=lambda p: p.name)
def test_every_python_snippet_of_the_page_runs_as_written(page: Path, tmp_path: Path) -> None:
    script = tmp_path / f"snippets_{page.stem}.py"
    script.write_text(script_of(snippets(page)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=240)
    last = [line for line in proc.stdout.splitlines() if line.startswith("--- snippet")][-1:]
    assert proc.returncode == 0, f"{page.name}, {last}: {proc.stderr[-3000:]}"


def test_the_snippet_finder_honours_the_not_run_marker(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```python\nprint(1)\n```\n<!-- not run: needs a cluster -->\n```python\nboom()\n```\n")
    assert snippets(page) == ["print(1)\n"]


USER_PROGRAM = textwrap.dedent('''
    from actors import Context, Event, StartEvent, StopEvent, Workflow, step
    from handler import WorkflowHandler
    from runtime import ProcessRuntime

    class Ping(Event):
        n: int

    class Flow(Workflow):
        @step
        async def start(self, ctx: Context, ev: StartEvent) -> Ping:
            return Ping(n=1)

        @step
        def finish(self, ev: Ping) -> StopEvent:
            return StopEvent(result=ev.n)

    def main() -> int:
        with ProcessRuntime(workers=1) as rt:
            handler: WorkflowHandler = Flow(runtime=rt).run()
            result: int = handler.result(timeout=10)
            return result
''')


@pytest.mark.timeout(240)
def test_a_users_program_type_checks_against_the_installed_package(tmp_path: Path) -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (the test extra installs it)")
    # A real (non-editable) install of procflow, without its dependencies, as a user's pip would make it;
    # mypy then sees it as an installed package, which it type-checks only if it ships py.typed.
    site = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                            "--target", str(site), str(ROOT)], capture_output=True, text=True, timeout=200)
    assert build.returncode == 0, build.stderr[-2000:]
    assert (site / "actors" / "py.typed").exists() and (site / "runtime" / "py.typed").exists()
    (tmp_path / "user.py").write_text(USER_PROGRAM)
    # A mistake only the package's own types can reveal: run_id is a str.
    (tmp_path / "wrong.py").write_text(USER_PROGRAM + "\n\ndef oops(h: WorkflowHandler) -> int:\n"
                                                      "    return h.run_id + 1\n")
    env = {**{k: v for k, v in os.environ.items() if k != "MYPYPATH"}, "PYTHONPATH": str(site)}

    def mypy(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mypy", "--disallow-untyped-defs", "--no-incremental",
                               name], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=170)

    good, bad = mypy("user.py"), mypy("wrong.py")
    assert "Cannot find implementation or library stub" not in good.stdout, good.stdout
    assert good.returncode == 0, good.stdout + good.stderr
    assert bad.returncode == 1 and 'Unsupported operand types for + ("str" and "int")' in bad.stdout, bad.stdout
