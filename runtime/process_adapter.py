"""``ProcessRunAdapter``: one run on a ``ProcessRuntime``, as the handler sees it (``runtime.engine``).

Every call goes through the supervisor's door and returns a ``concurrent.futures.Future`` at once. Values
cross the door pickled both ways: the caller's objects are pickled on the caller's thread, answers are
unpickled on the thread that reads them (``PackedFuture``), so no caller shares a mutable object with run
state and no user ``__reduce__`` or ``__setstate__`` runs on the supervisor thread for them.
"""

from __future__ import annotations

import concurrent.futures
from typing import TYPE_CHECKING, Any

from actors import Event, WorkflowRuntimeError
from actors.context.snapshot import encode_snapshot
from actors.host import Packed, spec_of

from runtime.engine import RunAdapter
from runtime.run.snapshot import image
from runtime.stream import EventStream

if TYPE_CHECKING:
    from actors import StopEvent, Workflow
    from actors.context.serializers import BaseSerializer

    from runtime.run.state import RunState
    from runtime.supervisor.supervisor import Supervisor
    from runtime.wire.codec import Codec


class PackedFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    """Resolved on the supervisor thread with ``(ok, Packed)``; ``result()`` and ``exception()`` unpickle
    the answer on the reader's thread (``asyncio.wrap_future`` calls them on the awaiting loop's thread)."""

    def __init__(self, codec: Codec) -> None:
        super().__init__()
        self._codec = codec

    def _answer(self, timeout: float | None) -> tuple[bool, Any]:
        ok, packed = super().result(timeout)
        return ok, self._codec.unpack(packed)

    def result(self, timeout: float | None = None) -> Any:
        ok, value = self._answer(timeout)
        if not ok:
            raise value
        return value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        error = super().exception(timeout)
        if error is not None:
            return error
        ok, value = self._answer(timeout)
        return None if ok else value

    def answer(self, ok: bool, packed: Packed) -> bool:
        """The supervisor's reply; False when the asker stopped waiting (its future was cancelled)."""
        if not self.set_running_or_notify_cancel():
            return False
        self.set_result((ok, packed))
        return True


class ProcessRunAdapter(RunAdapter):
    """A run on a ``ProcessRuntime``; every call goes through the supervisor's door."""

    def __init__(self, sup: Supervisor, run_id: str, workflow: Workflow) -> None:
        self._sup = sup
        self.run_id = run_id
        self.workflow = workflow
        self.result: concurrent.futures.Future[StopEvent] = concurrent.futures.Future()
        self.events = EventStream(sup.codec.unpack)
        self.stop_event = None
        self.run: RunState | None = None  # set once by start_run, then read on the supervisor thread only
        self.final_run: RunState | None = None  # set by the supervisor when the run ends

    def begun(self, fut: concurrent.futures.Future[None]) -> None:
        """The door's answer to ``begin``: a refused or failed begin fails the run (nothing is dropped)."""
        exc = fut.exception()
        if exc is not None and not self.result.done():
            try:
                self.result.set_exception(exc)
            except concurrent.futures.InvalidStateError:
                pass  # the supervisor resolved it meanwhile
            self.events.close()

    def send_event(self, event: Event, step: str | None = None) -> concurrent.futures.Future[None]:
        spec_of(self.workflow).check_target(type(event), step)
        # class_keys is fixed before the run is handed over, and never changes: read here safely.
        packed = self._sup.codec.pack(event, keys=self.run.class_keys if self.run is not None else None)
        return self._sup.call(self._sup.send_event, self.run_id, event, packed, step)

    def write_event_to_stream(self, event: Event) -> concurrent.futures.Future[None]:
        return self._sup.call(self._sup.publish, self.run_id, self._sup.codec.pack(event))

    def cancel(self) -> concurrent.futures.Future[None]:
        return self._sup.call(self._sup.cancel, self.run_id)

    def abort(self) -> concurrent.futures.Future[bool]:
        if self.result.done():
            done: concurrent.futures.Future[bool] = concurrent.futures.Future()
            done.set_result(False)
            return done
        return self._sup.call(self._sup.abort, self.run_id)

    def store_call(self, op: str, *args: Any) -> concurrent.futures.Future[Any]:
        fut = PackedFuture(self._sup.codec)
        packed = self._sup.codec.pack(args)  # on the caller's thread: a PayloadError raises here
        door = self._sup.call(self._sup.state_request, self.run, "caller", op, packed, fut.answer)
        door.add_done_callback(lambda d: _fail_if_refused(d, fut))
        return fut

    def previous_run(self) -> RunState:
        run = self.final_run
        if run is None:
            raise WorkflowRuntimeError(
                f"run {self.run_id} is still going: a Context can start a new run once its run has ended")
        return run

    def snapshot(self, serializer: BaseSerializer | None = None, include_state: bool = True) -> dict[str, Any]:
        """``Context.to_dict()``: the run is captured on the supervisor thread, through its door (a consistent
        instant, live or ended), then turned into JSON here, on the caller's thread."""
        run = self.final_run or self.run
        assert run is not None
        if self._sup.in_loop_thread():
            cap = self._sup.capture(run)
        else:
            cap = self._sup.call(self._sup.capture, run).result()
        return encode_snapshot(image(cap, self._sup.codec), serializer, include_state)

    def running_steps(self) -> concurrent.futures.Future[list[str]]:
        run = self.run
        assert run is not None
        return self._sup.call(self._sup.running_steps, run)


def _fail_if_refused(door: concurrent.futures.Future[None], fut: PackedFuture) -> None:
    exc = door.exception()
    if exc is not None and not fut.done() and fut.set_running_or_notify_cancel():
        fut.set_exception(exc)
