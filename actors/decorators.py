"""The ``@step`` decorator and the reading of a step's signature.

A step's accepted event types come from the annotation of its event parameter, its emitted types from its
return annotation (unions and ``None`` allowed). The ``Context`` parameter is optional and found by its
annotation. Signatures are read lazily, at validation time, so annotations may name classes defined later.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypeVar, overload

from .errors import WorkflowValidationError
from .events import Event
from .placement import ResourceRequest

if TYPE_CHECKING:
    from .workflow import Workflow

F = TypeVar("F", bound=Callable[..., Any])

STEP_ATTR = "__procflow_step__"
DEFAULT_NUM_WORKERS = 4


@dataclass(frozen=True, slots=True)
class StepConfig:
    """What the decorator recorded; the signature is read later by ``read_step``."""

    num_workers: int
    retry_policy: Any
    free_function: bool
    placement: ResourceRequest | None = None


@dataclass(frozen=True, slots=True)
class StepSpec:
    """A step as the runtime sees it."""

    name: str
    fn: Callable[..., Any]
    accepts: tuple[type[Event], ...]
    emits: tuple[type[Event], ...]
    ctx_param: str | None
    ev_param: str
    num_workers: int
    is_async: bool
    free_function: bool
    retry_policy: Any
    state_type: type | None = None
    placement: ResourceRequest | None = None  # what its worker must hold (actors.placement)


@overload
def step(func: F, /) -> F: ...
@overload
def step(
    *,
    workflow: type[Workflow] | None = None,
    num_workers: int = DEFAULT_NUM_WORKERS,
    retry_policy: Any = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    memory: float | None = None,
    resources: dict[str, float] | None = None,
    scheduling_strategy: Any = None,
) -> Callable[[F], F]: ...


def step(
    func: Callable[..., Any] | None = None,
    /,
    *,
    workflow: type[Workflow] | None = None,
    num_workers: int = DEFAULT_NUM_WORKERS,
    retry_policy: Any = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    memory: float | None = None,
    resources: dict[str, float] | None = None,
    scheduling_strategy: Any = None,
) -> Any:
    """Mark a method (or, with ``workflow=Cls``, a free function) as a step.

    ``num_workers`` caps how many invocations of this step run at once within one run; the rest queue.
    ``num_cpus``, ``num_gpus``, ``memory`` (bytes), ``resources`` and ``scheduling_strategy`` say what the
    worker running it must hold, with Ray's names (see ``actors.placement``).
    """
    if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 1:
        raise WorkflowValidationError(f"step(num_workers={num_workers!r}): num_workers must be an int >= 1")
    placement = ResourceRequest.of(num_cpus=num_cpus, num_gpus=num_gpus, memory=memory, resources=resources,
                                   scheduling_strategy=scheduling_strategy)

    def decorate(fn: F) -> F:
        if not callable(fn):
            raise WorkflowValidationError(f"@step decorates functions, not {fn!r}")
        config = StepConfig(num_workers, retry_policy, free_function=workflow is not None,
                            placement=placement)
        setattr(fn, STEP_ATTR, config)
        if workflow is not None:
            workflow._add_free_step(fn)
        return fn

    return decorate(func) if func is not None else decorate


def read_step(name: str, fn: Callable[..., Any], config: StepConfig,
              localns: dict[str, Any] | None = None) -> StepSpec:
    """Read a step's signature into a ``StepSpec``; a bad signature is a ``WorkflowValidationError``.
    ``localns`` resolves string annotations naming classes local to the function that made the workflow."""
    hints = _type_hints(name, fn, localns)
    params = list(inspect.signature(fn).parameters.values())
    if not config.free_function and params:
        params = params[1:]  # self
    ctx_param = None
    state_type = None
    ev_param = None
    accepts: tuple[type[Event], ...] = ()
    for p in params:
        ann = hints.get(p.name, inspect.Parameter.empty)
        if _is_context(ann):
            ctx_param = p.name
            args = typing.get_args(ann)
            state_type = args[0] if args and isinstance(args[0], type) else None
        elif (events := _event_types(ann)) and ev_param is None:
            ev_param, accepts = p.name, events
        elif p.default is inspect.Parameter.empty:
            raise WorkflowValidationError(
                f"step '{name}': parameter '{p.name}' is neither the Context nor an Event "
                f"(annotation {ann!r}); annotate the event parameter with an Event subclass")
    if ev_param is None:
        raise WorkflowValidationError(
            f"step '{name}' has no event parameter: annotate one parameter with the Event type it accepts")
    if "return" not in hints:
        raise WorkflowValidationError(
            f"step '{name}' has no return annotation: annotate it with the Event type(s) it returns, "
            "or None")
    emits = _event_types(hints["return"], allow_none=True)
    if emits is None:
        raise WorkflowValidationError(
            f"step '{name}': return annotation {hints['return']!r} must be Event types and/or None")
    if config.retry_policy is not None and not callable(getattr(config.retry_policy, "next", None)):
        raise WorkflowValidationError(
            f"step '{name}': retry_policy {config.retry_policy!r} has no next(elapsed, attempts, error)")
    return StepSpec(name, fn, accepts, emits, ctx_param, ev_param, config.num_workers,
                    inspect.iscoroutinefunction(fn), config.free_function, config.retry_policy,
                    state_type, placement=config.placement)


def _type_hints(name: str, fn: Callable[..., Any], localns: dict[str, Any] | None) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, localns=localns)
    except Exception as exc:  # a NameError for a forward reference, most often
        raise WorkflowValidationError(
            f"step '{name}': cannot resolve its annotations ({exc}); classes named in a step's "
            "annotations must be reachable from the step's module globals") from exc


def _is_context(ann: Any) -> bool:
    from .context import Context

    origin = typing.get_origin(ann) or ann
    return isinstance(origin, type) and issubclass(origin, Context)


def _event_types(ann: Any, allow_none: bool = False) -> tuple[type[Event], ...] | None:
    """The Event classes of an annotation (a class or a union); None when it names anything else."""
    if ann is None or ann is type(None):
        return () if allow_none else None
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        out: list[type[Event]] = []
        for arg in typing.get_args(ann):
            part = _event_types(arg, allow_none)
            if part is None:
                return None
            out.extend(part)
        return tuple(out)
    if isinstance(ann, type) and issubclass(ann, Event):
        return (ann,)
    return None
