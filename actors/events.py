"""Events: the typed messages steps consume and emit (LlamaIndex Workflows' ``workflows.events``).

Events are pydantic models that also behave like a dict of their *extra* fields: keyword arguments that are not
declared fields are kept in a private mapping, reachable as attributes (``ev.topic``) and as items
(``ev["topic"]``, ``ev.get("topic")``, ``keys()``, ``len(ev)``, ``"topic" in ev``, ``ev.to_dict()``). Declared
fields are attributes only. A private attribute (``PrivateAttr``) can be given to the constructor. An event is
always truthy.

``StopEvent.result`` is a property over a private attribute, not a declared field: a ``StopEvent`` subclass
holds its own fields, and ``result`` too when one was given.

The terminal events (``WorkflowFailedEvent``, ``WorkflowTimedOutEvent``, ``WorkflowCancelledEvent``) end a
run's stream; the internal events (``InternalDispatchEvent`` subclasses) reach the stream only with
``stream_events(expose_internal=True)``. Fields procflow adds to LlamaIndex's (the worker pid of a step, the
error type of a failure, ...) are extra declared fields; nothing of LlamaIndex's is missing.
"""

from __future__ import annotations

import builtins
import importlib
from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from datetime import datetime
from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, PrivateAttr, \
    model_serializer, model_validator


class DictLikeModel(BaseModel):
    """A pydantic model whose undeclared keyword arguments live in a dict, read and written like one.

    Declared fields validate as on any model; everything else passed to the constructor (or assigned later,
    ``m.x = 1`` / ``m["x"] = 1``) is kept in ``_data``, unvalidated."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    _data: dict[str, Any] = PrivateAttr(default_factory=dict)

    def __init__(self, **params: Any) -> None:
        cls = type(self)
        fields: dict[str, Any] = {}
        private: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in params.items():
            if key in cls.model_fields:
                fields[key] = value
            elif key in cls.__private_attributes__:
                private[key] = value
            else:
                extra[key] = value
        super().__init__(**fields)
        for key, value in private.items():
            super().__setattr__(key, value)
        if extra:
            self._data.update(extra)

    # --- attribute access: declared names first, then the extras ----------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in type(self).__private_attributes__ or name in type(self).model_fields:
            return super().__getattr__(name)  # type: ignore[misc]
        data = self.__pydantic_private__ or {}
        extras = data.get("_data")
        if extras is not None and name in extras:
            return extras[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in type(self).__private_attributes__ or name in type(self).model_fields \
                or name.startswith("__"):
            super().__setattr__(name, value)
        else:
            self._data[name] = value

    # --- the mapping of extras -------------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key] = value

    def get(self, key: str, default: Any = None) -> Any:
        """The extra field ``key``, or ``default``."""
        return self._data.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def keys(self) -> KeysView[str]:
        return self._data.keys()

    def values(self) -> ValuesView[Any]:
        return self._data.values()

    def items(self) -> ItemsView[str, Any]:
        return self._data.items()

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        return iter(self._data)

    def to_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The extra fields (the dict itself, not a copy)."""
        return self._data

    def __bool__(self) -> bool:
        return True  # an event without extras has len 0, and is still an event

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        self._dump_extras(data)
        return data

    def _dump_extras(self, data: dict[str, Any]) -> None:
        if self._data:
            data["_data"] = self._data


class Event(DictLikeModel):
    """Base class of every event. Subclass it and declare fields as on any pydantic model."""


# --- exceptions and events inside events, as JSON ----------------------------------------------------------
class UnreconstructedException(Exception):
    """Stands for an exception that could not be rebuilt from a snapshot (its class cannot be found or
    constructed from its message); ``original_type`` names the class it was. ``str()`` is the message."""

    def __init__(self, message: str, *, original_type: str | None = None) -> None:
        super().__init__(message)
        self.original_type = original_type

    def __reduce__(self) -> Any:
        return (_rebuild_unreconstructed, (str(self), self.original_type))

    def __repr__(self) -> str:
        return f"UnreconstructedException(original_type={self.original_type!r}, {str(self)!r})"


