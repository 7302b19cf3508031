"""The HTML shell shared by the graph page and the trace page: one self-contained file, no network.

Styles and the little script are inline; drawings are inline SVG. The script only highlights what a node
touches when the pointer is on it (a click pins it); without scripts the pages read the same.
"""

from __future__ import annotations

import html

# Step colours in the timeline and the badges: distinguishable, readable on white.
PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac"]

CSS = """
:root { color-scheme: light; --ink: #1f2933; --muted: #616e7c; --line: #9aa5b1; --hl: #d9480f; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto,
       sans-serif; color: var(--ink); background: #fbfbfc; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 28px 0 8px; }
p.sub { color: var(--muted); margin: 0 0 16px; }
.card { background: #fff; border: 1px solid #e4e7eb; border-radius: 8px; padding: 12px; overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; }
th, td { text-align: left; padding: 4px 12px 4px 0; border-bottom: 1px solid #eef0f2; vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
td.num, th.num { text-align: right; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
.legend { display: flex; flex-wrap: wrap; gap: 14px; color: var(--muted); font-size: 12px; margin: 8px 0 0; }
.legend span { display: inline-flex; align-items: center; gap: 6px; }
.swatch { display: inline-block; width: 14px; height: 10px; border-radius: 2px; }
svg text { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px;
           fill: var(--ink); }
svg .edge { fill: none; stroke: var(--line); stroke-width: 1.4; }
svg .edge.back { stroke-dasharray: 5 4; }
svg .edge.used { stroke: #2b8a3e; stroke-width: 2.2; }
svg .node rect { stroke-width: 1.4; }
svg .node.step rect { fill: #fff4e6; stroke: #e8590c; }
svg .node.event rect { fill: #e7f5ff; stroke: #1c7ed6; }
svg .node.start rect { fill: #ebfbee; stroke: #2f9e44; }
svg .node.stop rect { fill: #fff5f5; stroke: #c92a2a; stroke-width: 2.6; }
svg .node.input rect { fill: #f3f0ff; stroke: #7048e8; }
svg .node.external rect { fill: #f8f9fa; stroke: #868e96; stroke-dasharray: 4 3; }
svg .node.idle { opacity: 0.35; }
svg .node text.small { font-size: 10.5px; fill: var(--muted); }
svg .badge { font-size: 11px; font-weight: 700; fill: #fff; }
svg .dim { opacity: 0.18; }
svg .edge.hl { stroke: var(--hl); stroke-width: 2.4; opacity: 1; }
svg .node.hl rect { stroke: var(--hl); stroke-width: 2.6; }
svg .lane { fill: #f8f9fa; }
svg .lane.odd { fill: #f1f3f5; }
svg .axis { stroke: #ced4da; stroke-width: 1; }
svg .tick { font-size: 10.5px; fill: var(--muted); }
svg .bar { stroke: rgba(0,0,0,.25); stroke-width: .6; }
svg .bar.failed { stroke: #c92a2a; stroke-width: 2; }
svg .bar.unfinished { stroke-dasharray: 3 2; }
svg .mark { stroke: #7048e8; stroke-width: 1.5; }
svg .asked { fill: #d0bfff; stroke: #7048e8; stroke-width: .8; }
"""

# Hover a node: it, its edges and its neighbours stay; the rest fades. A click pins the highlight.
SCRIPT = """
(function () {
  document.querySelectorAll("svg.graph").forEach(function (svg) {
    var pinned = null;
    function show(id) {
      var keep = {}; keep[id] = true;
      svg.querySelectorAll(".edge").forEach(function (e) {
        var on = e.dataset.from === id || e.dataset.to === id;
        e.classList.toggle("hl", on); e.classList.toggle("dim", !on);
        if (on) { keep[e.dataset.from] = true; keep[e.dataset.to] = true; }
      });
      svg.querySelectorAll(".node").forEach(function (n) {
        n.classList.toggle("dim", !keep[n.dataset.id]); n.classList.toggle("hl", n.dataset.id === id);
      });
    }
    function clear() {
      svg.querySelectorAll(".dim, .hl").forEach(function (e) { e.classList.remove("dim", "hl"); });
    }
    svg.querySelectorAll(".node").forEach(function (n) {
      n.addEventListener("mouseenter", function () { if (!pinned) show(n.dataset.id); });
      n.addEventListener("mouseleave", function () { if (!pinned) clear(); });
      n.addEventListener("click", function (ev) {
        ev.stopPropagation(); pinned = pinned === n.dataset.id ? null : n.dataset.id;
        if (pinned) show(pinned); else clear();
      });
    });
    svg.addEventListener("click", function () { pinned = null; clear(); });
  });
})();
"""


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def page(title: str, body: str) -> str:
    """A whole HTML document: ``body`` is trusted markup (everything user-made in it already escaped)."""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<meta name="generator" content="procflow">\n<title>{esc(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n<script>{SCRIPT}</script>\n</body>\n</html>\n")
