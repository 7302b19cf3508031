"""``ctx.collect_events`` buffers: per buffer id, one FIFO per event type, so an arrival costs O(1) plus one
look at the counts the caller expects (never a scan of everything buffered)."""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from typing import Any


class CollectBuffer:
    """Events waiting to be collected under one buffer id, kept per exact type in arrival order."""

    __slots__ = ("by_type",)

    def __init__(self) -> None:
        self.by_type: dict[type, deque[Any]] = defaultdict(deque)

    def add(self, event: Any, expected: list[type]) -> list[Any] | None:
        """Add ``event``; when there is one event per entry of ``expected`` (matched by exact type), take
        them out and return them in ``expected``'s order (each type's oldest first), else None."""
        self.by_type[type(event)].append(event)
        wanted = Counter(expected)
        if any(len(self.by_type.get(t, ())) < n for t, n in wanted.items()):
            return None
        out = [self.by_type[t].popleft() for t in expected]
        for t in wanted:
            if not self.by_type[t]:
                del self.by_type[t]
        return out

    def events(self) -> list[Any]:
        """Every buffered event (for a snapshot)."""
        return [ev for queue in self.by_type.values() for ev in queue]

    def __bool__(self) -> bool:
        return any(self.by_type.values())


class CollectBuffers(defaultdict[str, CollectBuffer]):
    """A run's collect buffers by buffer id (the step name unless the step chose one)."""

    def __init__(self) -> None:
        super().__init__(CollectBuffer)

    def restore(self, buffer_id: str, events: list[Any]) -> None:
        buffer = self[buffer_id]
        for ev in events:
            buffer.by_type[type(ev)].append(ev)
