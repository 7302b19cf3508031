"""``procflow run --trace OUT.html``: a self-contained page of the run that happened.

    header      the workflow, how the run ended, wall time, CPU time of the workers, workers used
    what ran    the workflow's graph with each step's run count, the edges the run is known to have taken,
                and the steps in the order they first ran (first start, last end, runs, failures, time)
    timeline    one lane per worker process; a bar per step invocation from its start to its end, coloured
                by step (hover: step, input event, times); a lane of the events written to the stream
    stream      the first events the run wrote to the stream (what ``iter_events`` gives), with times, and
                the answers sent to the run's questions

Built from ``RunStats`` (the CLI's record of the stream's ``StepStateChanged`` events, timed as they came
off the stream) and the spec: a pure function, no I/O.
"""

from __future__ import annotations

from typing import Any

from actors.host import WorkflowSpec

from .graph import Overlay, legend, svg
from .pages import PALETTE, esc, page
from .stats import Invocation, RunStats, clock

MAX_BARS = 20_000  # invocations drawn on the timeline (a page stays light enough for a browser)
LANE_H, AXIS_H, LABEL_W, PLOT_W = 24.0, 26.0, 150.0, 900.0


def _overlay(stats: RunStats, outcome: dict[str, Any]) -> Overlay:
    ov = Overlay(stopped=outcome.get("status") == "completed")
    for inv in stats.invs.values():
        if inv.started is None:
            continue
        ov.runs[inv.step] = ov.runs.get(inv.step, 0) + 1
        ov.inputs.add((inv.step, inv.input_event))
        if inv.state == "failed":
            ov.failed[inv.step] = ov.failed.get(inv.step, 0) + 1
    return ov


def _order_table(stats: RunStats, spec: WorkflowSpec) -> str:
    """The steps in the order they first ran, with their figures."""
    first: dict[str, list[Invocation]] = {}
    for inv in sorted((i for i in stats.invs.values() if i.started is not None),
                      key=lambda i: (i.started or 0.0, i.id)):
        first.setdefault(inv.step, []).append(inv)
    t0 = stats.started
    rows = []
    for n, (step, invs) in enumerate(first.items(), 1):
        busy = sum((i.ended or stats.now()) - (i.started or 0.0) for i in invs)
        ends = [i.ended for i in invs if i.ended is not None]
        inputs = sorted({i.input_event for i in invs})
        failed = sum(1 for i in invs if i.state == "failed")
        colour = PALETTE[list(spec.steps).index(step) % len(PALETTE)] if step in spec.steps else "#999"
        rows.append(
            f'<tr><td class="num">{n}</td><td><i class="swatch" style="background:{colour}"></i> '
            f"<code>{esc(step)}</code></td><td class=\"num\">{invs[0].started - t0:.3f}s</td>"  # type: ignore[operator]
            f'<td class="num">{(max(ends) - t0) if ends else 0:.3f}s</td><td class="num">{len(invs)}</td>'
            f'<td class="num">{failed}</td><td class="num">{busy:.3f}s</td>'
            f"<td>{esc(', '.join(inputs))}</td></tr>")
    never = [s for s in spec.steps if s not in first]
    tail = (f'<p class="sub">never ran: {", ".join(f"<code>{esc(s)}</code>" for s in never)}</p>'
            if never else "")
    return ('<table><thead><tr><th class="num">#</th><th>step</th><th class="num">first start</th>'
            '<th class="num">last end</th><th class="num">runs</th><th class="num">failed</th>'
            '<th class="num">time running</th><th>input events</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>{tail}')


def _ticks(span: float) -> list[float]:
    """Round tick positions over ``[0, span]``: about 8 of them."""
    raw = max(span, 1e-3) / 8
    step = min((m * 10 ** e for e in range(-3, 6) for m in (1, 2, 5) if m * 10 ** e >= raw), default=raw)
    return [i * step for i in range(int(span / step) + 1)]


