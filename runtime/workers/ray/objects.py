"""Large buffers as Ray objects: stored once in Ray's object store by the process that has them, owned by the
driver, read zero-copy where they are used; the codec's out-of-band store on ``RayRuntime``.

A buffer of at least the runtime's threshold (128 KiB: ``runtime.wire.oob``) inside an event, a step's
result, a store value or a reply leaves its pickle; ``Packed.buffers`` carries an entry for it instead, and
only the entry's ObjectRef travels through the driver:

    the driver (start event, events sent by the caller, store values and replies)
        RayObjects.place -> ray.put(PickleBuffer(buffer))        one copy, into the store; the driver owns it
    a worker actor (results, emitted and streamed events, store.set)
        WorkerObjects.place -> Pending(buffer)                    no Ray call; a buffer that may still change
                                                                  (not bytes) is copied: what was sent is
                                                                  what it held then
        RayMailbox.send: the message pickled; each Pending gets a token, and waits in the Outbox
        drain(batch) -> (seq, messages, tokens)                   the driver's bridge thread then calls
        fetch(batch), num_returns = 1 + tokens                    the actor returns the buffers: Ray stores
                                                                  each once, on the actor's node, as a return
                                                                  value of the driver's call, so the DRIVER
                                                                  owns it; the bridge waits for the call, then
                                                                  hands the messages to the supervisor with a
                                                                  RayBuffer (driver-owned ObjectRef) per token
    the driver to a worker (Invoke, Reply)
        RayLink.send: each RayBuffer's ObjectRef goes into the deliver() call's argument list, next to the
        frames (a nested ref: Ray does not fetch it, the actor becomes a borrower); the pickle names it by id
    the reader (a step, the caller, the supervisor for a store value)
        RayBuffer.load -> ray.get: numpy arrays and memoryviews arrive as READ-ONLY zero-copy views of the
        object (as Ray gives them), bytes and bytearray as private copies (as with processes)

Ownership. Ray frees an object when its owner dies, even if others still refer to it, and a hard cancel, a
timeout or an idle pool's shrink kill worker actors: an object a worker ``ray.put`` would be lost with it
(``OwnerDiedError``) while an event routed to another step, a stream item or a store value still refers to
it. ``ray.put(..., _owner=...)`` used to hand ownership to another actor; Ray removed it in 2.56. So workers
never ``ray.put``: their buffers become return values of a call the driver makes (``fetch``), which Ray
stores once on the worker's node and the driver owns (a return value belongs to the caller); the worker can
die the moment after, the objects stay readable. The bridge hands a batch to the supervisor only once its
``fetch`` finished, so everything the supervisor routes is already the driver's. If the worker dies between
``drain`` and ``fetch`` (a kill at that instant), the messages still arrive and each lost buffer fails its
reader with a ``PayloadError`` saying so; never a hang or a wrong value.

Counting. An ObjectRef is never pickled by our own pickles (Ray would pin an object serialized "out of band"
for the life of the process). Driver to worker, it travels as a ref nested in the ``deliver`` call's
arguments, which Ray counts (the actor borrows it, and tells the owner when it lets go), and the pickle
names it by id (``_arrived``). Every ``RayBuffer`` holds its ObjectRef; the supervisor holds ``Packed``s,
so an object lives exactly as long as an event, stream item, store value, snapshot or reader's view (a
zero-copy view pins it) refers to it, and Ray frees it after the last one goes. ``RayObjects`` counts the
driver's entries (``stats()``).

A buffer that is itself a zero-copy view of a whole Ray object this process read (a numpy array passed
along a chain of steps) is not copied again: its entry is the object it came from (``VIEWS``). A worker
sends such an entry back by id only (``_owned``), and keeps it until the driver has unpickled the batch;
the driver, owner of every object, takes its live entry or makes a new ObjectRef from the id (rather than
a ref nested in ``drain``'s return value, which would make the driver borrow its own object through the
worker). A worker reads what it receives once, and its entries let go of their ObjectRefs as they are read
(``RayBuffer.once``).
"""

from __future__ import annotations

import ctypes
import itertools
import pickle
import threading
import weakref
from typing import Any

import ray
from ray.exceptions import RayError

