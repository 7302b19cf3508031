"""Workflows the CLI tests run as files (``procflow run tests/cli/flows.py:Ask``)."""

from __future__ import annotations

import time

from actors import (
    Context, Event, HumanResponseEvent, InputRequiredEvent, StartEvent, StopEvent, Workflow, step,
)


class Ask(Workflow):
    """Human in the loop: two questions, one after the other; the result repeats the answers."""

    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> StopEvent:
        wait = float(ev.get("wait", 60))
        name = await ctx.wait_for_event(HumanResponseEvent, waiter_id="name", timeout=wait,
                                        waiter_event=InputRequiredEvent(prefix="Your name?"))
        colour = await ctx.wait_for_event(HumanResponseEvent, waiter_id="colour", timeout=wait,
                                          waiter_event=InputRequiredEvent(prefix="Favourite colour?"))
        return StopEvent(result={"name": name.response, "colour": colour.response})


class Item(Event):
    index: int
    seconds: float


class Worked(Event):
    index: int


class Fan(Workflow):
    """``n`` CPU-bound items (``seconds`` each) over the pool, then collected: a progress to watch."""

    @step
    async def spread(self, ctx: Context, ev: StartEvent) -> Item | None:
        n, seconds = int(ev.get("n", 6)), float(ev.get("seconds", 0.2))
        for i in range(n):
            ctx.send_event(Item(index=i, seconds=seconds))
        await ctx.store.set("n", n)
        return None

    @step(num_workers=8)
    def work(self, ev: Item) -> Worked:
        print(f"item {ev.index} in the worker")
        end = time.thread_time() + ev.seconds
        while time.thread_time() < end:
            pass
        return Worked(index=ev.index)

    @step
    async def collect(self, ctx: Context, ev: Worked) -> StopEvent | None:
        n = await ctx.store.get("n")
        done = ctx.collect_events(ev, [Worked] * n)
        if done is None:
            return None
        return StopEvent(result=sorted(w.index for w in done))


class Thought(Event):
    depth: int


class Answer(Event):
    text: str


class Nudge(HumanResponseEvent):
    """Sent from outside the run (no step returns it): a HumanResponseEvent, as validation asks."""


class Loop(Workflow):
    """Branches, a loop back, an event only the caller sends, human input: a graph with every kind."""

    @step
    async def think(self, ev: StartEvent | Thought) -> Thought | Answer:
        depth = ev.depth + 1 if isinstance(ev, Thought) else 0
        return Thought(depth=depth) if depth < 3 else Answer(text=f"thought {depth} times")

    @step
    async def nudged(self, ev: Nudge) -> Thought:
        return Thought(depth=0)

    @step
    async def check(self, ev: Answer) -> StopEvent:
        return StopEvent(result=ev.text)

    @step
    async def human(self, ev: HumanResponseEvent) -> StopEvent:
        return StopEvent(result=ev.response)
