"""The messages between the supervisor and an actor host, and the mailbox the host talks through.

Events, results and errors travel as ``Packed`` payloads: bytes plus the type's name, so that a payload that
fails to unpickle can still be reported by type, and so the envelope itself never fails to decode. The
``runtime`` package implements ``Mailbox`` (framing, pickling, the per-worker channels); this package only
defines what flows through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Packed:
    """A pickled payload and the name of its type."""

    type_name: str
    data: bytes


# --- supervisor -> worker -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LoadWorkflow:
    """Install a workflow definition under ``key``; sent once per worker before its first invocation."""

    key: int
    definition: Packed


@dataclass(frozen=True, slots=True)
class DropWorkflow:
    """Forget the workflow installed under ``key`` (the parent's object was garbage-collected)."""

    key: int


@dataclass(frozen=True, slots=True)
class Invoke:
    """Run ``step`` of workflow ``workflow`` on ``event`` as invocation ``inv`` of run ``run_id``.

    A step that waited for events is run again from the start (``lineage`` names its first invocation);
    ``resumed`` maps each of its waiter ids to the event (or the timeout error) that answered it."""

    inv: int
    run_id: str
    workflow: int
    step: str
    event: Packed
    lineage: int = 0
    resumed: tuple[tuple[str, Packed], ...] = ()


@dataclass(frozen=True, slots=True)
class CancelInvocations:
    """Cancel these async invocations (cooperatively); each answers with ``Cancelled`` or its outcome."""

    invs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to ``Request`` ``req``: a value when ``ok``, else a pickled exception."""

    req: int
    ok: bool
    value: Packed


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Finish: the worker exits its loop."""


# --- worker -> supervisor -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Ready:
    """The worker's loop is up."""

    pid: int


@dataclass(frozen=True, slots=True)
class Emit:
    """A step's ``ctx.send_event(event, step)``."""

    inv: int
    event: Packed
    step: str | None


@dataclass(frozen=True, slots=True)
class Publish:
    """A step's ``ctx.write_event_to_stream(event)``."""

    inv: int
    event: Packed


@dataclass(frozen=True, slots=True)
class Request:
    """A step asks the supervisor for run state: ``op`` is "collect", "get", "set", ..."""

    req: int
    inv: int
    op: str
    args: Packed


@dataclass(frozen=True, slots=True)
class Done:
    """Invocation ``inv`` returned ``result`` (None when the step returned None)."""

    inv: int
    result: Packed | None


@dataclass(frozen=True, slots=True)
class Failed:
    """Invocation ``inv`` raised. ``error`` is the pickled exception; ``traceback`` its formatted text."""

    inv: int
    error: Packed
    traceback: str


@dataclass(frozen=True, slots=True)
class Suspended:
    """Invocation ``inv`` called ``ctx.wait_for_event`` for an event not yet there: it is over, and the
    supervisor runs the step again once an event of ``event_type`` matching ``requirements`` arrives."""

    inv: int
    waiter_id: str
    event_type: Packed
    requirements: Packed
    timeout: float | None
    waiter_event: Packed | None


@dataclass(frozen=True, slots=True)
class Cancelled:
    """Invocation ``inv`` was cancelled by ``CancelInvocations``."""

    inv: int


class Mailbox(Protocol):
    """The host's two channels to the supervisor, and the codec for payloads."""

    def recv(self) -> object:
        """The next message; blocks. Raises EOFError when the supervisor is gone."""
        ...

    def send(self, msg: object) -> None:
        """Send one message; thread-safe."""
        ...

    def pack(self, obj: Any) -> Packed:
        """Pickle ``obj``; raises ``PayloadError`` when it cannot be pickled."""
        ...

    def unpack(self, packed: Packed) -> Any:
        """Unpickle a payload; raises ``PayloadError`` when it cannot be unpickled."""
        ...

    def load_definition(self, packed: Packed) -> Any:
        """Unpickle a ``LoadWorkflow`` definition and register its event classes."""
        ...
