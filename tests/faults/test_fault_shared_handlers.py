"""Scenario 5 (scenarios/shared_handlers.py): 32 threads, each on an event loop of its own, awaiting
handlers other threads created, and blocking on more. Scale with ``PROCFLOW_FAULTS_SCALE`` (1 = 128 runs,
256 awaits, 128 blocking results)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _harness import budget, run_scenario


@pytest.mark.timeout(budget(145))
def test_handlers_awaited_on_other_threads_loops_all_give_the_right_result(tmp_path: Path) -> None:
    figures, scenario = run_scenario("shared_handlers", tmp_path, budget(135))
    shown = json.dumps(figures, sort_keys=True)
    counts = figures["counts"]
    assert counts.get("wrong", 0) == 0, f"wrong results: {shown}"
    assert counts.get("hang", 0) == 0 and figures["stuck_threads"] == 0, f"hangs: {shown}"
    assert counts.get("error", 0) == 0, f"errors: {shown}"
    assert counts.get("right", 0) == figures["awaits"] + figures["blocking_results"], shown
    assert figures["leaked_processes"] == [] and figures["leftovers_after_exit"] == [], shown
    assert figures["exit_code"] == 0, scenario.stderr_tail()
