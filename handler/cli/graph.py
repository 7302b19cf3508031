"""Pictures of every possible flow of a workflow, as pure functions of its spec (``WorkflowSpec``).

    event --> step that accepts it --> event it returns --> ...   (StartEvent on top, StopEvent at the end)

``mermaid`` and ``dot`` print text for other tools; ``svg`` draws it here (``layout.layout``), and
``html_page`` wraps the drawing in a self-contained page with a table of the steps. ``svg`` takes an
optional ``Overlay`` so that the trace page can draw the same graph marked with what one run did.

Node kinds: ``start`` (the start event), ``stop`` (a StopEvent), ``input`` (InputRequiredEvent /
HumanResponseEvent: a person is in the loop), ``external`` (accepted by a step but returned by none: sent
from outside, ``handler.send_event``), ``event``, and ``step``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from actors import HumanResponseEvent, InputRequiredEvent, StartEvent, StopEvent
from actors.host import WorkflowSpec

from .pages import PALETTE, esc, page
from .layout import Layout, layout

CHAR_W, STEP_H, EVENT_H = 7.3, 44.0, 30.0  # 12px monospace: about 7.3 px per character


def graph_of(spec: WorkflowSpec) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """The nodes as ``(id, label, kind)`` (kind: "step", "event" or "stop"), events numbered in order of
    first mention, and the edges as ``(from id, to id)``: event -> step accepting it -> event it returns."""
    nodes: list[tuple[str, str, str]] = []
    edges: list[tuple[str, str]] = []
    event_ids: dict[type, str] = {}

    def event(t: type) -> str:
        if t not in event_ids:
            event_ids[t] = f"e{len(event_ids)}"
            nodes.append((event_ids[t], t.__qualname__, "stop" if issubclass(t, StopEvent) else "event"))
        return event_ids[t]

    for i, (name, s) in enumerate(spec.steps.items()):
        sid = f"s{i}"
        edges += [(event(t), sid) for t in s.accepts] + [(sid, event(t)) for t in s.emits]
        kind = "async" if s.is_async else "def"
        nodes.append((sid, f"{name} ({kind}, num_workers={s.num_workers})", "step"))
    order = {"event": 0, "stop": 0, "step": 1}
    nodes.sort(key=lambda n: (order[n[2]], int(n[0][1:])))
    return nodes, edges


def mermaid(spec: WorkflowSpec) -> str:
    """A Mermaid flowchart: steps as boxes, events as rounded nodes, StopEvents as circles."""
    nodes, edges = graph_of(spec)
    shapes = {"step": '["{}"]', "event": '(["{}"])', "stop": '(("{}"))'}
    lines = ["flowchart TD"]
    for nid, label, kind in nodes:
        text = label.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
        lines.append(f"    {nid}{shapes[kind].format(text)}")
    lines += [f"    {a} --> {b}" for a, b in edges]
    return "\n".join(lines) + "\n"


def dot(spec: WorkflowSpec) -> str:
    """Graphviz DOT of the same graph."""
    nodes, edges = graph_of(spec)
    shapes = {"step": "box", "event": "ellipse", "stop": "doublecircle"}
    lines = [f'digraph "{spec.name}" {{', "    rankdir=TB;", '    node [fontname="Helvetica"];']
    lines += [f'    {nid} [label={json.dumps(label, ensure_ascii=False)}, shape={shapes[kind]}];'
              for nid, label, kind in nodes]
    lines += [f"    {a} -> {b};" for a, b in edges]
    return "\n".join(lines + ["}"]) + "\n"


# --- drawing -----------------------------------------------------------------------------------------
@dataclass
class Node:
    id: str
    kind: str  # step, event, start, stop, input, external
    label: str
    detail: str = ""  # a step's second line
    tip: str = ""


@dataclass
class Overlay:
    """What one run did, drawn over the graph (the trace page): runs per step, the (step, input event
    name) pairs that ran, whether a StopEvent ended the run."""

    runs: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    inputs: set[tuple[str, str]] = field(default_factory=set)
    stopped: bool = False


def nodes_of(spec: WorkflowSpec) -> tuple[list[Node], list[tuple[str, str]], dict[str, str]]:
    """The drawing's nodes and edges, and the step name of each step node id."""
    ids, edges = graph_of(spec)
    kinds: dict[str, str] = {}
    emitted = {t for s in spec.steps.values() for t in s.emits}
    types = {t.__qualname__: t for s in spec.steps.values() for t in (*s.accepts, *s.emits)}
    step_names = {f"s{i}": name for i, name in enumerate(spec.steps)}
    out = []
    for nid, label, kind in ids:
        if kind == "step":
            s = spec.steps[step_names[nid]]
            detail = f"{'async' if s.is_async else 'def'} · num_workers={s.num_workers}"
            tip = (f"step {s.name} ({detail})\naccepts: {', '.join(t.__qualname__ for t in s.accepts)}\n"
                   f"returns: {', '.join(t.__qualname__ for t in s.emits) or 'nothing'}")
            if s.retry_policy is not None:
                tip += f"\nretry policy: {type(s.retry_policy).__name__}"
            out.append(Node(nid, "step", s.name, detail, tip))
            continue
        t = types[label]
        if issubclass(t, StopEvent):
            kinds[nid] = "stop"
        elif t is spec.start_event_type or issubclass(t, StartEvent):
            kinds[nid] = "start"
        elif issubclass(t, (InputRequiredEvent, HumanResponseEvent)):
            kinds[nid] = "input"
        elif t not in emitted:
            kinds[nid] = "external"
        else:
            kinds[nid] = "event"
        fields = ", ".join(getattr(t, "model_fields", {}))
        tip = f"event {label}" + (f"({fields})" if fields else "")
        if t not in emitted and kinds[nid] in ("external", "input"):
            tip += "\nreturned by no step: sent from outside (handler.send_event)"
        out.append(Node(nid, kinds[nid], label, "", tip))
    return out, edges, step_names