from runtime.wire import oob
from runtime.wire.addresses import AddressMap, buffer_address

VIEWS = AddressMap()  # zero-copy views of Ray objects read in this process: address -> their RayBuffer


class LostBuffer(Exception):
    """A large buffer cannot be read from Ray's object store (its worker died before storing it, its node
    was lost, or Ray was shut down)."""


class RayBuffer:
    """An entry for a buffer in Ray's object store: its ObjectRef and size.

    In a worker an entry is read once (``once``: a step's input, a reply) and lets go of its ObjectRef as it
    is read: what outlives the reading holds the object itself (a copy, or a view whose exporter holds a
    fresh entry), so an invocation's messages kept alive by a reference cycle until the next garbage
    collection (a step's Context and its store refer to each other) do not keep the object borrowed."""

    __slots__ = ("ref", "nbytes", "once", "local", "__weakref__")

    def __init__(self, ref: Any, nbytes: int, once: bool = False) -> None:
        self.ref, self.nbytes, self.once = ref, nbytes, once
        self.local: bytes | None = None  # a copy kept in memory when the runtime ended Ray (keep_in_memory)

    def load(self, kind: int) -> Any:
        if self.local is not None:
            return oob.load(self.local, kind)
        ref = self.ref
        if ref is None:
            raise LostBuffer(f"a large buffer ({self.nbytes:,} bytes) was read once already (a worker reads "
                             "what it is sent once)")
        if self.once:
            self.ref = None
        if not ray.is_initialized():  # never let ray.get start a new Ray of its own
            raise LostBuffer(f"a large buffer ({self.nbytes:,} bytes) cannot be read: Ray was shut down")
        try:
            value = ray.get(ref)
        except RayError as exc:
            raise LostBuffer(f"a large buffer ({self.nbytes:,} bytes) is not in Ray's object store: "
                             f"{_first_line(exc)}") from None
        except Exception as exc:  # noqa: BLE001 -- Ray gone (shut down, disconnected)
            raise LostBuffer(f"a large buffer ({self.nbytes:,} bytes) cannot be read: Ray is not connected "
                             f"({_first_line(exc)})") from None
        if kind == oob.BYTES:
            return bytes(memoryview(value).cast("B"))
        if kind == oob.BYTEARRAY:
            return bytearray(memoryview(value).cast("B"))
        return _view(value, RayBuffer(ref, self.nbytes) if self.once else self)

    def keep_in_memory(self) -> None:
        """Copy the buffer into this process, for readers after Ray is shut down."""
        if self.local is None:
            try:
                self.local = bytes(memoryview(ray.get(self.ref, timeout=30)).cast("B"))
            except Exception:  # noqa: BLE001 -- lost already: its reader says so
                pass

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        carry = getattr(_tls, "carry", None)
        if carry is None or self.local is not None:  # not inside a Ray call: in band
            return (bytes, (self.load(oob.BYTES),))
        if self.ref is None:
            raise pickle.PicklingError("a large buffer read once already cannot be sent again")
        if carry[1] is None:  # the driver: the ref goes in the call's arguments
            carry[0].append(self.ref)
            return (_arrived, (self.ref.binary(), self.nbytes))
        carry[0].append(self)  # a worker: by id only, this entry kept until the driver has the batch
        return (_owned, (self.ref.binary(), self.nbytes))

    def __repr__(self) -> str:
        return f"<RayBuffer {self.ref.hex()[:16] if self.ref is not None else 'read'} {self.nbytes} B>"


