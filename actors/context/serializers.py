"""Value serializers for ``Context.to_dict`` / ``Context.from_dict`` (LlamaIndex's ``workflows.context``
serializers), and the JSON form of events inside a snapshot.

``JsonSerializer`` writes JSON (pydantic models with their class name, so they come back as themselves);
``PickleSerializer`` writes JSON when it can and base64-encoded pickle otherwise. Both only ever run on the
caller's side of a run (``handler.ctx.to_dict()``, ``Context.from_dict``), never in the supervisor.

Classes are found by name. While a snapshot is read or written, the event classes the workflow declares (its
steps' annotations) are found first, so classes defined inside a function or in ``__main__`` resolve too;
other names are imported.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import importlib
import json
import pickle
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel

from ..events import DictLikeModel, Event

_known: contextvars.ContextVar[dict[str, type] | None] = contextvars.ContextVar("procflow_known_types",
                                                                                default=None)


def qualified_name(cls: type) -> str:
    """``module.Qual.Name``: how a class is named in JSON written here."""
    return f"{cls.__module__}.{cls.__qualname__}"


@contextlib.contextmanager
def resolving(classes: Iterable[type]) -> Iterator[None]:
    """While the block runs, names of ``classes`` resolve to them without an import (a workflow's declared
    event and state classes, which may live in ``__main__`` or inside a function)."""
    known = dict(_known.get() or {})
    for cls in classes:
        known[qualified_name(cls)] = cls
        known[f"{cls.__module__}:{cls.__qualname__}"] = cls
    token = _known.set(known)
    try:
        yield
    finally:
        _known.reset(token)


def import_qualified(name: str) -> Any:
    """The object named ``module.attr.attr`` or ``module:attr.attr`` (the longest importable module)."""
    if ":" in name:
        module, _, qual = name.partition(":")
        obj: Any = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
        return obj
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(f"cannot import {name!r}")


def rebuild_model(cls: type[BaseModel], data: Any) -> BaseModel:
    """A model of ``cls`` from its ``model_dump``: an event gets its extra fields (``_data``) and a StopEvent
    its ``result`` back through its constructor."""
    if issubclass(cls, DictLikeModel) and isinstance(data, dict):
        fields = dict(data)
        extras = fields.pop("_data", None) or {}
        return cls(**fields, **extras)
    return cls.model_validate(data)


class BaseSerializer(ABC):
    """Encodes values to strings and back, for snapshots of a run's state."""

    @abstractmethod
    def serialize(self, value: Any) -> str: ...

    @abstractmethod
    def deserialize(self, value: str) -> Any: ...


class JsonSerializer(BaseSerializer):
    """JSON; pydantic models are written with their class name and rebuilt as that class.

    ``allowed_types``: when given, only these classes (or names, as strings) are rebuilt from a name; None
    (the default) resolves any name by import. A value JSON cannot hold raises ``ValueError``."""

    def __init__(self, *, allowed_types: Iterable[type | str] | None = None) -> None:
        self._registered: dict[str, type] = {}
        self._allowed: frozenset[str] | None = None
        if allowed_types is not None:
            names: set[str] = set()
            for entry in allowed_types:
                if isinstance(entry, str):
                    names.add(entry)
                elif isinstance(entry, type):
                    for name in (qualified_name(entry), f"{entry.__module__}.{entry.__name__}"):
                        self._registered[name] = entry
                        names.add(name)
                else:
                    raise TypeError("allowed_types takes classes or qualified names")
            self._allowed = frozenset(names)

    def resolve_class(self, name: str) -> type:
        """The class named ``name`` (``module.Qual``)."""
        found = self._registered.get(name) or (_known.get() or {}).get(name)
        if found is not None:
            return found
        if self._allowed is not None and name not in self._allowed:
            raise ValueError(f"class {name} is not in the serializer's allowed_types")
        cls = import_qualified(name)
        if not isinstance(cls, type):
            raise ValueError(f"{name} is not a class")
        return cls

    # --- to and from JSON trees ------------------------------------------------------------------------------
    def serialize_value(self, value: Any) -> Any:
        """``value`` as a JSON tree (models tagged with their class name)."""
        if isinstance(value, BaseModel):
            return {"__is_pydantic": True, "value": value.model_dump(mode="json"),
                    "qualified_name": qualified_name(type(value))}
        if isinstance(value, dict):
            return {key: self.serialize_value(v) for key, v in value.items()}
        if isinstance(value, list):
            return [self.serialize_value(v) for v in value]
        return value

    def deserialize_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            if data.get("__is_pydantic") and data.get("qualified_name"):
                return rebuild_model(self.resolve_class(data["qualified_name"]), data["value"])
            return {key: self.deserialize_value(v) for key, v in data.items()}
        if isinstance(data, list):
            return [self.deserialize_value(v) for v in data]
        return data

    def serialize(self, value: Any) -> str:
        try:
            return json.dumps(self.serialize_value(value))
        except Exception as exc:
            raise ValueError(f"cannot serialize a {type(value).__name__} as JSON: {exc}") from exc

    def deserialize(self, value: str) -> Any:
        return self.deserialize_value(json.loads(value))


class PickleSerializer(JsonSerializer):
    """JSON when the value allows it, else base64-encoded pickle (read only snapshots you trust: unpickling
    runs code)."""

    def serialize(self, value: Any) -> str:
        try:
            return super().serialize(value)
        except Exception:  # noqa: BLE001 -- what JSON cannot hold, pickle may
            return base64.b64encode(pickle.dumps(value)).decode("ascii")

    def deserialize(self, value: str) -> Any:
        try:
            return pickle.loads(base64.b64decode(value, validate=True))
        except Exception:  # noqa: BLE001 -- not pickle: JSON
            return super().deserialize(value)


# --- events inside snapshots -------------------------------------------------------------------------------
def event_to_json(event: Any, serializer: BaseSerializer | None = None) -> dict[str, Any]:
    """``{"type": "module:Qual", "data": model_dump(mode="json")}``; an event JSON cannot hold is written
    ``{"type": ..., "value": serializer.serialize(event)}`` (a ``PickleSerializer`` can)."""
    cls = type(event)
    name = f"{cls.__module__}:{cls.__qualname__}"
    try:
        data = event.model_dump(mode="json")
        json.dumps(data)
        return {"type": name, "data": data}
    except Exception as exc:
        if serializer is None:
            raise ValueError(f"event {cls.__qualname__} cannot be written as JSON: {exc}") from exc
        return {"type": name, "value": serializer.serialize(event)}


def event_from_json(obj: dict[str, Any], serializer: BaseSerializer | None = None) -> Event:
    """The event ``event_to_json`` wrote; its class is found among the declared ones first (``resolving``)."""
    name = obj["type"]
    if "value" in obj:
        value = (serializer or PickleSerializer()).deserialize(obj["value"])
        if not isinstance(value, Event):
            raise ValueError(f"{name} decoded to a {type(value).__name__}, not an event")
        return value
    cls = (_known.get() or {}).get(name)
    if cls is None:
        try:
            cls = import_qualified(name)
        except Exception as exc:
            raise ValueError(f"event class {name} cannot be found: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Event)):
        raise ValueError(f"{name} is not an event class")
    event = rebuild_model(cls, obj["data"])
    assert isinstance(event, Event)
    return event
