"""Scenario 6 (scenarios/hostile_steps.py): hostile exceptions (broken ``__str__``, non-list ``__notes__``,
unpickling as a non-exception), in def and async steps, and a step exhausting its memory under RLIMIT_AS.
Scale with ``PROCFLOW_FAULTS_SCALE`` (copies of each case; 1 by default)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _harness import budget, run_scenario


@pytest.mark.timeout(budget(115))
def test_hostile_exceptions_and_memory_exhaustion_end_their_runs_promptly_with_an_error(
        tmp_path: Path) -> None:
    figures, scenario = run_scenario("hostile_steps", tmp_path, budget(105))
    shown = json.dumps(figures, sort_keys=True)
    not_ended = {case: outcomes for case, outcomes in figures["cases"].items()
                 if not all(o.startswith("error ") for o in outcomes)}
    assert not_ended == {}, (f"runs that did not end promptly (within 10 s) with an error: "
                             f"{json.dumps(not_ended)}; all figures: {shown}")
    assert figures["pool_after"] == figures["workers"], shown
    assert figures["after_runs"]["outcomes"] == {"right": 6}, f"runs after the hostile ones: {shown}"
    assert figures["leaked_processes"] == [] and figures["leftovers_after_exit"] == [], shown
    assert figures["exit_code"] == 0, scenario.stderr_tail()
