"""Payload pickling: stdlib pickle on the fast path, cloudpickle where it must, event classes by key, large
buffers out of band.

Event classes travel *once*: a workflow's definition (cloudpickled, so classes from ``__main__``, from inside
a function or from a notebook work) carries a ``{key: class}`` table, and afterwards every event refers to
its class by that small integer instead of by value (~6 KB and ~300 us per message with cloudpickle) or by a
module path the worker might not be able to import. Keys are unique in a process (one counter; decoding goes
through one table), but each codec pickles by key only the classes it keyed or registered itself; the
picklers' ``reducer_override`` names a keyed class as ``_by_key(key)``, so the common case runs at C speed
(no Python hook per object: ``reducer_override`` is not called for builtins).

A class of ``__main__`` or a function's locals that no step names (an event only ever written to the stream)
has no key. On the stream path (``pack(..., local_classes=True)``, used by the process worker's
``write_event_to_stream``) the worker gives it a *local key* and cloudpickles its definition once
(``local_definitions``); the frame that first uses the key carries the definition to the parent, which keeps
it as bytes (``ClassEntry``) and unpickles it once, on the first reader's thread. Anything else defined in
``__main__`` or locally, and anything stdlib pickle refuses (lambdas), goes through cloudpickle by value.

Large buffers go out of band (``runtime.wire.oob``): the codec's file takes every bytes-like payload of at
least its store's threshold out of the pickle, and the store (``Codec.oob``: shared memory segments for the
process runtime, Ray's object store for the Ray runtime) gives an entry for it, carried in ``Packed.buffers``.
Without a store everything is pickled in band.

The key tables hold classes *weakly*, on both sides: an event class defined inside a function, per call, is
released with the last workflow (definition) that uses it. In the parent its key dies with it and is never
given to another class (keys only count up); in a worker a definition holds its classes, so dropping the
definition (``DropWorkflow``) releases the classes no other loaded definition uses, and their keys with them.
"""

from __future__ import annotations

import functools
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

from runtime.wire import oob
from runtime.wire.oob import BufferFile, OutOfBand


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


# --- class keys ------------------------------------------------------------------------------------------
# Keys are unique in the process (one counter, one key -> class table for decoding: ``_by_key`` is a plain
# module function), but each codec uses only the keys it assigned or registered itself when it pickles: a
# runtime's workers know the keys of the definitions they loaded, not another runtime's.
_CLS_OF: weakref.WeakValueDictionary[int, type] = weakref.WeakValueDictionary()
_KEYS = itertools.count(1)
_KEY_LOCK = threading.Lock()
_PLAIN, _VALUE = object(), object()


class _Routes:
    """One codec's class keys, and what its picklers' ``reducer_override`` does with each class or function
    it meets, by id: its key, ``_PLAIN`` (pickled as usual) or ``_VALUE``. An entry leaves with its object
    (a weakref callback, which runs before the id can be reused)."""

    def __init__(self) -> None:
        self.key_of: weakref.WeakKeyDictionary[type, int] = weakref.WeakKeyDictionary()
        self.by_id: dict[int, Any] = {}
        self._refs: dict[int, weakref.ref[Any]] = {}

    def route(self, obj: Any) -> Any:
        ident = id(obj)
        found = self.by_id.get(ident)
        if found is not None:
            return found
        key = self.key_of.get(obj) if isinstance(obj, type) else None
        route = key if key is not None else (_VALUE if _needs_value(obj) else _PLAIN)
        by_id, refs = self.by_id, self._refs

        def gone(_: object, ident: int = ident) -> None:
            by_id.pop(ident, None)
            refs.pop(ident, None)

        try:
            refs[ident] = weakref.ref(obj, gone)
        except TypeError:
            return route  # not weak-referenceable: not cached
        by_id[ident] = route
        return route

    def register(self, key: int, cls: type) -> None:
        self.key_of[cls] = key
        _CLS_OF[key] = cls
        if id(cls) in self.by_id:
            self.by_id[id(cls)] = key


