"""A layered drawing of a directed graph (top to bottom), small enough to write by hand and deterministic.

    1. cycles: a depth-first walk from the roots marks the edges that close a loop ("back" edges); they are
       drawn on the side, and left out of steps 2-4;
    2. layers: each node one layer below the lowest of its predecessors (longest path from the roots);
       an edge that skips layers gets a narrow invisible node in each layer it crosses, so that it is
       placed like a node and bends around the real ones;
    3. order in a layer: first-seen order, then a few sweeps placing each node at the mean position of its
       neighbours in the layers above (going down) and below (going up), which removes most crossings;
    4. x positions: each node pulled toward the mean x of its neighbours, then pushed apart to keep a gap.

Nodes are given with their box sizes; the result is the centre of each box and the drawing's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Layout:
    x: dict[str, float] = field(default_factory=dict)
    y: dict[str, float] = field(default_factory=dict)
    layer: dict[str, int] = field(default_factory=dict)
    back: set[tuple[str, str]] = field(default_factory=set)
    # forward edges that skip layers pass through these points (one per layer skipped), avoiding nodes
    bends: dict[tuple[str, str], list[tuple[float, float]]] = field(default_factory=dict)
    right: dict[int, float] = field(default_factory=dict)  # the rightmost x of each layer's boxes
    width: float = 0.0
    height: float = 0.0


def layout(sizes: dict[str, tuple[float, float]], edges: list[tuple[str, str]], roots: list[str],
           gap_x: float = 28.0, gap_y: float = 46.0, margin: float = 20.0) -> Layout:
    """Place the nodes of ``sizes`` (id -> (width, height)), joined by ``edges``; ``roots`` go on top."""
    nodes = list(sizes)
    out_edges: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        out_edges[a].append(b)
    result = Layout()

    # 1. back edges, by an iterative depth-first walk (roots first, then whatever is left)
    seen: dict[str, int] = {}  # 1: on the walk's stack, 2: done
    order: list[str] = []
    for start in [r for r in roots if r in sizes] + nodes:
        if start in seen:
            continue
        stack = [(start, iter(out_edges[start]))]
        seen[start] = 1
        order.append(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                seen[node] = 2
                stack.pop()
            elif seen.get(child) == 1:
                result.back.add((node, child))
            elif child not in seen:
                seen[child] = 1
                order.append(child)
                stack.append((child, iter(out_edges[child])))
    forward = [(a, b) for a, b in edges if (a, b) not in result.back and a != b]

    # 2. layers: longest path, in topological order (Kahn's algorithm over the forward edges)
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    succs: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in forward:
        preds[b].append(a)
        succs[a].append(b)
    indegree = {n: len(preds[n]) for n in nodes}
    ready = [n for n in order if indegree[n] == 0]
    layer: dict[str, int] = {}
    while ready:
        n = ready.pop(0)
        layer[n] = max((layer[p] + 1 for p in preds[n]), default=0)
        for s in succs[n]:
            indegree[s] -= 1
            if indegree[s] == 0:
                ready.append(s)
    for n in nodes:  # unreachable leftovers (cannot happen once back edges are out; kept safe)
        layer.setdefault(n, 0)
    result.layer = dict(layer)
    sizes = dict(sizes)
    chains: dict[tuple[str, str], list[str]] = {}
    for a, b in forward:
        if layer[b] - layer[a] > 1:
            chain = []
            prev = a
            for k in range(layer[a] + 1, layer[b]):
                dummy = f"\0{a}>{b}#{k}"
                sizes[dummy] = (8.0, 8.0)
                layer[dummy] = k
                preds[dummy], succs[dummy] = [prev], []
                succs[prev].append(dummy)
                chain.append(dummy)
                prev = dummy
            succs[prev].append(b)
            preds[b].append(prev)
            succs[a].remove(b)
            preds[b].remove(a)
            chains[(a, b)] = chain
            at = order.index(a) + 1
            order[at:at] = chain

    # 3. order within layers
    depth = max(layer.values(), default=0) + 1
    nodes_set = set(nodes)
    rows: list[list[str]] = [[] for _ in range(depth)]
    for n in order:
        rows[layer[n]].append(n)
    pos = {n: float(i) for row in rows for i, n in enumerate(row)}
    for sweep in range(8):
        downward = sweep % 2 == 0
        for row in (rows[1:] if downward else rows[-2::-1]):
            near = preds if downward else succs
            for n in row:
                ns = near[n]
                if ns:
                    pos[n] = sum(pos[m] for m in ns) / len(ns)
            row.sort(key=lambda n: pos[n])
            for i, n in enumerate(row):
                pos[n] = float(i)

    # 4. x: start packed, then pull toward neighbours and push apart
    x: dict[str, float] = {}
    for row in rows:
        left = 0.0
        for n in row:
            w = sizes[n][0]
            x[n] = left + w / 2
            left += w + gap_x
    widest = max((sum(sizes[n][0] for n in row) + gap_x * (len(row) - 1) for row in rows), default=0.0)
    for row in rows:
        span = sum(sizes[n][0] for n in row) + gap_x * (len(row) - 1)
        for n in row:
            x[n] += (widest - span) / 2
    for _ in range(12):
        for row in rows:
            want = {}
            for n in row:
                ns = preds[n] + succs[n]
                want[n] = sum(x[m] for m in ns) / len(ns) if ns else x[n]
            _spread(row, want, sizes, gap_x, x)
    lo = min((x[n] - sizes[n][0] / 2 for n in x), default=0.0)
    for n in x:
        x[n] += margin - lo
    y: dict[str, float] = {}
    y_top = margin
    for k, row in enumerate(rows):
        h = max((sizes[n][1] for n in row if n in nodes_set), default=sizes[row[0]][1] if row else 0.0)
        for n in row:
            y[n] = y_top + h / 2
        result.right[k] = max((x[n] + sizes[n][0] / 2 for n in row), default=0.0)
        y_top += h + gap_y
    result.x = {n: x[n] for n in nodes}
    result.y = {n: y[n] for n in nodes}
    result.bends = {e: [(x[d], y[d]) for d in chain] for e, chain in chains.items()}
    result.width = max(result.right.values(), default=0.0) + margin
    result.height = y_top - gap_y + margin
    return result


def _spread(row: list[str], want: dict[str, float], sizes: dict[str, tuple[float, float]], gap: float,
            x: dict[str, float]) -> None:
    """Put the row's nodes at their wanted x, in their order, at least ``gap`` apart, centred on the mean
    of what they want."""
    if not row:
        return
    placed: list[float] = []
    for i, n in enumerate(row):
        at = want[n]
        if i:
            prev = row[i - 1]
            at = max(at, placed[-1] + sizes[prev][0] / 2 + gap + sizes[n][0] / 2)
        placed.append(at)
    shift = sum(want[n] for n in row) / len(row) - sum(placed) / len(placed)
    for n, at in zip(row, placed):
        x[n] = at + shift
