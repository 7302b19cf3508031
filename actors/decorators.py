"""``@step`` and ``@catch_error``, and the reading of a step's signature (LlamaIndex's ``workflows.decorators``).

A step's accepted event types come from the annotation of its event parameter, its emitted types from its
return annotation (unions and ``None`` allowed). The ``Context`` parameter is optional and found by its
annotation; parameters annotated ``Annotated[T, Resource(...)]`` receive resources.

A signature is read when the decorator runs, as in LlamaIndex Workflows, so a bad one is a
``WorkflowValidationError`` at the class statement. The one exception: annotations that name something not
defined yet (a string annotation naming a class defined after the step) are read later, when the workflow's
graph is first needed (construction, ``validate()`` or ``run()``).
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Callable, Literal, TypeVar, overload

from .errors import WorkflowValidationError
from .events import Event, StepFailedEvent
from .placement import ResourceRequest
from .resource import ResourceDescriptor

if TYPE_CHECKING:
    from .workflow import Workflow

F = TypeVar("F", bound=Callable[..., Any])

STEP_ATTR = "__procflow_step__"
DEFAULT_NUM_WORKERS = 4
GRAPH_CHECKS = ("reachability", "terminal_event", "dead_end")
STEP_GRAPH_CHECKS = ("reachability", "dead_end")
WorkflowGraphCheck = Literal["reachability", "terminal_event", "dead_end"]
StepGraphCheck = Literal["reachability", "dead_end"]


@dataclass(frozen=True, slots=True)
class StepConfig:
    """What the decorator recorded (it travels with the function to the workers: keep it small)."""

    num_workers: int
    retry_policy: Any
    free_function: bool
    skip_graph_checks: tuple[str, ...] = ()
    accept_event_subclasses: bool = False
    role: str = "step"  # or "catch_error"
    for_steps: tuple[str, ...] | None = None  # catch_error: the steps it covers; None: every unclaimed one
    max_recoveries: int = 1
    placement: ResourceRequest | None = None  # what its worker must hold (actors.placement)


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
    resources: tuple[tuple[str, ResourceDescriptor, Any], ...] = ()
    role: str = "step"
    for_steps: tuple[str, ...] | None = None
    max_recoveries: int = 1
    accept_event_subclasses: bool = False
    skip_graph_checks: tuple[str, ...] = ()
    placement: ResourceRequest | None = None  # what its worker must hold (actors.placement)

    @property
    def is_catch_error(self) -> bool:
        return self.role == "catch_error"


# Signatures read when the decorator ran (kept beside the functions, never shipped with them).
# The spec read when the decorator ran is kept on the function itself (``fn.__dict__``), not in a weak
# table keyed by the function: the spec refers to the function, so such a table would keep every step (and
# the event classes its signature names) alive for ever.
_READ_ATTR = "__procflow_step_spec__"


def is_free_function(qualname: str) -> bool:
    """Whether a function with this ``__qualname__`` is not a method: defined at module level or directly
    inside a function (``f.<locals>.g``), not in a class body."""
    parts = qualname.split(".")
    return len(parts) == 1 or parts[-2] == "<locals>"


def _caller_locals(depth: int) -> dict[str, Any]:
    """The locals of the frames around the decorated definition (outermost first, inner ones winning), so
    that annotations naming classes local to a function resolve when the decorator runs."""
    frame = sys._getframe(2)
    frames = []
    for _ in range(depth):
        if frame is None:
            break
        frames.append(frame)
        frame = frame.f_back  # type: ignore[assignment]
    out: dict[str, Any] = {}
    for fr in reversed(frames):
        if fr.f_code.co_name != "<module>":
            out.update(fr.f_locals)
    return out


def _read_now(fn: Callable[..., Any], config: StepConfig, localns: dict[str, Any]) -> StepSpec | None:
    """The step's spec, read now; None when an annotation names something not defined yet."""
    try:
        typing.get_type_hints(fn, localns=localns, include_extras=True)
    except NameError:
        return None
    except Exception as exc:
        raise WorkflowValidationError(f"step '{fn.__name__}': cannot resolve its annotations ({exc})") from exc
    spec = read_step(fn.__name__, fn, config, localns)
    setattr(fn, _READ_ATTR, spec)
    return spec


