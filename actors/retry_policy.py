"""Retry policies for ``@step(retry_policy=...)``, with LlamaIndex Workflows' names and meaning.

A policy's ``next(elapsed_time, attempts, error)`` returns the delay in seconds before the next attempt, or None
to give up. ``attempts`` counts the failures so far, from 1: ``stop_after_attempt(3)`` (or
``maximum_attempts=3``) runs a step three times in all. A worker that dies while running the step counts as a
failure too (``WorkerCrashedError``), so a retried step survives crashes.

Build a policy from three parts with ``retry_policy(retry=..., wait=..., stop=...)``:

- a **retry condition** (is this error worth retrying?): ``retry_if_exception_type(...)``, ... combined with
  ``|`` and ``&``;
- a **wait strategy** (how long before the next attempt; it is given ``attempts - 1``, from 0):
  ``wait_fixed(s)``, ``wait_exponential(...)``, ... added up with ``+`` or ``sum``;
- a **stop condition** (when to give up): ``stop_after_attempt(n)``, ``stop_after_delay(s)``, ... combined with
  ``|`` and ``&``.

Any object with such a ``next`` method is a policy. Policies travel to the worker processes with the workflow,
so they must be picklable (every policy here is).
"""

from __future__ import annotations

import random
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

Seconds = int | float | timedelta


def _seconds(value: Seconds) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _rng(seed: int | None) -> random.Random | Any:
    return random.Random(seed) if seed is not None else random


@dataclass(frozen=True)
class RetryInfo:
    """What ``ctx.retry_info()`` tells a step about its attempts: ``retry_number`` (0 on the first attempt),
    the seconds since the first attempt began, and the previous attempt's exception and failure time (an aware
    UTC datetime), both None on the first attempt."""

    retry_number: int
    elapsed_seconds: float
    last_exception: Exception | None
    last_failed_at: datetime | None


@runtime_checkable
class RetryPolicy(Protocol):
    """Anything with ``next(elapsed_time, attempts, error)``: seconds to wait before retrying, or None."""

    def next(self, elapsed_time: float, attempts: int, error: Exception) -> float | None: ...


class RetryCondition(Protocol):
    """Whether an error is worth retrying."""

    def __call__(self, error: BaseException) -> bool: ...


class WaitStrategy(Protocol):
    """The delay before the next attempt; ``attempts`` is 0 before the first retry."""

    def __call__(self, attempts: int, *, seed: int | None = None) -> float: ...


class StopCondition(Protocol):
    """Whether to give up, after ``attempts`` failures, ``elapsed_time`` seconds, before a sleep of
    ``upcoming_sleep`` seconds."""

    def __call__(self, attempts: int, elapsed_time: float, *, upcoming_sleep: float = 0.0) -> bool: ...


# --- retry conditions ------------------------------------------------------------------------------------------
class _Retry:
    """A retry condition that combines with ``|`` (either) and ``&`` (both)."""

    def __call__(self, error: BaseException) -> bool:
        raise NotImplementedError

    def __or__(self, other: RetryCondition) -> retry_any:
        return retry_any(self, other)

    def __ror__(self, other: RetryCondition) -> retry_any:
        return retry_any(other, self)

    def __and__(self, other: RetryCondition) -> retry_all:
        return retry_all(self, other)

    def __rand__(self, other: RetryCondition) -> retry_all:
        return retry_all(other, self)


class retry_if_exception(_Retry):
    """Retry when ``predicate(error)`` is true."""

    def __init__(self, predicate: Callable[[BaseException], bool]) -> None:
        self.predicate = predicate

    def __call__(self, error: BaseException) -> bool:
        return bool(self.predicate(error))


class retry_if_exception_type(_Retry):
    """Retry when the error is an instance of ``exception_types``."""

    def __init__(self, exception_types: type[BaseException] | tuple[type[BaseException], ...] = Exception
                 ) -> None:
        self.exception_types = exception_types

    def __call__(self, error: BaseException) -> bool:
        return isinstance(error, self.exception_types)


class retry_if_not_exception_type(retry_if_exception_type):
    """Retry unless the error is an instance of ``exception_types``."""

    def __call__(self, error: BaseException) -> bool:
        return not isinstance(error, self.exception_types)


class retry_unless_exception_type(retry_if_not_exception_type):
    """The same as ``retry_if_not_exception_type`` (tenacity's name)."""