class Pending:
    """A worker's buffer on its way to the store: stored by the driver's ``fetch`` (see the docstring)."""

    __slots__ = ("obj", "kind", "nbytes")

    def __init__(self, obj: Any, kind: int, nbytes: int) -> None:
        self.obj, self.kind, self.nbytes = obj, kind, nbytes

    def load(self, kind: int) -> Any:
        return oob.load(memoryview(self.obj).cast("B"), kind)

    def stored(self) -> Any:
        """What ``fetch`` returns for Ray to store: the raw bytes, out of band of Ray's own pickle."""
        return pickle.PickleBuffer(self.obj)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        carry = getattr(_tls, "carry", None)
        if carry is None or carry[1] is None:
            return (bytes, (self.load(oob.BYTES),))
        token = next(_tokens)
        carry[1].append((token, self))
        return (_fetched, (token, self.nbytes))


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _view(value: Any, entry: RayBuffer) -> memoryview:
    """A read-only view of the object Ray mapped (``value``), noted in ``VIEWS`` while any view made from it
    lives: its exporter is a ctypes array over the same bytes, which holds ``value`` (the mapping) and the
    entry, and whose finalizer takes the note back (numpy arrays and memoryviews built on the view keep the
    exporter alive, never the view itself)."""
    view = memoryview(value)
    try:
        base = buffer_address(value)
    except (BufferError, TypeError, ValueError):
        return view.cast("B") if view.format != "B" or view.ndim != 1 else view
    holder = (ctypes.c_ubyte * view.nbytes).from_address(base)
    holder.keep = (value, entry)  # type: ignore[attr-defined]
    VIEWS.add(base, view.nbytes, entry)
    weakref.finalize(holder, VIEWS.remove, base, entry)
    return memoryview(holder).toreadonly()


def existing(obj: Any) -> RayBuffer | None:
    """The entry of the Ray object ``obj`` is a zero-copy view of, whole; None if it is not one."""
    try:
        view = memoryview(obj)
        found = VIEWS.find(buffer_address(obj), view.nbytes)
    except (BufferError, TypeError, ValueError):
        return None
    if found is None or found[1] != 0 or found[0].nbytes != view.nbytes:
        return None
    entry: RayBuffer = found[0]
    return entry


# --- the stores ---------------------------------------------------------------------------------------------
class RayObjects:
    """The driver's store (one per ``RayRuntime``): ``ray.put`` of what the driver pickles, and the table of
    every entry the driver holds (put here, or fetched from a worker), for ``stats()``."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self._live: weakref.WeakValueDictionary[bytes, RayBuffer] = weakref.WeakValueDictionary()
        self._lock = threading.RLock()  # a finalizer (_released) may run while it is held
        self.count = self.bytes = self.put = self.fetched = self.released = 0
        _TABLES.add(self)

    def place(self, buffers: list[tuple[Any, int]]) -> list[Any]:
        entries: list[Any] = []
        for obj, kind in buffers:
            found = existing(obj) if kind == oob.VIEW else None
            if found is None:
                try:
                    ref = ray.put(obj if kind == oob.VIEW else pickle.PickleBuffer(obj))
                except RayError as exc:  # the store is full of pinned objects: in band after all
                    raise OSError(f"Ray's object store refused {memoryview(obj).nbytes} bytes: "
                                  f"{_first_line(exc)}") from None
                found = self.adopt(ref, memoryview(obj).nbytes, fetched=False)
            entries.append(found)
        return entries

    def adopt(self, ref: Any, nbytes: int, fetched: bool) -> RayBuffer:
        """The driver's entry for ``ref``: the live one if there is one, else a new one, counted."""
        key = ref.binary()
        with self._lock:
            entry = self._live.get(key)
            if entry is None:
                entry = self._live[key] = RayBuffer(ref, nbytes)
                weakref.finalize(entry, self._released, nbytes)
                self.count += 1
                self.bytes += nbytes
                if fetched:
                    self.fetched += 1
                else:
                    self.put += 1
            return entry

    def find(self, key: bytes) -> RayBuffer | None:
        with self._lock:
            return self._live.get(key)

    def _released(self, nbytes: int) -> None:
        with self._lock:
            self.count -= 1
            self.bytes -= nbytes
            self.released += 1

    def keep_in_memory(self) -> None:
        """Ray is about to be shut down: copy what is still referred to into this process."""
        with self._lock:
            live = list(self._live.values())
        for entry in live:
            entry.keep_in_memory()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"objects": self.count, "bytes": self.bytes, "put": self.put, "fetched": self.fetched,
                    "released": self.released}


_TABLES: weakref.WeakSet[RayObjects] = weakref.WeakSet()


EXITING = False  # set at interpreter exit: nobody is left to read what a table holds


def keep_in_memory() -> None:
    """This process is about to shut Ray down: every driver table copies what is still referred to."""
    if EXITING:
        return
    for table in list(_TABLES):
        table.keep_in_memory()