def _by_key(key: int) -> type:
    """A class by its key (what a keyed class unpickles as)."""
    try:
        return _CLS_OF[key]
    except KeyError:
        raise pickle.UnpicklingError(f"unknown event class key {key}") from None


_local = threading.local()


def _by_local(key: int) -> type:
    """A class a worker shipped under a local key: from the entries of the payload being unpickled."""
    for entry in getattr(_local, "classes", ()):
        if isinstance(entry, ClassEntry) and entry.key == key:
            return entry.resolve()
    raise pickle.UnpicklingError(f"unknown local class key {key}")


def _memoryview(data: Any, fmt: str, shape: tuple[int, ...]) -> memoryview:
    view = memoryview(data)
    try:
        return view.cast("B").cast(fmt, shape)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return view  # an exotic format: the bytes


def _reduce_memoryview(view: memoryview) -> tuple[Any, ...]:
    data: Any = pickle.PickleBuffer(view) if view.c_contiguous else view.tobytes()
    return (_memoryview, (data, view.format, view.shape))


class ClassEntry:
    """A class a worker shipped once by value under a local key (parent side): its cloudpickled definition,
    unpickled by the first reader that needs it (never on the supervisor thread)."""

    __slots__ = ("key", "definition", "_cls", "_lock")

    def __init__(self, key: int, definition: bytes) -> None:
        self.key, self.definition = key, definition
        self._cls: type | None = None
        self._lock = threading.Lock()

    def resolve(self) -> type:
        cls = self._cls
        if cls is None:
            with self._lock:
                if self._cls is None:
                    self._cls = pickle.loads(self.definition)
                cls = self._cls
        return cls  # type: ignore[return-value]

    def __reduce__(self) -> tuple[Any, tuple[int, bytes]]:
        return (ClassEntry, (self.key, self.definition))


