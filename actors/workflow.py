"""``Workflow``: a class whose ``@step`` methods form an event graph from a StartEvent to a StopEvent.

A workflow is checked at the moments LlamaIndex Workflows checks it:

- **definition** (``@step``, ``@catch_error``, ``add_step``): a step's signature, ``num_workers``, a free function
  without ``workflow=``, a step name taken twice: ``WorkflowValidationError``;
- **construction** (``Workflow(...)``): the start and stop event classes must be inferable (steps exist, one
  StartEvent class is accepted, one StopEvent class is returned): ``WorkflowConfigurationError``; bad
  constructor values: ``WorkflowValidationError``;
- **validate()** and **run()** (before anything starts; ``run()`` caches a success, ``validate()`` always
  checks): the event graph, see ``validate``: ``WorkflowValidationError``.
"""

from __future__ import annotations

import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from pydantic import BaseModel

from .decorators import GRAPH_CHECKS, STEP_ATTR, StepSpec, spec_for
from .errors import (
    WorkflowConfigurationError, WorkflowRuntimeError, WorkflowStepDoesNotExistError, WorkflowValidationError,
)
from .events import Event, StartEvent, StopEvent
from .resource import ResourceManager
from .validation import check_resource_configs, check_resources, infer_start_and_stop, validate

if TYPE_CHECKING:
    from .context import Context
    from .context.serializers import BaseSerializer


class WorkflowSpec:
    """The graph of a workflow class: its steps and the events that connect them."""

    def __init__(self, name: str, steps: dict[str, StepSpec], state_type: type[BaseModel] | None = None) -> None:
        self.name = name
        self.steps = steps
        self.start_types = {t for s in steps.values() for t in s.accepts if issubclass(t, StartEvent)}
        self.stop_types = {t for s in steps.values() for t in s.emits if issubclass(t, StopEvent)}
        self.start_event_type: type[StartEvent] | None = \
            next(iter(self.start_types)) if len(self.start_types) == 1 else None
        self.stop_event_type: type[StopEvent] | None = \
            next(iter(self.stop_types)) if len(self.stop_types) == 1 else None
        self.state_type = state_type
        self.consumers: dict[type, tuple[str, ...]] = {}
        for spec in steps.values():
            for ev_type in spec.accepts:
                self.consumers[ev_type] = self.consumers.get(ev_type, ()) + (spec.name,)
        self._subclass_steps = [s for s in steps.values() if s.accept_event_subclasses]
        self._consumers_of: dict[type, tuple[str, ...]] = {}
        self.handler_for: dict[str, str] = _handler_routes(steps)

    def consumers_of(self, cls: type) -> tuple[str, ...]:
        """The steps an event of exactly ``cls`` goes to: those accepting ``cls``, and those accepting a base
        class of it with ``accept_event_subclasses``."""
        found = self._consumers_of.get(cls)
        if found is None:
            found = self.consumers.get(cls, ())
            for s in self._subclass_steps:
                if s.name not in found and not issubclass(cls, StopEvent) \
                        and any(issubclass(cls, t) for t in s.accepts):
                    found += (s.name,)
            self._consumers_of[cls] = found
        return found

    def event_types(self) -> set[type]:
        """Every event class named in the steps' signatures."""
        return {t for s in self.steps.values() for t in (*s.accepts, *s.emits)}

    def check_target(self, event_type: type, step: str | None) -> None:
        """Raise if ``step`` is named but does not exist or does not accept ``event_type``."""
        if step is None:
            return
        spec = self.steps.get(step)
        if spec is None:
            raise WorkflowStepDoesNotExistError(
                f"workflow {self.name} has no step '{step}' (steps: {', '.join(sorted(self.steps))})")
        if step not in self.consumers_of(event_type):
            raise WorkflowRuntimeError(
                f"step '{step}' does not accept {event_type.__name__} "
                f"(it accepts {', '.join(t.__name__ for t in spec.accepts)})")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_consumers_of": {}}


