"""The parent's side of shared memory segments: ``SegmentTable``, one per ``ProcessRuntime`` (the segments it
owns, created or adopted, and their lifetimes; see ``runtime.wire.segments``), and the removal of segments
whose parent is gone.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref

from runtime.wire.segments import (
    _TABLES, AVAILABLE, NAME_HEAD, SHM_DIR, Creator, Segment, Slice, _close_fd, _listdir, _Segment, _starttime,
    _unlink,
)

_serials = itertools.count(1)


class SegmentTable(Creator):
    """The segments one runtime owns: created by the parent, or adopted from its workers' messages.

    ``bytes``/``count`` are what is held now (the runtime's stats); a segment goes when its last reference
    does."""

    def __init__(self) -> None:
        self.pid = pid = os.getpid()
        self.runtime_prefix = f"{NAME_HEAD}{pid}.{_starttime(pid) or 0}.{next(_serials)}."
        super().__init__(self.runtime_prefix + "p.")
        self._live: weakref.WeakValueDictionary[str, Segment] = weakref.WeakValueDictionary()
        # Re-entrant: a segment's finalizer (_released) may run on this thread at any allocation made while
        # the lock is held.
        self._lock = threading.RLock()
        self.bytes = 0
        self.count = 0
        self.created = 0
        self.adopted = 0
        self.unlinked = 0
        self.closed = False
        _TABLES[self.runtime_prefix] = self

    def creator_prefix(self, creator: int | str) -> str:
        """The prefix a worker numbered ``creator`` writes under."""
        return f"{self.runtime_prefix}{creator}."

    def _handle(self, name: str, size: int) -> _Segment:
        with self._lock:
            self.created += 1
            return self._track(name, size)

    def _track(self, name: str, size: int) -> Segment:
        seg = Segment(name, size, self)
        self._live[name] = seg
        self.bytes += size
        self.count += 1
        return seg

    def _reuse(self, seg: _Segment, offset: int, nbytes: int) -> Slice | None:
        if isinstance(seg, Segment) and seg.table is self:
            return (seg, offset, nbytes)  # ours: the slice keeps it alive
        return super()._reuse(seg, offset, nbytes)

    def adopt(self, name: str, size: int) -> Segment:
        """The segment ``name`` (a worker's, or ours sent back): the live handle if there is one."""
        with self._lock:
            seg = self._live.get(name)
            if seg is None:
                self.adopted += 1
                seg = self._track(name, size)
                if self.closed:
                    seg._pin()
                    _unlink(seg.path)
            return seg

    def _released(self, name: str, size: int, fd_box: list[int]) -> None:
        # The last reference went (a finalizer: any thread).
        if os.getpid() != self.pid:
            return  # a copy in a child made by os.fork(): the segment is the parent's
        if fd_box[0] >= 0:
            _close_fd(fd_box[0])
        with self._lock:
            self.bytes -= size
            self.count -= 1
            closed = self.closed
            if not closed:
                self.unlinked += 1
        if not closed:
            _unlink(f"{SHM_DIR}/{name}")

    def forget_creator(self, creator: int | str) -> int:
        """Unlink what the worker ``creator`` wrote and the parent never adopted (it died, or its last
        frames were never read); the count."""
        head = self.creator_prefix(creator)
        removed = 0
        for name in _listdir():
            if name.startswith(head) and name not in self._live:
                removed += _unlink(f"{SHM_DIR}/{name}")
        return removed

    def close(self) -> int:
        """The runtime shut down: unlink every name with its prefix (live handles keep their data through an
        open descriptor, so a view or a Packed still held keeps working); the count unlinked."""
        with self._lock:
            self.closed = True
            live = list(self._live.values())
        for seg in live:
            seg._pin()
        removed = 0
        for name in _listdir():
            if name.startswith(self.runtime_prefix):
                removed += _unlink(f"{SHM_DIR}/{name}")
        _TABLES.pop(self.runtime_prefix, None)
        return removed

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"segments": self.count, "bytes": self.bytes, "created": self.created,
                    "adopted": self.adopted, "unlinked": self.unlinked}


_orphans_checked = False


def remove_orphans_once() -> int:
    """``remove_orphans()``, the first time a process calls it."""
    global _orphans_checked
    if _orphans_checked or not AVAILABLE:
        return 0
    _orphans_checked = True
    return remove_orphans()


def remove_orphans() -> int:
    """Unlink the segments of procflow parents that are gone (SIGKILLed before anything could clean up):
    names whose parent pid and start time no longer name a live process. The count."""
    removed = 0
    alive: dict[tuple[str, str], bool] = {}
    for name in _listdir():
        if not name.startswith(NAME_HEAD):
            continue
        parts = name.split(".")
        if len(parts) < 6:
            continue
        key = (parts[1], parts[2])
        if key not in alive:
            try:
                alive[key] = str(_starttime(int(parts[1]))) == parts[2]
            except ValueError:
                alive[key] = True
        if not alive[key]:
            removed += _unlink(f"{SHM_DIR}/{name}")
    return removed
