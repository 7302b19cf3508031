"""``Workflow.run()`` lands here (bound late by ``actors._launch``): build the start event, pick the engine,
start the run, wrap its adapter in a ``WorkflowHandler``."""

from __future__ import annotations

from typing import Any

from actors import Context, StartEvent, Workflow, WorkflowRuntimeError
from actors.host import follow_run, validated_spec
from runtime import Engine, get_default_runtime

from .handler import WorkflowHandler


def start_run(workflow: Workflow, ctx: Context[Any] | None, start_event: StartEvent | None,
              kwargs: dict[str, Any]) -> WorkflowHandler:
    wspec = validated_spec(workflow)
    start_type = wspec.start_event_type or StartEvent
    if start_event is None:
        try:
            start_event = start_type(**kwargs)
        except Exception as exc:
            raise WorkflowRuntimeError(
                f"cannot build the start event {start_type.__name__} of {wspec.name} from "
                f"run({', '.join(f'{k}=...' for k in kwargs)}): {exc}") from exc
    elif kwargs:
        raise WorkflowRuntimeError(
            f"run() got both start_event and keyword arguments ({', '.join(kwargs)}); pass one of them")
    if not isinstance(start_event, start_type):
        raise WorkflowRuntimeError(
            f"{wspec.name} starts from {start_type.__name__}, not {type(start_event).__name__}")
    engine: Engine = workflow.runtime if workflow.runtime is not None else get_default_runtime()
    adapter = engine.start_run(workflow, start_event, ctx)
    guard = engine.on_engine_thread
    handler = WorkflowHandler._create(workflow, adapter, wspec, guard)
    if ctx is not None:
        # The caller's Context now follows this run: reusing it for the next run carries the state on.
        follow_run(ctx, handler._backend)
        handler._ctx = ctx
    return handler
