"""Large buffers out of band: shared memory segments, files in ``/dev/shm`` named per runtime.

A payload's large buffers (``bytes``, ``bytearray``, ``memoryview`` and anything pickled through a
``PickleBuffer``, such as numpy arrays) are written once into a segment by whoever pickles it (``pwrite``:
the writer never maps it), travel as a name, offset and length inside the ``Packed``, and are mapped
read-only by whoever unpickles a view of them (a numpy array, a memoryview), or read into a private copy
(``pread``: a ``bytes`` or ``bytearray`` owns its memory). The supervisor routes such a payload without
reading or copying it.

    worker A pickles:  Created (A's name)  --Done/Emit/...-->  parent adopts it: Segment (owned, unlinked when
                       the last Packed, stream item, store value or mapped view referring to it goes)
    parent sends it:   Invoke/Reply frame, the Segment held by the channel until the worker says it opened it
    worker B unpickles: Borrowed (opened on receipt, mapped when unpickled; never unlinked by B)

Names: ``procflow.<parent pid>.<parent start time>.<runtime>.<creator>.<n>``. The parent owns every name
with its runtime's prefix (``SegmentTable``). What a worker created and never handed over (it died
mid-message, or its frame was never read) is unlinked when the parent closes that worker's link
(``forget_creator``); everything with the prefix when the runtime shuts down (``close``); and, if the parent
is SIGKILLed, by the reaper (told the prefix) or by the next runtime started on the machine
(``remove_orphans``: names whose parent pid and start time no longer name a live process).

Mappings are read-only and nothing writes a segment after creating it, so a buffer that already lives in a
segment is sent again without a copy: the parent refers to the same segment, a worker hard-links it under a
name of its own (a name the parent may unlink meanwhile cannot be adopted again; a link to it fails instead,
and the buffer is copied).

Every mapping holds a file descriptor (``mmap`` keeps a duplicate), and so does a segment a worker has
received until it lets go of it: a process keeping thousands of views alive at once needs as high a
``RLIMIT_NOFILE``. Without ``/dev/shm`` (not Linux) nothing goes out of band: payloads are pickled in band.
"""

from __future__ import annotations

import itertools
import mmap
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any, Sequence

from runtime.wire.addresses import AddressMap, buffer_address
from runtime.wire.oob import OOB_THRESHOLD, VIEW

if TYPE_CHECKING:
    from runtime.wire.segment_table import SegmentTable

SHM_DIR = "/dev/shm"
AVAILABLE = os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK | os.X_OK)
NAME_HEAD = "procflow."
ALIGN = 64  # each buffer starts 64-byte aligned in its segment (any numpy dtype, cache lines)
_MAX_READ = 0x7FFFF000  # the most Linux reads or writes in one call

Slice = tuple[Any, int, int]  # (segment, offset, nbytes)


