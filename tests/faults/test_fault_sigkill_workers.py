"""Scenario 1 (scenarios/sigkill_workers.py): random SIGKILLs of workers while ~150 fan-out/collect runs
are in flight. Scale with ``PROCFLOW_FAULTS_SCALE`` (1 = 150 runs, up to 40 kills)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _harness import budget, run_scenario


@pytest.mark.timeout(budget(175))
def test_a_worker_sigkilled_at_random_never_turns_into_a_wrong_result_or_a_hang_and_the_pool_heals(
        tmp_path: Path) -> None:
    figures, scenario = run_scenario("sigkill_workers", tmp_path, budget(165))
    shown = json.dumps(figures, sort_keys=True)
    outcomes = {"Mixed": figures["mixed"]["outcomes"], "AllAsync": figures["all_async"]["outcomes"]}
    assert figures["kills"] > 0, shown
    for name, counts in outcomes.items():
        assert counts.get("wrong", 0) == 0, f"{name}: wrong results: {shown}"
        assert counts.get("hang", 0) == 0, f"{name}: handles that never resolved: {shown}"
        others = {k: v for k, v in counts.items() if k not in ("right", "WorkerCrashedError")}
        assert not others, f"{name}: runs ended otherwise than right or WorkerCrashedError: {shown}"
    assert sum(counts.get("right", 0) for counts in outcomes.values()) > 0, shown
    assert figures["pool_after"] == figures["workers"], f"the pool did not heal: {shown}"
    assert figures["killed_pids_in_pool_after"] == [], shown
    assert figures["after_runs"]["outcomes"] == {"right": 8}, f"runs after the kills: {shown}"
    assert abs(figures["usage_after"]["fds"] - figures["usage_before"]["fds"]) <= 5, f"fds: {shown}"
    assert figures["leaked_processes"] == [] and figures["leftovers_after_exit"] == [], shown
    assert figures["exit_code"] == 0, scenario.stderr_tail()
