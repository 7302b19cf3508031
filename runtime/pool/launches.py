"""Failed launches: a bounded back-off per shape of worker, apart from the restart budget.

A worker that never started never ran anything, so its failure is not a crash: it does not spend the restart
budget (``budget.py``, for workers that died while running steps). Instead each shape of worker has its own
streak of failures, and each failure doubles the wait before that shape is launched again (0.5 s, 1 s, 2 s,
... at most 30 s); a worker of the shape saying Ready ends the streak. After ``LAUNCH_ATTEMPTS`` failures in a
row the pool gives up on what waits for that shape (the runs fail, naming the step and the reason; see
``sizing.py``) and, if no worker at all could start, declares itself broken; else it keeps trying at the
longest interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actors import ResourceRequest

LAUNCH_ATTEMPTS = 4
FIRST_DELAY = 0.5
MAX_DELAY = 30.0


@dataclass(slots=True)
class Streak:
    """Failed launches of one shape since its last success."""

    failures: int
    reason: str
    not_before: float  # loop time from which the shape may be launched again


class LaunchBackoff:
    def __init__(self) -> None:
        self._streaks: dict[ResourceRequest, Streak] = {}
        self.failures = 0  # every failed launch since the pool started (for stats)

    def failed(self, shape: ResourceRequest, reason: str, now: float) -> Streak:
        self.failures += 1
        streak = self._streaks.get(shape)
        count = 1 if streak is None else streak.failures + 1
        delay = min(MAX_DELAY, FIRST_DELAY * 2 ** (count - 1))
        streak = self._streaks[shape] = Streak(count, reason, now + delay)
        return streak

    def succeeded(self, shape: ResourceRequest) -> None:
        self._streaks.pop(shape, None)

    def wait(self, shape: ResourceRequest, now: float) -> float:
        """Seconds before ``shape`` may be launched again (0: now)."""
        streak = self._streaks.get(shape)
        return 0.0 if streak is None else max(0.0, streak.not_before - now)

    def gave_up(self, shape: ResourceRequest) -> Streak | None:
        """The shape's streak once it reached ``LAUNCH_ATTEMPTS`` failures, else None."""
        streak = self._streaks.get(shape)
        return streak if streak is not None and streak.failures >= LAUNCH_ATTEMPTS else None

    def next_retry(self) -> float | None:
        """The earliest loop time a shape in back-off may be launched again."""
        return min((s.not_before for s in self._streaks.values()), default=None)