def _handler_routes(steps: dict[str, StepSpec]) -> dict[str, str]:
    """Step name -> the ``@catch_error`` handler that covers it (scoped claims first, then the wildcard)."""
    handlers = [s for s in steps.values() if s.is_catch_error]
    routes: dict[str, str] = {}
    for h in handlers:
        for target in h.for_steps or ():
            routes.setdefault(target, h.name)
    wildcard = next((h for h in handlers if h.for_steps is None), None)
    if wildcard is not None:
        for name, s in steps.items():
            if not s.is_catch_error:
                routes.setdefault(name, wildcard.name)
    return routes


class Workflow:
    """Base class of a workflow. ``run(**kwargs)`` starts a run.

    ``Workflow(timeout=45.0, disable_validation=False, verbose=False, resource_manager=None,
    num_concurrent_runs=None, runtime=None, workflow_name=None, skip_graph_checks=None, serializer=None)``:
    ``timeout`` (seconds, None for none) ends a run with ``WorkflowTimeoutError``; ``num_concurrent_runs`` caps
    the runs of this instance executing at once (extra runs wait); ``runtime`` picks the engine (default: the
    process runtime shared by the whole program); ``skip_graph_checks`` names graph checks ``validate()``
    skips ("reachability", "terminal_event", "dead_end"); ``serializer`` encodes the state in
    ``Context.to_dict()``; ``resource_manager``: see ``actors.resource``.
    """

    _free_steps: ClassVar[dict[str, Callable[..., Any]]] = {}
    _steps_version: ClassVar[int] = 0  # bumped by add_step: every cached spec is then stale

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
        resource_manager: ResourceManager | None = None,
        num_concurrent_runs: int | None = None,
        runtime: Any = None,
        workflow_name: str | None = None,
        skip_graph_checks: set[str] | None = None,
        serializer: BaseSerializer | None = None,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise WorkflowValidationError(f"Workflow(timeout={timeout!r}): timeout must be > 0 or None")
        if num_concurrent_runs is not None and (not isinstance(num_concurrent_runs, int)
                                                or isinstance(num_concurrent_runs, bool)
                                                or num_concurrent_runs < 1):
            raise WorkflowValidationError(
                f"Workflow(num_concurrent_runs={num_concurrent_runs!r}) must be an int >= 1 or None")
        checks = set(skip_graph_checks or ())
        unknown = checks - set(GRAPH_CHECKS)
        if unknown:
            raise WorkflowValidationError(f"Workflow(skip_graph_checks=...): unknown checks {sorted(unknown)}; "
                                          f"the checks are {', '.join(GRAPH_CHECKS)}")
        self.timeout = timeout
        self.disable_validation = disable_validation
        self.verbose = verbose
        self.num_concurrent_runs = num_concurrent_runs
        self.runtime = runtime
        self.resource_manager = resource_manager or ResourceManager()
        self.skip_graph_checks = frozenset(checks)
        self.serializer = serializer
        self._workflow_name = workflow_name
        self._validated_version = -1
        self._uses_hitl = False
        infer_start_and_stop(type(self)._spec())

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["runtime"] = None  # the engine stays in the parent; workers never need it
        state["serializer"] = None  # snapshots are encoded on the caller's side only
        return state

    @property
    def workflow_name(self) -> str:
        """The name given to the constructor, else ``module.QualifiedClassName``."""
        if self._workflow_name is not None:
            return self._workflow_name
        cls = type(self)
        return f"{cls.__module__}.{cls.__qualname__}"

    @property
    def start_event_class(self) -> type[StartEvent]:
        """The StartEvent class the workflow's steps accept."""
        return infer_start_and_stop(type(self)._spec())[0]

    @property
    def stop_event_class(self) -> type[StopEvent]:
        """The StopEvent class the workflow's steps return."""
        return infer_start_and_stop(type(self)._spec())[1]

    @property
    def events(self) -> list[type[Event]]:
        """Every event class the steps accept or return."""
        return list(type(self)._spec().event_types())

    @classmethod
    def add_step(cls, func: Callable[..., Any]) -> None:
        """Add a ``@step``-decorated free function as a step of this class (what ``@step(workflow=cls)``
        does); ``WorkflowValidationError`` if it is not decorated or its name is taken."""
        if getattr(func, STEP_ATTR, None) is None:
            raise WorkflowValidationError(
                f"{getattr(func, '__name__', func)!r} is not a step: decorate it with @step first")
        name = func.__name__
        if name in cls._all_step_functions():
            raise WorkflowValidationError(
                f"workflow {cls.__qualname__} already has a step named '{name}'; choose another name")
        if "_free_steps" not in cls.__dict__:
            cls._free_steps = {}
        cls._free_steps[name] = func
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
                elif name in found and not name.startswith("__"):
                    del found[name]  # overridden by something that is not a step
            found.update(vars(klass).get("_free_steps", {}))
        return found

    def validate(self, *, validate_resource_configs: bool = True, validate_resources: bool = False) -> bool:
        """Check the workflow's event graph (always, even after a successful check); ``True`` when it uses
        human-in-the-loop (a step returns an InputRequiredEvent or takes a HumanResponseEvent).
        ``validate_resource_configs`` reads every ``ResourceConfig`` file; ``validate_resources`` also builds
        every resource here, in the caller's process (factories may need credentials or a network)."""
        spec = type(self)._spec()
        uses_hitl = validate(spec, self.skip_graph_checks)
        if validate_resource_configs:
            check_resource_configs(spec)
        if validate_resources:
            check_resources(spec)
        self._validated_version = Workflow._steps_version
        self._uses_hitl = uses_hitl
        return uses_hitl

    def _validate(self) -> WorkflowSpec:
        """The graph, checked once per version of the steps unless validation is disabled (what ``run()``
        does)."""
        spec = type(self)._spec()
        if not self.disable_validation and self._validated_version != Workflow._steps_version:
            self.validate()
        return spec

    def run(self, ctx: Context[Any] | None = None, start_event: StartEvent | None = None,
            **kwargs: Any) -> Any:
        """Start a run and return its ``WorkflowHandler`` at once.

        The start event is ``start_event`` or is built from ``kwargs``; ``run_id=`` names the run. With a
        ``ctx`` restored from a snapshot of a run still going, the run continues instead (no start event).
        Works with or without a running event loop, from any thread. The handler comes from the ``handler``
        package, bound late in ``_launch``.
        """
        from ._launch import start_run

        return start_run(self, ctx, start_event, kwargs)

    def __repr__(self) -> str:
        return f"<{self.workflow_name} timeout={self.timeout}>"


