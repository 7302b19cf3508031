"""Start-up: ``import actors`` starts the forkserver early (``runtime/workers/process/forkserver.py``), and
nothing a program does between that import and its first run is lost on the way to the workers.

Each scenario is a fresh interpreter (the forkserver is per process, started once); the script prints what
it saw as JSON on its last line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(120)

# Prints, after its own code: every live descendant of this interpreter, with whether it is a forkserver.
TREE = textwrap.dedent("""
    import json as _json, time as _time, psutil as _psutil
    def _tree():
        _time.sleep(0.3)  # a forkserver started just now has its command line by then
        out = []
        for p in _psutil.Process().children(recursive=True):
            try:
                out.append({"pid": p.pid, "ppid": p.ppid(),
                            "forkserver": "multiprocessing.forkserver" in " ".join(p.cmdline())})
            except _psutil.Error:
                pass
        return out
""")


def run(code: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    full = {k: v for k, v in os.environ.items() if k != "PROCFLOW_PREWARM"}
    full.update(PYTHONPATH=str(REPO), **(env or {}))
    proc = subprocess.run([sys.executable, "-c", TREE + textwrap.dedent(code)], capture_output=True,
                          text=True, env=full, cwd=str(cwd or REPO), timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def forkservers(tree: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The forkservers: processes running forkserver.main whose parent does not (a process forked from a
    forkserver, a worker, shows the same command line)."""
    matching = {p["pid"] for p in tree if p["forkserver"]}
    return [p for p in tree if p["forkserver"] and p["ppid"] not in matching]


def test_importing_actors_starts_one_forkserver_and_the_first_run_forks_its_workers_from_it() -> None:
    seen = run("""
        import os
        import actors
        after_import = _tree()
        from actors import StartEvent, StopEvent, Workflow, step
        class W(Workflow):
            @step
            def s(self, ev: StartEvent) -> StopEvent:
                return StopEvent(result=(os.getpid(), os.getppid()))
        pid, ppid = W().run().result(60)
        from runtime import get_default_runtime
        rt = get_default_runtime()
        workers = sorted(rt.worker_pids(wait=True))
        print(_json.dumps({"after_import": after_import, "after_run": _tree(), "worker": pid, "its_parent": ppid,
                           "workers": workers}))
    """)
    servers = forkservers(seen["after_import"])
    assert len(servers) == 1, seen
    assert [p["pid"] for p in forkservers(seen["after_run"])] == [servers[0]["pid"]]  # no second one
    assert seen["its_parent"] == servers[0]["pid"]  # the worker was forked from the early forkserver
    # The forkserver preloads actors: it must not start a forkserver (or anything) of its own: its only
    # children are the pool's workers.
    assert sorted(p["pid"] for p in seen["after_run"] if p["ppid"] == servers[0]["pid"]) == seen["workers"]


@pytest.mark.parametrize("value", ["0", "off"])
def test_prewarm_off_starts_nothing_at_import(value: str) -> None:
    seen = run("""
        import actors
        print(_json.dumps(_tree()))
    """, env={"PROCFLOW_PREWARM": value})
    assert forkservers(seen) == []


def test_importing_actors_from_a_thread_starts_nothing() -> None:
    seen = run("""
        import threading
        t = threading.Thread(target=lambda: __import__("actors"))
        t.start(); t.join()
        print(_json.dumps(_tree()))
    """)
    assert forkservers(seen) == []


def test_the_environment_set_after_the_import_is_the_one_steps_see() -> None:
    seen = run("""
        import os
        os.environ["PROCFLOW_TEST_GONE"] = "set before the import"
        from actors import StartEvent, StopEvent, Workflow, step
        os.environ["PROCFLOW_TEST_LATE"] = "set after the import"   # as load_dotenv() would
        del os.environ["PROCFLOW_TEST_GONE"]
        class W(Workflow):
            @step
            def d(self, ev: StartEvent) -> StopEvent:
                return StopEvent(result=[os.environ.get("PROCFLOW_TEST_LATE"),
                                         os.environ.get("PROCFLOW_TEST_GONE")])
        class A(Workflow):
            @step
            async def a(self, ev: StartEvent) -> StopEvent:
                return StopEvent(result=os.environ.get("PROCFLOW_TEST_LATE"))
        print(_json.dumps({"def": W().run().result(60), "async": A().run().result(60)}))
    """)
    assert seen == {"def": ["set after the import", None], "async": "set after the import"}


