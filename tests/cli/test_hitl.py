"""Human in the loop from the command line: a run's InputRequiredEvent is asked on stdin, the answer is
sent back as a HumanResponseEvent (plain lines, or JSON lines with --json); --no-input asks nothing."""

from __future__ import annotations

import json
from pathlib import Path

from clitools import FLOWS, run_cli


def test_answers_piped_to_stdin_go_to_the_questions_in_order_and_the_trace_shows_them(tmp_path: Path
                                                                                    ) -> None:
    trace = tmp_path / "ask.html"
    done = run_cli("run", f"{FLOWS}:Ask", "--workers", "1", "--trace", str(trace), stdin="ada\nblue\n")
    assert done.code == 0, done.err
    lines = done.out.splitlines()
    asked = [line.split("] ", 1)[1] for line in lines if line.startswith("[")]
    assert asked == ["input required: Your name? ", "answered: ada",
                     "input required: Favourite colour? ", "answered: blue"]
    assert json.loads(done.out[done.out.index("\n{") + 1:]) == {"name": "ada", "colour": "blue"}
    page = trace.read_text()
    assert page.count('<rect class="asked"') == 2  # the "you" lane: from each question to its answer
    assert "HumanResponseEvent(response=&#x27;ada&#x27;) sent for &#x27;Your name?&#x27;" in page


def test_json_mode_reads_one_json_answer_per_line_and_says_when_a_line_is_not_json() -> None:
    done = run_cli("run", f"{FLOWS}:Ask", "--workers", "1", "--json",
                   stdin='not json\n{"response": "ada"}\n"blue"\n')
    assert done.code == 0, done.err
    *events, last = done.json_lines()
    prompts = [e["event"]["prefix"] for e in events if e["type"] == "InputRequiredEvent"]
    assert prompts == ["Your name?", "Favourite colour?"]
    assert last["status"] == "completed" and last["result"] == {"name": "ada", "colour": "blue"}
    assert last["stats"]["suspended"] == 2  # the step waited twice, and ran a third time to the end
    assert "not a JSON answer" in done.err and "'not json'" in done.err


def test_no_input_asks_nothing_and_the_step_waits_for_its_timeout() -> None:
    done = run_cli("run", f"{FLOWS}:Ask", "--kw", "wait=0.3", "--workers", "1", "--no-input",
                   stdin="ada\nblue\n")
    assert done.code == 1
    assert "input required" not in done.out
    assert done.err.strip().splitlines()[-1] == (
        "procflow: run timed out: step 'ask' raised WorkflowTimeoutError: step 'ask': "
        "wait_for_event(HumanResponseEvent) got no matching event within 0.3 s")


def test_a_closed_stdin_stops_the_questions_with_one_notice() -> None:
    done = run_cli("run", f"{FLOWS}:Ask", "--kw", "wait=0.3", "--workers", "1", stdin="")
    assert done.code == 1
    assert "no input (stdin is closed)" in done.err
    assert done.out.count("input required") == 1  # asked once, then no more
