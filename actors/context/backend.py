"""The contract between a ``Context`` and wherever its run lives (a worker, or the caller's side).

A ``Context`` is a thin face over a ``ContextBackend``: inside a worker the actor host provides one that
talks to the supervisor over the worker's channels; on the caller's side (``handler.ctx``) the handler
provides one that talks to the run's adapter. The run's state itself lives in the supervisor.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from ..events import Event

if TYPE_CHECKING:
    from .serializers import BaseSerializer
    from ..retry_policy import RetryInfo


class _Missing:
    """The "no default" marker; pickles as the module's singleton so it survives the trip to the parent."""

    def __reduce__(self) -> str:
        return "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class ContextBackend(Protocol):
    """What a Context needs from wherever it lives."""

    def send_event(self, event: Event, step: str | None) -> None: ...
    def write_event_to_stream(self, event: Event) -> None: ...
    def collect_events(self, event: Event, expected: list[type[Event]], buffer_id: str | None
                       ) -> list[Event] | None: ...
    def store_call(self, op: str, *args: Any) -> concurrent.futures.Future[Any]: ...
    def wait(self, fut: concurrent.futures.Future[Any]) -> Any:
        """The result of ``fut`` (from ``store_call``), blocking: how the ``*_sync`` twins wait. A worker
        cannot simply block on it where the thread blocking is the one that would resolve it."""
        ...
    def wait_for_event(self, wait: WaitRequest) -> Event: ...
    def snapshot(self, serializer: BaseSerializer | None, include_state: bool) -> dict[str, Any]: ...
    def previous_run(self) -> Any: ...
    def is_running(self) -> bool: ...
    def running_steps(self) -> concurrent.futures.Future[list[str]]: ...
    def stream_events(self) -> AsyncIterator[Event]: ...
    def retry_info(self) -> RetryInfo: ...


@dataclass(frozen=True, slots=True)
class WaitRequest:
    """What a step asked ``ctx.wait_for_event`` for."""

    event_type: type[Event]
    waiter_event: Event | None
    waiter_id: str | None
    requirements: dict[str, Any]
    timeout: float | None


class Suspend(BaseException):
    """Raised inside a step by ``wait_for_event`` when the event is not there yet: the invocation ends and
    the step runs again from its start once the event arrives. A BaseException so that a step's
    ``except Exception`` does not swallow it."""

    def __init__(self, wait: WaitRequest, waiter_id: str) -> None:
        super().__init__(waiter_id)
        self.wait, self.waiter_id = wait, waiter_id
