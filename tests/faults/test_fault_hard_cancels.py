"""Scenario 4 (scenarios/hard_cancels.py): runs from 8 threads, about half hard-cancelled at random moments.
Scale with ``PROCFLOW_FAULTS_SCALE`` (1 = 300 runs; 3.34 = the issue's 1,000)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _harness import budget, run_scenario

# What a run may end with: cancel() returned True and the run was cancelled; or it was not cancelled (or
# the cancel came after its end) and it gave its right result.
ALLOWED = {"cancel_true", "cancel_false_already_ended", "cancelled_as_asked", "right"}


@pytest.mark.timeout(budget(175))
def test_hard_cancels_from_many_threads_cause_no_wrong_result_no_wrong_kill_and_no_hang(
        tmp_path: Path) -> None:
    figures, scenario = run_scenario("hard_cancels", tmp_path, budget(165))
    shown = json.dumps(figures, sort_keys=True)
    counts = figures["counts"]
    assert counts.get("wrong", 0) == 0, f"wrong results: {shown}"
    assert counts.get("wrong_kill", 0) == 0, f"uncancelled runs failed as cancelled/crashed: {shown}"
    assert counts.get("hang", 0) == 0 and figures["stuck_threads"] == 0, f"hangs: {shown}"
    assert counts.get("not_cancelled_but_failed", 0) == 0, f"uncancelled runs that failed: {shown}"
    assert set(counts) <= ALLOWED, f"outcomes outside the promise: {shown}"
    assert counts.get("cancel_true", 0) == counts.get("cancelled_as_asked", 0), shown
    assert counts.get("cancel_true", 0) > 0 and counts.get("right", 0) > 0, shown
    assert figures["pool_after"] == figures["workers"], f"the pool did not heal: {shown}"
    assert figures["after_runs"]["outcomes"] == {"right": 6}, f"runs after the cancels: {shown}"
    assert figures["leaked_processes"] == [] and figures["leftovers_after_exit"] == [], shown
    assert figures["exit_code"] == 0, scenario.stderr_tail()
