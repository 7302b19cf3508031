"""``Workflow.run()`` lands here (bound late by ``actors._launch``): validate the workflow, build the start event,
pick the engine, start the run, wrap its adapter in a ``WorkflowHandler``. The CLI starts runs through here too:
this is the one place where a run's arguments are checked.

Everything that can be wrong with the arguments raises here, synchronously, before anything starts:
``WorkflowValidationError`` (the graph), ``ValueError`` (``start_event`` is not a StartEvent),
``WorkflowRuntimeError`` (the keywords do not build the start event, or it is of another StartEvent class),
``ContextStateError`` (``ctx`` follows a run still going).
"""

from __future__ import annotations

from typing import Any

from actors import Context, StartEvent, Workflow, WorkflowRuntimeError
from actors.host import WorkflowSpec, continues_from, follow_run, validated_spec
from runtime import Engine, get_default_runtime

from .handler import WorkflowHandler


def start_event_for(wspec: WorkflowSpec, start_event: StartEvent | None, kwargs: dict[str, Any]) -> StartEvent:
    """The run's start event: ``start_event``, or one of the workflow's StartEvent class built from
    ``kwargs``."""
    start_type = wspec.start_event_type or StartEvent
    if start_event is None:
        try:
            return start_type(**kwargs)
        except Exception as exc:
            raise WorkflowRuntimeError(
                f"cannot build the start event {start_type.__name__} of {wspec.name} from "
                f"run({', '.join(f'{k}=...' for k in kwargs)}): {exc}") from exc
    if not isinstance(start_event, StartEvent):
        raise ValueError(f"run(start_event=...) takes a StartEvent, not a {type(start_event).__name__}")
    if kwargs:
        raise WorkflowRuntimeError(
            f"run() got both start_event and keyword arguments ({', '.join(kwargs)}); pass one of them")
    if not isinstance(start_event, start_type):
        raise WorkflowRuntimeError(
            f"{wspec.name} starts from {start_type.__name__}, not {type(start_event).__name__}")
    return start_event


def start_run(workflow: Workflow, ctx: Context[Any] | None, start_event: StartEvent | None,
              kwargs: dict[str, Any]) -> WorkflowHandler:
    wspec = validated_spec(workflow)
    kwargs = dict(kwargs)
    run_id = kwargs.pop("run_id", None)
    resumes = False
    if ctx is not None:
        _, image = continues_from(ctx)  # raises ContextStateError while ctx follows a run still going
        resumes = image is not None and image.resumes
    first: StartEvent | None = None if resumes else start_event_for(wspec, start_event, kwargs)
    engine: Engine = workflow.runtime if workflow.runtime is not None else get_default_runtime()
    adapter = engine.start_run(workflow, first, ctx, **({"run_id": run_id} if run_id is not None else {}))
    guard = engine.on_engine_thread
    handler = WorkflowHandler._create(workflow, adapter, wspec, guard)
    if ctx is not None:
        # The caller's Context now follows this run: reusing it for the next run carries the state on.
        follow_run(ctx, handler._backend)
        handler._ctx = ctx
    return handler
