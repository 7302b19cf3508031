"""The issue's example pipeline, as written, through the async and the blocking API."""

from __future__ import annotations

from actors import Context, Event, StartEvent, StopEvent, Workflow, step
from runtime import ProcessRuntime


class Chunk(Event):
    n: int


class Done(Event):
    value: int


class Pipeline(Workflow):
    @step
    async def split(self, ctx: Context, ev: StartEvent) -> Chunk | None:
        for i in range(ev.parts):
            ctx.send_event(Chunk(n=i))
        return None

    @step(num_workers=8)
    def crunch(self, ev: Chunk) -> Done:
        return Done(value=sum(i * i for i in range(30_000)) % 7 + ev.n)

    @step
    async def gather(self, ctx: Context, ev: Done) -> StopEvent | None:
        done = ctx.collect_events(ev, [Done] * 8)
        if done is None:
            return None
        return StopEvent(result=sorted(d.value for d in done))


EXPECTED = sorted(sum(i * i for i in range(30_000)) % 7 + n for n in range(8))


async def test_example_pipeline_streams_and_returns_the_sorted_values(rt: ProcessRuntime) -> None:
    handler = Pipeline(timeout=60, runtime=rt).run(parts=8)
    seen = [ev async for ev in handler.stream_events()]
    assert isinstance(seen[-1], StopEvent)
    assert await handler == EXPECTED


def test_example_pipeline_blocking_result(rt: ProcessRuntime) -> None:
    assert Pipeline(timeout=60, runtime=rt).run(parts=8).result(timeout=30) == EXPECTED
