"""Item 6: retries, as llama's "Error handling" page and ``workflows.retry_policy`` document them.

The composable API: ``retry_policy(retry=..., wait=..., stop=...)`` (defaults: retry every exception,
``wait_fixed(5)``, ``stop_after_attempt(3)``); retry conditions combine with ``|`` / ``&``, wait strategies with
``+`` (and ``sum``), stop conditions with ``|`` / ``&``. The deprecated ``ConstantDelayRetryPolicy(maximum_attempts=3,
delay=5)`` and ``ExponentialBackoffRetryPolicy(maximum_attempts=5, initial_delay=1.0, multiplier=2.0,
max_delay=60.0, jitter=True)`` are factories for such policies.

A policy's ``next(elapsed_time, attempts, error)`` returns the delay before the next attempt or None to give up;
``attempts`` counts the failures so far, **from 1** (wait strategies get ``attempts - 1``, from 0), so
``stop_after_attempt(3)`` / ``maximum_attempts=3`` runs a step three times in all.

Step executions are counted in a file (steps run in other processes on procflow).
"""

import warnings
from pathlib import Path
from typing import Any

import pytest

from ._support import Impl, aio, drain, outcome


def _deprecated(factory: Any, **kw: Any) -> Any:
    """Build a deprecated policy (llama warns DeprecationWarning; procflow need not)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return factory(**kw)


class RecordingPolicy:
    """A user-written policy: records every ``attempts`` it is asked about, retries at once until ``stop_at``."""

    def __init__(self, path: str, stop_at: int = 3) -> None:
        self.path, self.stop_at = path, stop_at

    def next(self, elapsed_time: float, attempts: int, error: Exception) -> float | None:
        with open(self.path, "a") as f:
            f.write(f"{attempts}\n")
        return None if attempts >= self.stop_at else 0.0


def failing_workflow(wf: Impl, policy: Any, fail_times: int = 100, error: type = ValueError) -> Any:
    """``work`` appends a line to ``ev.log`` per execution and raises ``error`` the first ``fail_times`` times."""
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    step, Workflow = wf.decorators.step, wf.workflow.Workflow

    class Flaky(Workflow):
        @step(retry_policy=policy)
        async def work(self, ev: StartEvent) -> StopEvent:
            with open(ev.log, "a") as f:
                f.write("run\n")
            runs = len(Path(ev.log).read_text().splitlines())
            if runs <= fail_times:
                raise error(f"failure {runs}")
            return StopEvent(result=f"succeeded on run {runs}")

    return Flaky


def executions(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


# --- the composable API, as values -------------------------------------------------------------------------
def test_retry_conditions_combine_with_or_and_and(wf: Impl) -> None:
    rp = wf.retry_policy
    either = rp.retry_if_exception_type(KeyError) | rp.retry_if_exception_message(match="temp")
    both = rp.retry_if_exception_type(ValueError) & rp.retry_if_exception_message(match="temp")
    assert isinstance(either, rp.retry_any) and isinstance(both, rp.retry_all)
    assert either(KeyError("x")) and either(ValueError("temporary")) and not either(ValueError("final"))
    assert both(ValueError("temporary")) and not both(KeyError("temporary")) and not both(ValueError("final"))


def test_wait_strategies_add_up_with_plus_and_sum(wf: Impl) -> None:
    rp = wf.retry_policy
    combined = rp.wait_fixed(1) + rp.wait_fixed(2)
    assert isinstance(combined, rp.wait_combine) and combined(0) == 3
    assert sum([rp.wait_fixed(1), rp.wait_fixed(2), rp.wait_fixed(3)])(0) == 6


def test_stop_conditions_combine_with_or_and_and(wf: Impl) -> None:
    rp = wf.retry_policy
    either = rp.stop_after_attempt(3) | rp.stop_after_delay(10)
    both = rp.stop_after_attempt(3) & rp.stop_after_delay(10)
    assert isinstance(either, rp.stop_any) and isinstance(both, rp.stop_all)
    assert either(3, 0.0) and either(1, 10.0) and not either(2, 9.0)
    assert both(3, 10.0) and not both(3, 0.0) and not both(1, 10.0)


def test_retry_conditions_follow_the_documented_semantics(wf: Impl) -> None:
    rp = wf.retry_policy
    cause = ValueError("outer")
    cause.__cause__ = ConnectionError("inner")
    checks = {
        "if_exception_type": rp.retry_if_exception_type((KeyError, TypeError))(TypeError()),
        "if_not_exception_type": rp.retry_if_not_exception_type(KeyError)(ValueError()),
        "unless_exception_type": not rp.retry_unless_exception_type(KeyError)(KeyError()),
        "message_exact": rp.retry_if_exception_message(message="retry me")(ValueError("retry me")),
        "message_exact_only": not rp.retry_if_exception_message(message="retry")(ValueError("retry me")),
        "message_match": rp.retry_if_exception_message(match=r"HTTP 5\d\d")(ValueError("got HTTP 503")),
        "not_message": rp.retry_if_not_exception_message(match="denied")(ValueError("timeout")),
        "cause_type": rp.retry_if_exception_cause_type(ConnectionError)(cause),
        "predicate": rp.retry_if_exception(lambda e: "rate" in str(e))(ValueError("rate limit")),
        "always": rp.retry_always()(ValueError()),
        "never": not rp.retry_never()(ValueError()),
    }
    assert all(checks.values()), f"{wf.side}: wrong: {[k for k, ok in checks.items() if not ok]}"
    with pytest.raises(TypeError):
        rp.retry_if_exception_message()


def test_wait_strategies_follow_the_documented_formulas(wf: Impl) -> None:
    rp = wf.retry_policy
    exponential = rp.wait_exponential(multiplier=1, exp_base=2, max=5)
    incrementing = rp.wait_incrementing(start=1, increment=2, max=4)
    chain = rp.wait_chain(rp.wait_fixed(1), rp.wait_fixed(2))
    assert [exponential(n) for n in range(4)] == [1, 2, 4, 5]
    assert [incrementing(n) for n in range(3)] == [1, 3, 4]
    assert [chain(n) for n in range(4)] == [1, 2, 2, 2]
    assert rp.wait_none()(3) == 0
    assert rp.wait_exponential_jitter(initial=1, exp_base=2, max=60, jitter=0)(2) == 4
    assert 1 <= rp.wait_random(min=1, max=2)(0) <= 2
    assert 0 <= rp.wait_random_exponential(multiplier=1, exp_base=2, max=60)(3) <= 8
    assert 0 <= rp.wait_full_jitter(multiplier=1, exp_base=2, max=60)(3) <= 8


def test_stop_before_delay_counts_the_upcoming_sleep(wf: Impl) -> None:
    rp = wf.retry_policy
    assert rp.stop_before_delay(10)(1, 8.0, upcoming_sleep=3.0)
    assert not rp.stop_before_delay(10)(1, 8.0, upcoming_sleep=1.0)
    assert not rp.stop_after_delay(10)(1, 8.0, upcoming_sleep=3.0)
    assert not rp.stop_never()(1000, 1e9)


def test_a_composed_policy_counts_failures_from_one(wf: Impl) -> None:
    rp = wf.retry_policy
    policy = rp.retry_policy(wait=rp.wait_chain(rp.wait_fixed(1), rp.wait_fixed(2)), stop=rp.stop_after_attempt(3))
    error = ValueError("x")
    assert [policy.next(0.0, n, error) for n in (1, 2, 3)] == [1, 2, None], (
        f"{wf.side}: next(elapsed, attempts, error) gets attempts = failures so far (1 at the first failure); "
        "the wait strategy gets attempts - 1; stop_after_attempt(3) stops at the third failure")
    assert isinstance(policy, rp.RetryPolicy)


def test_retry_policy_defaults_retry_everything_five_seconds_apart_three_attempts(wf: Impl) -> None:
    policy = wf.retry_policy.retry_policy()
    assert [policy.next(0.0, n, KeyError()) for n in (1, 2, 3)] == [5, 5, None]


def test_a_retry_condition_that_rejects_the_error_stops_the_policy(wf: Impl) -> None:
    rp = wf.retry_policy
    policy = rp.retry_policy(retry=rp.retry_if_exception_type(KeyError), wait=rp.wait_fixed(0))
    assert policy.next(0.0, 1, ValueError()) is None and policy.next(0.0, 1, KeyError()) == 0


def test_constant_delay_policy_takes_the_documented_parameters(wf: Impl) -> None:
    policy = _deprecated(wf.retry_policy.ConstantDelayRetryPolicy, maximum_attempts=3, delay=0.5)
    assert [policy.next(0.0, n, ValueError()) for n in (1, 2, 3)] == [0.5, 0.5, None]
    default = _deprecated(wf.retry_policy.ConstantDelayRetryPolicy)
    assert [default.next(0.0, n, ValueError()) for n in (1, 3)] == [5, None]


def test_exponential_backoff_policy_takes_the_documented_parameters(wf: Impl) -> None:
    factory = wf.retry_policy.ExponentialBackoffRetryPolicy
    policy = _deprecated(factory, maximum_attempts=4, initial_delay=1, multiplier=2, max_delay=3, jitter=False)
    assert [policy.next(0.0, n, ValueError()) for n in (1, 2, 3, 4)] == [1, 2, 3, None], (
        f"{wf.side}: delay = min(initial_delay * multiplier ** (attempts - 1), max_delay), None at maximum_attempts")
    jittered = _deprecated(factory, maximum_attempts=5, initial_delay=1, multiplier=2, max_delay=60, jitter=True)
    assert all(0 <= jittered.next(0.0, 3, ValueError()) <= 4 for _ in range(20))
    default = _deprecated(factory)
    assert default.next(0.0, 5, ValueError()) is None and default.next(0.0, 4, ValueError()) is not None


# --- policies in runs ---------------------------------------------------------------------------------------
@aio
async def test_stop_after_attempt_3_runs_the_step_three_times(wf: Impl, tmp_path: Path) -> None:
    rp = wf.retry_policy
    Flaky = failing_workflow(wf, rp.retry_policy(wait=rp.wait_fixed(0), stop=rp.stop_after_attempt(3)))
    log = tmp_path / "runs"
    kind, value = await outcome(wf.make(Flaky).run(log=str(log)))
    assert kind == "raised" and type(value) is ValueError and str(value) == "failure 3"
    assert executions(log) == 3


@aio
async def test_constant_delay_policy_with_maximum_attempts_3_runs_the_step_three_times(
        wf: Impl, tmp_path: Path) -> None:
    policy = _deprecated(wf.retry_policy.ConstantDelayRetryPolicy, maximum_attempts=3, delay=0)
    log = tmp_path / "runs"
    kind, value = await outcome(wf.make(failing_workflow(wf, policy)).run(log=str(log)))
    assert kind == "raised" and type(value) is ValueError
    assert executions(log) == 3, f"{wf.side}: maximum_attempts=3 means three executions in all"


@aio
async def test_a_step_that_succeeds_on_a_retry_completes_the_run(wf: Impl, tmp_path: Path) -> None:
    rp = wf.retry_policy
    Flaky = failing_workflow(wf, rp.retry_policy(wait=rp.wait_fixed(0), stop=rp.stop_after_attempt(5)), 2)
    log = tmp_path / "runs"
    assert await wf.make(Flaky).run(log=str(log)) == "succeeded on run 3"
    assert executions(log) == 3


@aio
async def test_a_retry_condition_that_rejects_the_error_fails_the_run_at_once(wf: Impl, tmp_path: Path) -> None:
    rp = wf.retry_policy
    policy = rp.retry_policy(retry=rp.retry_if_exception_type(KeyError), wait=rp.wait_fixed(0),
                             stop=rp.stop_after_attempt(5))
    log = tmp_path / "runs"
    kind, value = await outcome(wf.make(failing_workflow(wf, policy)).run(log=str(log)))
    assert kind == "raised" and type(value) is ValueError
    assert executions(log) == 1


@aio
async def test_a_custom_policy_sees_attempts_counted_from_one(wf: Impl, tmp_path: Path) -> None:
    seen = tmp_path / "attempts"
    log = tmp_path / "runs"
    Flaky = failing_workflow(wf, RecordingPolicy(str(seen), stop_at=3))
    kind, _ = await outcome(wf.make(Flaky).run(log=str(log)))
    assert kind == "raised"
    assert seen.read_text().split() == ["1", "2", "3"], (
        f"{wf.side}: policy.next(elapsed_time, attempts, error) must see attempts 1, 2, 3 (failures so far)")
    assert executions(log) == 3


@aio
async def test_the_failed_event_reports_the_attempts_made(wf: Impl, tmp_path: Path) -> None:
    rp = wf.retry_policy
    Flaky = failing_workflow(wf, rp.retry_policy(wait=rp.wait_fixed(0), stop=rp.stop_after_attempt(2)))
    handler = wf.make(Flaky).run(log=str(tmp_path / "runs"))
    events = await drain(handler)
    await outcome(handler)
    last = events[-1]
    assert isinstance(last, wf.events.WorkflowFailedEvent), f"{wf.side}: stream ended with {last!r}"
    assert (last.step_name, last.attempts, type(last.exception), str(last.exception)) == (
        "work", 2, ValueError, "failure 2")
