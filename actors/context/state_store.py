"""A run's state: ``DictState`` (untyped) or the ``Context[Model]`` pydantic model, and the operations on it.

These are pure functions over a state object; where the state lives (the supervisor for a run, the caller for a
Context before its run) is someone else's business. Dotted paths reach into nested dicts, models and lists:
``await ctx.store.get("user.name")``. A missing path without a default is a ``ValueError``, as in LlamaIndex
Workflows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import WorkflowRuntimeError
from ..events import DictLikeModel
from .backend import MISSING
from .serializers import BaseSerializer, JsonSerializer, resolving

MAX_DEPTH = 1000


class DictState(DictLikeModel):
    """The state of a workflow without ``Context[Model]``: a dict-like model. ``state.x = 1``,
    ``state["y"] = 2``, ``state.get("z", default)``, ``keys()``... It compares equal to a dict of the same
    items."""

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DictState):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"DictState({self._data!r})"


def new_state(state_type: type[BaseModel] | None) -> BaseModel:
    """A default instance of ``state_type`` (``DictState`` when None)."""
    cls = state_type or DictState
    try:
        return cls()
    except ValidationError as exc:
        raise ValueError(f"state type {cls.__name__} must have defaults for all its fields: {exc}") from exc


def most_derived(state_types: Iterable[type[BaseModel]]) -> type[BaseModel] | None:
    """The one type that subclasses every other (steps annotating ``Context[Base]`` and ``Context[Sub]``
    share one ``Sub`` state); ``ValueError`` when they are not on one inheritance chain."""
    types = set(state_types)
    for candidate in types:
        if all(issubclass(candidate, other) for other in types):
            return candidate
    if types:
        raise ValueError("steps annotate state types that are not on one inheritance chain: "
                         + ", ".join(sorted(t.__name__ for t in types)))
    return None


# --- paths --------------------------------------------------------------------------------------------------
def _step_into(node: Any, segment: str) -> Any:
    if isinstance(node, dict):
        return node[segment]
    if isinstance(node, DictLikeModel):
        if segment in node:
            return node[segment]
        cls = type(node)
        if segment in cls.model_fields or isinstance(getattr(cls, segment, None), property):
            return getattr(node, segment)
        raise KeyError(segment)
    if isinstance(node, (list, tuple)):
        try:
            return node[int(segment)]
        except ValueError:
            pass
    return getattr(node, segment)


def get_path(state: Any, path: str, default: Any = MISSING) -> Any:
    """The value at the dotted ``path``; ``default``, or ``ValueError`` when there is none."""
    segments = path.split(".") if path else []
    if len(segments) > MAX_DEPTH:
        raise ValueError(f"path {path!r} is deeper than {MAX_DEPTH}")
    node = state
    try:
        for segment in segments:
            node = _step_into(node, segment)
    except Exception:
        if default is not MISSING:
            return default
        raise ValueError(f"Path '{path}' not found in state") from None
    return node


def _assign(node: Any, segment: str, value: Any, path: str) -> None:
    if isinstance(node, dict):
        node[segment] = value
    elif isinstance(node, DictLikeModel) and segment not in type(node).model_fields:
        node[segment] = value
    elif isinstance(node, BaseModel) and segment in type(node).model_fields:
        # Validated like the model's own fields, so a typed state cannot take a wrong value.
        node.__pydantic_validator__.validate_assignment(node, segment, value)
    elif isinstance(node, list):
        node[int(segment)] = value
    else:
        setattr(node, segment, value)


def set_path(state: Any, path: str, value: Any) -> None:
    """Store ``value`` at the dotted ``path``, creating the dicts it walks through; a value a typed state's
    field refuses is a ``WorkflowRuntimeError`` naming the key."""
    if not path:
        raise ValueError("the path cannot be empty")
    *parents, last = path.split(".")
    if len(parents) >= MAX_DEPTH:
        raise ValueError(f"path {path!r} is deeper than {MAX_DEPTH}")
    node = state
    try:
        for segment in parents:
            try:
                nxt = _step_into(node, segment)
            except (KeyError, AttributeError, IndexError, TypeError):
                nxt = None
            if nxt is None:
                nxt = {}
                _assign(node, segment, nxt, path)
            node = nxt
        _assign(node, last, value, path)
    except Exception as exc:
        raise WorkflowRuntimeError(f"cannot set store key {path!r} to {value!r}: {exc}") from exc


def replace_state(current: BaseModel, incoming: Any, state_type: type[BaseModel] | None) -> BaseModel:
    """What ``set_state(incoming)`` leaves: ``incoming`` itself when it is of the state's type (a dict for
    ``DictState``), or ``current`` with the fields of ``incoming`` when that is a base class of it."""
    expected = type(current) if state_type is None or isinstance(current, state_type) else state_type
    if isinstance(incoming, expected):
        return incoming
    if expected is DictState and isinstance(incoming, Mapping):
        return to_dict_state(incoming)
    if isinstance(incoming, BaseModel) and issubclass(expected, type(incoming)) \
            and not isinstance(incoming, DictState):
        return expected.model_validate({**current.model_dump(), **incoming.model_dump()})
    raise WorkflowRuntimeError(f"the state is a {expected.__name__}, not {type(incoming).__name__}")


def to_dict_state(items: Mapping[str, Any]) -> DictState:
    state = DictState()
    state._data.update(items)
    return state


def cleared(current: BaseModel) -> BaseModel:
    """``store.clear()``: a default instance of the state's current type."""
    return new_state(type(current))


