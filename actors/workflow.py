"""``Workflow``: a class whose ``@step`` methods form an event graph from a StartEvent to a StopEvent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar

import sys
import threading
import weakref

from pydantic import BaseModel

from .errors import WorkflowRuntimeError, WorkflowValidationError
from .events import StartEvent, StopEvent
from .decorators import STEP_ATTR, StepSpec, read_step

if TYPE_CHECKING:
    from .context import Context


class WorkflowSpec:
    """The validated graph of a workflow class: its steps and the events that connect them."""

    def __init__(self, name: str, steps: dict[str, StepSpec]) -> None:
        self.name = name
        self.steps = steps
        self.validated = False
        self.start_event_type = _start_event_type(name, steps)
        self.state_type = _state_type(name, steps)
        self.consumers: dict[type, tuple[str, ...]] = {}
        for spec in steps.values():
            for ev_type in spec.accepts:
                self.consumers[ev_type] = self.consumers.get(ev_type, ()) + (spec.name,)

    def event_types(self) -> set[type]:
        """Every event class named in the steps' signatures."""
        return {t for s in self.steps.values() for t in (*s.accepts, *s.emits)}

    def check_target(self, event_type: type, step: str | None) -> None:
        """Raise if ``step`` is named but does not exist or does not accept ``event_type``."""
        if step is None:
            return
        spec = self.steps.get(step)
        if spec is None:
            raise WorkflowRuntimeError(
                f"workflow {self.name} has no step '{step}' (steps: {', '.join(sorted(self.steps))})")
        if event_type not in spec.accepts:
            raise WorkflowRuntimeError(
                f"step '{step}' does not accept {event_type.__name__} "
                f"(it accepts {', '.join(t.__name__ for t in spec.accepts)})")


