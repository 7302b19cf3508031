"""What an engine may do to a ``Workflow`` or a ``Context`` that a step author never does.

These are the only doors from ``runtime`` and ``handler`` into the private parts of ``actors``: read a
workflow's validated graph, bind a ``Context`` to a backend, and see what a ``run(ctx=...)`` continues from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..context import Context, ContextBackend

if TYPE_CHECKING:
    from ..context.snapshot import SnapshotImage
    from ..workflow import Workflow, WorkflowSpec


def spec_of(workflow: Workflow | type[Workflow]) -> WorkflowSpec:
    """The graph of a workflow (class or instance), read once per class; not validated."""
    cls = workflow if isinstance(workflow, type) else type(workflow)
    return cls._spec()


def validated_spec(workflow: Workflow) -> WorkflowSpec:
    """The graph of ``workflow``, validated unless the workflow disabled validation."""
    return workflow._validate()


def bind_context(backend: ContextBackend, workflow: Workflow | None = None) -> Context[Any]:
    """A new ``Context`` whose operations go to ``backend``."""
    return Context._bound(backend, workflow)


def follow_run(ctx: Context[Any], backend: ContextBackend) -> None:
    """Make the caller's own ``ctx`` follow a run it started (``run(ctx=ctx)``), through ``backend``."""
    ctx._backend = backend


def continues_from(ctx: Context[Any]) -> tuple[Any, SnapshotImage | None]:
    """What a run started with ``run(ctx=ctx)`` continues from: the engine's record of the run the Context
    last followed (or None), or the image the Context holds before its first run (its store, and what a
    snapshot given to ``Context.from_dict`` left to do)."""
    return ctx._carry()