class retry_if_exception_message(_Retry):
    """Retry when ``str(error)`` equals ``message``, or when the regex ``match`` is found in it (give one)."""

    def __init__(self, message: str | None = None, match: str | re.Pattern[str] | None = None) -> None:
        if (message is None) == (match is None):
            raise TypeError("retry_if_exception_message() takes exactly one of 'message' and 'match'")
        self.message = message
        self.match = match
        self._pattern = re.compile(match) if isinstance(match, str) else match

    def __call__(self, error: BaseException) -> bool:
        text = str(error)
        if self.message is not None:
            return text == self.message
        return self._pattern is not None and self._pattern.search(text) is not None


class retry_if_not_exception_message(retry_if_exception_message):
    """Retry unless the message equals ``message`` or contains the regex ``match``."""

    def __call__(self, error: BaseException) -> bool:
        return not super().__call__(error)


class retry_if_exception_cause_type(_Retry):
    """Retry when an exception along the error's ``__cause__`` chain (``raise ... from ...``) is an instance of
    ``exception_types``; the error itself is not looked at, nor ``__context__``."""

    def __init__(self, exception_types: type[BaseException] | tuple[type[BaseException], ...] = Exception
                 ) -> None:
        self.exception_types = exception_types

    def __call__(self, error: BaseException) -> bool:
        seen: set[int] = set()
        cause = error.__cause__
        while cause is not None and id(cause) not in seen:
            if isinstance(cause, self.exception_types):
                return True
            seen.add(id(cause))
            cause = cause.__cause__
        return False


class retry_any(_Retry):
    """Retry when any of the conditions says so."""

    def __init__(self, *retries: RetryCondition) -> None:
        self.retries = retries

    def __call__(self, error: BaseException) -> bool:
        return any(r(error) for r in self.retries)


class retry_all(_Retry):
    """Retry when all of the conditions say so."""

    def __init__(self, *retries: RetryCondition) -> None:
        self.retries = retries

    def __call__(self, error: BaseException) -> bool:
        return all(r(error) for r in self.retries)


class retry_always(_Retry):
    """Retry every error."""

    def __call__(self, error: BaseException) -> bool:
        return True


class retry_never(_Retry):
    """Retry no error."""

    def __call__(self, error: BaseException) -> bool:
        return False


# --- wait strategies --------------------------------------------------------------------------------------------
class _Wait:
    """A wait strategy that adds up with ``+`` and ``sum()``."""

    def __call__(self, attempts: int, *, seed: int | None = None) -> float:
        raise NotImplementedError

    def __add__(self, other: WaitStrategy) -> wait_combine:
        return wait_combine(self, other)

    def __radd__(self, other: Any) -> Any:
        if isinstance(other, (int, float)) and other == 0:  # sum() starts from 0
            return self
        if callable(other):
            return wait_combine(other, self)
        return NotImplemented


class wait_fixed(_Wait):
    """Wait ``wait`` seconds before every retry."""

    def __init__(self, wait: Seconds) -> None:
        self.wait = _seconds(wait)

    def __call__(self, attempts: int, *, seed: int | None = None) -> float:
        return self.wait


class wait_none(wait_fixed):
    """Retry at once."""

    def __init__(self) -> None:
        super().__init__(0)


class wait_exponential(_Wait):
    """``multiplier * exp_base ** n`` seconds before retry ``n`` (0 first), kept within ``[min, max]``."""

    def __init__(self, multiplier: float = 1, max: Seconds = 60, exp_base: float = 2, min: Seconds = 0) -> None:
        self.multiplier, self.exp_base = multiplier, exp_base
        self.max, self.min = _seconds(max), _seconds(min)

    def __call__(self, attempts: int, *, seed: int | None = None) -> float:
        try:
            grown = self.multiplier * self.exp_base ** attempts
        except OverflowError:
            grown = float("inf")
        return max(max(0.0, self.min), min(grown, self.max))


class wait_incrementing(_Wait):
    """``start + increment * n`` seconds before retry ``n`` (0 first), at most ``max``, never below 0."""

    def __init__(self, start: Seconds = 0, increment: Seconds = 100, max: Seconds = float("inf")) -> None:
        self.start, self.increment, self.max = _seconds(start), _seconds(increment), _seconds(max)

    def __call__(self, attempts: int, *, seed: int | None = None) -> float:
        return max(0.0, min(self.start + self.increment * attempts, self.max))