def _size(node: Node) -> tuple[float, float]:
    chars = max(len(node.label), len(node.detail))
    return max(64.0, chars * CHAR_W + 28), STEP_H if node.kind == "step" else EVENT_H


def _edge_path(a: str, b: str, lay: Layout, sizes: dict[str, tuple[float, float]], back: bool
               ) -> tuple[str, float]:
    """The SVG path of an edge, and the rightmost x it reaches.

    Down the layers: from the bottom of one box to the top of the other, through the edge's bends, as
    S-curves with vertical tangents. A loop back up: out of the box's right side, up to the right of every
    box of the layers it passes, then down into the top of its target (from the gap above it)."""
    (xa, ya), (xb, yb) = (lay.x[a], lay.y[a]), (lay.x[b], lay.y[b])
    top_b = yb - sizes[b][1] / 2
    if back or lay.layer[b] <= lay.layer[a]:
        lo, hi = sorted((lay.layer[a], lay.layer[b]))
        reach = max(lay.right.get(k, 0.0) for k in range(lo, hi + 1)) + 26
        sa, tx = xa + sizes[a][0] / 2, xb + sizes[b][0] / 4
        above, r = top_b - 20, 10.0
        return (f"M{sa:.1f},{ya:.1f} L{reach - r:.1f},{ya:.1f} Q{reach:.1f},{ya:.1f} {reach:.1f},{ya - r:.1f} "
                f"L{reach:.1f},{above + r:.1f} Q{reach:.1f},{above:.1f} {reach - r:.1f},{above:.1f} "
                f"L{tx + r:.1f},{above:.1f} Q{tx:.1f},{above:.1f} {tx:.1f},{above + r:.1f} "
                f"L{tx:.1f},{top_b - 6:.1f}", reach)
    points = [(xa, ya + sizes[a][1] / 2), *lay.bends.get((a, b), []), (xb, top_b - 6)]
    d = f"M{points[0][0]:.1f},{points[0][1]:.1f}"
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        bend = max(8.0, (y1 - y0) / 2)
        d += f" C{x0:.1f},{y0 + bend:.1f} {x1:.1f},{y1 - bend:.1f} {x1:.1f},{y1:.1f}"
    return d, max(p[0] for p in points)


