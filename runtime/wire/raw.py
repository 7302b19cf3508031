"""Raw frames: the hot or internal messages that are not pickled envelopes (see ``runtime.wire.framing``).

    worker -> parent   P  Publish: invocation, class key, type name, the event's pickle as it is, and the
                          local classes it uses (with the definitions the parent has not had yet) and its
                          out-of-band buffers. The event is pickled once, end to end.
                       A  Ack: the worker opened the segments of this many ``H`` frames
                       F  Forget: a local class key whose class died in the worker
    parent -> worker   H  a pickled message that names segments; held by the parent until acknowledged

A pickled envelope starts with the pickle PROTO opcode (0x80); every tag here is below 0x80.
"""

from __future__ import annotations

import struct
from typing import Any, Iterable

from actors.host import Packed, Publish

from runtime.wire import segments as shm
from runtime.wire.codec import ClassEntry

PUBLISH, ACK, FORGET, HELD = b"P"[0], b"A"[0], b"F"[0], b"H"[0]
PICKLE = 0x80

_PUB = struct.Struct("!BQIHHHH")  # tag, inv, type key, name length, used keys, definitions, buffers
_KEY = struct.Struct("!I")
_DEF = struct.Struct("!II")  # key, length
_BUF = struct.Struct("!HQQQ")  # name length, segment size, offset, bytes
_COUNT = struct.Struct("!BI")  # tag, number


_KEYS: dict[int, struct.Struct] = {}


def _keys(n: int) -> struct.Struct:
    """The layout of ``n`` class keys."""
    layout = _KEYS.get(n)
    if layout is None:
        layout = _KEYS[n] = struct.Struct(f"!{n}I")
    return layout


def publish_parts(inv: int, packed: Packed, definitions: Iterable[tuple[int, bytes]]
                  ) -> tuple[list[bytes], int]:
    """The parts of a raw Publish frame (and their total size). Marks the segments it names as handed over."""
    name = packed.type_name.encode()
    if not packed.buffers:
        if not packed.classes:  # the common case
            head = _PUB.pack(PUBLISH, inv, packed.type_key, len(name), 0, 0, 0)
            return [head, name, packed.data], len(head) + len(name) + len(packed.data)
        if not definitions:  # a local class the parent has already
            head = (_PUB.pack(PUBLISH, inv, packed.type_key, len(name), len(packed.classes), 0, 0)
                    + _keys(len(packed.classes)).pack(*packed.classes))
            return [head, name, packed.data], len(head) + len(name) + len(packed.data)
    defs = list(definitions)
    bufs = list(packed.buffers)
    parts: list[Any] = [_PUB.pack(PUBLISH, inv, packed.type_key, len(name), len(packed.classes), len(defs),
                                  len(bufs))]
    parts += [_KEY.pack(k) for k in packed.classes]
    for key, definition in defs:
        parts += [_DEF.pack(key, len(definition)), definition]
    for seg, off, n in bufs:
        seg_name = seg.name.encode()
        seg.__reduce__()  # handed over: the parent adopts it when it reads the frame
        parts += [_BUF.pack(len(seg_name), seg.size, off, n), seg_name]
    parts += [name, packed.data]
    return parts, sum(len(p) for p in parts)


def parse_publish(payload: bytes, classes: dict[int, ClassEntry]) -> Publish:
    """A raw Publish frame as a ``Publish`` message; registers the class definitions it carries in
    ``classes`` (kept as bytes: nothing is unpickled here) and adopts the segments it names."""
    _, inv, key, name_len, n_used, n_defs, n_bufs = _PUB.unpack_from(payload, 0)
    pos = _PUB.size
    if not (n_defs or n_bufs):  # the common cases: no local class, or only ones the table has
        if not n_used:
            end = pos + name_len
            return Publish(inv, Packed(payload[pos:end].decode(), payload[end:], key))
        keys = _keys(n_used)
        entries = tuple([classes[k] for k in keys.unpack_from(payload, pos) if k in classes])
        pos += keys.size
        end = pos + name_len
        return Publish(inv, Packed(payload[pos:end].decode(), payload[end:], key, (), entries))
    used = []
    for _ in range(n_used):
        used.append(_KEY.unpack_from(payload, pos)[0])
        pos += _KEY.size
    for _ in range(n_defs):
        k, n = _DEF.unpack_from(payload, pos)
        pos += _DEF.size
        classes[k] = ClassEntry(k, payload[pos:pos + n])
        pos += n
    bufs = []
    for _ in range(n_bufs):
        ln, size, off, n = _BUF.unpack_from(payload, pos)
        pos += _BUF.size
        seg = shm._segment(payload[pos:pos + ln].decode(), size)
        pos += ln
        bufs.append((seg, off, n))
    name = payload[pos:pos + name_len].decode()
    pos += name_len
    entries = tuple([classes[k] for k in used if k in classes]) if used else ()
    return Publish(inv, Packed(name, payload[pos:], key, tuple(bufs), entries))


def count_frame(tag: int, n: int) -> bytes:
    """An Ack or Forget payload."""
    return _COUNT.pack(tag, n)


def parse_count(payload: bytes) -> int:
    return _COUNT.unpack_from(payload, 0)[1]