class wait_random(_Wait):
    """A random wait, uniform in ``[min, max]`` seconds."""

    def __init__(self, min: Seconds = 0, max: Seconds = 1) -> None:
        self.min, self.max = _seconds(min), _seconds(max)

    def __call__(self, attempts: int, *, seed: int | None = None) -> float:
        return _rng(seed).uniform(self.min, self.max)


class wait_exponential_jitter(_Wait):
    """``initial * exp_base ** n`` plus a random ``[0, jitter]``, at most ``max`` seconds."""

    def __init__(self, initial: float = 1, max: float = 60, exp_base: float = 2, jitter: float = 1) -> None:
        self.initial, self.max, self.exp_base, self.jitter = initial, max, exp_base, jitter

    def __call__(self, attempts: int, *, seed: int | None = None) -> float:
        try:
            grown = self.initial * self.exp_base ** attempts
        except OverflowError:
            grown = float("inf")
        return max(0.0, min(grown + _rng(seed).uniform(0, self.jitter), self.max))


class wait_random_exponential(_Wait):
    """A random wait, uniform between ``min`` and ``multiplier * exp_base ** n`` (at most ``max``) seconds."""

    def __init__(self, multiplier: float = 1, max: Seconds = 60, exp_base: float = 2, min: Seconds = 0) -> None:
        self.multiplier, self.exp_base = multiplier, exp_base
        self.max, self.min = _seconds(max), _seconds(min)

    def __call__(self, attempts: int, *, seed: int | None = None) -> float:
        try:
            high = self.multiplier * self.exp_base ** attempts
        except OverflowError:
            high = float("inf")
        low = max(0.0, self.min)
        return _rng(seed).uniform(low, max(low, min(high, self.max)))


def wait_full_jitter(multiplier: float = 1, exp_base: float = 2, max: Seconds = 60, min: Seconds = 0
                     ) -> wait_random_exponential:
    """The same as ``wait_random_exponential``."""
    return wait_random_exponential(multiplier=multiplier, max=max, exp_base=exp_base, min=min)


class wait_chain(_Wait):
    """The first strategy before the first retry, the second before the second, ...; the last one after."""

    def __init__(self, *strategies: WaitStrategy) -> None:
        if not strategies:
            raise ValueError("wait_chain() needs at least one strategy")
        self.strategies = strategies

    def __call__(self, attempts: int, *, seed: int | None = None) -> float:
        index = min(max(attempts, 0), len(self.strategies) - 1)
        return self.strategies[index](attempts, seed=seed)


class wait_combine(_Wait):
    """The sum of the strategies' waits."""

    def __init__(self, *strategies: WaitStrategy) -> None:
        self.strategies = strategies

    def __call__(self, attempts: int, *, seed: int | None = None) -> float:
        return sum(s(attempts, seed=seed) for s in self.strategies)


# --- stop conditions --------------------------------------------------------------------------------------------
class _Stop:
    """A stop condition that combines with ``|`` (either) and ``&`` (both)."""

    def __call__(self, attempts: int, elapsed_time: float, *, upcoming_sleep: float = 0.0) -> bool:
        raise NotImplementedError

    def __or__(self, other: StopCondition) -> stop_any:
        return stop_any(self, other)

    def __ror__(self, other: StopCondition) -> stop_any:
        return stop_any(other, self)

    def __and__(self, other: StopCondition) -> stop_all:
        return stop_all(self, other)

    def __rand__(self, other: StopCondition) -> stop_all:
        return stop_all(other, self)


class stop_after_attempt(_Stop):
    """Give up once ``max_attempt_number`` attempts have failed."""

    def __init__(self, max_attempt_number: int) -> None:
        self.max_attempt_number = max_attempt_number

    def __call__(self, attempts: int, elapsed_time: float, *, upcoming_sleep: float = 0.0) -> bool:
        return attempts >= self.max_attempt_number


class stop_after_delay(_Stop):
    """Give up once ``max_delay`` seconds have passed."""

    def __init__(self, max_delay: Seconds) -> None:
        self.max_delay = _seconds(max_delay)

    def __call__(self, attempts: int, elapsed_time: float, *, upcoming_sleep: float = 0.0) -> bool:
        return elapsed_time >= self.max_delay