@overload
def step(func: F, /) -> F: ...
@overload
def step(
    *,
    workflow: type[Workflow] | None = None,
    num_workers: int = DEFAULT_NUM_WORKERS,
    retry_policy: Any = None,
    skip_graph_checks: list[StepGraphCheck] | None = None,
    accept_event_subclasses: bool = False,
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
    skip_graph_checks: list[StepGraphCheck] | None = None,
    accept_event_subclasses: bool = False,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    memory: float | None = None,
    resources: dict[str, float] | None = None,
    scheduling_strategy: Any = None,
) -> Any:
    """Mark a method (or, with ``workflow=Cls``, a free function) as a step.

    ``num_workers`` caps how many invocations of this step run at once within one run; the rest queue.
    ``retry_policy`` (see ``actors.retry_policy``) runs the step again after a failure. ``skip_graph_checks``
    exempts this step from the "reachability" and/or "dead_end" checks of ``validate()``.
    ``accept_event_subclasses`` makes the step receive subclasses of the event types it accepts too.
    ``num_cpus``, ``num_gpus``, ``memory`` (bytes), ``resources`` and ``scheduling_strategy`` say what the
    worker running it must hold, with Ray's names (see ``actors.placement``).
    """
    if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 1:
        raise WorkflowValidationError(f"step(num_workers={num_workers!r}): num_workers must be an int >= 1")
    placement = ResourceRequest.of(num_cpus=num_cpus, num_gpus=num_gpus, memory=memory, resources=resources,
                                   scheduling_strategy=scheduling_strategy)
    skips = tuple(skip_graph_checks or ())
    unknown = [c for c in skips if c not in STEP_GRAPH_CHECKS]
    if unknown:
        raise WorkflowValidationError(f"step(skip_graph_checks=...): unknown checks {unknown}; a step can skip "
                                      f"{', '.join(STEP_GRAPH_CHECKS)}")

    def decorate(fn: F, localns: dict[str, Any]) -> F:
        if not callable(fn):
            raise WorkflowValidationError(f"@step decorates functions, not {fn!r}")
        free = is_free_function(getattr(fn, "__qualname__", fn.__name__))
        if free and workflow is None:
            raise WorkflowValidationError(
                f"@step on the free function '{fn.__name__}': pass the workflow class it belongs to, "
                f"@step(workflow=MyWorkflow)")
        config = StepConfig(num_workers, retry_policy, free_function=free, skip_graph_checks=skips,
                            accept_event_subclasses=accept_event_subclasses, placement=placement)
        _read_now(fn, config, localns)
        setattr(fn, STEP_ATTR, config)
        if free and workflow is not None:
            workflow.add_step(fn)
        return fn

    if func is not None:
        return decorate(func, _caller_locals(2))  # type: ignore[type-var]

    def with_options(fn: F) -> F:
        return decorate(fn, _caller_locals(2))

    return with_options


@overload
def catch_error(func: F, /) -> F: ...
@overload
def catch_error(*, for_steps: list[str] | None = None, max_recoveries: int = 1) -> Callable[[F], F]: ...


def catch_error(func: Callable[..., Any] | None = None, /, *, for_steps: list[str] | None = None,
                max_recoveries: int = 1) -> Any:
    """Mark a method taking a ``StepFailedEvent`` as the handler of steps that failed for good (their retries
    spent). ``for_steps`` names the steps it covers; without it, it covers every step no other handler claims
    (one such wildcard handler per workflow). It may return any event: a ``StopEvent`` ends the run
    successfully. It runs at most ``max_recoveries`` times along one chain of events; past that the run fails
    with the step's exception."""
    if not isinstance(max_recoveries, int) or isinstance(max_recoveries, bool) or max_recoveries < 1:
        raise WorkflowValidationError(f"catch_error(max_recoveries={max_recoveries!r}) must be an int >= 1")
    if for_steps is not None and (not isinstance(for_steps, list)
                                  or not all(isinstance(s, str) for s in for_steps)):
        raise WorkflowValidationError("catch_error(for_steps=...) takes a list of step names, or None")

    def decorate(fn: F, localns: dict[str, Any]) -> F:
        free = is_free_function(getattr(fn, "__qualname__", fn.__name__))
        config = StepConfig(1, None, free_function=free, role="catch_error",
                            for_steps=tuple(for_steps) if for_steps is not None else None,
                            max_recoveries=max_recoveries)
        spec = _read_now(fn, config, localns)
        if spec is not None:
            check_handler(spec)
        setattr(fn, STEP_ATTR, config)
        return fn

    if func is not None:
        return decorate(func, _caller_locals(2))  # type: ignore[type-var]

    def with_options(fn: F) -> F:
        return decorate(fn, _caller_locals(2))

    return with_options


