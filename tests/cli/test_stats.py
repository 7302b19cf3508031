"""What the CLI knows about a run, fed with the events a runtime publishes (no processes here)."""

from __future__ import annotations

import os
import time

from actors import InputRequiredEvent, StepQueueChanged, StepStateChanged, StopEvent
from handler.cli.stats import CpuMeter, RunStats, StepCounts, summary_lines


def stats(*steps: str, workers: int = 2, first: tuple[str, ...] = ()) -> RunStats:
    return RunStats({s: StepCounts() for s in steps}, workers=workers, first_steps=set(first))


def state(step: str, st: str, inv: int, pid: int | None = None, input_event: str = "Chunk"
          ) -> StepStateChanged:
    return StepStateChanged(step=step, state=st, worker_pid=pid, input_event=input_event, invocation=inv)


def test_with_pending_reports_the_work_waiting_for_a_worker_and_the_progress_total_are_exact() -> None:
    s = stats("split", "crunch")
    s.feed(state("split", "pending", 1, input_event="StartEvent"))
    s.feed(state("split", "running", 1, pid=10, input_event="StartEvent"))
    for inv in range(2, 42):  # split sends 40 chunks: 40 invocations of crunch are created
        s.feed(state("crunch", "pending", inv))
    s.feed(state("split", "done", 1, pid=10, input_event="StartEvent"))
    s.feed(state("crunch", "running", 2, pid=10))
    s.feed(state("crunch", "running", 3, pid=11))
    for inv in range(4, 9):  # five more start and finish, on the same two workers
        s.feed(state("crunch", "running", inv, pid=10))
        s.feed(state("crunch", "done", inv, pid=10))
    assert s.exact
    assert (s.counts("crunch").running, s.pending("crunch"), s.counts("crunch").done) == (2, 33, 5)
    assert s.pending("split") == 0
    totals = s.totals()
    assert (totals["finished"], totals["known"], totals["pending"]) == (6, 41, 33)
    assert sorted(s.busy()) == [10, 11]


def test_without_pending_reports_a_full_pool_hides_the_count_and_an_idle_worker_proves_it_zero() -> None:
    s = stats("split", "crunch", "gather", first=("split",))
    s.feed(state("split", "running", 1, pid=10, input_event="StartEvent"))
    s.feed(state("split", "done", 1, pid=10, input_event="StartEvent"))
    s.feed(state("crunch", "running", 2, pid=10))
    assert s.pending("crunch") == 0  # one of the two workers is idle: nothing waits for a worker
    s.feed(state("crunch", "running", 3, pid=11))
    assert not s.exact
    assert s.pending("crunch") is None and s.pending("gather") is None  # the pool is full: not reported
    assert s.pending("split") == 0  # it accepts only the start event and has run: it cannot wait
    assert s.totals()["known"] is None  # no progress total is claimed


def test_a_queue_report_tells_how_many_wait_for_a_worker_even_without_pending_reports() -> None:
    s = stats("gather", workers=1)
    s.feed(state("gather", "running", 1, pid=10, input_event="Crunched"))
    # num_workers=4: 4 invocations exist (1 running, 3 waiting for the worker), 5 more wait for a slot
    s.feed(StepQueueChanged(step="gather", queued=5, active=4))
    assert (s.counts("gather").queued, s.pending("gather")) == (5, 3)
    # The running one ends: its slot goes to a queued event (a new invocation) and the queue report comes
    # before the invocation's own "done", so the count is corrected when that "done" follows.
    s.feed(StepQueueChanged(step="gather", queued=4, active=4))
    s.feed(state("gather", "done", 1, pid=10, input_event="Crunched"))
    assert (s.counts("gather").queued, s.pending("gather"), s.counts("gather").running) == (4, 4, 0)
    s.feed(state("gather", "running", 5, pid=10, input_event="Crunched"))
    assert s.pending("gather") == 3


def test_a_step_waiting_for_an_event_is_counted_until_it_runs_again_on_the_same_input() -> None:
    s = stats("ask")
    s.feed(state("ask", "pending", 1, input_event="StartEvent"))
    s.feed(state("ask", "running", 1, pid=10, input_event="StartEvent"))
    s.feed(state("ask", "waiting", 1, pid=10, input_event="StartEvent"))
    s.feed(InputRequiredEvent(prefix="Name?"))
    c = s.counts("ask")
    assert (c.waiting, c.running, s.pending("ask")) == (1, 0, 0)
    assert "InputRequiredEvent" in s.last_event
    s.feed(state("ask", "pending", 2, input_event="StartEvent"))  # answered: the step runs again
    assert (c.waiting, s.pending("ask")) == (0, 1)
    s.feed(state("ask", "running", 2, pid=10, input_event="StartEvent"))
    s.feed(state("ask", "done", 2, pid=10, input_event="StartEvent"))
    assert s.summary()["step_runs"] == 2 and s.summary()["suspended"] == 1


def test_what_still_runs_when_the_run_ends_is_unfinished_and_the_clock_stops() -> None:
    s = stats("crunch")
    s.feed(state("crunch", "pending", 1))
    s.feed(state("crunch", "pending", 2))
    s.feed(state("crunch", "running", 1, pid=10))
    s.feed(StopEvent(result="early"))
    s.finish()
    assert s.summary()["unfinished"] == 2
    assert (s.invs[1].state, s.invs[2].state) == ("unfinished", "unfinished")
    assert s.counts("crunch").running == 0 and s.pending("crunch") == 0
    assert s.elapsed() == s.elapsed()  # stopped
    assert [p.type for p in s.published] == ["StopEvent"] and s.last_event == ""


def test_the_cpu_meter_counts_the_cpu_time_of_the_watched_processes_only() -> None:
    meter = CpuMeter()
    meter.watch([os.getpid()])
    meter.sample()
    end = time.thread_time() + 0.2
    while time.thread_time() < end:
        pass
    used = meter.sample()
    assert 0.15 <= used < 5.0  # this process's own CPU time since it was first watched
    meter.watch([2 ** 22 + 12345])  # a pid that does not exist: ignored, not an error
    assert meter.sample() >= used


def test_the_closing_lines_state_the_speed_as_cpu_time_over_wall_time() -> None:
    lines = summary_lines("completed", {
        "wall_s": 2.0, "cpu_s": 3.5, "cpu_per_wall": 1.75, "step_runs": 81, "failed": 0, "suspended": 0,
        "unfinished": 0, "workers": 2, "workers_used": 2, "events": 300})
    assert lines == ["completed in 2.0s · 81 step runs, 0 failed · 2 of 2 workers used",
                     "speed: 1.75x = CPU time of the workers 3.50s / wall time 2.00s"]