class stop_before_delay(_Stop):
    """Give up when the coming sleep would end past ``max_delay`` seconds."""

    def __init__(self, max_delay: Seconds) -> None:
        self.max_delay = _seconds(max_delay)

    def __call__(self, attempts: int, elapsed_time: float, *, upcoming_sleep: float = 0.0) -> bool:
        return elapsed_time + upcoming_sleep >= self.max_delay


class stop_any(_Stop):
    """Give up when any of the conditions says so."""

    def __init__(self, *stops: StopCondition) -> None:
        self.stops = stops

    def __call__(self, attempts: int, elapsed_time: float, *, upcoming_sleep: float = 0.0) -> bool:
        return any(s(attempts, elapsed_time, upcoming_sleep=upcoming_sleep) for s in self.stops)


class stop_all(_Stop):
    """Give up when all of the conditions say so."""

    def __init__(self, *stops: StopCondition) -> None:
        self.stops = stops

    def __call__(self, attempts: int, elapsed_time: float, *, upcoming_sleep: float = 0.0) -> bool:
        return all(s(attempts, elapsed_time, upcoming_sleep=upcoming_sleep) for s in self.stops)


class stop_never(_Stop):
    """Never give up (bound the run with its timeout)."""

    def __call__(self, attempts: int, elapsed_time: float, *, upcoming_sleep: float = 0.0) -> bool:
        return False


# --- policies ------------------------------------------------------------------------------------------------------
class ComposedRetryPolicy:
    """A policy made of a retry condition, a wait strategy and a stop condition (see ``retry_policy``)."""

    def __init__(self, retry: RetryCondition | None, wait: WaitStrategy, stop: StopCondition) -> None:
        self.retry, self.wait, self.stop = retry, wait, stop

    def next(self, elapsed_time: float, attempts: int, error: Exception, *, seed: int | None = None
             ) -> float | None:
        if self.retry is not None and not self.retry(error):
            return None
        delay = self.wait(max(attempts - 1, 0), seed=seed)
        if self.stop(attempts, elapsed_time, upcoming_sleep=delay):
            return None
        return delay

    def __repr__(self) -> str:
        return f"retry_policy(retry={self.retry!r}, wait={self.wait!r}, stop={self.stop!r})"


def retry_policy(retry: RetryCondition | None = None, wait: WaitStrategy | None = None,
                 stop: StopCondition | None = None) -> RetryPolicy:
    """A policy: retry the errors ``retry`` accepts (all when None), waiting ``wait`` (default 5 s) before each
    retry, until ``stop`` says to give up (default: after 3 attempts)."""
    return ComposedRetryPolicy(retry, wait if wait is not None else wait_fixed(5),
                               stop if stop is not None else stop_after_attempt(3))


def ConstantDelayRetryPolicy(maximum_attempts: int = 3, delay: float = 5) -> RetryPolicy:  # noqa: N802
    """Deprecated: ``retry_policy(wait=wait_fixed(delay), stop=stop_after_attempt(maximum_attempts))``."""
    warnings.warn("ConstantDelayRetryPolicy is deprecated; use retry_policy(wait=wait_fixed(delay), "
                  "stop=stop_after_attempt(n))", DeprecationWarning, stacklevel=2)
    return ComposedRetryPolicy(None, wait_fixed(delay), stop_after_attempt(maximum_attempts))


def ExponentialBackoffRetryPolicy(maximum_attempts: int = 5, initial_delay: float = 1.0,  # noqa: N802
                                  multiplier: float = 2.0, max_delay: float = 60.0, jitter: bool = True
                                  ) -> RetryPolicy:
    """Deprecated: waits ``min(initial_delay * multiplier ** (attempts - 1), max_delay)`` seconds (a random
    time up to that with ``jitter``), ``maximum_attempts`` attempts in all."""
    warnings.warn("ExponentialBackoffRetryPolicy is deprecated; use retry_policy(wait=wait_exponential(...), "
                  "stop=stop_after_attempt(n))", DeprecationWarning, stacklevel=2)
    wait: WaitStrategy
    if jitter:
        wait = wait_random_exponential(multiplier=initial_delay, exp_base=multiplier, max=max_delay)
    else:
        wait = wait_exponential(multiplier=initial_delay, exp_base=multiplier, max=max_delay)
    return ComposedRetryPolicy(None, wait, stop_after_attempt(maximum_attempts))
