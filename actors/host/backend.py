"""A step's ``Context`` backend inside a worker: fire-and-forget sends, request/reply for run state."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NoReturn

from ..context import Suspend, WaitRequest
from ..errors import ContextStateError, PayloadError, WorkflowRuntimeError
from ..events import Event
from ..retry_policy import RetryInfo
from .protocol import Emit, Invoke, Publish

if TYPE_CHECKING:
    from ..context.serializers import BaseSerializer
    from ..workflow import WorkflowSpec
    from .host import ActorHost


class WorkerBackend:
    """A step's Context backend inside a worker: fire-and-forget sends, request/reply for run state."""

    __slots__ = ("host", "msg", "wspec", "_waits", "_lock_request")

    def __init__(self, host: ActorHost, msg: Invoke, wspec: WorkflowSpec) -> None:
        self.host = host
        self.msg = msg
        self.wspec = wspec
        self._waits = 0
        self._lock_request: concurrent.futures.Future[Any] | None = None

    def _pack_event(self, event: Event, what: str) -> Any:
        try:
            if what == "write_event_to_stream":
                return self.host.mailbox.pack_stream(event)
            return self.host.mailbox.pack(event, self.host.class_keys.get(self.msg.workflow))
        except PayloadError as exc:
            raise PayloadError(f"step '{self.msg.step}': {what}({type(event).__name__}) cannot be "
                               f"pickled: {exc}") from exc

    def send_event(self, event: Event, step: str | None) -> None:
        self.wspec.check_target(type(event), step)
        self.host.mailbox.send(Emit(self.msg.inv, self._pack_event(event, "send_event"), step))

    def write_event_to_stream(self, event: Event) -> None:
        packed = self._pack_event(event, "write_event_to_stream")
        self.host.mailbox.send(Publish(self.msg.inv, packed))

    def collect_events(self, event: Event, expected: list[type[Event]], buffer_id: str | None
                       ) -> list[Event] | None:
        fut = self.host.request(self.msg.inv, "collect", buffer_id or self.msg.step, event, expected)
        result: list[Event] | None = self.wait(fut)
        return result

    def store_call(self, op: str, *args: Any) -> concurrent.futures.Future[Any]:
        try:
            fut = self.host.request(self.msg.inv, op, *args)
        except PayloadError as exc:
            what = f"store.{op}({args[0]!r})" if op == "set" else f"store.{op}()"
            raise PayloadError(f"step '{self.msg.step}': {what}: the value cannot be stored, it cannot be "
                               f"pickled: {exc}") from exc
        if op == "lock_state":
            self.host.state_lock_users.add(self.msg.inv)
            self._lock_request = fut
        elif op == "unlock_state":  # once sent, the supervisor frees the lock before it reads anything later
            self.host.state_lock_users.discard(self.msg.inv)
        return fut

    def wait(self, fut: concurrent.futures.Future[Any]) -> Any:
        """The result of a request, blocking; on the loop thread (an async step calling a ``*_sync`` twin)
        the host reads the inbox meanwhile, since only this thread resolves replies."""
        if (fut is self._lock_request and self.host.on_loop_thread()
                and self.host.state_lock_users - {self.msg.inv}):
            raise WorkflowRuntimeError(
                f"step '{self.msg.step}': edit_state_sync() in an async step would deadlock: another step in "
                "this worker holds or awaits the state lock, and it cannot run while this one blocks the "
                "worker's loop. Use `async with ctx.store.edit_state()` in async steps")
        return self.host.wait(fut)

    def wait_for_event(self, wait: WaitRequest) -> Event:
        waiter_id = wait.waiter_id
        if waiter_id is None:
            # Stable across re-runs of this invocation: the n-th wait of the lineage.
            waiter_id = f"{self.msg.lineage or self.msg.inv}:{self._waits}"
            self._waits += 1
        for wid, packed in self.msg.resumed:
            if wid == waiter_id:
                value = self.host.mailbox.unpack(packed)
                if isinstance(value, BaseException):
                    raise value
                return value  # type: ignore[no-any-return]
        raise Suspend(wait, waiter_id)

    def snapshot(self, serializer: BaseSerializer | None, include_state: bool) -> dict[str, Any]:
        raise ContextStateError("to_dict() is for the caller's handler.ctx, not inside a step")

    def previous_run(self) -> Any:
        raise ContextStateError("a step's Context cannot start another run")

    # --- what LlamaIndex's Context offers a step, beyond the above ------------------------------------------
    def is_running(self) -> bool:
        return True  # a step runs inside its run

    def _callers_only(self, what: str) -> NoReturn:
        raise ContextStateError(f"step '{self.msg.step}': {what} is for the caller's side of the run "
                                "(handler.ctx), not for steps")

    def running_steps(self) -> concurrent.futures.Future[list[str]]:
        self._callers_only("running_steps()")

    def stream_events(self) -> AsyncIterator[Event]:
        self._callers_only("stream_events()")

    def retry_info(self) -> RetryInfo:
        msg = self.msg
        last_error = None
        if msg.last_error is not None:
            try:
                last_error = self.host.mailbox.unpack(msg.last_error)
            except PayloadError as exc:
                last_error = exc
        failed_at = None if msg.last_failed_at is None else \
            datetime.fromtimestamp(msg.last_failed_at, tz=timezone.utc)
        elapsed = max(0.0, time.time() - msg.first_try) if msg.first_try else 0.0
        return RetryInfo(msg.attempt - 1, elapsed, last_error, failed_at)