def check_handler(spec: StepSpec) -> None:
    """A ``@catch_error`` handler takes exactly ``StepFailedEvent``."""
    if spec.accepts != (StepFailedEvent,):
        raise WorkflowValidationError(
            f"@catch_error handler '{spec.name}' must take a StepFailedEvent as its event parameter, not "
            f"{' | '.join(t.__name__ for t in spec.accepts)}")


def spec_for(name: str, fn: Callable[..., Any], config: StepConfig, localns: dict[str, Any] | None) -> StepSpec:
    """The step's spec: read when it was decorated, else now."""
    spec = getattr(fn, _READ_ATTR, None)
    if spec is None or spec.name != name:
        spec = read_step(name, fn, config, localns)
        if spec.is_catch_error:
            check_handler(spec)
    return spec


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
    resources = []
    for p in params:
        ann = hints.get(p.name, inspect.Parameter.empty)
        if typing.get_origin(ann) is Annotated:
            base, *meta = typing.get_args(ann)
            descriptor = next((m for m in meta if isinstance(m, ResourceDescriptor)), None)
            if descriptor is not None:
                descriptor.set_type_annotation(base)
                resources.append((p.name, descriptor, base))
                continue
            ann = base
        if _is_context(ann):
            ctx_param = p.name
            args = typing.get_args(ann)
            state_type = args[0] if args and isinstance(args[0], type) else None
        elif (events := _event_types(ann)) and ev_param is None:
            ev_param, accepts = p.name, events
        elif p.default is inspect.Parameter.empty and (_names_a_list(ann) or _event_types(ann)):
            raise WorkflowValidationError(
                f"step '{name}': parameter '{p.name}' takes a list (fan-in) or a second event (a join): not "
                "supported by procflow yet; take one event and gather with ctx.collect_events (see "
                "docs/porting.md)")
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
    if emits is None and _names_a_list(hints["return"]):
        raise WorkflowValidationError(
            f"step '{name}': returning list[...] (a fan-out batch) is not supported by procflow yet; send each "
            "event with ctx.send_event and gather them with ctx.collect_events (see docs/porting.md)")
    if emits is None:
        raise WorkflowValidationError(
            f"step '{name}': return annotation {hints['return']!r} must be Event types and/or None")
    if config.retry_policy is not None and not callable(getattr(config.retry_policy, "next", None)):
        raise WorkflowValidationError(
            f"step '{name}': retry_policy {config.retry_policy!r} has no next(elapsed, attempts, error)")
    return StepSpec(name, fn, accepts, emits, ctx_param, ev_param, config.num_workers,
                    inspect.iscoroutinefunction(fn), config.free_function, config.retry_policy,
                    state_type, tuple(resources), config.role, config.for_steps, config.max_recoveries,
                    config.accept_event_subclasses, config.skip_graph_checks, config.placement)


def _type_hints(name: str, fn: Callable[..., Any], localns: dict[str, Any] | None) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, localns=localns, include_extras=True)
    except Exception as exc:  # a NameError for a forward reference, most often
        raise WorkflowValidationError(
            f"step '{name}': cannot resolve its annotations ({exc}); classes named in a step's "
            "annotations must be reachable from the step's module globals") from exc


def _names_a_list(ann: Any) -> bool:
    """Whether an annotation is ``list[SomeEvent]`` (or a union with one): LlamaIndex's fan-out and fan-in."""
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        return any(_names_a_list(arg) for arg in typing.get_args(ann))
    args = typing.get_args(ann)
    return typing.get_origin(ann) is list and bool(args) and bool(_event_types(args[0]))


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