_SPEC_LOCK = threading.RLock()
_LOCALNS: weakref.WeakKeyDictionary[type, dict[str, Any]] = weakref.WeakKeyDictionary()


def _build_spec(cls: type[Workflow]) -> WorkflowSpec:
    from .context.state_store import most_derived

    localns: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        localns.update(_LOCALNS.get(klass, {}))
    steps = {name: spec_for(name, fn, getattr(fn, STEP_ATTR), localns)
             for name, fn in cls._all_step_functions().items()}
    types_ = {s.state_type for s in steps.values() if s.state_type is not None}
    for t in types_:
        if not (isinstance(t, type) and issubclass(t, BaseModel)):
            raise WorkflowValidationError(
                f"workflow {cls.__qualname__}: Context[{getattr(t, '__name__', t)}]: the state type must be a "
                "pydantic model")
    try:
        state = most_derived(types_)  # type: ignore[arg-type]
    except ValueError as exc:
        raise WorkflowValidationError(f"workflow {cls.__qualname__}: {exc}; use one Context[State] type, or "
                                      "subclasses of one") from exc
    if state is not None:
        try:
            state()
        except Exception as exc:
            raise WorkflowValidationError(
                f"workflow {cls.__qualname__}: state type {state.__name__} must be constructible with no "
                f"arguments (give every field a default): {exc}") from exc
    return WorkflowSpec(cls.__qualname__, steps, state)
