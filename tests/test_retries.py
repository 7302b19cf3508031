"""Issue 4 item 4: ``@step(retry_policy=...)``; retries also cover a worker that died running the step.

``attempts`` counts the failures so far, from 1 (LlamaIndex Workflows' counting), so ``maximum_attempts=3``
allows three executions in all. Each execution records itself in the run's store (set before failing, so it
survives the failure).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
from conftest import wait_until

from actors import (
    ConstantDelayRetryPolicy, Context, Event, ExponentialBackoffRetryPolicy, RetryPolicy, StartEvent,
    StepStateChanged, StopEvent, WorkerCrashedError, Workflow, step,
)
from runtime import ProcessRuntime

DELAY = 0.05


class Flaky(Exception):
    pass


async def _record(ctx: Context) -> int:
    tries = [*await ctx.store.get("tries", default=[]), (os.getpid(), time.time())]
    await ctx.store.set("tries", tries)
    return len(tries)


def _record_sync(ctx: Context) -> int:
    tries = [*ctx.store.get_sync("tries", default=[]), (os.getpid(), time.time())]
    ctx.store.set_sync("tries", tries)
    return len(tries)


class AsyncRetry(Workflow):
    @step(retry_policy=ConstantDelayRetryPolicy(maximum_attempts=3, delay=DELAY))
    async def flaky(self, ctx: Context, ev: StartEvent) -> StopEvent:
        n = await _record(ctx)
        if n <= ev.failures:
            if ev.crash:
                os._exit(3)
            raise Flaky(f"attempt {n}")
        return StopEvent(result=n)


class DefRetry(Workflow):
    @step(retry_policy=ConstantDelayRetryPolicy(maximum_attempts=3, delay=DELAY))
    def flaky(self, ctx: Context, ev: StartEvent) -> StopEvent:
        n = _record_sync(ctx)
        if n <= ev.failures:
            if ev.crash:
                os._exit(3)
            raise Flaky(f"attempt {n}")
        return StopEvent(result=n)


FLOWS = [AsyncRetry, DefRetry]


async def _tries(handler: Any) -> list[tuple[int, float]]:
    return [tuple(t) for t in await handler.ctx.store.get("tries")]


@pytest.mark.parametrize("flow", FLOWS)
async def test_a_step_failing_twice_succeeds_on_its_third_execution(
        rt: ProcessRuntime, flow: type[Workflow]) -> None:
    handler = flow(runtime=rt).run(failures=2, crash=False)
    assert await asyncio.wait_for(handler, 30) == 3
    times = [t for _, t in await _tries(handler)]
    assert all(b - a >= DELAY * 0.9 for a, b in zip(times, times[1:]))  # the delay separates attempts


@pytest.mark.parametrize("flow", FLOWS)
def test_maximum_attempts_three_means_three_executions_in_all_then_the_error(
        rt: ProcessRuntime, flow: type[Workflow]) -> None:
    handler = flow(runtime=rt).run(failures=10, crash=False)
    with pytest.raises(Flaky, match="attempt 3") as info:
        handler.result(30)
    assert any("'flaky'" in note for note in getattr(info.value, "__notes__", []))
    assert len(asyncio.run(_tries(handler))) == 3


@pytest.mark.parametrize("flow", FLOWS)
def test_a_worker_crash_during_the_step_is_retried_on_a_live_worker(
        rt: ProcessRuntime, flow: type[Workflow]) -> None:
    handler = flow(runtime=rt).run(failures=1, crash=True)
    assert handler.result(30) == 2
    (crashed_pid, _), (retry_pid, _) = asyncio.run(_tries(handler))
    assert crashed_pid != retry_pid
    assert wait_until(lambda: len(rt.worker_pids()) == 2 and crashed_pid not in rt.worker_pids())


@pytest.mark.parametrize("flow", FLOWS)
def test_crashes_beyond_maximum_attempts_fail_the_run_with_worker_crashed_error(
        rt: ProcessRuntime, flow: type[Workflow]) -> None:
    handler = flow(runtime=rt).run(failures=10, crash=True)
    with pytest.raises(WorkerCrashedError) as info:
        handler.result(30)
    assert info.value.step == "flaky" and info.value.exitcode == 3
    assert len(asyncio.run(_tries(handler))) == 3
    assert wait_until(lambda: len(rt.worker_pids()) == 2)


class NoRetry(Workflow):
    @step(retry_policy=ConstantDelayRetryPolicy(maximum_attempts=0, delay=DELAY))
    async def flaky(self, ctx: Context, ev: StartEvent) -> StopEvent:
        await _record(ctx)
        raise Flaky("once")


def test_maximum_attempts_zero_means_a_single_execution(rt: ProcessRuntime) -> None:
    handler = NoRetry(runtime=rt).run()
    with pytest.raises(Flaky):
        handler.result(30)
    assert len(asyncio.run(_tries(handler))) == 1


def test_a_custom_policy_sees_the_failures_so_far_counted_from_one_and_the_error(rt: ProcessRuntime) -> None:
    calls: list[tuple[int, str]] = []

    class Recording:
        def next(self, elapsed_time: float, attempts: int, error: Exception) -> float | None:
            calls.append((attempts, type(error).__name__))
            return 0.0 if attempts < 3 else None

    assert isinstance(Recording(), RetryPolicy)

    class CustomRetry(Workflow):
        @step(retry_policy=Recording())
        async def flaky(self, ctx: Context, ev: StartEvent) -> StopEvent:
            raise Flaky(str(await _record(ctx)))

    with pytest.raises(Flaky, match="3"):
        CustomRetry(runtime=rt).run().result(30)
    assert calls == [(1, "Flaky"), (2, "Flaky"), (3, "Flaky")]


def test_exponential_backoff_grows_by_the_multiplier_up_to_the_maximum_delay() -> None:
    # LlamaIndex's parameter names (max_delay) and counting (attempts = failures so far, from 1).
    policy = ExponentialBackoffRetryPolicy(initial_delay=1.0, multiplier=3.0, max_delay=5.0,
                                           maximum_attempts=4, jitter=False)
    err = Flaky()
    assert [policy.next(0.0, n, err) for n in range(1, 5)] == [1.0, 3.0, 5.0, None]
    constant = ConstantDelayRetryPolicy(maximum_attempts=3, delay=0.5)
    assert [constant.next(0.0, n, err) for n in range(1, 4)] == [0.5, 0.5, None]


class Edited(Event):
    pass


class CrashInEdit(Workflow):
    """A def step dies while holding the state lock; its retry must get the lock (the dead edit is lost)."""

    @step(retry_policy=ConstantDelayRetryPolicy(maximum_attempts=2, delay=DELAY))
    def edit(self, ctx: Context, ev: StartEvent) -> StopEvent:
        n = _record_sync(ctx)
        with ctx.store.edit_state_sync() as state:
            state["edits"] = state.get("edits", 0) + 1
            if n == 1:
                os._exit(4)
        return StopEvent(result=ctx.store.get_sync("edits"))


def test_a_crash_while_holding_the_state_lock_releases_it_for_the_retry(rt: ProcessRuntime) -> None:
    assert CrashInEdit(runtime=rt).run().result(30) == 1


async def test_a_retried_step_shows_failed_then_running_again_in_the_internal_events(
        rt: ProcessRuntime) -> None:
    handler = AsyncRetry(runtime=rt).run(failures=1, crash=False)
    states = [ev.state async for ev in handler.stream_events(expose_internal=True)
              if isinstance(ev, StepStateChanged)]
    assert await handler == 2
    assert states == ["running", "failed", "running", "done"]