class WorkerObjects:
    """A worker actor's store: a buffer becomes a ``Pending`` entry, stored when the driver fetches it (or
    the entry of the Ray object it already is a view of).

    The store takes the buffer's bytes only later, so a buffer that may still change (a ``bytearray``, a
    numpy array, a view of either) is copied now: what was sent is what it held when it was sent, as with
    processes (a step may send one array, change it, and send it again). ``bytes`` cannot change, nor can a
    view of a Ray object: those are not copied."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold

    def place(self, buffers: list[tuple[Any, int]]) -> list[Any]:
        entries: list[Any] = []
        for obj, kind in buffers:
            found: Any = existing(obj) if kind == oob.VIEW else None
            if found is None:
                view = memoryview(obj)
                found = Pending(obj if type(obj) is bytes else view.tobytes("A"), kind, view.nbytes)
            entries.append(found)
        return entries


# --- messages through Ray calls -----------------------------------------------------------------------------
_tls = threading.local()
_tokens = itertools.count(1)


def dumps(msg: object, refs: list[Any], pending: list[tuple[int, Pending]] | None) -> bytes:
    """``msg`` pickled for a Ray call. On the driver (``pending`` None) the ObjectRefs it names are appended
    to ``refs``: they go in the ``deliver`` call's arguments. In a worker its ``Pending`` buffers go to
    ``pending``, and the entries of Ray objects it sends on to ``refs``: kept until the driver has them."""
    _tls.carry = (refs, pending)
    try:
        return pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        _tls.carry = None


class Inbound:
    """ObjectRefs a ``deliver`` call brought into a worker, by id, until the frames naming them are
    unpickled (on the host's loop thread, later): counted, one per time a message names it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[bytes, list[Any]] = {}

    def add(self, refs: list[Any]) -> None:
        with self._lock:
            for ref in refs:
                entry = self._refs.setdefault(ref.binary(), [ref, 0])
                entry[1] += 1

    def take(self, key: bytes) -> Any:
        with self._lock:
            entry = self._refs.get(key)
            if entry is None:
                return None
            entry[1] -= 1
            if not entry[1]:
                del self._refs[key]
            return entry[0]


INBOUND = Inbound()


def loads(datas: list[bytes], fetched: dict[int, Any], table: RayObjects | None) -> list[object]:
    """A drained batch's messages, unpickled on the driver: the objects its ``fetch`` stored and the ones
    it sends on become the driver's entries in ``table``."""
    _tls.receiving = (fetched, table)
    try:
        return [pickle.loads(data) for data in datas]
    finally:
        _tls.receiving = None


def _arrived(key: bytes, nbytes: int) -> RayBuffer:
    """An ObjectRef named in a message to a worker, which came with it in the ``deliver`` call."""
    ref = INBOUND.take(key)
    if ref is None:
        raise pickle.UnpicklingError("a Ray object named in a message did not come with the message")
    return RayBuffer(ref, nbytes, once=True)


def _owned(key: bytes, nbytes: int) -> RayBuffer:
    """A Ray object a worker sends on (a view of one it was given), on the driver: every object is the
    driver's (put here, or stored by a ``fetch`` it called), and the worker holds its entry until this
    batch is unpickled, so the object is alive: its live entry here, or a new ObjectRef to it.

    (Not a ref nested in ``drain``'s return value: Ray keeps a ref a worker returns that way borrowed by
    the worker until the worker dies.)"""
    got = getattr(_tls, "receiving", None)
    table = got[1] if got is not None else None
    entry = table.find(key) if table is not None else None
    return entry if entry is not None else _entry(ray.ObjectRef(key), nbytes, False, table)


def _fetched(token: int, nbytes: int) -> RayBuffer:
    """A worker's buffer the driver's ``fetch`` stored (driver side only)."""
    got = getattr(_tls, "receiving", None)
    if got is None or token not in got[0]:
        raise pickle.UnpicklingError(f"a worker's large buffer (token {token}) was not fetched")
    return _entry(got[0][token], nbytes, True, got[1])


def _entry(ref: Any, nbytes: int, fetched: bool, table: RayObjects | None) -> RayBuffer:
    return table.adopt(ref, nbytes, fetched) if table is not None else RayBuffer(ref, nbytes)