# --- snapshots --------------------------------------------------------------------------------------------
def encode_state(state: BaseModel, serializer: BaseSerializer | None = None) -> dict[str, Any]:
    """The state as JSON for ``Context.to_dict``: each value of a ``DictState`` through the serializer, a
    typed state as its JSON fields (or, when JSON cannot hold them, through the serializer whole). A value
    that cannot be encoded is a ``ValueError`` naming its key."""
    serializer = serializer or JsonSerializer()
    out: dict[str, Any] = {"state_type": type(state).__name__, "state_module": type(state).__module__}
    if isinstance(state, DictState):
        data = {}
        for key, value in state.items():
            try:
                data[key] = serializer.serialize(value)
            except Exception as exc:
                raise ValueError(f"Failed to serialize state value for key {key}: {exc}") from exc
        out["state_data"] = {"_data": data}
        return out
    try:
        out["state_data"] = {"fields": serializer.serialize(state.model_dump(mode="json"))}
    except Exception:  # noqa: BLE001 -- a field JSON cannot hold: the serializer may hold the model
        try:
            out["state_data"] = {"model": serializer.serialize(state)}
        except Exception as exc:
            raise ValueError(f"Failed to serialize the state ({type(state).__name__}): {exc}") from exc
    return out


def decode_state(data: Any, state_type: type[BaseModel] | None, serializer: BaseSerializer | None = None
                 ) -> BaseModel:
    """The state ``encode_state`` wrote, as ``state_type`` (``DictState`` when None); ``ValueError`` when it
    does not fit. A plain dict (a snapshot of procflow before serializers) is read as the state's fields."""
    serializer = serializer or JsonSerializer()
    if not data:
        return new_state(state_type)
    if not isinstance(data, dict):
        raise ValueError(f"the snapshot's state is a {type(data).__name__}, not a dict")
    known = [state_type] if state_type is not None else []
    with resolving(known):
        body = data.get("state_data")
        if "state_data" not in data:  # the earlier format: the state's JSON itself
            if state_type is None:
                return to_dict_state(data)
            return state_type.model_validate(data)
        if not isinstance(body, dict):
            raise ValueError("the snapshot's state_data is not a dict")
        if "_data" in body:
            values = {key: serializer.deserialize(v) for key, v in (body["_data"] or {}).items()}
            if state_type is not None and state_type is not DictState:
                return state_type.model_validate(values)
            return to_dict_state(values)
        if "fields" in body:
            fields = serializer.deserialize(body["fields"])
            return state_type.model_validate(fields) if state_type is not None else to_dict_state(fields)
        if "model" in body:
            model = serializer.deserialize(body["model"])
            if not isinstance(model, BaseModel):
                raise ValueError(f"the state decoded to a {type(model).__name__}, not a model")
            return model
    raise ValueError(f"the snapshot's state_data has none of _data, fields, model: {sorted(body)}")


__all__ = [
    "DictState", "cleared", "decode_state", "encode_state", "get_path", "most_derived", "new_state",
    "replace_state", "set_path", "to_dict_state",
]
