"""Where a buffer's bytes live: the address of any buffer, and a map of address ranges to what holds them.

A buffer that already lives in memory a store knows (a mapped shared memory segment, a Ray object read
zero-copy) is sent on again without a copy: the store looks its address up here.
"""

from __future__ import annotations

import bisect
import threading
import weakref
from typing import Any

_api: Any = None  # (PyObject_GetBuffer, PyBuffer_Release, the Py_buffer struct): ctypes, loaded on first use


def _buffer_api() -> Any:
    global _api
    if _api is None:
        import ctypes

        class PyBuffer(ctypes.Structure):
            _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                        ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                        ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p),
                        ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
                        ("internal", ctypes.c_void_p)]

        get = ctypes.pythonapi.PyObject_GetBuffer
        get.argtypes = [ctypes.py_object, ctypes.POINTER(PyBuffer), ctypes.c_int]
        get.restype = ctypes.c_int
        release = ctypes.pythonapi.PyBuffer_Release
        release.argtypes = [ctypes.POINTER(PyBuffer)]
        release.restype = None
        _api = (get, release, PyBuffer, ctypes.byref)
    return _api


def buffer_address(obj: Any) -> int:
    """The address of the first byte of ``obj``'s (contiguous) buffer."""
    get, release, PyBuffer, byref = _buffer_api()
    view = PyBuffer()
    get(obj, byref(view), 0)  # PyBUF_SIMPLE: raises BufferError if not contiguous
    try:
        return view.buf or 0
    finally:
        release(byref(view))


class AddressMap:
    """Address ranges of this process's memory and what holds each (weakly): which segment or object a
    buffer's bytes live in."""

    def __init__(self) -> None:
        # Re-entrant: a mapping's finalizer (remove) may run on this thread at any allocation made while
        # the lock is held.
        self._lock = threading.RLock()
        self._bases: list[int] = []
        self._entries: dict[int, tuple[int, weakref.ref[Any]]] = {}

    def add(self, base: int, size: int, holder: Any) -> None:
        """Note ``size`` bytes from ``base`` as ``holder``'s; a range noted at the same base before (the
        same object mapped again) is replaced."""
        with self._lock:
            if base not in self._entries:
                bisect.insort(self._bases, base)
            self._entries[base] = (size, weakref.ref(holder))

    def remove(self, base: int, holder: Any = None) -> None:
        """Forget the range at ``base`` (with ``holder``: only if it is still that holder's)."""
        with self._lock:
            entry = self._entries.get(base)
            if entry is None or (holder is not None and entry[1]() is not holder):
                return
            del self._entries[base]
            i = bisect.bisect_left(self._bases, base)
            if i < len(self._bases) and self._bases[i] == base:
                del self._bases[i]

    def find(self, addr: int, nbytes: int) -> tuple[Any, int] | None:
        """``(holder, offset)`` when ``addr .. addr + nbytes`` lies in a range the map holds."""
        with self._lock:
            i = bisect.bisect_right(self._bases, addr) - 1
            if i < 0:
                return None
            base = self._bases[i]
            size, ref = self._entries[base]
        seg = ref()
        if seg is None or addr + nbytes > base + size:
            return None
        return seg, addr - base
