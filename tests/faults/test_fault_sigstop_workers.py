"""Scenario 2 (scenarios/sigstop_workers.py): SIGSTOP of a busy worker and of idle workers, continued later
or left stopped through shutdown. Scale with ``PROCFLOW_FAULTS_SCALE`` (1 = 6 runs per phase)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _harness import budget, run_scenario


@pytest.mark.timeout(budget(145))
def test_a_stopped_worker_never_hangs_a_run_past_its_timeout_and_shutdown_leaves_no_process(
        tmp_path: Path) -> None:
    figures, scenario = run_scenario("sigstop_workers", tmp_path, budget(135))
    shown = json.dumps(figures, sort_keys=True)
    busy = figures["busy_stopped"]
    # The pool finds a stopped worker within about a second and kills it; the step had started (its run
    # is visible), so its run fails with WorkerCrashedError naming the stop, well before its timeout.
    assert busy["stopped_run"]["outcomes"] == {"WorkerCrashedError": 1}, f"stopped mid-step: {shown}"
    assert "stopped" in json.dumps(busy["stopped_run"]["examples"]), f"the error names the stop: {shown}"
    assert set(busy["runs_beside"]["outcomes"]) == {"right"}, f"runs beside the stopped one: {shown}"
    assert busy["pool_after"] == figures["workers"], f"the pool did not replace the stopped worker: {shown}"
    continued = figures["idle_stopped_then_continued"]["runs"]["outcomes"]
    assert set(continued) == {"right"}, f"stopped, then continued: {shown}"
    left = figures["idle_left_stopped"]["runs"]["outcomes"]
    assert set(left) <= {"right", "WorkflowTimeoutError"}, f"left stopped: hangs or other errors: {shown}"
    assert figures["shutdown_returned"], f"shutdown() hung with a stopped worker: {shown}"
    assert figures["stopped_pids_alive_after_shutdown"] == [], f"stopped workers survived: {shown}"
    assert figures["leaked_processes"] == [] and figures["leftovers_after_exit"] == [], shown
    assert figures["exit_code"] == 0, scenario.stderr_tail()
