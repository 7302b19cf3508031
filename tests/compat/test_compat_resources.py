"""Item 8: resources (``workflows.resource``), as llama documents them.

A step parameter annotated ``Annotated[T, Resource(factory)]`` receives ``factory()``'s value; the factory may be
async (awaited) and may itself take resources the same way. ``Resource(factory, cache=True)`` (the default)
builds one value shared by every step; ``cache=False`` builds one per injection. A factory that raises fails the
step, and the run fails with the factory's exception.

Under processes a cached resource cannot be the *same object* in steps running in different workers. procflow
builds a cached resource once per *worker process* (where a model is loaded or a client opened once, and used by
every step that worker runs), so two steps see the same value only when they run on the same worker: the test
of "one value for every step" is skipped on procflow, and ``tests/test_resources.py`` checks procflow's
guarantee (one factory call per worker process) instead.
"""

import uuid
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from ._support import Impl, aio, drain, outcome


class Token:
    def __init__(self) -> None:
        self.value = uuid.uuid4().hex


def new_token() -> Token:
    return Token()


async def new_settings() -> dict[str, Any]:
    return {"mode": "async"}


def broken_factory() -> Token:
    raise RuntimeError("factory broke")


def token_pair_workflow(wf: Impl, cache: bool) -> Any:
    """first and second each get a token resource; the result says whether they got the same token."""
    Event, StartEvent, StopEvent = wf.events.Event, wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Resource = wf.decorators.step, wf.workflow.Workflow, wf.resource.Resource

    class Seen(Event):
        token: str

    class Pair(Workflow):
        @step
        async def first(self, ev: StartEvent, tok: Annotated[Token, Resource(new_token, cache=cache)]) -> Seen:
            return Seen(token=tok.value)

        @step
        async def second(self, ev: Seen, tok: Annotated[Token, Resource(new_token, cache=cache)]) -> StopEvent:
            return StopEvent(result=ev.token == tok.value)

    return Pair


@aio
async def test_a_resource_is_injected_into_a_step(wf: Impl) -> None:
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Resource = wf.decorators.step, wf.workflow.Workflow, wf.resource.Resource

    class Uses(Workflow):
        @step
        async def use(self, ev: StartEvent, tok: Annotated[Token, Resource(new_token)]) -> StopEvent:
            return StopEvent(result=(type(tok).__name__, len(tok.value)))

    assert await wf.make(Uses).run() == ("Token", 32)


@aio
async def test_a_cached_resource_gives_every_step_the_same_value(wf: Impl) -> None:
    if not wf.is_llama:
        pytest.skip("procflow caches a resource once per worker process: steps on different workers get "
                    "different values (tests/test_resources.py checks one factory call per worker)")
    assert await wf.make(token_pair_workflow(wf, cache=True)).run() is True, (
        f"{wf.side}: Resource(factory) (cache=True) must give both steps the value of one factory call")


@aio
async def test_an_uncached_resource_is_built_for_every_injection(wf: Impl) -> None:
    assert await wf.make(token_pair_workflow(wf, cache=False)).run() is False, (
        f"{wf.side}: Resource(factory, cache=False) must call the factory for each step")


@aio
async def test_an_async_factory_is_awaited(wf: Impl) -> None:
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Resource = wf.decorators.step, wf.workflow.Workflow, wf.resource.Resource

    class Uses(Workflow):
        @step
        async def use(self, ev: StartEvent, settings: Annotated[dict, Resource(new_settings)]) -> StopEvent:
            return StopEvent(result=settings)

    assert await wf.make(Uses).run() == {"mode": "async"}


@aio
async def test_a_factory_can_take_another_resource(wf: Impl) -> None:
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Resource = wf.decorators.step, wf.workflow.Workflow, wf.resource.Resource

    def labelled(tok: Annotated[Token, Resource(new_token)]) -> str:
        return f"label-{len(tok.value)}"

    class Uses(Workflow):
        @step
        async def use(self, ev: StartEvent, label: Annotated[str, Resource(labelled)]) -> StopEvent:
            return StopEvent(result=label)

    assert await wf.make(Uses).run() == "label-32"


@aio
async def test_a_failing_factory_fails_the_run_with_its_exception(wf: Impl) -> None:
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, Resource = wf.decorators.step, wf.workflow.Workflow, wf.resource.Resource

    class Broken(Workflow):
        @step
        async def use(self, ev: StartEvent, tok: Annotated[Token, Resource(broken_factory)]) -> StopEvent:
            return StopEvent(result="unreachable")

    handler = wf.make(Broken).run()
    events = await drain(handler)
    kind, value = await outcome(handler)
    assert kind == "raised" and type(value) is RuntimeError and str(value) == "factory broke", (
        f"{wf.side}: got {kind} {value!r}")
    last = events[-1]
    assert isinstance(last, wf.events.WorkflowFailedEvent) and last.step_name == "use"


class Limits(BaseModel):
    rate: int


@aio
async def test_resource_config_injects_a_pydantic_model_read_from_a_json_file(wf: Impl, tmp_path: Path) -> None:
    StartEvent, StopEvent = wf.events.StartEvent, wf.events.StopEvent
    step, Workflow, ResourceConfig = wf.decorators.step, wf.workflow.Workflow, wf.resource.ResourceConfig
    path = tmp_path / "limits.json"
    path.write_text('{"api": {"rate": 7}}')

    class Configured(Workflow):
        @step
        async def use(self, ev: StartEvent,
                      limits: Annotated[Limits, ResourceConfig(config_file=str(path), path_selector="api")]
                      ) -> StopEvent:
            return StopEvent(result=(type(limits).__name__, limits.rate))

    assert await wf.make(Configured).run() == ("Limits", 7)
