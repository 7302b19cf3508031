"""Pictures: ``graph --html`` (every possible flow) and ``run --trace`` (the run that happened).

The pages' structure is checked by parsing them; ``PROCFLOW_BROWSER_TESTS=1`` (with /usr/bin/chromium)
also loads them in headless Chromium and checks that a screenshot was drawn.
"""

from __future__ import annotations

import html.parser
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from actors.host import spec_of
from clitools import FLOWS, run_cli
from handler.cli.graph import graph_of, html_page
from handler.cli.layout import layout
from handler.cli.loading import load_workflow_class

CHROMIUM = Path("/usr/bin/chromium")


@dataclass
class Tag:
    name: str
    attrs: dict[str, str]
    text: str = ""


@dataclass
class Page(html.parser.HTMLParser):
    tags: list[Tag] = field(default_factory=list)
    open: list[Tag] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        t = Tag(tag, {k: v or "" for k, v in attrs})
        self.tags.append(t)
        if tag not in ("meta", "path", "rect", "line", "br"):
            self.open.append(t)

    def handle_endtag(self, tag: str) -> None:
        while self.open and self.open[-1].name != tag:
            self.open.pop()
        if self.open:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        if self.open:
            self.open[-1].text += data

    def find(self, name: str, cls: str = "") -> list[Tag]:
        return [t for t in self.tags if t.name == name and (not cls or cls in t.attrs.get("class", "").split())]


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    return page


def assert_self_contained(text: str) -> None:
    """Nothing is fetched: no src/href attributes, no URL but the SVG namespace."""
    assert not re.search(r"\s(src|href)=", text)
    assert set(re.findall(r"https?://[^\s\"'<>]+", text)) <= {"http://www.w3.org/2000/svg"}


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    folder = tmp_path_factory.mktemp("pages")
    graph, trace = folder / "loop.html", folder / "fan-trace.html"
    done = run_cli("graph", f"{FLOWS}:Loop", "--html", str(graph))
    assert done.code == 0 and done.out == "", done.err
    done = run_cli("run", f"{FLOWS}:Fan", "--kw", "n=6", "seconds=0.05", "--workers", "2", "--json",
                   "--trace", str(trace))
    assert done.code == 0, done.err
    yield {"graph": graph, "trace": trace, "stats": done.json_lines()[-1]["stats"]}  # type: ignore[dict-item]


def test_the_graph_page_draws_every_step_event_and_edge_of_the_workflow(pages: dict[str, Path]) -> None:
    text = pages["graph"].read_text()
    assert_self_contained(text)
    page = parse(text)
    spec = spec_of(load_workflow_class(f"{FLOWS}:Loop")[0])
    nodes, edges = graph_of(spec)
    drawn = {t.attrs["data-id"]: t.attrs["class"].split()[1] for t in page.find("g", "node")}
    assert set(drawn) == {nid for nid, _, _ in nodes}
    kinds = {label: drawn[nid] for nid, label, kind in nodes if kind != "step"}
    assert kinds == {"StartEvent": "start", "Thought": "event", "Answer": "event", "Nudge": "input",
                     "StopEvent": "stop", "HumanResponseEvent": "input"}
    paths = {(t.attrs["data-from"], t.attrs["data-to"]): t.attrs["class"] for t in page.find("path", "edge")}
    assert set(paths) == set(edges)
    thought = next(nid for nid, label, _ in nodes if label == "Thought")
    assert paths[(thought, "s0")] == "edge back"  # Thought -> think closes the loop: drawn as one
    assert len(page.find("svg", "graph")) == 1 and page.find("script") and page.find("table")
    titles = " ".join(t.text for t in page.find("title"))
    assert "step think (async · num_workers=4)" in titles and "returned by no step" in titles


def test_the_graph_layout_keeps_boxes_apart_and_inside_the_drawing() -> None:
    spec = spec_of(load_workflow_class(f"{FLOWS}:Loop")[0])
    nodes, edges = graph_of(spec)
    sizes = {nid: (len(label) * 7.3 + 28, 30.0) for nid, label, _ in nodes}
    lay = layout(sizes, edges, roots=["e0"])
    boxes = {n: (lay.x[n] - w / 2, lay.y[n] - h / 2, lay.x[n] + w / 2, lay.y[n] + h / 2)
             for n, (w, h) in sizes.items()}
    for n, (x0, y0, x1, y1) in boxes.items():
        assert 0 <= x0 and x1 <= lay.width and 0 <= y0 and y1 <= lay.height, n
        for m, (u0, v0, u1, v1) in boxes.items():
            assert m == n or x1 <= u0 or u1 <= x0 or y1 <= v0 or v1 <= y0, (n, m)  # no overlap
    assert lay.layer["e0"] == 0 and all(lay.layer[b] > lay.layer[a] for a, b in edges
                                        if (a, b) not in lay.back)
    assert html_page(spec) == html_page(spec)  # a pure function of the spec


def test_the_trace_page_shows_what_ran_in_order_and_a_lane_per_worker(pages: dict[str, Path]) -> None:
    text = pages["trace"].read_text()
    assert_self_contained(text)
    page = parse(text)
    stats: dict = pages["stats"]  # type: ignore[assignment]
    assert page.find("h1")[0].text.startswith("Fan — completed")
    badges = {t.text for t in page.find("text", "badge")}
    assert badges == {"×1", "×6"}  # spread ran once; work and collect six times each
    steps_in_order = [t.text for t in page.find("code")][:3]
    assert steps_in_order == ["spread", "work", "collect"]
    bars = page.find("rect", "bar")
    assert len(bars) == stats["step_runs"] == 13
    assert {b.attrs["data-step"] for b in bars} == {"spread", "work", "collect"}
    lanes = [t for t in page.find("text") if t.text.startswith("worker ")]
    assert len(lanes) == stats["workers_used"]
    assert len(page.find("path", "used")) == 6  # every edge of the pipeline was taken, the StopEvent's included


@pytest.mark.skipif(os.environ.get("PROCFLOW_BROWSER_TESTS") != "1" or not CHROMIUM.exists(),
                    reason="opt-in: PROCFLOW_BROWSER_TESTS=1 and /usr/bin/chromium")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("which", ["graph", "trace"])
def test_the_pages_load_in_a_headless_browser(pages: dict[str, Path], which: str, tmp_path: Path) -> None:
    shot = tmp_path / f"{which}.png"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,900", pages[which].resolve().as_uri()],
                   capture_output=True, timeout=90, check=False)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000  # a drawn page, not a blank one
