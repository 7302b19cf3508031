"""The snapshot of a run as objects (``SnapshotImage``) and as JSON (``Context.to_dict`` / ``from_dict``).

An engine takes the image of a run (consistently, where the run lives) and the caller's side turns it into JSON
here, with the caller's serializer; ``Context.from_dict`` turns JSON back into an image, which the next
``run(ctx=...)`` starts from. The JSON:

    {"version": 2, "workflow": name, "status": "running" | "cancelled" | "completed" | ...,
     "is_running": bool,            # true: run(ctx=...) continues the run; false: a new run keeps the state
     "state": {"state_type", "state_module", "state_data"},      # see state_store.encode_state
     "buffers": {buffer id: [event]},                            # ctx.collect_events buffers
     "waiters": [{"step", "waiter_id", "lineage", "event_type", "requirements", "timeout", "input",
                  "waiter_event", "resumed": [[waiter id, event or exception]]}],
     "leftovers": [{"kind": "invoke", "step", "input", "lineage", "resumed"}     # a step to run again
                   | {"kind": "route", "step", "event"}]}                        # an event to route

Events are ``{"type": "module:Qual", "data": {...}}`` (``serializers.event_to_json``); their classes are found
among the workflow's declared ones first, so classes from ``__main__`` or from inside a function resolve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from ..errors import ContextSerdeError
from ..events import Event, exception_from_json, exception_to_json
from .serializers import BaseSerializer, JsonSerializer, event_from_json, event_to_json, import_qualified, \
    resolving
from .state_store import decode_state, encode_state

VERSION = 2
RUNNING_STATUSES = frozenset({"pending", "running", "cancelling", "cancelled"})

Answer = Any  # an Event, or the exception that answered a wait (its timeout)


@dataclass
class WaiterImage:
    """A step suspended in ``ctx.wait_for_event``."""

    step: str
    waiter_id: str
    lineage: int
    event_type: type
    requirements: dict[str, Any]
    timeout: float | None
    input: Event
    waiter_event: Event | None
    resumed: list[tuple[str, Answer]] = field(default_factory=list)


@dataclass
class LeftoverImage:
    """Work that had not run: ``invoke`` a step on ``event`` again, or ``route`` an event."""

    kind: str
    step: str | None
    event: Event
    lineage: int = 0
    resumed: list[tuple[str, Answer]] = field(default_factory=list)


@dataclass
class SnapshotImage:
    """A run (or a Context before its run) as objects."""

    workflow: str
    status: str
    is_running: bool
    state: BaseModel | None
    buffers: dict[str, list[Event]] = field(default_factory=dict)
    waiters: list[WaiterImage] = field(default_factory=list)
    leftovers: list[LeftoverImage] = field(default_factory=list)

    @property
    def resumes(self) -> bool:
        """Whether a run started from it continues it (instead of starting from a StartEvent)."""
        return self.is_running


def _answer_json(answer: Answer, serializer: BaseSerializer) -> Any:
    if isinstance(answer, BaseException):
        return {"error": exception_to_json(answer)}
    return event_to_json(answer, serializer)


def _answer_from(obj: Any, serializer: BaseSerializer) -> Answer:
    if "error" in obj:
        return exception_from_json(obj["error"])
    return event_from_json(obj, serializer)


def _name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def encode_snapshot(image: SnapshotImage, serializer: BaseSerializer | None = None,
                    include_state: bool = True) -> dict[str, Any]:
    """The JSON of ``image``; ``ValueError`` when a value cannot be encoded (a state value JSON cannot hold
    under the default serializer)."""
    serializer = serializer or JsonSerializer()
    state: dict[str, Any] = {}
    if include_state and image.state is not None:
        state = encode_state(image.state, serializer)
    ev = lambda e: event_to_json(e, serializer)  # noqa: E731
    return {
        "version": VERSION, "workflow": image.workflow, "status": image.status, "is_running": image.is_running,
        "state": state,
        "buffers": {key: [ev(e) for e in events] for key, events in image.buffers.items() if events},
        "waiters": [{
            "step": w.step, "waiter_id": w.waiter_id, "lineage": w.lineage, "event_type": _name(w.event_type),
            "requirements": to_jsonable_python(w.requirements), "timeout": w.timeout, "input": ev(w.input),
            "waiter_event": None if w.waiter_event is None else ev(w.waiter_event),
            "resumed": [[wid, _answer_json(a, serializer)] for wid, a in w.resumed],
        } for w in image.waiters],
        "leftovers": [
            {"kind": "invoke", "step": item.step, "input": ev(item.event), "lineage": item.lineage,
             "resumed": [[wid, _answer_json(a, serializer)] for wid, a in item.resumed]}
            if item.kind == "invoke" else {"kind": "route", "step": item.step, "event": ev(item.event)}
            for item in image.leftovers],
    }


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(what)


def decode_snapshot(data: Any, workflow: str, declared: set[type], state_type: type[BaseModel] | None,
                    serializer: BaseSerializer | None = None) -> SnapshotImage:
    """The image ``encode_snapshot`` wrote; ``ContextSerdeError`` when ``data`` is not one, or does not fit
    the workflow (its state type, its event classes)."""
    serializer = serializer or JsonSerializer()
    if not isinstance(data, dict) or "state" not in data:
        raise ContextSerdeError(
            "Context.from_dict() takes what Context.to_dict() returned: a dict with at least a 'state' key")
    try:
        _check(isinstance(data.get("is_running", False), bool), "'is_running' must be a bool")
        _check(isinstance(data.get("status", ""), str), "'status' must be a string")
        _check(isinstance(data.get("buffers", {}), dict), "'buffers' must be a dict")
        _check(isinstance(data.get("waiters", []), list), "'waiters' must be a list")
        _check(isinstance(data.get("leftovers", []), list), "'leftovers' must be a list")
        status = data.get("status", "completed")
        is_running = data["is_running"] if "is_running" in data else status == "cancelled"
        state = decode_state(data["state"], state_type, serializer)
        with resolving(declared | ({state_type} if state_type else set())):
            ev = lambda obj: event_from_json(obj, serializer)  # noqa: E731
            buffers = {str(k): [ev(e) for e in v] for k, v in data.get("buffers", {}).items()}
            waiters = []
            for w in data.get("waiters", []):
                try:
                    waiter_event = ev(w["waiter_event"]) if w.get("waiter_event") else None
                except ValueError:
                    # A prompt of a class that cannot be found (defined inside the step's body): the resumed
                    # run does not ask again, it waits for the answer all the same.
                    waiter_event = None
                event_type = _event_class(w["event_type"], declared)
                waiters.append(WaiterImage(
                    w["step"], w["waiter_id"], int(w["lineage"]), event_type, dict(w.get("requirements") or {}),
                    w.get("timeout"), ev(w["input"]), waiter_event,
                    [(wid, _answer_from(a, serializer)) for wid, a in w.get("resumed", [])]))
            leftovers = []
            for item in data.get("leftovers", []):
                if item["kind"] == "invoke":
                    leftovers.append(LeftoverImage(
                        "invoke", item["step"], ev(item["input"]), int(item.get("lineage", 0)),
                        [(wid, _answer_from(a, serializer)) for wid, a in item.get("resumed", [])]))
                elif item["kind"] == "route":
                    leftovers.append(LeftoverImage("route", item.get("step"), ev(item["event"])))
                else:
                    raise ValueError(f"unknown leftover kind {item['kind']!r}")
    except ContextSerdeError:
        raise
    except Exception as exc:
        raise ContextSerdeError(f"Context.from_dict(): the snapshot does not fit {workflow}: "
                                f"{type(exc).__name__}: {exc}") from exc
    return SnapshotImage(str(data.get("workflow", workflow)), status, is_running, state, buffers, waiters,
                         leftovers)


def _event_class(name: str, declared: set[type]) -> type:
    for cls in declared:
        if _name(cls) == name:
            return cls
    cls = import_qualified(name)
    if not (isinstance(cls, type) and issubclass(cls, Event)):
        raise ValueError(f"{name} is not an event class")
    return cls
