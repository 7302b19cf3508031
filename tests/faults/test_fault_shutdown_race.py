"""Scenario 7 (scenarios/shutdown_race.py): 16 threads in blocking handler calls while the main thread
shuts the runtime down at a random moment. Scale with ``PROCFLOW_FAULTS_SCALE`` (1 = up to 15 rounds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _harness import budget, run_scenario


@pytest.mark.timeout(budget(175))
def test_blocking_calls_racing_shutdown_all_return_a_result_or_a_documented_error(tmp_path: Path) -> None:
    figures, scenario = run_scenario("shutdown_race", tmp_path, budget(165))
    shown = json.dumps(figures, sort_keys=True)
    counts = figures["counts"]
    assert counts.get("hang", 0) == 0, f"calls that never returned: {shown}"
    assert counts.get("shutdown_hang", 0) == 0, f"shutdown() itself hung: {shown}"
    assert counts.get("undocumented", 0) == 0, f"errors the README does not list: {shown}"
    assert counts.get("wrong", 0) == 0, f"wrong results: {shown}"
    assert counts.get("right", 0) > 0, shown
    assert figures["leaked_processes"] == [] and figures["leftovers_after_exit"] == [], shown
    assert figures["exit_code"] == 0, scenario.stderr_tail()
