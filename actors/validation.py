"""Checking a workflow's graph: what ``Workflow.validate()`` and ``run()`` check, and when (see
``actors.workflow``'s docstring for the moments): the start and stop event classes can be inferred, every
event a step returns is taken by a step and every event a step takes is produced, every step is reachable
and leads somewhere, ``@catch_error`` handlers claim steps that exist, resources can be built."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import WorkflowConfigurationError, WorkflowValidationError
from .events import HumanResponseEvent, InputRequiredEvent, StartEvent, StepFailedEvent, StopEvent
from .resource import ConfigResource, ResourceManager

if TYPE_CHECKING:
    from .decorators import StepSpec
    from .workflow import WorkflowSpec


def infer_start_and_stop(spec: WorkflowSpec) -> tuple[type[StartEvent], type[StopEvent]]:
    """The one StartEvent class the steps accept and the one StopEvent class they return;
    ``WorkflowConfigurationError`` when there are no steps, or none or several of either."""
    if not spec.steps:
        raise WorkflowConfigurationError(
            f"workflow {spec.name} has no steps; decorate methods with @step (or add free functions with "
            "@step(workflow=...))")
    for kind, found in (("StartEvent", spec.start_types), ("StopEvent", spec.stop_types)):
        verb = "accepts" if kind == "StartEvent" else "returns"
        if not found:
            raise WorkflowConfigurationError(
                f"workflow {spec.name}: no step {verb} a {kind} (or a subclass); add a step that does")
        if len(found) > 1:
            raise WorkflowConfigurationError(
                f"workflow {spec.name}: its steps {verb.rstrip('s')} more than one {kind} class "
                f"({', '.join(sorted(t.__name__ for t in found))}); use exactly one")
    assert spec.start_event_type is not None and spec.stop_event_type is not None
    return spec.start_event_type, spec.stop_event_type


def _accepts_type(step: StepSpec, produced: type) -> bool:
    if step.accept_event_subclasses and not issubclass(produced, StopEvent):
        return any(issubclass(produced, t) for t in step.accepts)
    return produced in step.accepts


def validate(spec: WorkflowSpec, skip_graph_checks: Iterable[str] = ()) -> bool:
    """Check the graph: raise ``WorkflowConfigurationError`` (start/stop classes) or
    ``WorkflowValidationError`` naming the step and event when it cannot run; return whether the workflow uses
    human-in-the-loop.

    The checks: no step takes a StopEvent; every event a step takes is produced by a step, except the ones
    that come from outside (InputRequiredEvent, HumanResponseEvent, StopEvent, StepFailedEvent subclasses);
    every event a step returns is taken by a step, except the ones that leave the workflow (InputRequiredEvent,
    HumanResponseEvent, StopEvent subclasses); the ``@catch_error`` handlers are unambiguous; and, unless
    skipped, every step is reachable from the start (or a HumanResponseEvent, or a handler), every event
    without a taker is an output (StopEvent, InputRequiredEvent), and every step producing events can reach
    an output."""
    start, _ = infer_start_and_stop(spec)
    steps = spec.steps
    skip = set(skip_graph_checks)
    for s in steps.values():
        if any(issubclass(t, StopEvent) for t in s.accepts):
            raise WorkflowValidationError(
                f"workflow {spec.name}: step '{s.name}' takes a StopEvent, which ends the run and reaches no "
                "step; take another event type")
    produced: dict[type, list[str]] = {start: []}
    for s in steps.values():
        for t in s.emits:
            produced.setdefault(t, []).append(s.name)
    for s in steps.values():
        for t in s.accepts:
            if issubclass(t, (InputRequiredEvent, HumanResponseEvent, StopEvent, StepFailedEvent)):
                continue
            if not any(p is t or (s.accept_event_subclasses and issubclass(p, t)) for p in produced):
                raise WorkflowValidationError(
                    f"workflow {spec.name}: step '{s.name}' takes {t.__name__}, but no step produces it")
    for t, producers in produced.items():
        if issubclass(t, (InputRequiredEvent, HumanResponseEvent, StopEvent)):
            continue
        if not any(_accepts_type(s, t) for s in steps.values()):
            who = f"step '{producers[0]}' produces" if producers else "the run starts with"
            raise WorkflowValidationError(f"workflow {spec.name}: {who} {t.__name__}, but no step accepts it")
    _check_handlers(spec)
    _check_graph(spec, start, skip)
    return any(issubclass(t, InputRequiredEvent) for t in produced) or any(
        issubclass(t, HumanResponseEvent) for s in steps.values() for t in s.accepts)


def _check_handlers(spec: WorkflowSpec) -> None:
    handlers = [s for s in spec.steps.values() if s.is_catch_error]
    wildcards = [h.name for h in handlers if h.for_steps is None]
    if len(wildcards) > 1:
        raise WorkflowValidationError(
            f"workflow {spec.name}: one @catch_error handler without for_steps is allowed, found "
            f"{', '.join(sorted(wildcards))}")
    names = {h.name for h in handlers}
    owner: dict[str, str] = {}
    for h in handlers:
        for target in h.for_steps or ():
            if target not in spec.steps:
                raise WorkflowValidationError(
                    f"workflow {spec.name}: @catch_error handler '{h.name}' names the unknown step '{target}'")
            if target in names:
                raise WorkflowValidationError(
                    f"workflow {spec.name}: @catch_error handler '{h.name}' cannot cover the handler "
                    f"'{target}'")
            if target in owner:
                raise WorkflowValidationError(
                    f"workflow {spec.name}: step '{target}' is claimed by two @catch_error handlers, "
                    f"'{owner[target]}' and '{h.name}'")
            owner[target] = h.name


def _check_graph(spec: WorkflowSpec, start: type, skip: set[str]) -> None:
    steps = spec.steps
    event_types = {start} | spec.event_types()
    out: dict[Any, list[Any]] = {}
    for s in steps.values():
        out[s.name] = list(s.emits)
    for t in event_types:
        out[t] = [s.name for s in steps.values() if _accepts_type(s, t)]

    def reach(seeds: list[Any], edges: dict[Any, list[Any]]) -> set[Any]:
        seen: set[Any] = set()
        todo = list(seeds)
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(edges.get(node, ()))
        return seen

    problems = []
    if "reachability" not in skip:
        seeds: list[Any] = [start, *(t for t in event_types if issubclass(t, HumanResponseEvent))]
        seeds += [s.name for s in steps.values() if s.is_catch_error]
        forward = reach(seeds, out)
        lost = sorted(n for n, s in steps.items() if n not in forward and "reachability" not in s.skip_graph_checks)
        if lost:
            problems.append(f"unreachable steps: {', '.join(lost)} (a step must be reachable from the "
                            "StartEvent, a HumanResponseEvent or a @catch_error handler)")
    if "terminal_event" not in skip:
        dangling = sorted(t.__name__ for t in event_types
                          if not out.get(t) and not issubclass(t, (StopEvent, InputRequiredEvent)))
        if dangling:
            problems.append(f"events produced but never consumed: {', '.join(dangling)} (only StopEvent and "
                            "InputRequiredEvent may end a path)")
    if "dead_end" not in skip:
        back: dict[Any, list[Any]] = {}
        for node, targets in out.items():
            for target in targets:
                back.setdefault(target, []).append(node)
        backward = reach([t for t in event_types if issubclass(t, (StopEvent, InputRequiredEvent))], back)
        dead = sorted(n for n, s in steps.items()
                      if s.emits and n not in backward and "dead_end" not in s.skip_graph_checks)
        if dead:
            problems.append(f"dead-end steps: {', '.join(dead)} (a step producing events must have a path to a "
                            "StopEvent or an InputRequiredEvent)")
    if problems:
        raise WorkflowValidationError(f"workflow {spec.name}: " + "; ".join(problems))


def check_resource_configs(spec: WorkflowSpec) -> None:
    errors = []
    for s in spec.steps.values():
        for param, descriptor, _ in s.resources:
            if isinstance(descriptor, ConfigResource):
                try:
                    descriptor.call()
                except Exception as exc:  # noqa: BLE001 -- reported, all together
                    errors.append(f"step '{s.name}', parameter '{param}': {exc}")
    if errors:
        raise WorkflowValidationError(f"workflow {spec.name}: resource configs: " + "; ".join(errors))


def check_resources(spec: WorkflowSpec) -> None:
    async def build_all() -> list[str]:
        manager, errors = ResourceManager(), []
        for s in spec.steps.values():
            for param, descriptor, annotation in s.resources:
                try:
                    await manager.resolve_all([(param, descriptor, annotation)])
                except Exception as exc:  # noqa: BLE001 -- reported, all together
                    errors.append(f"step '{s.name}', parameter '{param}': {exc}")
        return errors

    errors = asyncio.run(build_all())
    if errors:
        raise WorkflowValidationError(f"workflow {spec.name}: resources: " + "; ".join(errors))