def _starttime(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data.rpartition(b")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _unlink(path: str, pid: int | None = None) -> bool:
    """Unlink ``path``; with ``pid``, only in that process (a child made by ``os.fork()`` holds copies of
    the parent's handles, and their finalizers must not unlink the parent's segments)."""
    if pid is not None and os.getpid() != pid:
        return False
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


MAPPED = AddressMap()  # every segment mapped in this process, by address


class _Map(mmap.mmap):
    """A read-only mapping of a segment; keeps its segment (and so its name) alive while any view of it
    lives (a memoryview, a numpy array made from one)."""

    segment: Any


def _map(segment: Any, fd: int) -> _Map:
    m = _Map(fd, segment.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    m.segment = segment
    base = buffer_address(m)
    MAPPED.add(base, segment.size, segment)
    weakref.finalize(m, MAPPED.remove, base)
    return m


class _Segment:
    """What every kind of segment handle has: a name, a size and a lazily made read-only mapping."""

    __slots__ = ("name", "size", "_mapref", "_lock", "__weakref__")

    def __init__(self, name: str, size: int) -> None:
        self.name, self.size = name, size
        self._mapref: weakref.ref[_Map] | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        return f"{SHM_DIR}/{self.name}"

    def view(self) -> memoryview:
        """The whole segment, read-only (mapped on first use; the mapping lives as long as its views)."""
        with self._lock:
            m = self._mapref() if self._mapref is not None else None
            if m is None:
                fd, own = self._reader()
                try:
                    m = _map(self, fd)
                finally:
                    if own:
                        os.close(fd)
                self._mapref = weakref.ref(m)
        return memoryview(m)

    def read(self, offset: int, n: int, writable: bool = False) -> bytes | bytearray:
        """A private copy of ``n`` bytes from ``offset``, read without mapping the segment (so the reader's
        memory grows by the copy only): ``bytes``, or a ``bytearray`` if ``writable``."""
        fd, own = self._reader()
        try:
            if not writable and n <= _MAX_READ:
                data = os.pread(fd, n, offset)
                if len(data) == n:
                    return data
            buf = bytearray(n)
            view, pos = memoryview(buf), 0
            while pos < n:
                got = os.preadv(fd, [view[pos:pos + _MAX_READ]], offset + pos)
                if got <= 0:
                    raise OSError(f"shared memory segment {self.name} is shorter than expected")
                pos += got
            view.release()
            return buf if writable else bytes(buf)
        finally:
            if own:
                os.close(fd)

    def _reader(self) -> tuple[int, bool]:
        """A descriptor to read the segment through, and whether the caller closes it."""
        try:
            return os.open(self.path, os.O_RDONLY), True
        except OSError as exc:
            raise OSError(f"shared memory segment {self.name} is gone: {exc}") from exc

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return (_segment, (self.name, self.size))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.size} B>"


class Segment(_Segment):
    """A segment this process owns (the parent): unlinked when the last reference to it goes, or when its
    table closes."""

    __slots__ = ("table", "_fd_box")

    def __init__(self, name: str, size: int, table: SegmentTable) -> None:
        super().__init__(name, size)
        self.table = table
        # An fd opened only when the table closes, to keep the data reachable after the name is gone.
        self._fd_box = [-1]
        weakref.finalize(self, table._released, name, size, self._fd_box)

    def _reader(self) -> tuple[int, bool]:
        if self._fd_box[0] >= 0:
            return self._fd_box[0], False
        return super()._reader()

    def _pin(self) -> None:
        """Keep the data reachable once the name is unlinked (the table is closing)."""
        if self._fd_box[0] < 0:
            try:
                self._fd_box[0] = os.open(self.path, os.O_RDONLY)
            except OSError:
                pass


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class Borrowed(_Segment):
    """Another process's segment, opened on receipt (so its owner may unlink the name meanwhile); never
    unlinked here."""

    __slots__ = ("_fd", "error")

    def __init__(self, name: str, size: int) -> None:
        super().__init__(name, size)
        self.error: str | None = None
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            self._fd = -1
            self.error = f"shared memory segment {name} was gone on arrival: {exc}"
        else:
            weakref.finalize(self, _close_fd, self._fd)

    def _reader(self) -> tuple[int, bool]:
        if self._fd < 0:
            raise OSError(self.error)
        return self._fd, False


class Created(_Segment):
    """A segment this process (a worker) wrote for the parent: unlinked here if it is never sent (pickled
    into a message); once sent, the parent owns it."""

    __slots__ = ("_finalizer",)

    def __init__(self, name: str, size: int) -> None:
        super().__init__(name, size)
        self._finalizer = weakref.finalize(self, _unlink, self.path, os.getpid())

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        self._finalizer.detach()  # handed over: the parent adopts it when it reads the message
        return (_segment, (self.name, self.size))


# --- the reconstructor: a name arriving in a message -------------------------------------------------------
# runtime prefix -> the table of a live runtime of this process (held by its runtime and its segments)
_TABLES: weakref.WeakValueDictionary[str, SegmentTable] = weakref.WeakValueDictionary()
_BORROWED: weakref.WeakValueDictionary[str, Borrowed] = weakref.WeakValueDictionary()
_borrow_lock = threading.Lock()


def _prefix_of(name: str) -> str:
    return name.rsplit(".", 2)[0] + "."


def _segment(name: str, size: int) -> _Segment:
    """A segment named in a message: adopted if one of this process's runtimes owns its prefix, else
    borrowed (opened now)."""
    table = _TABLES.get(_prefix_of(name))
    if table is not None:
        return table.adopt(name, size)
    with _borrow_lock:
        seg = _BORROWED.get(name)
        if seg is None or seg.error is not None:
            seg = Borrowed(name, size)
            _BORROWED[name] = seg
    return seg


# --- writing segments -----------------------------------------------------------------------------------
def _layout(sizes: Sequence[int]) -> tuple[list[int], int]:
    offsets, pos = [], 0
    for n in sizes:
        offsets.append(pos)
        pos += n
        pos += -pos % ALIGN
    return offsets, max(pos, 1)


def _write_file(path: str, parts: Sequence[Any]) -> tuple[list[int], int]:
    """Create ``path`` holding ``parts`` (aligned); its layout. Cleans up and raises OSError on failure."""
    offsets, total = _layout([memoryview(p).nbytes for p in parts])
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        os.ftruncate(fd, total)
        for part, off in zip(parts, offsets):
            view = memoryview(part).cast("B")
            pos = 0
            while pos < len(view):
                pos += os.pwrite(fd, view[pos:], off + pos)
            view.release()
    except BaseException:
        os.close(fd)
        _unlink(path)
        raise
    os.close(fd)
    return offsets, total


class Creator:
    """Writes segments under a creator prefix; used by workers (``Created``) and, through ``SegmentTable``,
    by the parent. A codec's out-of-band store (``runtime.wire.oob.OutOfBand``)."""

    threshold = OOB_THRESHOLD

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._ids = itertools.count(1)

    def place(self, buffers: list[tuple[Any, int]]) -> list[Slice]:
        """A slice for every out-of-band buffer: where it already lives (a view of a mapped segment), else
        in one new segment."""
        slices: list[Slice | None] = [None] * len(buffers)
        fresh: list[int] = []
        for i, (obj, kind) in enumerate(buffers):
            found = self.existing(obj, memoryview(obj).nbytes) if kind == VIEW else None
            if found is None:
                fresh.append(i)
            else:
                slices[i] = found
        if fresh:
            for i, made in zip(fresh, self.create([buffers[i][0] for i in fresh])):
                slices[i] = made
        return slices  # type: ignore[return-value]

    def _new_name(self) -> str:
        return f"{self.prefix}{next(self._ids)}"

    def _handle(self, name: str, size: int) -> _Segment:
        return Created(name, size)

    def create(self, parts: Sequence[Any]) -> list[Slice]:
        """One new segment holding ``parts``; a slice of it for each part."""
        name = self._new_name()
        offsets, total = _write_file(f"{SHM_DIR}/{name}", parts)
        seg = self._handle(name, total)
        return [(seg, off, memoryview(p).nbytes) for p, off in zip(parts, offsets)]

    def existing(self, obj: Any, nbytes: int) -> Slice | None:
        """A slice referring to where ``obj``'s bytes already are, if they live in a mapped segment."""
        try:
            found = MAPPED.find(buffer_address(obj), nbytes)
        except (BufferError, TypeError, ValueError):
            return None
        if found is None:
            return None
        seg, offset = found
        return self._reuse(seg, offset, nbytes)

    def _reuse(self, seg: _Segment, offset: int, nbytes: int) -> Slice | None:
        # Another process's name may be unlinked at any time: link it under a name of ours (atomic; fails
        # if it is gone, and the caller copies the bytes instead).
        name = self._new_name()
        try:
            os.link(seg.path, f"{SHM_DIR}/{name}")
        except OSError:
            return None
        return (self._handle(name, seg.size), offset, nbytes)


def _listdir() -> list[str]:
    try:
        return os.listdir(SHM_DIR)
    except OSError:
        return []