def svg(spec: WorkflowSpec, overlay: Overlay | None = None) -> str:
    """The graph as an inline ``<svg class="graph">`` (ids ``n-<node>``; edges carry data-from/data-to)."""
    nodes, edges, step_names = nodes_of(spec)
    sizes = {n.id: _size(n) for n in nodes}
    roots = [n.id for n in nodes if n.kind == "start"] + [n.id for n in nodes if n.kind == "external"]
    lay = layout(sizes, edges, roots)
    paths = {(a, b): _edge_path(a, b, lay, sizes, (a, b) in lay.back) for a, b in edges}
    width = max([lay.width] + [reach + 20 for _, reach in paths.values()])  # room for loops on the right
    by_id = {n.id: n for n in nodes}
    label_of = {n.id: n.label for n in nodes}
    parts = [f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
             f'height="{lay.height:.0f}" viewBox="0 0 {width:.0f} {lay.height:.0f}" role="img" '
             f'aria-label="{esc(spec.name)}: steps and events">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
             'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#7b8794"/>'
             "</marker></defs>"]
    for a, b in edges:
        back = (a, b) in lay.back
        used = overlay is not None and _used(a, b, by_id, step_names, label_of, overlay)
        cls = "edge" + (" back" if back else "") + (" used" if used else "")
        parts.append(f'<path class="{cls}" data-from="{a}" data-to="{b}" '
                     f'd="{paths[(a, b)][0]}" marker-end="url(#arrow)"/>')
    step_index = {name: i for i, name in enumerate(spec.steps)}
    for n in nodes:
        w, h = sizes[n.id]
        x, y = lay.x[n.id] - w / 2, lay.y[n.id] - h / 2
        runs = overlay.runs.get(n.label, 0) if overlay is not None and n.kind == "step" else None
        idle = " idle" if runs == 0 else ""
        parts.append(f'<g class="node {n.kind}{idle}" id="n-{n.id}" data-id="{n.id}">'
                     f"<title>{esc(n.tip)}</title>")
        radius = 4 if n.kind == "step" else h / 2
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="{radius:.1f}"/>')
        cx = lay.x[n.id]
        if n.kind == "step":
            parts.append(f'<text x="{cx:.1f}" y="{y + 18:.1f}" text-anchor="middle" font-weight="700">'
                         f"{esc(n.label)}</text>")
            parts.append(f'<text class="small" x="{cx:.1f}" y="{y + 34:.1f}" text-anchor="middle">'
                         f"{esc(n.detail)}</text>")
        else:
            parts.append(f'<text x="{cx:.1f}" y="{y + h / 2 + 4:.1f}" text-anchor="middle">'
                         f"{esc(n.label)}</text>")
        if runs:
            colour = PALETTE[step_index.get(n.label, 0) % len(PALETTE)]
            failed = overlay.failed.get(n.label, 0) if overlay is not None else 0
            text = f"×{runs}" + (f" ({failed} failed)" if failed else "")
            bw = len(text) * 7 + 12
            parts.append(f'<rect class="badge-bg" x="{x + w - bw / 2:.1f}" y="{y - 9:.1f}" width="{bw:.1f}" '
                         f'height="18" rx="9" style="fill:{colour};stroke:none"/><text class="badge" '
                         f'x="{x + w:.1f}" y="{y + 4:.1f}" text-anchor="middle">{esc(text)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts)


def _used(a: str, b: str, by_id: dict[str, Node], step_names: dict[str, str], label_of: dict[str, str],
          overlay: Overlay) -> bool:
    """Whether the run is known to have taken the edge: a step ran on that event, or a step that ran
    returns an event that some step then ran on (or the StopEvent that ended the run)."""
    if b in step_names:
        return (step_names[b], label_of[a]) in overlay.inputs
    if overlay.runs.get(step_names.get(a, ""), 0) == 0:
        return False
    if by_id[b].kind == "stop":
        return overlay.stopped
    return any(event == label_of[b] for _, event in overlay.inputs)


LEGEND = [("start", "start event"), ("event", "event"), ("step", "step (def or async)"),
          ("input", "human in the loop"), ("external", "sent from outside"), ("stop", "stop event")]


def legend() -> str:
    colours = {"start": ("#ebfbee", "#2f9e44"), "event": ("#e7f5ff", "#1c7ed6"),
               "step": ("#fff4e6", "#e8590c"), "input": ("#f3f0ff", "#7048e8"),
               "external": ("#f8f9fa", "#868e96"), "stop": ("#fff5f5", "#c92a2a")}
    items = [f'<span><i class="swatch" style="background:{colours[k][0]};border:1.5px solid '
             f'{colours[k][1]}"></i>{esc(text)}</span>' for k, text in LEGEND]
    items.append("<span>- - ▸ a loop back to an earlier event</span>")
    return f'<div class="legend">{"".join(items)}</div>'


def steps_table(spec: WorkflowSpec) -> str:
    rows = []
    for s in spec.steps.values():
        rows.append(
            f"<tr><td><code>{esc(s.name)}</code></td><td>{'async' if s.is_async else 'def'}</td>"
            f'<td class="num">{s.num_workers}</td>'
            f"<td>{esc(', '.join(t.__qualname__ for t in s.accepts))}</td>"
            f"<td>{esc(', '.join(t.__qualname__ for t in s.emits) or '—')}</td>"
            f"<td>{esc(type(s.retry_policy).__name__) if s.retry_policy is not None else '—'}</td></tr>")
    return ('<table><thead><tr><th>step</th><th>kind</th><th class="num">num_workers</th><th>accepts</th>'
            f'<th>returns</th><th>retry</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def html_page(spec: WorkflowSpec) -> str:
    """A self-contained page drawing every possible flow of the workflow."""
    body = (f"<h1>{esc(spec.name)}</h1>\n"
            f'<p class="sub">every possible flow: {len(spec.steps)} steps; an arrow from an event to '
            "the step that accepts it, from a step to each event it can return. Point at a node to "
            "follow it (click to pin).</p>\n"
            f'<div class="card">{svg(spec)}</div>\n{legend()}\n'
            f"<h2>Steps</h2>\n<div class=\"card\">{steps_table(spec)}</div>")
    return page(f"{spec.name} · procflow graph", body)
