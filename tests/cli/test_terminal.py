"""``procflow run`` on a real pseudo-terminal of a given size, its output replayed on a small VT100.

What a user sees at the end is the screen: the panel must be there once (a torn redraw leaves copies of
it behind), no line may have wrapped, and what the steps printed stays above the panel.
"""

from __future__ import annotations

import pytest

from clitools import FLOWS, run_on_terminal
from screen import Screen


@pytest.mark.parametrize("columns", [40, 120])
def test_the_live_panel_fits_the_real_terminal_width_and_is_never_torn(columns: int) -> None:
    code, shown, err = run_on_terminal("run", f"{FLOWS}:Fan", "--kw", "n=6", "seconds=0.3", "--workers", "2",
                                       columns=columns)
    assert code == 0, err
    screen = Screen(columns, 30, onlcr=False)
    screen.feed(shown)
    lines = screen.all_lines()
    assert screen.wraps == 0, lines  # every panel line was clipped below the terminal's width
    assert sum(1 for line in lines if line.startswith("procflow  Fan")) == 1, lines
    title = next(i for i, line in enumerate(lines) if line.startswith("procflow  Fan"))
    prints = [i for i, line in enumerate(lines) if line.endswith(" in the worker")]
    assert len(prints) == 6 and max(prints) < title  # the workers' prints, above the panel
    header = lines[title + 2].split()
    assert header[:2] == ["step", "running"] if columns == 120 else header[:2] == ["step", "run"]
    work = next(line for line in lines[title:] if line.startswith("work "))
    assert work.split()[-2:] == ["6", "0"]  # done, failed
    assert "completed in" in "\n".join(lines[title:])
    assert lines[-8:] == ["[", "  0,", "  1,", "  2,", "  3,", "  4,", "  5", "]"]  # the result


def test_a_question_is_asked_on_the_terminal_and_the_typed_answer_goes_to_the_step() -> None:
    code, shown, err = run_on_terminal("run", f"{FLOWS}:Ask", "--workers", "1", columns=60,
                                       answers=(("Your name? ", "ada"), ("Favourite colour? ", "blue")))
    assert code == 0, err
    screen = Screen(60, 30, onlcr=False)
    screen.feed(shown)
    lines = screen.all_lines()
    assert lines.count("Your name? ada") == 1 and lines.count("Favourite colour? blue") == 1, lines
    assert sum(1 for line in lines if line.startswith("procflow  Ask")) == 1, lines
    assert lines.index("Favourite colour? blue") < next(
        i for i, line in enumerate(lines) if line.startswith("procflow  Ask"))  # history above the panel
    assert '  "name": "ada",' in lines and '  "colour": "blue"' in lines
    assert screen.wraps == 0
