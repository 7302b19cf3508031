"""Raw frames: the hot or internal messages that are not pickled envelopes (see ``runtime.wire.framing``).

    worker -> parent   P  Publish: invocation, class key, type name, the event's pickle as it is, and the
                          local classes it uses (with the definitions the parent has not had yet) and its
                          out-of-band buffers. The event is pickled once, end to end.
                       D  Done: invocation, class key, type name and the result's pickle (none: no result)
                       A  Ack: the worker opened the segments of this many ``H`` frames
                       F  Forget: a local class key whose class died in the worker
    parent -> worker   H  a pickled message that names segments; held by the parent until acknowledged
                       I  Invoke of a first attempt: invocation, workflow key, wall-clock start, run id,
                          step, and the input event's class key, type name and pickle

``Done`` and ``Invoke`` are the two messages of every hop: pickling their envelopes cost ~2.5 us each way on
each side (two classes looked up by module path per unpickling). They go raw when their payload is plain (no
out-of-band buffers, no local classes) and, for ``Invoke``, on a first attempt that resumes nothing; anything
else is pickled as before.

A pickled envelope starts with the pickle PROTO opcode (0x80); every tag here is below 0x80.
"""

from __future__ import annotations

import struct
from typing import Any, Iterable

from actors.host import Done, Invoke, Packed, Publish

from runtime.wire import segments as shm
from runtime.wire.codec import ClassEntry

PUBLISH, ACK, FORGET, HELD, DONE, INVOKE = b"P"[0], b"A"[0], b"F"[0], b"H"[0], b"D"[0], b"I"[0]
PICKLE = 0x80

_PUB = struct.Struct("!BQIHHHH")  # tag, inv, type key, name length, used keys, definitions, buffers
_KEY = struct.Struct("!I")
_DEF = struct.Struct("!II")  # key, length
_BUF = struct.Struct("!HQQQ")  # name length, segment size, offset, bytes
_COUNT = struct.Struct("!BI")  # tag, number
_DONE = struct.Struct("!BQIi")  # tag, inv, type key, name length (-1: no result)
_INVOKE = struct.Struct("!BQQdIHHH")  # tag, inv, workflow key, first try, type key, lengths: run id, step, name


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


def done_parts(msg: Done) -> tuple[list[bytes], int] | None:
    """The parts of a raw Done frame (and their size); None when the result must be pickled in an envelope
    (it has out-of-band buffers or local classes)."""
    result = msg.result
    if result is None:
        return [_DONE.pack(DONE, msg.inv, 0, -1)], _DONE.size
    if result.buffers or result.classes:
        return None
    name = result.type_name.encode()
    head = _DONE.pack(DONE, msg.inv, result.type_key, len(name))
    return [head, name, result.data], len(head) + len(name) + len(result.data)


def parse_done(payload: bytes) -> Done:
    _, inv, key, name_len = _DONE.unpack_from(payload, 0)
    if name_len < 0:
        return Done(inv, None)
    end = _DONE.size + name_len
    return Done(inv, Packed(payload[_DONE.size:end].decode(), payload[end:], key))


def invoke_parts(msg: Invoke) -> tuple[list[bytes], int] | None:
    """The parts of a raw Invoke frame (and their size); None when it must be pickled: a retry, a resumed
    waiter, or an event with out-of-band buffers or local classes."""
    event = msg.event
    if (event.buffers or event.classes or msg.resumed or msg.lineage or msg.attempt != 1
            or msg.last_error is not None or msg.last_failed_at is not None):
        return None
    run_id, step, name = msg.run_id.encode(), msg.step.encode(), event.type_name.encode()
    if len(run_id) > 0xFFFF or len(step) > 0xFFFF or len(name) > 0xFFFF:
        return None  # (a run id of over 64 KiB: pickled)
    head = _INVOKE.pack(INVOKE, msg.inv, msg.workflow, msg.first_try, event.type_key, len(run_id), len(step),
                        len(name))
    return ([head, run_id, step, name, event.data],
            len(head) + len(run_id) + len(step) + len(name) + len(event.data))


def parse_invoke(payload: bytes) -> Invoke:
    _, inv, workflow, first_try, key, n_run, n_step, n_name = _INVOKE.unpack_from(payload, 0)
    pos = _INVOKE.size
    run_id = payload[pos:pos + n_run].decode()
    pos += n_run
    step = payload[pos:pos + n_step].decode()
    pos += n_step
    name = payload[pos:pos + n_name].decode()
    pos += n_name
    return Invoke(inv, run_id, workflow, step, Packed(name, payload[pos:], key), 0, (), 1, first_try)


def count_frame(tag: int, n: int) -> bytes:
    """An Ack or Forget payload."""
    return _COUNT.pack(tag, n)


def parse_count(payload: bytes) -> int:
    return _COUNT.unpack_from(payload, 0)[1]