def _rebuild_unreconstructed(message: str, original_type: str | None) -> UnreconstructedException:
    return UnreconstructedException(message, original_type=original_type)


def exception_to_json(exc: BaseException | None) -> dict[str, str] | None:
    """``{"exception_type": "module.Qual", "exception_message": str(exc)}``."""
    if exc is None:
        return None
    cls = type(exc)
    return {"exception_type": f"{cls.__module__}.{cls.__qualname__}", "exception_message": str(exc)}


def exception_from_json(data: Any) -> Any:
    """The exception ``exception_to_json`` described: its class (a builtin, or imported) built from the
    message, else an ``UnreconstructedException``."""
    if data is None or isinstance(data, BaseException):
        return data
    if not isinstance(data, dict) or "exception_type" not in data:
        raise ValueError(f"not an encoded exception: {data!r}")
    name, message = data["exception_type"], data.get("exception_message", "")
    try:
        if name.startswith("builtins."):
            cls = getattr(builtins, name.removeprefix("builtins."))
        elif name == f"{__name__}.UnreconstructedException":
            cls = UnreconstructedException
        else:
            module, _, qual = name.rpartition(".")
            cls = getattr(importlib.import_module(module), qual)
        if isinstance(cls, type) and issubclass(cls, Exception):
            return cls(message)
    except Exception:  # noqa: BLE001 -- any failure gives the stand-in
        pass
    return UnreconstructedException(message, original_type=name)


ExceptionField = Annotated[
    Any, BeforeValidator(exception_from_json),
    PlainSerializer(exception_to_json, return_type=Any, when_used="json"),
]


def _event_to_json(ev: Any) -> Any:
    if not isinstance(ev, Event):
        return ev
    cls = type(ev)
    return {"type": f"{cls.__module__}:{cls.__qualname__}", "data": ev.model_dump(mode="json")}


def _event_from_json(data: Any) -> Any:
    if isinstance(data, dict) and "type" in data and "data" in data:
        from .context.serializers import event_from_json

        return event_from_json(data)
    return data


EventField = Annotated[
    Any, BeforeValidator(_event_from_json), PlainSerializer(_event_to_json, return_type=Any, when_used="json"),
]


# --- start and stop ------------------------------------------------------------------------------------------
class StartEvent(Event):
    """The event a run starts with. ``Workflow.run(**kwargs)`` builds it from the keyword arguments."""


class StopEvent(Event):
    """The event that ends a run. ``await handler`` gives ``.result`` for a plain StopEvent, and the event
    itself for a subclass. ``result`` is a property over a private attribute, not a declared field."""

    _result: Any = PrivateAttr(default=None)

    def __init__(self, result: Any = None, **kwargs: Any) -> None:
        super().__init__(_result=result, **kwargs)  # type: ignore[call-arg]

    def _get_result(self) -> Any:
        """What ``result`` gives; a subclass may override it."""
        return self._result

    @property
    def result(self) -> Any:
        return self._get_result()

    def _dump_extras(self, data: dict[str, Any]) -> None:
        super()._dump_extras(data)
        if self._result is not None:
            data["result"] = self._result

    def __repr__(self) -> str:
        values = {**self._data, **self.model_dump()}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in values.items())})"

    def __str__(self) -> str:
        return str(self._result)


class WorkflowFailedEvent(StopEvent):
    """Published last on the stream of a run that failed: ``step_name`` failed with ``exception`` after
    ``attempts`` attempts over ``elapsed_seconds`` (None when the failure is not a step's). ``result`` is the
    error message; ``error_type`` its class name (procflow)."""

    def __init__(self, result: Any = None, **kwargs: Any) -> None:  # the fields, and result (not a field)
        super().__init__(result, **kwargs)

    step_name: str = ""
    exception: ExceptionField = None
    attempts: int | None = None
    elapsed_seconds: float | None = None
    error_type: str = ""

    @property
    def step(self) -> str | None:
        """The failed step's name, or None (procflow's earlier name for ``step_name``)."""
        return self.step_name or None


