"""The restart budget: how many unexpected worker deaths the pool absorbs before it gives up (as Erlang
supervisors do with MaxR restarts in MaxT seconds)."""

from __future__ import annotations

import time
from collections import deque


class RestartBudget:
    """At most ``max_restarts`` unexpected deaths in any ``window`` seconds."""

    def __init__(self, max_restarts: int, window: float) -> None:
        self.max_restarts, self.window = max_restarts, window
        self._deaths: deque[float] = deque()

    def spend(self) -> bool:
        """Record a death; False when it exceeds the budget."""
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > self.window:
            self._deaths.popleft()
        return len(self._deaths) <= self.max_restarts
