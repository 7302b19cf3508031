"""Large buffers out of band: how they leave a pickle, the store they go to, and how they come back.

The C pickler hands every bytes-like payload of 64 KiB or more (``bytes``, ``bytearray``, ``PickleBuffer``:
so numpy arrays; and ``memoryview``, pickled through one) straight to its file's ``write`` as the original
object, right after a flush ending with that payload's opcode header. ``BufferFile`` recognises that pair;
from its threshold on it replaces header and payload by a persistent id and keeps the buffer, with its *kind*
(``VIEW``: a ``PickleBuffer``, ``BYTES``, ``BYTEARRAY``). No Python hook runs per object.

Where the buffers then go is the codec's *store* (``OutOfBand``), one per process and runtime:

    ProcessRuntime   runtime.wire.segments: written once into a shared memory segment; an entry is a slice
                     ``(segment, offset, nbytes)`` (a tuple: the fast path below)
    RayRuntime       runtime.workers.ray.objects: put once into Ray's object store; an entry is an object
                     with ``nbytes`` and ``load(kind)`` (an ObjectRef inside)

``Packed.buffers`` carries the entries; whoever unpickles the payload turns each back into what its kind
asks for (``load``): a ``VIEW`` arrives as a READ-ONLY view without a copy where the store can map it (numpy
arrays rebuild on it), ``BYTES`` and ``BYTEARRAY`` as private copies. An entry may also be plain bytes in
memory (``materialize``: what a stream spills to disk).
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
from typing import Any, Protocol

from actors.host import Packed

VIEW, BYTES, BYTEARRAY = 0, 1, 2  # a buffer's kind: PickleBuffer (numpy, memoryview), bytes, bytearray


# Buffers this large or larger go out of band when the codec has a store. Chosen by measurement
# (perf/threshold.py, table in perf/README.md): a def step -> def step hop is faster out of band from ~96 KB
# for bytes and from ~192 KB for numpy arrays (their receiver maps the segment), and from 128 KB the
# supervisor thread spends less per hop, since it no longer copies the payload through both pipes. Override
# with PROCFLOW_OOB_THRESHOLD (read when a process starts). The pickler streams a payload to its file as a
# separate object only from 64 KiB on, so that is the lowest it can be.
def _threshold(default: int = 128 << 10) -> int:
    try:
        return max(1 << 16, int(os.environ.get("PROCFLOW_OOB_THRESHOLD", default)))
    except ValueError:
        return default


OOB_THRESHOLD = _threshold()


def threshold_of(n: int | None) -> int | None:
    """A threshold a runtime was given: None (nothing leaves), else at least what the pickler allows."""
    return None if n is None else max(1 << 16, int(n))


class OutOfBand(Protocol):
    """Where a codec puts the large buffers of what it pickles."""

    threshold: int  # buffers of at least this many bytes leave the pickle

    def place(self, buffers: list[tuple[Any, int]]) -> list[Any]:
        """An entry for each ``(buffer, kind)``, in order: what ``Packed.buffers`` carries. ``OSError``: no
        room, the payload is pickled in band instead."""
        ...


# --- the pickler's file ----------------------------------------------------------------------------------
_PID = struct.Struct("<ci")  # BININT, the persistent id; then BINPERSID


def _header(n: int, writable: bool) -> bytes:
    """The opcode header the C pickler writes before a large payload of ``n`` bytes (protocol 5)."""
    if writable:
        return b"\x96" + n.to_bytes(8, "little")  # BYTEARRAY8
    if n <= 0xFFFFFFFF:
        return b"B" + n.to_bytes(4, "little")  # BINBYTES
    return b"\x8e" + n.to_bytes(8, "little")  # BINBYTES8


class BufferFile:
    """The file a payload is pickled into; takes large buffers out of the pickle (see the module docstring).

    ``buffers`` collects ``(object, kind)``; the pickle refers to buffer ``i`` of kind ``k`` by the persistent
    id ``4 * i + k``."""

    __slots__ = ("parts", "buffers", "threshold")

    def __init__(self, threshold: int | None) -> None:
        self.parts: list[Any] = []
        self.buffers: list[tuple[Any, int]] = []
        self.threshold = threshold  # None: nothing leaves

    def write(self, data: Any) -> None:
        parts = self.parts
        if self.threshold is not None and parts:
            t = type(data)
            if t is bytes:
                # A flush of the pickler's own buffer is a fresh object only the pickler refers to; a payload
                # is the caller's (referred to from its container as well).
                if len(data) >= self.threshold and sys.getrefcount(data) > 3:
                    if self._take(data, len(data), False, BYTES):
                        return
            elif t is bytearray or t is pickle.PickleBuffer:
                view = memoryview(data)
                if view.nbytes >= self.threshold:
                    kind = BYTEARRAY if t is bytearray else VIEW
                    if self._take(data, view.nbytes, not view.readonly, kind):
                        return
        parts.append(data)

    def _take(self, data: Any, n: int, writable: bool, kind: int) -> bool:
        head = _header(n, writable)
        last = self.parts[-1]
        if not (type(last) is bytes and last.endswith(head)):
            return False
        self.parts[-1] = last[:-len(head)]
        self.parts.append(_PID.pack(b"J", 4 * len(self.buffers) + kind) + b"Q")
        self.buffers.append((data, kind))
        return True

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


# --- entries back into buffers ----------------------------------------------------------------------------
def load(entry: Any, kind: int) -> Any:
    """An out-of-band buffer as its kind arrives. A segment slice: a read-only view of the segment (mapped),
    or a private ``bytes``/``bytearray`` copy read from it (not mapped: the reader's memory grows by the copy
    only). Bytes in memory: the same, from them. Any other entry (a store's own): ``entry.load(kind)``."""
    if type(entry) is tuple:
        seg, off, n = entry
        if kind == VIEW:
            return seg.view()[off:off + n]
        return seg.read(off, n, writable=kind == BYTEARRAY)
    if not isinstance(entry, (bytes, bytearray, memoryview)):
        return entry.load(kind)
    if kind == BYTES:
        return bytes(entry)
    if kind == BYTEARRAY:
        return bytearray(entry)
    return memoryview(entry).toreadonly()


def nbytes(entry: Any) -> int:
    """The size of the buffer an entry stands for."""
    if type(entry) is tuple:
        return int(entry[2])
    if type(entry) is bytes or type(entry) is bytearray:
        return len(entry)
    return int(entry.nbytes)


def payload_size(packed: Packed) -> int:
    """Bytes a payload holds: its pickle and its out-of-band buffers."""
    return len(packed.data) + sum(nbytes(b) for b in packed.buffers)


def materialize(packed: Packed) -> Packed:
    """The same payload with its out-of-band buffers copied into memory (no segment or Ray object referred
    to): what a stream spills to disk."""
    if not packed.buffers:
        return packed
    copies = tuple(load(b, BYTES) for b in packed.buffers)
    return Packed(packed.type_name, packed.data, packed.type_key, copies, packed.classes)
