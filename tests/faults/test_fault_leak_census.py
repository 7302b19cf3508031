"""Scenario 8 (scenarios/leak_census.py): many mixed runs (results, failures, hard and graceful cancels,
timeouts, streams, sent events); the parent's fds, threads, children and RSS must not grow. Scale with
``PROCFLOW_FAULTS_SCALE`` (1 = 400 runs; 5 = the issue's 2,000)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _harness import budget, run_scenario


@pytest.mark.timeout(budget(195))
def test_thousands_of_mixed_runs_leak_no_fd_thread_process_or_memory(tmp_path: Path) -> None:
    figures, scenario = run_scenario("leak_census", tmp_path, budget(185))
    shown = json.dumps(figures, sort_keys=True)
    growth, after = figures["growth"], figures["after"]
    assert set(figures["counts"]) == {"ok"}, f"runs that did not end as their kind says: {shown}"
    assert abs(growth["fds"]) <= 5, f"fds: {shown}"
    assert abs(growth["threads_python"]) <= 2 and abs(growth["threads_os"]) <= 2, f"threads: {shown}"
    assert after["children"] == figures["workers"], f"child processes: {shown}"
    assert growth["rss_mb"] < 50, f"RSS: {shown}"
    assert figures["leaked_processes"] == [] and figures["leftovers_after_exit"] == [], shown
    assert figures["exit_code"] == 0, scenario.stderr_tail()