class WorkflowTimedOutEvent(StopEvent):
    """Published last on the stream of a run that exceeded its timeout; ``active_steps`` were still running."""

    def __init__(self, result: Any = None, **kwargs: Any) -> None:  # the fields, and result (not a field)
        super().__init__(result, **kwargs)

    timeout: float = 0.0
    active_steps: list[str] = Field(default_factory=list)


class WorkflowCancelledEvent(StopEvent):
    """Published last on the stream of a run that was cancelled (``hard``: by ``handler.cancel()``)."""

    def __init__(self, result: Any = None, **kwargs: Any) -> None:  # the fields, and result (not a field)
        super().__init__(result, **kwargs)

    hard: bool = False


class StepFailedEvent(Event):
    """Given to a ``@catch_error`` handler when a step has failed and its retries are spent: the step's name,
    the event it failed on, its exception, the attempts made, the seconds from its first attempt to the last
    failure, and when that was (an aware UTC datetime)."""

    step_name: str
    input_event: EventField
    exception: ExceptionField
    attempts: int
    elapsed_seconds: float
    failed_at: datetime


class InputRequiredEvent(Event):
    """Asks the caller for input. Returned by a step, it goes to the stream by itself (no step needs to
    consume it); ``ctx.wait_for_event(..., waiter_event=...)`` publishes one too. The caller answers with a
    ``HumanResponseEvent``."""


class HumanResponseEvent(Event):
    """The caller's answer to an ``InputRequiredEvent``: ``handler.send_event`` / ``handler.ctx.send_event``.
    A step accepting it needs no producer among the steps."""


# --- internal events -------------------------------------------------------------------------------------------
class InternalDispatchEvent(Event):
    """Base of the events the runtime publishes about itself; streamed only with ``expose_internal=True``."""


class WorkflowIdleEvent(InternalDispatchEvent):
    """The run has nothing to do but wait for an event from outside."""


class UnhandledEvent(InternalDispatchEvent):
    """An event that no step and no waiter took."""

    event_type: str
    qualified_name: str
    step_name: str | None = None
    idle: bool


class StepState(Enum):
    """Where one invocation of a step is: queued without a free slot, running, or over."""

    PREPARING = "preparing"
    RUNNING = "running"
    NOT_RUNNING = "not_running"


class StepStateChanged(InternalDispatchEvent):
    """An invocation of step ``name`` is waiting for a worker (``PREPARING``), started (``RUNNING``) or ended
    (``NOT_RUNNING``) on worker ``worker_id``.

    procflow adds: ``state`` ("pending", "running", "done", "failed", "waiting" or "cancelled"),
    ``worker_pid``, ``invocation`` (the invocation's number within the runtime) and ``t`` (the parent's
    ``time.monotonic()`` at the change), and keeps its earlier names ``step`` and ``input_event`` (the same
    values as ``name`` and ``input_event_name``)."""

    name: str
    step_state: StepState
    worker_id: str
    input_event_name: str
    output_event_name: str | None = None
    state: str = ""
    worker_pid: int | None = None
    invocation: int = 0
    t: float = 0.0
    step: str = ""
    input_event: str = ""

    @model_validator(mode="before")
    @classmethod
    def _either_names(cls, data: Any) -> Any:
        """Built with LlamaIndex's names or procflow's earlier ones, it gets both."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        data.setdefault("name", data.get("step", ""))
        data.setdefault("step", data["name"])
        data.setdefault("input_event_name", data.get("input_event", ""))
        data.setdefault("input_event", data["input_event_name"])
        if "step_state" not in data:
            state = data.get("state", "")
            data["step_state"] = (StepState.PREPARING if state == "pending" else
                                  StepState.RUNNING if state == "running" else StepState.NOT_RUNNING)
        if "worker_id" not in data:
            pid = data.get("worker_pid")
            data["worker_id"] = "" if pid is None else str(pid)
        return data


class StepQueueChanged(InternalDispatchEvent):
    """A step's queue changed: ``queued`` events wait for one of its ``num_workers`` slots, ``active`` run."""

    step: str
    queued: int
    active: int


EventType = type[Event]