def test_a_module_on_a_path_added_after_the_import_reaches_the_workers(tmp_path: Path) -> None:
    (tmp_path / "late_flows.py").write_text(textwrap.dedent("""
        from actors import StartEvent, StopEvent, Workflow, step
        class Late(Workflow):
            @step
            def s(self, ev: StartEvent) -> StopEvent:
                return StopEvent(result=ev.x + 1)
    """))
    seen = run(f"""
        import sys
        import actors
        sys.path.insert(0, {str(tmp_path)!r})
        from late_flows import Late
        print(_json.dumps(Late().run(x=41).result(60)))
    """)
    assert seen == 42


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork")
def test_a_process_forked_after_the_import_runs_workflows_with_a_forkserver_of_its_own() -> None:
    seen = run("""
        import os
        from actors import StartEvent, StopEvent, Workflow, step
        class W(Workflow):
            @step
            def s(self, ev: StartEvent) -> StopEvent:
                return StopEvent(result=ev.x * 2)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                os.write(w, _json.dumps(W().run(x=21).result(60)).encode())
            finally:
                os._exit(0)
        os.close(w)
        child = b""
        while chunk := os.read(r, 1024):
            child += chunk
        os.waitpid(pid, 0)
        print(_json.dumps({"child": _json.loads(child), "parent": W().run(x=5).result(60)}))
    """)
    assert seen == {"child": 42, "parent": 10}


def test_spawn_workers_start_no_forkserver() -> None:
    seen = run("""
        from actors import StartEvent, StopEvent, Workflow, step
        from runtime import ProcessRuntime
        class W(Workflow):
            @step
            def s(self, ev: StartEvent) -> StopEvent:
                return StopEvent(result=ev.x)
        with ProcessRuntime(2, start_method="spawn") as rt:
            results = [W(runtime=rt).run(x=i).result(60) for i in range(4)]
            tree = _tree()
        print(_json.dumps({"results": results, "tree": tree}))
    """, env={"PROCFLOW_PREWARM": "0"})
    assert seen["results"] == [0, 1, 2, 3]
    assert forkservers(seen["tree"]) == []


def test_stdout_redirected_after_the_import_is_where_steps_print(tmp_path: Path) -> None:
    out = tmp_path / "prints.txt"
    seen = run(f"""
        import os, sys
        from actors import StartEvent, StopEvent, Workflow, step
        class Loud(Workflow):
            @step
            def d(self, ev: StartEvent) -> StopEvent:
                print("from a def step", flush=True)
                return StopEvent(result=1)
        class LoudAsync(Workflow):
            @step
            async def a(self, ev: StartEvent) -> StopEvent:
                print("from an async step", flush=True)
                print("to stderr", file=sys.stderr, flush=True)
                return StopEvent(result=2)
        saved = os.dup(1)
        f = os.open({str(out)!r}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, 1); os.dup2(f, 2)
        results = [Loud().run().result(60), LoudAsync().run().result(60)]
        os.dup2(saved, 1)
        print(_json.dumps(results))
    """)
    assert seen == [1, 2]
    assert sorted(out.read_text().splitlines()) == ["from a def step", "from an async step", "to stderr"]


def test_a_parent_whose_stdout_is_closed_still_starts_workers() -> None:
    seen = run("""
        import os
        from actors import StartEvent, StopEvent, Workflow, step
        class W(Workflow):
            @step
            def d(self, ev: StartEvent) -> StopEvent:
                print("nobody reads this")
                return StopEvent(result=os.getpid())
        saved = os.dup(1)
        os.close(1)
        pid = W().run().result(60)
        os.dup2(saved, 1)
        print(_json.dumps(pid > 0))
    """)
    assert seen is True


def test_limits_umask_affinity_and_nice_set_after_the_import_are_the_workers() -> None:
    seen = run("""
        import os, resource
        from actors import StartEvent, StopEvent, Workflow, step
        def state():
            with open("/proc/self/status") as f:
                umask = next(line.split()[1] for line in f if line.startswith("Umask:"))
            return {"as": list(resource.getrlimit(resource.RLIMIT_AS)),
                    "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)), "umask": umask,
                    "cpus": sorted(os.sched_getaffinity(0)), "nice": os.getpriority(os.PRIO_PROCESS, 0)}
        class W(Workflow):
            @step
            def d(self, ev: StartEvent) -> StopEvent:
                return StopEvent(result=state())
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, resource.RLIM_INFINITY))
        os.umask(0o027)
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + 3)
        print(_json.dumps({"parent": state(), "worker": W().run().result(60)}))
    """)
    assert seen["worker"] == seen["parent"]
    assert seen["worker"]["umask"] == "0027" and len(seen["worker"]["cpus"]) == 1


def test_workers_forked_from_the_forkserver_find_its_preload_frozen_and_the_program_does_not() -> None:
    # preloaded.py: what the forkserver imported is out of the collector's reach in every worker; what a
    # step creates afterwards is still collected (a cycle made in a step goes at the next collection).
    seen = run("""
        import gc
        from actors import StartEvent, StopEvent, Workflow, step
        class W(Workflow):
            @step
            def d(self, ev: StartEvent) -> StopEvent:
                class Node:
                    pass
                a, b = Node(), Node()
                a.other, b.other = b, a
                del a, b
                return StopEvent(result={"frozen": gc.get_freeze_count(), "collected": gc.collect()})
        print(_json.dumps({"worker": W().run().result(60), "program": gc.get_freeze_count()}))
    """)
    assert seen["program"] == 0
    assert seen["worker"]["frozen"] > 10_000
    assert seen["worker"]["collected"] >= 2
