"""Retry policies for ``@step(retry_policy=...)``, with LlamaIndex Workflows' names and meaning.

A policy's ``next(elapsed_time, attempts, error)`` returns the delay in seconds before the next attempt, or
None to give up. ``attempts`` counts the retries already made (0 at the first failure). A worker that dies
while running the step counts as a failure too (``WorkerCrashedError``), so a retried step survives crashes.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class RetryPolicy(Protocol):
    def next(self, elapsed_time: float, attempts: int, error: Exception) -> float | None:
        """Seconds to wait before retrying, or None to fail the run with ``error``."""
        ...


class ConstantDelayRetryPolicy:
    """Retry up to ``maximum_attempts`` times, ``delay`` seconds apart."""

    def __init__(self, maximum_attempts: int = 3, delay: float = 5.0) -> None:
        self.maximum_attempts = maximum_attempts
        self.delay = delay

    def next(self, elapsed_time: float, attempts: int, error: Exception) -> float | None:
        return None if attempts >= self.maximum_attempts else self.delay


class ExponentialBackoffRetryPolicy:
    """Retry up to ``maximum_attempts`` times, waiting ``initial_delay * multiplier**attempts`` seconds
    (at most ``maximum_delay``)."""

    def __init__(self, initial_delay: float = 1.0, multiplier: float = 2.0, maximum_delay: float = 30.0,
                 maximum_attempts: int = 5) -> None:
        self.initial_delay, self.multiplier = initial_delay, multiplier
        self.maximum_delay, self.maximum_attempts = maximum_delay, maximum_attempts

    def next(self, elapsed_time: float, attempts: int, error: Exception) -> float | None:
        if attempts >= self.maximum_attempts:
            return None
        return min(self.initial_delay * self.multiplier ** attempts, self.maximum_delay)
