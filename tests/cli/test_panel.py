"""The live panel as text: it fits any terminal from 40 columns up, and a redraw replaces the last one."""

from __future__ import annotations

import io

import pytest

from actors import StepQueueChanged, StepStateChanged
from handler.cli.live import LiveView, panel
from handler.cli.stats import RunStats, StepCounts
from handler.cli.text import bar, clip, fold, pad, rows_of, width_of, wrap_at

from screen import Screen


def busy_run(exact: bool, steps: int = 3) -> RunStats:
    names = ["split", "crunch_the_numbers_in_a_long_named_step", "gather"] + [f"extra{i}" for i in
                                                                           range(steps - 3)]
    s = RunStats({n: StepCounts() for n in names}, workers=2)
    crunch = names[1]
    if exact:
        for inv in range(2, 42):
            s.feed(StepStateChanged(step=crunch, state="pending", invocation=inv, input_event="Chunk"))
    for inv, pid in ((2, 4711), (3, 4712)):
        s.feed(StepStateChanged(step=crunch, state="running", worker_pid=pid, invocation=inv,
                                input_event="Chunk"))
    s.feed(StepQueueChanged(step="gather", queued=3, active=4))
    s.last_event = "Progress(text='日本語のテキスト', n=3)"  # wide characters take two columns each
    return s


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("width", [40, 41, 50, 63, 79, 80, 120, 200])
def test_every_line_of_the_panel_fits_the_width_it_is_given(exact: bool, width: int) -> None:
    lines = panel(busy_run(exact), "procflow  Pipeline · perf/pipeline.py · run 1234abcd · 2 workers",
                  width - 1, 30, ["cancelling: no new steps start; press Ctrl-C again to stop them now"])
    assert all(width_of(line) <= width - 1 for line in lines), [(width_of(x), x) for x in lines]
    text = "\n".join(lines)
    assert "crunch" in text and "gather" in text and "workers 2/2 busy" in text
    assert "cancelling" in text  # a notice is never dropped to make room
    if exact:
        assert "2/41 step runs" not in text  # nothing finished yet
        assert "0/43 step runs" in text  # 40 crunch invocations and 3 queued gathers known so far
    else:
        assert "?: not reported by the runtime" in text


def test_the_panel_says_what_each_column_counts_and_narrow_terminals_get_a_legend() -> None:
    wide = panel(busy_run(True), "t", 119, 30, [])
    assert wide[2].split() == ["step", "running", "waiting:worker", "waiting:num_workers", "done", "failed"]
    crunch = next(line for line in wide if line.startswith("crunch"))
    assert crunch.split()[1:] == ["2", "38", "0", "0", "0"]  # running, waiting for a worker, ...
    narrow = panel(busy_run(True), "t", 39, 30, [])
    assert narrow[2].split()[1:] == ["run", "wkr", "n_w", "done", "fail"]
    assert any(line.startswith("wkr: waiting for a worker") for line in narrow)


def test_a_short_terminal_gets_as_many_steps_as_fit_and_a_count_of_the_rest() -> None:
    lines = panel(busy_run(True, steps=30), "t", 79, 12, [])
    assert len(lines) <= 12
    assert any(line.startswith("… ") and line.endswith(" more steps") for line in lines)
    assert any(line.startswith("workers 2/2 busy") for line in lines)


def test_text_helpers_count_columns_not_characters() -> None:
    assert width_of("日本") == 4 and width_of("e\u0301") == 1
    assert clip("日本語のテキスト", 7) == "日本語…" and width_of(clip("日本語のテキスト", 7)) == 7
    assert clip("a\x1b[2Jb", 10) == "a?[2Jb"  # a control character never reaches the terminal
    assert width_of(pad("日本", 6)) == 6
    assert rows_of("x" * 80, 40) == 2 and rows_of("", 40) == 1 and rows_of("x" * 81, 40) == 3
    assert bar(0.5, 12) == "[█████░░░░░]" and bar(1.0, 4) == "[██]" and len(bar(0.33, 30)) == 30
    assert wrap_at(["aaaa", "bbbb", "cccc"], 12) == ["aaaa · bbbb", "  cccc"]
    speed = "speed: 0.85x = CPU time of the workers 5.82s / wall time 6.84s"
    assert fold(speed, 49) == ["speed: 0.85x = CPU time of the workers 5.82s /", "  wall time 6.84s"]
    assert fold("completed in 6.8s · 81 step runs, 0 failed · 2 of 2 workers used", 49) == [
        "completed in 6.8s · 81 step runs, 0 failed", "  2 of 2 workers used"]
    assert fold("short · line", 49) == ["short · line"]


@pytest.mark.parametrize("columns", [40, 57, 120])
def test_redraws_replace_the_panel_in_place_and_prints_stay_above_it(
        columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setenv("LINES", "30")
    s = busy_run(True)
    out = io.StringIO()
    view = LiveView(s, out)
    view.begin("Pipeline · perf/pipeline.py · run 1234abcd · 2 workers")
    for i in range(20):
        view.printed.put(f"print {i} from a worker\n".encode())
        s.feed(StepStateChanged(step="split", state="done", invocation=1000 + i, input_event="StartEvent"))
        view.draw()
    screen = Screen(columns, 30)
    screen.feed(out.getvalue())
    lines = screen.all_lines()
    assert screen.wraps == 0  # no line ever reached the last column
    assert sum(1 for line in lines if line.startswith("procflow  Pipeline")) == 1  # never torn
    assert [line for line in lines if line.startswith("print ")] == [f"print {i} from a worker"
                                                                      for i in range(20)]
    assert lines.index("print 19 from a worker") < lines.index(next(x for x in lines
                                                                    if x.startswith("procflow")))
