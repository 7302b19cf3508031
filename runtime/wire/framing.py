"""Framing: how messages are cut on a byte stream (the ``multiprocessing.connection`` format).

A frame is a 4-byte big-endian length and the payload (or -1 and an 8-byte length for payloads over 2 GiB),
so the worker's side may use plain ``Connection.send_bytes``/``recv_bytes`` while the supervisor parses the
same frames incrementally from a non-blocking fd: a half-written frame never stalls its loop.
"""

from __future__ import annotations

import os
import struct

_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")
# 64 KiB: os.read allocates the whole chunk on every call, and a 256 KiB one cost ~17 us per read.
_READ_CHUNK = 1 << 16


def frame(payload: bytes) -> bytes:
    """``payload`` with the length header ``Connection.recv_bytes`` expects."""
    n = len(payload)
    if n > 0x7FFFFFFF:
        return _HEADER.pack(-1) + _LONG_HEADER.pack(n) + payload
    return _HEADER.pack(n) + payload


class FrameReader:
    """Reads ``multiprocessing.connection`` frames from a non-blocking fd, however the bytes arrive."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = bytearray()
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
        self._buf += chunk
        out: list[bytes] = []
        buf, pos = self._buf, 0
        while len(buf) - pos >= 4:
            (n,) = _HEADER.unpack_from(buf, pos)
            head = 4
            if n == -1:
                if len(buf) - pos < 12:
                    break
                (n,) = _LONG_HEADER.unpack_from(buf, pos + 4)
                head = 12
            if len(buf) - pos - head < n:
                break
            out.append(bytes(buf[pos + head:pos + head + n]))
            pos += head + n
        del buf[:pos]
        return out
