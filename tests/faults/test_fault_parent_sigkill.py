"""Scenario 3 (scenarios/parent_sigkill.py): SIGKILL of the parent while its workers are busy, one of them
ignoring SIGTERM, and their steps have started processes (in the worker's process group and in a new
session). Nothing may survive it: README, "Workers ... exit on their own if the parent dies", and a hard
cancel's "processes a step started die too"."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest

from _harness import Scenario, describe, marked

SURVIVAL_CHECK = 2.0  # seconds after the parent's death at which survivors are counted


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.timeout(90)
def test_nothing_a_sigkilled_parent_started_survives_it_workers_grandchildren_or_a_sigterm_ignorer(
        tmp_path: Path) -> None:
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    scenario = Scenario("parent_sigkill", tmp_path, str(pids_dir))
    try:
        scenario.until("READY", timeout=60)
        figures = scenario.figures()  # what the parent saw: the pids of its workers and of the steps
        workers = [int(p) for p in (pids_dir / "workers").read_text().split()]
        tracked: dict[str, int] = {}
        for role in ("same_group", "new_session", "deaf", "nap"):
            _, worker, grandchild = (pids_dir / role).read_text().split()
            tracked[f"{role} worker"] = int(worker)
            if int(grandchild):
                tracked[f"{role} grandchild"] = int(grandchild)
        tracked.update({f"worker {pid}": pid for pid in workers if pid not in tracked.values()})
        assert all(alive(pid) for pid in tracked.values()), tracked
        scenario.proc.kill()  # the parent interpreter only, by SIGKILL: it gets no chance to clean up
        assert scenario.proc.wait(10) == -9
        time.sleep(SURVIVAL_CHECK)
        survivors = {name: pid for name, pid in tracked.items() if alive(pid)}
        others = [line for line in describe(marked(scenario.marker))
                  if int(line.split()[0]) not in tracked.values()]
        figures.update({"tracked": tracked, "survivors_after_2s": survivors,
                        "other_marked_processes_after_2s": others})
    finally:
        leftover = scenario.leftovers(within=8.0)  # waits a little longer, then kills what remains
    figures["still_alive_after_10s"] = leftover
    print("parent_sigkill figures:", json.dumps(figures, sort_keys=True))
    shown = json.dumps(figures, sort_keys=True)
    assert survivors == {}, f"processes outlived their SIGKILLed parent by {SURVIVAL_CHECK} s: {shown}"
    assert others == [], f"other processes of the scenario outlived it: {shown}"
    assert leftover == [], shown

