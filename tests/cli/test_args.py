"""Command-line hygiene: options anywhere, --version, exit codes in --help, usage errors as one line with
exit code 2, a user's file shadowing procflow's packages named in one line."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from clitools import FLOWS, ROOT, run_cli
from handler.cli.app import main, normalize


def test_kw_takes_the_key_value_words_after_it_and_leaves_the_target_alone() -> None:
    assert normalize(["run", "--kw", "a=1", "b=x y", "flow.py", "--json"]) == [
        "run", "--kw=a=1", "--kw=b=x y", "flow.py", "--json"]
    assert normalize(["run", "flow.py", "--kw", "name"]) == ["run", "flow.py", "--kw=name"]  # reported later
    assert normalize(["--json", "--workers", "2", "run", "f.py"]) == ["run", "--json", "--workers", "2", "f.py"]
    assert normalize(["--version"]) == ["--version"]
    assert normalize(["run", "--", "--kw", "a=1"]) == ["run", "--", "--kw", "a=1"]


def test_version_comes_from_the_installed_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"procflow {metadata.version('procflow')}"


@pytest.mark.parametrize("argv", [[], ["run"], ["graph"]])
def test_help_lists_the_exit_codes(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "exit codes:" in text
    for code in ("0 ", "1 ", "2 ", "130 "):
        assert f"\n  {code}" in text


@pytest.mark.parametrize(("argv", "message"), [
    ([], "the following arguments are required: {run,graph} (see 'procflow --help')"),
    (["run"], "the following arguments are required: target (see 'procflow run --help')"),
    (["run", "f.py", "--workers", "0"], "argument --workers: must be at least 1: 0"),
    (["run", "f.py", "--timeout", "soon"], "argument --timeout: not a number of seconds or 'none'"),
    (["run", "f.py", "--trace", "/no/such/dir/t.html"], "argument --trace: no such directory: /no/such/dir"),
    (["graph", "f.py", "--dot", "--html", "x.html"], "argument --html: not allowed with argument --dot"),
    (["frob"], "argument {run,graph}: invalid choice: 'frob'"),
])
def test_a_bad_option_is_one_line_and_exit_code_2(argv: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("procflow: error: ") and message in err, err


def test_options_and_key_values_may_come_before_the_target() -> None:
    done = run_cli("--json", "run", "--kw", "name=ada", "n=3", f"{FLOWS.with_name('args_flows.py')}:Hi",
                   "--workers", "1")
    assert done.code == 0, done.err
    assert done.json_lines()[-1]["result"] == "hi ada 3"


def test_a_kw_value_the_start_event_rejects_is_one_line_naming_the_field() -> None:
    done = run_cli("run", f"{FLOWS.with_name('args_flows.py')}:Typed", "--kw", "x=abc")
    assert (done.code, done.out) == (2, "")
    assert done.err == ("procflow: error: bad --kw for TypedStart: x: Input should be a valid integer, "
                        "unable to parse string as an integer (got 'abc')\n")


@pytest.mark.parametrize("shadow", ["handler.py", "actors.py", "runtime/__init__.py"])
def test_a_users_file_that_shadows_procflow_is_named_in_one_line(tmp_path: Path, shadow: str) -> None:
    (tmp_path / shadow).parent.mkdir(exist_ok=True)
    (tmp_path / shadow).write_text("x = 1\n")
    (tmp_path / "flow.py").write_text(FLOWS.with_name("args_flows.py").read_text())
    done = run_cli("graph", f"{tmp_path / 'flow.py'}:Hi")
    assert (done.code, done.out) == (2, "")
    name = shadow.split("/")[0].removesuffix(".py")
    shown = tmp_path / (name if "/" in shadow else shadow)
    assert done.err == (f"procflow: error: {shown} shadows procflow's own '{name}' package (it comes first "
                        "on the import path, so the workers would import it instead); rename it\n")


def test_a_module_path_names_a_workflow_as_well_as_a_file_does() -> None:
    done = run_cli("graph", "tests.cli.args_flows:Hi", cwd=ROOT)
    assert done.code == 0, done.err
    assert done.out.splitlines()[:2] == ["flowchart TD", '    e0(["StartEvent"])']
