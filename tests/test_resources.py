"""Item 8: resources (``actors.resource``) under processes: built in the workers, a cached one once per worker
process and shared by every step that worker runs; async factories; a failing factory names itself.

The compat suite checks LlamaIndex's behaviour where processes allow it; this file checks procflow's own rule
for ``cache=True`` (one value per worker process), which the compat suite cannot state for both sides.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Annotated, Any

import pytest

from actors import (
    Context, Event, StartEvent, StopEvent, Workflow, WorkflowFailedEvent, step,
)
from actors.resource import Resource, ResourceManager
from runtime import ProcessRuntime


class Token:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.value = uuid.uuid4().hex


def new_token() -> Token:
    return Token()


async def async_settings() -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"built_in": os.getpid(), "id": uuid.uuid4().hex}


class Use(Event):
    i: int


class Used(Event):
    i: int
    pid: int
    token: str
    token_pid: int
    settings_id: str


class PerWorker(Workflow):
    """``begin`` sends four ``Use``; ``use`` is a ``def`` step (it holds a whole worker), two at once, and the
    first two wait for each other, so they run on both workers; ``gather`` collects the four results."""

    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> Use | None:
        for i in range(4):
            ctx.send_event(Use(i=i))
        return None

    @step(num_workers=2)
    def use(self, ctx: Context, ev: Use, tok: Annotated[Token, Resource(new_token)],
            settings: Annotated[dict, Resource(async_settings)]) -> Used:
        with ctx.store.edit_state_sync() as state:
            state["arrived"] = state.get("arrived", 0) + 1
        deadline = time.monotonic() + 10
        while ctx.store.get_sync("arrived") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        return Used(i=ev.i, pid=os.getpid(), token=tok.value, token_pid=tok.pid, settings_id=settings["id"])

    @step
    async def gather(self, ctx: Context, ev: Used) -> StopEvent | None:
        got = ctx.collect_events(ev, [Used] * 4)
        if got is None:
            return None
        return StopEvent(result=[(u.pid, u.token, u.token_pid, u.settings_id) for u in got])


def test_a_cached_resource_is_built_once_per_worker_process_and_shared_by_the_steps_it_runs(
        rt: ProcessRuntime) -> None:
    used = PerWorker(runtime=rt).run().result(30)
    assert len(used) == 4
    pids = {pid for pid, *_ in used}
    assert pids == set(rt.worker_pids())  # both workers ran the step
    for pid in pids:
        mine = [u for u in used if u[0] == pid]
        assert len({token for _, token, _, _ in mine}) == 1  # one build per worker, shared by its steps
        assert len({settings for *_, settings in mine}) == 1  # an async factory too (from a def step)
        assert all(token_pid == pid for _, _, token_pid, _ in mine)  # built in that worker
    assert len({token for _, token, _, _ in used}) == 2  # each worker built its own


def test_a_second_run_on_the_same_workers_reuses_their_cached_resources(rt: ProcessRuntime) -> None:
    first = {(pid, token) for pid, token, *_ in PerWorker(runtime=rt).run().result(30)}
    second = {(pid, token) for pid, token, *_ in PerWorker(runtime=rt).run().result(30)}
    assert second <= first  # no worker built it again


def broken_client() -> Token:
    raise ConnectionError("no route to the model server")


class Broken(Workflow):
    @step
    async def call(self, ev: StartEvent, client: Annotated[Token, Resource(broken_client)]) -> StopEvent:
        return StopEvent(result="unreachable")


async def test_a_failing_factory_fails_the_step_with_its_own_error_naming_the_resource_and_the_step(
        rt: ProcessRuntime) -> None:
    handler = Broken(runtime=rt).run()
    events = [ev async for ev in handler.stream_events()]
    with pytest.raises(ConnectionError, match="no route") as info:
        await handler
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "broken_client" in notes and "'client'" in notes and "'call'" in notes
    assert isinstance(events[-1], WorkflowFailedEvent) and events[-1].step_name == "call"


def preset_only() -> str:
    raise AssertionError("the value set on the workflow's ResourceManager must win over the factory")


class Preset(Workflow):
    @step
    async def read(self, ev: StartEvent, value: Annotated[str, Resource(preset_only)]) -> StopEvent:
        return StopEvent(result=value)


def test_a_value_set_on_the_workflows_resource_manager_is_injected_by_the_factorys_name(
        rt: ProcessRuntime) -> None:
    manager = ResourceManager()
    asyncio.run(manager.set("preset_only", "from the caller"))
    assert Preset(runtime=rt, resource_manager=manager).run().result(30) == "from the caller"