class Workflow:
    """Base class of a workflow. ``Workflow(timeout=45.0)``; ``run(**kwargs)`` starts a run.

    ``timeout`` (seconds, None for none) ends a run with ``WorkflowTimeoutError``; ``num_concurrent_runs``
    caps the runs of this instance executing at once (extra runs wait); ``runtime`` picks the engine
    (default: the process runtime shared by the whole program).
    """

    _free_steps: ClassVar[dict[str, Callable[..., Any]]] = {}
    _steps_version: ClassVar[int] = 0  # bumped by step(workflow=...): every cached spec is then stale

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The namespace the class statement ran in, for annotations naming classes local to a function
        # (as pydantic keeps a model's parent namespace). Kept beside the class, not on it, so it is never
        # shipped to workers with the class.
        frame = sys._getframe(1)
        if frame.f_code.co_name != "<module>":
            _LOCALNS[cls] = dict(frame.f_locals)

    def __init__(
        self,
        timeout: float | None = 45.0,
        disable_validation: bool = False,
        verbose: bool = False,
        num_concurrent_runs: int | None = None,
        runtime: Any = None,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise WorkflowValidationError(f"Workflow(timeout={timeout!r}): timeout must be > 0 or None")
        if num_concurrent_runs is not None and num_concurrent_runs < 1:
            raise WorkflowValidationError(
                f"Workflow(num_concurrent_runs={num_concurrent_runs!r}) must be >= 1 or None")
        self.timeout = timeout
        self.disable_validation = disable_validation
        self.verbose = verbose
        self.num_concurrent_runs = num_concurrent_runs
        self.runtime = runtime

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["runtime"] = None  # the engine stays in the parent; workers never need it
        return state

    @property
    def workflow_name(self) -> str:
        return type(self).__qualname__

    @classmethod
    def _add_free_step(cls, fn: Callable[..., Any]) -> None:
        if "_free_steps" not in cls.__dict__:
            cls._free_steps = {}
        cls._free_steps[fn.__name__] = fn
        Workflow._steps_version += 1

    @classmethod
    def _spec(cls) -> WorkflowSpec:
        """The workflow's graph, read once per class."""
        cached = cls.__dict__.get("_procflow_spec")
        if cached is None or cached[0] != Workflow._steps_version:
            # Threads racing a class's first runs build its graph once, one at a time: storing it on the
            # class while another thread reads the class's namespace would break that reader.
            with _SPEC_LOCK:
                cached = cls.__dict__.get("_procflow_spec")
                if cached is None or cached[0] != Workflow._steps_version:
                    cached = (Workflow._steps_version, _build_spec(cls))
                    cls._procflow_spec = cached  # type: ignore[attr-defined]
        return cached[1]

    @classmethod
    def _all_step_functions(cls) -> dict[str, Callable[..., Any]]:
        found: dict[str, Callable[..., Any]] = {}
        for klass in reversed(cls.__mro__):
            for name, attr in list(vars(klass).items()):
                if callable(attr) and hasattr(attr, STEP_ATTR):
                    found[name] = attr
            found.update(vars(klass).get("_free_steps", {}))
        return found

    def _validate(self) -> WorkflowSpec:
        spec = type(self)._spec()
        if not self.disable_validation and not spec.validated:
            validate(spec)
            spec.validated = True
        return spec

    def run(self, ctx: Context[Any] | None = None, start_event: StartEvent | None = None,
            **kwargs: Any) -> Any:
        """Start a run and return its ``WorkflowHandler`` at once.

        The start event is ``start_event`` or is built from ``kwargs``. Works with or without a running event
        loop, from any thread. The handler comes from the ``handler`` package, bound late in ``_launch``.
        """
        from ._launch import start_run

        return start_run(self, ctx, start_event, kwargs)

    def __repr__(self) -> str:
        return f"<{self.workflow_name} timeout={self.timeout}>"


_SPEC_LOCK = threading.RLock()
_LOCALNS: weakref.WeakKeyDictionary[type, dict[str, Any]] = weakref.WeakKeyDictionary()


def _build_spec(cls: type[Workflow]) -> WorkflowSpec:
    localns: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        localns.update(_LOCALNS.get(klass, {}))
    steps = {name: read_step(name, fn, getattr(fn, STEP_ATTR), localns)
             for name, fn in cls._all_step_functions().items()}
    return WorkflowSpec(cls.__qualname__, steps)


def _start_event_type(name: str, steps: dict[str, StepSpec]) -> type[StartEvent] | None:
    starts = {t for s in steps.values() for t in s.accepts if issubclass(t, StartEvent)}
    if len(starts) > 1:
        names = ", ".join(sorted(t.__name__ for t in starts))
        raise WorkflowValidationError(
            f"workflow {name} accepts more than one start event type ({names}); use exactly one")
    return next(iter(starts), None)


def _state_type(name: str, steps: dict[str, StepSpec]) -> type[BaseModel] | None:
    """The ``S`` of the steps' ``Context[S]`` annotations (one type for the whole workflow)."""
    types_ = {s.state_type for s in steps.values() if s.state_type is not None}
    if len(types_) > 1:
        raise WorkflowValidationError(
            f"workflow {name}: steps annotate different state types "
            f"({', '.join(sorted(t.__name__ for t in types_))}); use one Context[State] type")
    state = next(iter(types_), None)
    if state is not None and not issubclass(state, BaseModel):
        raise WorkflowValidationError(
            f"workflow {name}: Context[{state.__name__}]: the state type must be a pydantic model")
    if state is not None:
        try:
            state()
        except Exception as exc:
            raise WorkflowValidationError(
                f"workflow {name}: state type {state.__name__} must be constructible with no arguments "
                f"(give every field a default): {exc}") from exc
    return state


def validate(spec: WorkflowSpec) -> None:
    """Raise ``WorkflowValidationError`` naming the step and event when the graph cannot run."""
    if not spec.steps:
        raise WorkflowValidationError(f"workflow {spec.name} has no steps; decorate methods with @step")
    if spec.start_event_type is None:
        raise WorkflowValidationError(
            f"workflow {spec.name}: no step accepts StartEvent (or a subclass); add a step taking it")
    if not any(issubclass(t, StopEvent) for s in spec.steps.values() for t in s.emits):
        raise WorkflowValidationError(
            f"workflow {spec.name}: no step can return a StopEvent; annotate the last step `-> StopEvent`")
    for s in spec.steps.values():
        for t in s.emits:
            if not issubclass(t, StopEvent) and t not in spec.consumers:
                raise WorkflowValidationError(
                    f"workflow {spec.name}: step '{s.name}' produces {t.__name__}, "
                    "but no step accepts it")