def _timeline(stats: RunStats, spec: WorkflowSpec) -> tuple[str, int]:
    """The timeline SVG, and how many invocations were left out of it."""
    t0, t1 = stats.started, stats.now()
    span = max(t1 - t0, 1e-3)
    ran = sorted((i for i in stats.invs.values() if i.started is not None and i.pid is not None),
                 key=lambda i: (i.started or 0.0, i.id))
    left_out = max(0, len(ran) - MAX_BARS) + stats.dropped
    ran = ran[:MAX_BARS]
    lanes: list[int] = []
    for inv in ran:
        if inv.pid not in lanes:
            lanes.append(inv.pid)  # type: ignore[arg-type]
    marks = [p for p in stats.published if p.type != "StopEvent"][:2000]
    names = [f"worker {pid}" for pid in lanes] + (["stream"] if marks else [])
    names += ["you"] if stats.questions else []
    height = AXIS_H + LANE_H * max(1, len(names)) + 8
    width = LABEL_W + PLOT_W + 20

    def x(t: float) -> float:
        return LABEL_W + (t - t0) / span * PLOT_W

    out = [f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
           f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
           f'aria-label="timeline: one lane per worker process">']
    for i, name in enumerate(names):
        y = AXIS_H + i * LANE_H
        out.append(f'<rect class="lane{" odd" if i % 2 else ""}" x="{LABEL_W}" y="{y:.1f}" width="{PLOT_W}" '
                   f'height="{LANE_H}"/><text x="{LABEL_W - 8}" y="{y + LANE_H / 2 + 4:.1f}" '
                   f'text-anchor="end">{esc(name)}</text>')
    for tick in _ticks(span):
        out.append(f'<line class="axis" x1="{x(t0 + tick):.1f}" x2="{x(t0 + tick):.1f}" y1="{AXIS_H - 4}" '
                   f'y2="{height - 8:.1f}"/><text class="tick" x="{x(t0 + tick):.1f}" y="{AXIS_H - 8}" '
                   f'text-anchor="middle">{tick:g}s</text>')
    index = {name: i for i, name in enumerate(spec.steps)}
    for inv in ran:
        lane = lanes.index(inv.pid)  # type: ignore[arg-type]
        y = AXIS_H + lane * LANE_H + 4
        start, end = inv.started or t0, inv.ended or t1
        colour = PALETTE[index.get(inv.step, 0) % len(PALETTE)]
        waited = f", waited {start - inv.created:.3f}s for a worker" if inv.created is not None else ""
        tip = (f"{inv.step} on {inv.input_event} (invocation {inv.id}, worker {inv.pid})\n"
               f"{start - t0:.3f}s → {end - t0:.3f}s ({(end - start) * 1000:.1f} ms{waited}): {inv.state}")
        state = f" {inv.state}" if inv.state in ("failed", "unfinished", "waiting", "cancelled") else ""
        out.append(f'<rect class="bar{state}" data-step="{esc(inv.step)}" x="{x(start):.2f}" y="{y:.1f}" '
                   f'width="{max(1.0, x(end) - x(start)):.2f}" height="{LANE_H - 8}" rx="2" '
                   f'fill="{colour}"><title>{esc(tip)}</title></rect>')
    if marks:
        y = AXIS_H + len(lanes) * LANE_H
        for m in marks:
            out.append(f'<line class="mark" x1="{x(m.t):.1f}" x2="{x(m.t):.1f}" y1="{y + 4:.1f}" '
                       f'y2="{y + LANE_H - 4:.1f}"><title>{esc(f"{m.t - t0:.3f}s {m.text}")}</title></line>')
    y = AXIS_H + (len(names) - 1) * LANE_H + 4
    for q in stats.questions:  # from the question to its answer: the run waited for a person
        end = q.answered if q.answered is not None else t1
        said = f"answered {q.answer!r} after {end - q.asked:.3f}s" if q.answered is not None \
            else "not answered"
        out.append(f'<rect class="asked" x="{x(q.asked):.2f}" y="{y:.1f}" '
                   f'width="{max(2.0, x(end) - x(q.asked)):.2f}" height="{LANE_H - 8}" rx="2">'
                   f"<title>{esc(f'{q.asked - t0:.3f}s {q.text.strip()} {said}')}</title></rect>")
    out.append("</svg>")
    return "\n".join(out), left_out


def _stream_table(stats: RunStats) -> str:
    shown = stats.published[:200]
    if not shown:
        return '<p class="sub">the run wrote no events to the stream but its end.</p>'
    entries = sorted([(p.t, p.type, p.text) for p in shown] + [
        (q.answered, "answer", f"HumanResponseEvent(response={q.answer!r}) sent for {q.text.strip()!r}")
        for q in stats.questions if q.answered is not None])
    rows = "".join(f'<tr><td class="num">{t - stats.started:.3f}s</td><td><code>{esc(kind)}</code></td>'
                   f'<td class="mono">{esc(text)}</td></tr>' for t, kind, text in entries)
    more = (f'<p class="sub">… and {len(stats.published) - len(shown)} more.</p>'
            if len(stats.published) > len(shown) else "")
    return (f'<table><thead><tr><th class="num">time</th><th>type</th><th>event</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>{more}")


def trace_page(spec: WorkflowSpec, stats: RunStats, outcome: dict[str, Any], title: str) -> str:
    """The page of one run (``title``: the workflow, where it came from, its run id)."""
    s = stats.summary()
    status = outcome.get("status", "?")
    error = f" — {outcome.get('error_type')}: {outcome.get('error')}" if outcome.get("error") else ""
    speed = (f"speed {s['cpu_per_wall']:.2f}x = CPU time of the workers {s['cpu_s']:.2f}s / wall time "
             f"{s['wall_s']:.2f}s" if s["cpu_per_wall"] is not None else "")
    timeline, left_out = _timeline(stats, spec)
    colours = "".join(f'<span><i class="swatch" style="background:{PALETTE[i % len(PALETTE)]}"></i>'
                      f"{esc(name)}</span>" for i, name in enumerate(spec.steps))
    note = f'<p class="sub">{left_out} invocations are not drawn (the page keeps the first ones).</p>' \
        if left_out else ""
    body = (f"<h1>{esc(spec.name)} — {esc(status)}{esc(error)}</h1>\n"
            f'<p class="sub">{esc(title)} · {clock(s["wall_s"])} wall · {s["step_runs"]} step runs, '
            f'{s["failed"]} failed · {s["workers_used"]} of {s["workers"]} workers used'
            f"{' · ' + esc(speed) if speed else ''}</p>\n"
            f"<h2>What ran</h2>\n<div class=\"card\">{svg(spec, _overlay(stats, outcome))}</div>\n"
            f"{legend()}\n"
            f'<p class="sub">badges: how many times each step ran; green arrows: edges the run is known '
            f"to have taken; faded: steps that never ran.</p>\n"
            f'<h2>Order</h2>\n<div class="card">{_order_table(stats, spec)}</div>\n'
            f'<h2>Timeline</h2>\n<p class="sub">one lane per worker process; a bar per step invocation, '
            f"from the moment it started to the moment it ended (as the stream reported them); purple "
            f"ticks: events written to the stream; lane <i>you</i>: from a question to its answer.</p>\n"
            f'<div class="card">{timeline}</div>\n<div class="legend">{colours}</div>\n{note}'
            f"<h2>Stream</h2>\n<div class=\"card\">{_stream_table(stats)}</div>")
    return page(f"{spec.name} run · procflow trace", body)
