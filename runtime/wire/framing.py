"""Framing: how messages are cut on a byte stream (the ``multiprocessing.connection`` format).

A frame is a 4-byte big-endian length and the payload (or -1 and an 8-byte length for payloads over 2 GiB),
so a plain ``Connection.send_bytes``/``recv_bytes`` could read or write the same stream. ``FrameParser``
cuts frames out of bytes however they arrive (a half-written frame never stalls its reader);
``FrameReader`` feeds it from a non-blocking fd.

A frame's payload is a pickled message (it starts with the pickle ``PROTO`` opcode, 0x80) or, for the few
messages on the hot paths, a *raw* frame: one tag byte below 0x80 and a fixed layout (``runtime.wire.raw``),
so that the envelope around an already-pickled event is never pickled again.
"""

from __future__ import annotations

import os
import struct

_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")
# 64 KiB: os.read allocates the whole chunk on every call, and a 256 KiB one cost ~17 us per read.
_READ_CHUNK = 1 << 16
HEADER_SIZE = _HEADER.size


def frame(payload: bytes | bytearray | memoryview) -> bytes:
    """``payload`` with the length header ``Connection.recv_bytes`` expects."""
    n = len(payload)
    if n > 0x7FFFFFFF:
        return _HEADER.pack(-1) + _LONG_HEADER.pack(n) + bytes(payload)
    return _HEADER.pack(n) + bytes(payload)


def frame_header(n: int) -> bytes:
    """The header of a frame of ``n`` payload bytes."""
    if n > 0x7FFFFFFF:
        return _HEADER.pack(-1) + _LONG_HEADER.pack(n)
    return _HEADER.pack(n)


class FrameParser:
    """Cuts frames out of a byte stream fed in pieces of any size."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        """The frames completed by ``chunk`` (their payloads, in order)."""
        buf = self._buf
        if not buf:
            # The common case: the chunk holds whole frames (often exactly one: a hop's Invoke or Done).
            # Slicing the chunk avoids a copy into the buffer.
            if len(chunk) > 4 and _HEADER.unpack_from(chunk)[0] == len(chunk) - 4:
                return [chunk[4:]]
            out, pos = _cut(chunk)
            if pos < len(chunk):
                buf += chunk[pos:]
            return out
        buf += chunk
        out, pos = _cut(buf)
        del buf[:pos]
        return out

    def pending(self) -> int:
        """Bytes of a frame not yet complete."""
        return len(self._buf)


def _cut(buf: bytes | bytearray) -> tuple[list[bytes], int]:
    out: list[bytes] = []
    pos, end = 0, len(buf)
    unpack = _HEADER.unpack_from
    view = buf if isinstance(buf, bytes) else memoryview(buf)  # slices of a bytearray: one copy, not two
    try:
        while end - pos >= 4:
            (n,) = unpack(buf, pos)
            head = 4
            if n == -1:
                if end - pos < 12:
                    break
                (n,) = _LONG_HEADER.unpack_from(buf, pos + 4)
                head = 12
            if end - pos - head < n:
                break
            out.append(bytes(view[pos + head:pos + head + n]))
            pos += head + n
    finally:
        if isinstance(view, memoryview):
            view.release()  # the bytearray is resized next: no export may be left on it
    return out, pos


class FrameReader:
    """Reads frames from a non-blocking fd, however the bytes arrive."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._parser = FrameParser()
        os.set_blocking(fd, False)

    def read(self) -> list[bytes] | None:
        """The frames completed by what can be read now; [] if nothing is there; None at EOF."""
        try:
            chunk = os.read(self.fd, _READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            chunk = b""
        if not chunk:
            return None
        return self._parser.feed(chunk)
