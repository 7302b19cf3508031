"""The messages between the supervisor and an actor host, and the mailbox the host talks through.

Events, results and errors travel as ``Packed`` payloads: bytes plus the type's name, so that a payload that
fails to unpickle can still be reported by type, and so the envelope itself never fails to decode.

Messages are values: never changed once made. They are plain slotted dataclasses, not frozen ones, because
a frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, which costs ~0.15 us per
field on every message of the hot paths (a streamed event makes two of them in the worker and two here). The
``runtime`` package implements ``Mailbox`` (framing, pickling, the per-worker channels); this package only
defines what flows through it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T", bound=type)


def wire(cls: T) -> T:
    """Pickle a message as ``(cls, field values)``: several times cheaper than a dataclass's default
    ``__getstate__``, which walks ``fields()`` on every message."""
    slots: tuple[str, ...] = cls.__dict__["__slots__"]
    getter = operator.attrgetter(*slots) if slots else None

    def reduce(self: Any) -> tuple[Any, tuple[Any, ...]]:
        if getter is None:
            return (type(self), ())
        values = getter(self)
        return (type(self), values if len(slots) > 1 else (values,))

    setattr(cls, "__reduce__", reduce)
    return cls


@dataclass(slots=True, unsafe_hash=True)
class Packed:
    """A pickled payload, the name of its type and, for an event class both sides know, its key (else 0):
    the supervisor routes by that key without unpickling the payload.

    ``buffers`` are the payload's large buffers, out of band: the engine's slices of shared memory (or bytes
    already in memory); ``data`` refers to them by index. ``classes`` are the classes it ships once by value
    (the engine's entries; see ``runtime.wire.codec``). Both are opaque here and empty for most payloads."""

    type_name: str
    data: bytes
    type_key: int = 0
    buffers: tuple[Any, ...] = ()
    classes: tuple[Any, ...] = ()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        if self.buffers or self.classes:
            return (Packed, (self.type_name, self.data, self.type_key, self.buffers, self.classes))
        return (Packed, (self.type_name, self.data, self.type_key))


# --- supervisor -> worker -------------------------------------------------------------------------------
@wire
@dataclass(slots=True, unsafe_hash=True)
class LoadWorkflow:
    """Install a workflow definition under ``key``; sent once per worker before its first invocation."""

    key: int
    definition: Packed


@wire
@dataclass(slots=True, unsafe_hash=True)
class DropWorkflow:
    """Forget the workflow installed under ``key`` (the parent's object was garbage-collected)."""

    key: int


@wire
@dataclass(slots=True, unsafe_hash=True)
class Invoke:
    """Run ``step`` of workflow ``workflow`` on ``event`` as invocation ``inv`` of run ``run_id``.

    A step that waited for events is run again from the start (``lineage`` names its first invocation);
    ``resumed`` maps each of its waiter ids to the event (or the timeout error) that answered it.
    ``attempt`` counts from 1 (a retry is attempt 2, ...); ``first_try`` is the wall-clock time the first
    attempt began, ``last_error`` / ``last_failed_at`` the previous attempt's error and wall-clock failure time
    (for ``ctx.retry_info()``)."""

    inv: int
    run_id: str
    workflow: int
    step: str
    event: Packed
    lineage: int = 0
    resumed: tuple[tuple[str, Packed], ...] = ()
    attempt: int = 1
    first_try: float = 0.0
    last_error: Packed | None = None
    last_failed_at: float | None = None


@wire
@dataclass(slots=True, unsafe_hash=True)
class CancelInvocations:
    """Cancel these async invocations (cooperatively); each answers with ``Cancelled`` or its outcome."""

    invs: tuple[int, ...]


@wire
@dataclass(slots=True, unsafe_hash=True)
class Reply:
    """The answer to ``Request`` ``req``: a value when ``ok``, else a pickled exception."""

    req: int
    ok: bool
    value: Packed


@wire
@dataclass(slots=True, unsafe_hash=True)
class Shutdown:
    """Finish: the worker exits its loop."""


# --- worker -> supervisor -------------------------------------------------------------------------------
@wire
@dataclass(slots=True, unsafe_hash=True)
class Ready:
    """The worker's loop is up."""

    pid: int


@wire
@dataclass(slots=True, unsafe_hash=True)
class Emit:
    """A step's ``ctx.send_event(event, step)``."""

    inv: int
    event: Packed
    step: str | None


@wire
@dataclass(slots=True, unsafe_hash=True)
class Publish:
    """A step's ``ctx.write_event_to_stream(event)``."""

    inv: int
    event: Packed


@wire
@dataclass(slots=True, unsafe_hash=True)
class Request:
    """A step asks the supervisor for run state: ``op`` is "collect", "get", "set", ..."""

    req: int
    inv: int
    op: str
    args: Packed


@wire
@dataclass(slots=True, unsafe_hash=True)
class Done:
    """Invocation ``inv`` returned ``result`` (None when the step returned None)."""

    inv: int
    result: Packed | None


@wire
@dataclass(slots=True, unsafe_hash=True)
class Failed:
    """Invocation ``inv`` raised. ``error`` is the pickled exception; ``traceback`` its formatted text."""

    inv: int
    error: Packed
    traceback: str


@wire
@dataclass(slots=True, unsafe_hash=True)
class Suspended:
    """Invocation ``inv`` called ``ctx.wait_for_event`` for an event not yet there: it is over, and the
    supervisor runs the step again once an event of ``event_type`` matching ``requirements`` arrives."""

    inv: int
    waiter_id: str
    event_type: Packed
    requirements: Packed
    timeout: float | None
    waiter_event: Packed | None


@wire
@dataclass(slots=True, unsafe_hash=True)
class Cancelled:
    """Invocation ``inv`` was cancelled by ``CancelInvocations``."""

    inv: int


class Mailbox(Protocol):
    """The host's two channels to the supervisor, and the codec for payloads."""

    def fileno(self) -> int:
        """The inbox's fd, for the loop's reader callback."""
        ...

    def recv_ready(self) -> list[object]:
        """The messages that can be read now (maybe none); never blocks. EOFError when the supervisor is
        gone."""
        ...

    def recv_wait(self) -> list[object]:
        """At least one message; blocks. EOFError when the supervisor is gone."""
        ...

    def send(self, msg: object, now: bool = False) -> None:
        """Send one message; thread-safe. ``now``: write it at once rather than with whatever else the loop
        thread sends in this iteration (the sender knows nothing else is coming)."""
        ...

    def orphaned(self) -> None:
        """The supervisor is gone: end this worker and whatever its steps started. Does not return."""
        ...

    def pack(self, obj: Any, keys: frozenset[int] | None = None) -> Packed:
        """Pickle ``obj``; raises ``PayloadError`` when it cannot be pickled. ``keys``: the event class keys
        its receivers know (those of the run's definition, from ``load_definition``; None: the parent's)."""
        ...

    def pack_stream(self, obj: Any) -> Packed:
        """Pickle an event for the run's stream (read only by the parent: the mailbox may ship a class it
        must send by value once, then by key); raises ``PayloadError`` when it cannot be pickled."""
        ...

    def unpack(self, packed: Packed) -> Any:
        """Unpickle a payload; raises ``PayloadError`` when it cannot be unpickled."""
        ...

    def load_definition(self, packed: Packed) -> Any:
        """Unpickle a ``LoadWorkflow`` definition, ``(workflow, spec, keys)``, and register its event classes
        (``keys``, what its runs' payloads are packed with)."""
        ...