class Codec:
    """Pickles payloads for one process; both ends know the same ``key <-> class`` table (process-wide)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Where large buffers go (None: in band): a segment table or creator (runtime.wire.segments), or a
        # Ray object store (runtime.workers.ray.objects).
        self.oob: OutOfBand | None = None
        # Local keys of classes shipped by value on the stream path (see the module docstring).
        self._local_by_id: dict[int, int] = {}
        self._local_refs: dict[int, weakref.ref[type]] = {}
        self.local_definitions: dict[int, bytes] = {}
        self.forgotten: list[int] = []  # local keys whose class died here, for the parent to forget
        self._local_ids = itertools.count(1)
        self._tls = threading.local()
        self._routes = routes = _Routes()
        codec = self

        class FastPickler(pickle.Pickler):
            local: set[int] | None = None
            keys: frozenset[int] | None = None  # the keys the receivers know (None: all of this codec's)

            def reducer_override(self, obj: Any) -> Any:
                t = type(obj)
                if t is types.FunctionType or isinstance(obj, type):
                    route = routes.by_id.get(id(obj)) or routes.route(obj)
                    if route is _PLAIN:
                        return NotImplemented
                    if route is _VALUE:
                        if self.local is not None and t is not types.FunctionType:
                            key = codec._local_key(obj)
                            self.local.add(key)
                            return (_by_local, (key,))
                        raise _ByValue
                    if self.keys is not None and route not in self.keys:
                        # Keyed by another definition than the receivers': by reference, or by value.
                        if _needs_value(obj):
                            raise _ByValue
                        return NotImplemented
                    return (_by_key, (route,))
                if t is memoryview:
                    return _reduce_memoryview(obj)
                return NotImplemented

        class ValuePickler(_DefinitionPickler):
            keys: frozenset[int] | None = None

            def reducer_override(self, obj: Any) -> Any:
                if isinstance(obj, type):
                    key = routes.key_of.get(obj)
                    if key is not None and (self.keys is None or key in self.keys):
                        return (_by_key, (key,))
                elif type(obj) is memoryview:
                    return _reduce_memoryview(obj)
                return super().reducer_override(obj)

        class BufferUnpickler(pickle.Unpickler):
            buffers: tuple[Any, ...] = ()

            def persistent_load(self, pid: Any) -> Any:
                return oob.load(self.buffers[pid >> 2], pid & 3)

        self._fast, self._value, self._unpickler = FastPickler, ValuePickler, BufferUnpickler

    # --- keys ----------------------------------------------------------------------------------------
    def key_for(self, cls: type) -> int:
        """The key of ``cls`` (assigned on first use; parent side)."""
        with _KEY_LOCK:
            key = self._routes.key_of.get(cls)
            if key is None:
                key = next(_KEYS)
                self._routes.register(key, cls)
            return key

    def class_of(self, key: int) -> type | None:
        return _CLS_OF.get(key)

    def register(self, key: int, cls: type) -> None:
        with _KEY_LOCK:
            self._routes.register(key, cls)

    def _local_key(self, cls: type) -> int:
        """The local key of a class shipped by value on the stream path; its definition is pickled once."""
        key = self._local_by_id.get(id(cls))
        if key is not None:
            return key
        with self._lock:
            key = self._local_by_id.get(id(cls))
            if key is not None:
                return key
            buf = io.BytesIO()
            self._value(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(cls)
            key = next(self._local_ids)
            self.local_definitions[key] = buf.getvalue()
            # By id, with the entry removed by the class's weakref callback (which runs before the id can be
            # given to another object).
            self._local_refs[key] = weakref.ref(cls, functools.partial(self._local_died, key, id(cls)))
            self._local_by_id[id(cls)] = key
            return key

    def _local_died(self, key: int, ident: int, _: object = None) -> None:
        # A weakref callback (any thread, any moment): only atomic steps. The definition stays until the
        # mailbox has told the parent (a payload packed just before may still need it).
        self._local_by_id.pop(ident, None)
        self._local_refs.pop(key, None)
        self.forgotten.append(key)

    def forget_local(self, key: int) -> None:
        """The parent was told that local key ``key`` is gone."""
        self.local_definitions.pop(key, None)

    # --- bytes ---------------------------------------------------------------------------------------
    def dumps(self, obj: Any) -> bytes:
        """``obj`` pickled in band (no segments, no local keys)."""
        return self._dump(obj, None, None, None)[0]

    def _dump(self, obj: Any, threshold: int | None, local: set[int] | None,
              keys: frozenset[int] | None) -> tuple[bytes, list[Any]]:
        """``(pickle, out-of-band buffers)``. The fast pickler and its file are kept per thread and reused
        (making them costs about as much as pickling a small event); a nested or failed use makes fresh ones."""
        pair = self._tls.__dict__.pop("pair", None)
        if pair is None:
            out = BufferFile(threshold)
            p = self._fast(out, protocol=pickle.HIGHEST_PROTOCOL)
        else:
            out, p = pair
            out.parts, out.buffers, out.threshold = [], [], threshold
        p.local, p.keys = local, keys
        try:
            p.dump(obj)
        except _ByValue:
            pass
        except (pickle.PicklingError, TypeError, AttributeError):
            pass  # stdlib refused (a lambda, a local class instance): cloudpickle may not
        else:
            result = out.getvalue(), out.buffers
            out.parts, out.buffers = [], []
            p.clear_memo()
            self._tls.pair = (out, p)
            return result
        if local is not None:
            local.clear()
        out = BufferFile(threshold)
        vp = self._value(out, protocol=pickle.HIGHEST_PROTOCOL)
        vp.keys = keys
        vp.dump(obj)
        return out.getvalue(), out.buffers

    def loads(self, data: bytes | memoryview, buffers: tuple[Any, ...] = (),
              classes: tuple[Any, ...] = ()) -> Any:
        """Unpickle ``data`` whose out-of-band ``buffers`` are slices (or bytes) and whose local classes are
        ``classes`` entries."""
        if classes:
            saved = getattr(_local, "classes", ())
            _local.classes = classes
            try:
                return self._load(data, buffers)
            finally:
                _local.classes = saved
        return self._load(data, buffers)

    def _load(self, data: bytes | memoryview, buffers: tuple[Any, ...]) -> Any:
        if not buffers:
            return pickle.loads(data)
        u = self._unpickler(io.BytesIO(data))
        u.buffers = buffers
        return u.load()

    def pack(self, obj: Any, local_classes: bool = False, keys: frozenset[int] | None = None) -> Packed:
        """Pickle ``obj``; any failure is a ``PayloadError`` naming the type. With ``local_classes`` (the
        stream path of a process worker), a class that must travel by value gets a local key instead.
        ``keys``: the class keys every receiver knows (a run's payloads: its definition's, see
        ``load_definition``); a class keyed otherwise goes by reference, or by value. None: every key this
        codec knows (what only the parent reads)."""
        try:
            return self._pack(obj, local_classes, keys)
        except BaseException as exc:  # noqa: BLE001 -- as in unpack: user code runs while pickling
            raise PayloadError(f"{type(obj).__qualname__} cannot be pickled: "
                               f"{type(exc).__name__}: {exc}") from exc

    def _pack(self, obj: Any, local_classes: bool, keys: frozenset[int] | None) -> Packed:
        cls = type(obj)
        route = self._routes.by_id.get(id(cls))
        key = route if type(route) is int else self._routes.key_of.get(cls, 0)
        store = self.oob
        local: set[int] | None = set() if local_classes else None
        data, buffers = self._dump(obj, store.threshold if store is not None else None, local, keys)
        classes = tuple(sorted(local)) if local else ()
        if not buffers:
            return Packed(cls.__qualname__, data, key, (), classes)
        try:
            entries = store.place(buffers)  # type: ignore[union-attr]
        except OSError:
            # No room (in /dev/shm, in the object store, no descriptors): in band after all.
            return Packed(cls.__qualname__, self._dump(obj, None, local, keys)[0], key, (), classes)
        return Packed(cls.__qualname__, data, key, tuple(entries), classes)

    def unpack(self, packed: Packed) -> Any:
        """Unpickle a payload; any failure is a ``PayloadError`` naming the type."""
        try:
            if not (packed.buffers or packed.classes):  # most payloads: no Python unpickler, no class table
                return pickle.loads(packed.data)
            return self.loads(packed.data, packed.buffers, packed.classes)
        except BaseException as exc:  # noqa: BLE001 -- user code runs while unpickling: its SystemExit
            # must fail the payload, not stop the supervisor loop (nothing here waits on cancellation).
            raise PayloadError(f"{packed.type_name} cannot be unpickled: "
                               f"{type(exc).__name__}: {exc}") from exc

    # --- workflow definitions ------------------------------------------------------------------------
    def pack_definition(self, workflow: Any, spec: Any, event_types: set[type]
                        ) -> tuple[Packed, frozenset[int]]:
        """Cloudpickle a workflow instance with its spec (read here, where the annotations resolve: a worker
        may lack the names they mention) and the key table of its event classes; with the table's keys, the
        only ones its runs' payloads may use (``pack(keys=...)``)."""
        table = {self.key_for(t): t for t in event_types}
        buf = io.BytesIO()
        try:
            _DefinitionPickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump((workflow, spec, table))
            return Packed(type(workflow).__qualname__, buf.getvalue()), frozenset(table)
        except Exception as exc:
            raise PayloadError(
                f"workflow {type(workflow).__qualname__} cannot be shipped to worker processes: "
                f"{type(exc).__name__}: {exc}. Keep unpicklable resources (clients, locks) out of the "
                "workflow's attributes, or create them inside the steps") from exc

    def load_definition(self, packed: Packed) -> tuple[Any, Any, frozenset[int]]:
        """``(workflow, spec, keys)`` from ``pack_definition``; registers the event class keys. ``keys`` is
        what to ``pack`` this workflow's runs' payloads with: a worker may have loaded other definitions,
        whose keys the other workers of the run may not know."""
        workflow, spec, table = cloudpickle.loads(packed.data)
        for key, cls in table.items():
            self.register(key, cls)
        return workflow, spec, frozenset(table)
