"""The backend of a ``Context`` before its run: the store lives right here, in the caller's process.

``ctx = Context(workflow)`` (or ``Context.from_dict(workflow, data)``) has a working store: ``set``, ``get``,
``edit_state``, ``clear`` act on a state held here, and ``workflow.run(ctx=ctx)`` starts from it. Everything
that needs a running workflow raises ``ContextStateError``. Values are copied in and out, as they are in a run
(where they cross a process boundary), so a program behaves the same before and during its run.
"""

from __future__ import annotations

import concurrent.futures
import copy
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import ContextStateError
from ..events import Event
from .backend import MISSING, WaitRequest
from .snapshot import SnapshotImage, encode_snapshot
from .state_store import cleared, get_path, replace_state, set_path

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..retry_policy import RetryInfo
    from .serializers import BaseSerializer


def _before_run(what: str) -> NoReturn:
    raise ContextStateError(f"{what} needs a running workflow: pass this Context to workflow.run(ctx=...) "
                            "first (its run has not started)")


class StagingBackend:
    """A Context's backend before its run: the state of ``image``, and what the run will continue from."""

    def __init__(self, image: SnapshotImage, state_type: type[BaseModel] | None) -> None:
        self.image = image
        self.state_type = state_type

    # --- the store, here -------------------------------------------------------------------------------
    def store_call(self, op: str, *args: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            fut.set_result(self._op(op, args))
        except Exception as exc:  # noqa: BLE001 -- handed to the caller, as a run's store would
            fut.set_exception(exc)
        return fut

    def wait(self, fut: concurrent.futures.Future[Any]) -> Any:
        return fut.result()  # resolved already: the store is here

    def _op(self, op: str, args: tuple[Any, ...]) -> Any:
        image = self.image
        assert image.state is not None
        if op == "get":
            return copy.deepcopy(get_path(image.state, *args))
        if op == "set":
            key, value = args
            set_path(image.state, key, copy.deepcopy(value))
            return None
        if op in ("get_state", "lock_state"):
            return copy.deepcopy(image.state)
        if op == "set_state":
            image.state = replace_state(image.state, copy.deepcopy(args[0]), self.state_type)
            return None
        if op == "unlock_state":
            if args[0] is not MISSING:
                image.state = replace_state(image.state, args[0], self.state_type)
            return None
        if op == "clear":
            image.state = cleared(image.state)
            return None
        if op == "collect":
            _before_run("collect_events()")
        raise ContextStateError(f"unknown state operation {op!r}")

    # --- what needs a run ------------------------------------------------------------------------------
    def send_event(self, event: Event, step: str | None) -> None:
        _before_run("send_event()")

    def write_event_to_stream(self, event: Event) -> None:
        _before_run("write_event_to_stream()")

    def collect_events(self, event: Event, expected: list[type[Event]], buffer_id: str | None
                       ) -> list[Event] | None:
        _before_run("collect_events()")

    def wait_for_event(self, wait: WaitRequest) -> Event:
        _before_run("wait_for_event()")

    def running_steps(self) -> concurrent.futures.Future[list[str]]:
        _before_run("running_steps()")

    def stream_events(self) -> AsyncIterator[Event]:
        _before_run("stream_events()")

    def retry_info(self) -> RetryInfo:
        _before_run("retry_info()")

    # --- the snapshot ----------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.image.is_running

    def snapshot(self, serializer: BaseSerializer | None, include_state: bool) -> dict[str, Any]:
        return encode_snapshot(self.image, serializer, include_state)

    def previous_run(self) -> Any:
        return None
