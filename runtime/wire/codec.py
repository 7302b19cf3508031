"""Payload pickling: stdlib pickle on the fast path, cloudpickle where it must, event classes by key.

Event classes travel *once*: a workflow's definition (cloudpickled, so classes from ``__main__``, from inside
a function or from a notebook work) carries a ``{key: class}`` table, and afterwards every event refers to
its class by that small integer (pickle's persistent ids) instead of by value (~6 KB and ~300 us per message
with cloudpickle) or by a module path the worker might not be able to import.

Anything else defined in ``__main__`` or locally, and anything stdlib pickle refuses (lambdas), goes through
cloudpickle by value.

The key tables hold classes *weakly*, on both sides: an event class defined inside a function, per call, is
released with the last workflow (definition) that uses it. In the parent its key dies with it and is never
given to another class (keys only count up); in a worker a definition holds its classes, so dropping the
definition (``DropWorkflow``) releases the classes no other loaded definition uses, and their keys with them.
"""

from __future__ import annotations

import io
import itertools
import pickle
import threading
import types
import weakref
from typing import Any

import cloudpickle
from pydantic import BaseModel

from actors import PayloadError
from actors.host import Packed


class _ByValue(Exception):
    """Raised inside the fast pickler when an object must be pickled by value."""


def _forget_parent_namespace(obj: Any) -> None:
    """A pydantic model class made inside a function keeps that function's locals (its parent namespace)
    for resolving forward references later; cloudpickle would ship them all, and one unpicklable local (a
    lock, a client) makes the class unshippable (pydantic#8232). A *complete* model never needs them."""
    if (isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__pydantic_complete__
            and obj.__dict__.get("__pydantic_parent_namespace__") is not None):
        obj.__pydantic_parent_namespace__ = None


class _DefinitionPickler(cloudpickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        _forget_parent_namespace(obj)
        return super().reducer_override(obj)


def _needs_value(obj: Any) -> bool:
    """Whether ``obj`` (a class or function) must travel by value: defined in ``__main__``, in a function,
    or in a module registered with ``cloudpickle.register_pickle_by_value`` (a script the CLI loaded)."""
    module = getattr(obj, "__module__", None)
    return (module == "__main__" or "<locals>" in getattr(obj, "__qualname__", "")
            or module in cloudpickle.list_registry_pickle_by_value())


class Codec:
    """Pickles payloads for one process; both ends hold the same ``key <-> class`` table."""

    def __init__(self) -> None:
        self._key_of: weakref.WeakKeyDictionary[type, int] = weakref.WeakKeyDictionary()
        self._cls_of: weakref.WeakValueDictionary[int, type] = weakref.WeakValueDictionary()
        self._keys = itertools.count(1)
        self._lock = threading.Lock()
        codec = self

        class FastPickler(pickle.Pickler):
            def persistent_id(self, obj: Any) -> Any:
                if isinstance(obj, (type, types.FunctionType)):
                    key = codec._key_of.get(obj)  # type: ignore[arg-type]
                    if key is not None:
                        return key
                    if _needs_value(obj):
                        raise _ByValue
                return None

        class ValuePickler(_DefinitionPickler):
            def persistent_id(self, obj: Any) -> Any:
                if isinstance(obj, type):
                    return codec._key_of.get(obj)
                return None

        class KeyUnpickler(pickle.Unpickler):
            def persistent_load(self, pid: Any) -> Any:
                try:
                    return codec._cls_of[pid]
                except KeyError:
                    raise pickle.UnpicklingError(f"unknown event class key {pid}") from None

        self._fast, self._value, self._unpickler = FastPickler, ValuePickler, KeyUnpickler

    # --- keys ----------------------------------------------------------------------------------------
    def key_for(self, cls: type) -> int:
        """The key of ``cls`` (assigned on first use; parent side)."""
        with self._lock:
            key = self._key_of.get(cls)
            if key is None:
                key = next(self._keys)
                self.register(key, cls)
            return key

    def class_of(self, key: int) -> type | None:
        return self._cls_of.get(key)

    def register(self, key: int, cls: type) -> None:
        self._key_of[cls] = key
        self._cls_of[key] = cls

    # --- bytes ---------------------------------------------------------------------------------------
    def dumps(self, obj: Any) -> bytes:
        buf = io.BytesIO()
        try:
            self._fast(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
            return buf.getvalue()
        except _ByValue:
            pass
        except (pickle.PicklingError, TypeError, AttributeError):
            pass  # stdlib refused (a lambda, a local class instance): cloudpickle may not
        buf = io.BytesIO()
        self._value(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
        return buf.getvalue()

    def loads(self, data: bytes) -> Any:
        return self._unpickler(io.BytesIO(data)).load()

    def pack(self, obj: Any) -> Packed:
        """Pickle ``obj``; any failure is a ``PayloadError`` naming the type."""
        try:
            return Packed(type(obj).__qualname__, self.dumps(obj), self._key_of.get(type(obj), 0))
        except BaseException as exc:  # noqa: BLE001 -- as in unpack: user code runs while pickling
            raise PayloadError(f"{type(obj).__qualname__} cannot be pickled: "
                               f"{type(exc).__name__}: {exc}") from exc

    def unpack(self, packed: Packed) -> Any:
        """Unpickle a payload; any failure is a ``PayloadError`` naming the type."""
        try:
            return self.loads(packed.data)
        except BaseException as exc:  # noqa: BLE001 -- user code runs while unpickling: its SystemExit
            # must fail the payload, not stop the supervisor loop (nothing here waits on cancellation).
            raise PayloadError(f"{packed.type_name} cannot be unpickled: "
                               f"{type(exc).__name__}: {exc}") from exc

    # --- workflow definitions ------------------------------------------------------------------------
    def pack_definition(self, workflow: Any, spec: Any, event_types: set[type]) -> Packed:
        """Cloudpickle a workflow instance with its spec (read here, where the annotations resolve: a worker
        may lack the names they mention) and the key table of its event classes."""
        table = {self.key_for(t): t for t in event_types}
        buf = io.BytesIO()
        try:
            _DefinitionPickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump((workflow, spec, table))
            return Packed(type(workflow).__qualname__, buf.getvalue())
        except Exception as exc:
            raise PayloadError(
                f"workflow {type(workflow).__qualname__} cannot be shipped to worker processes: "
                f"{type(exc).__name__}: {exc}. Keep unpicklable resources (clients, locks) out of the "
                "workflow's attributes, or create them inside the steps") from exc

    def load_definition(self, packed: Packed) -> tuple[Any, Any]:
        """``(workflow, spec)`` from ``pack_definition``; registers the event class keys."""
        workflow, spec, table = cloudpickle.loads(packed.data)
        for key, cls in table.items():
            self.register(key, cls)
        return workflow, spec
