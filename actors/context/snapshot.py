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
The schema is ``SnapshotJson`` (pydantic models, versioned by ``VERSION``): ``from_dict`` validates against
it, so a malformed or foreign dict is one ``ContextSerdeError`` naming what does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field
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


# --- the JSON schema, as pydantic models (versioned) ----------------------------------------------------
class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventJson(_Schema):
    """An event: its class (``module:Qual``) and its fields as JSON, or, when JSON cannot hold them, the
    serializer's text of the whole event."""

    type: str
    data: dict[str, Any] | None = None
    value: str | None = None


class ErrorJson(_Schema):
    """The exception that answered a wait (its timeout)."""

    error: dict[str, Any]


AnswerJson = Union[ErrorJson, EventJson]
Resumed = list[tuple[str, AnswerJson]]


class WaiterJson(_Schema):
    step: str
    waiter_id: str
    lineage: int
    event_type: str
    requirements: dict[str, Any] = {}
    timeout: float | None = None
    input: EventJson
    waiter_event: EventJson | None = None
    resumed: Resumed = []


class InvokeJson(_Schema):
    kind: Literal["invoke"]
    step: str
    input: EventJson
    lineage: int = 0
    resumed: Resumed = []


class RouteJson(_Schema):
    kind: Literal["route"]
    step: str | None = None
    event: EventJson


class SnapshotJson(_Schema):
    """What ``Context.to_dict()`` returns (``model_dump()``) and ``Context.from_dict()`` accepts. A field
    added later gets a default here and ``VERSION`` goes up; an older snapshot still validates."""

    version: int = VERSION
    workflow: str = ""
    status: str = "completed"
    is_running: bool | None = None  # None (version 1): a cancelled run continues, any other keeps its state
    state: dict[str, Any]
    buffers: dict[str, list[EventJson]] = {}
    waiters: list[WaiterJson] = []
    leftovers: list[Annotated[Union[InvokeJson, RouteJson], Field(discriminator="kind")]] = []


def _event_json(event: Event, serializer: BaseSerializer) -> EventJson:
    return EventJson.model_validate(event_to_json(event, serializer))


def _answer_json(answer: Answer, serializer: BaseSerializer) -> AnswerJson:
    if isinstance(answer, BaseException):
        return ErrorJson(error=exception_to_json(answer) or {})
    return _event_json(answer, serializer)


def _event(obj: EventJson, serializer: BaseSerializer) -> Event:
    return event_from_json(obj.model_dump(exclude_none=True), serializer)


def _answer(obj: AnswerJson, serializer: BaseSerializer) -> Answer:
    if isinstance(obj, ErrorJson):
        return exception_from_json(obj.error)
    return _event(obj, serializer)


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
    ev = lambda e: _event_json(e, serializer)  # noqa: E731
    leftovers: list[InvokeJson | RouteJson] = [
        InvokeJson(kind="invoke", step=item.step or "", input=ev(item.event), lineage=item.lineage,
                   resumed=[(wid, _answer_json(a, serializer)) for wid, a in item.resumed])
        if item.kind == "invoke" else RouteJson(kind="route", step=item.step, event=ev(item.event))
        for item in image.leftovers]
    snapshot = SnapshotJson(
        workflow=image.workflow, status=image.status, is_running=image.is_running, state=state,
        buffers={key: [ev(e) for e in events] for key, events in image.buffers.items() if events},
        waiters=[WaiterJson(
            step=w.step, waiter_id=w.waiter_id, lineage=w.lineage, event_type=_name(w.event_type),
            requirements=to_jsonable_python(w.requirements), timeout=w.timeout, input=ev(w.input),
            waiter_event=None if w.waiter_event is None else ev(w.waiter_event),
            resumed=[(wid, _answer_json(a, serializer)) for wid, a in w.resumed]) for w in image.waiters],
        leftovers=leftovers)
    return snapshot.model_dump(mode="json", exclude_none=True)


def decode_snapshot(data: Any, workflow: str, declared: set[type], state_type: type[BaseModel] | None,
                    serializer: BaseSerializer | None = None) -> SnapshotImage:
    """The image ``encode_snapshot`` wrote; ``ContextSerdeError`` when ``data`` is not one, or does not fit
    the workflow (its state type, its event classes)."""
    serializer = serializer or JsonSerializer()
    if not isinstance(data, dict) or "state" not in data:
        raise ContextSerdeError(
            "Context.from_dict() takes what Context.to_dict() returned: a dict with at least a 'state' key")
    try:
        snap = SnapshotJson.model_validate(data)
        if snap.version > VERSION:
            raise ValueError(f"snapshot version {snap.version} is newer than this procflow reads ({VERSION})")
        is_running = snap.is_running if snap.is_running is not None else snap.status == "cancelled"
        state = decode_state(snap.state, state_type, serializer)
        with resolving(declared | ({state_type} if state_type else set())):
            ev = lambda obj: _event(obj, serializer)  # noqa: E731
            buffers = {key: [ev(e) for e in events] for key, events in snap.buffers.items()}
            waiters = []
            for w in snap.waiters:
                try:
                    waiter_event = ev(w.waiter_event) if w.waiter_event is not None else None
                except ValueError:
                    # A prompt of a class that cannot be found (defined inside the step's body): the resumed
                    # run does not ask again, it waits for the answer all the same.
                    waiter_event = None
                waiters.append(WaiterImage(
                    w.step, w.waiter_id, w.lineage, _event_class(w.event_type, declared), dict(w.requirements),
                    w.timeout, ev(w.input), waiter_event,
                    [(wid, _answer(a, serializer)) for wid, a in w.resumed]))
            leftovers = [
                LeftoverImage("invoke", item.step, ev(item.input), item.lineage,
                              [(wid, _answer(a, serializer)) for wid, a in item.resumed])
                if isinstance(item, InvokeJson) else LeftoverImage("route", item.step, ev(item.event))
                for item in snap.leftovers]
    except ContextSerdeError:
        raise
    except Exception as exc:
        raise ContextSerdeError(f"Context.from_dict(): the snapshot does not fit {workflow}: "
                                f"{type(exc).__name__}: {exc}") from exc
    return SnapshotImage(snap.workflow or workflow, snap.status, is_running, state, buffers, waiters,
                         leftovers)


def _event_class(name: str, declared: set[type]) -> type:
    for cls in declared:
        if _name(cls) == name:
            return cls
    cls = import_qualified(name)
    if not (isinstance(cls, type) and issubclass(cls, Event)):
        raise ValueError(f"{name} is not an event class")
    return cls
