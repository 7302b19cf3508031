"""The adapter boundary: the only interface a ``WorkflowHandler`` talks to.

An ``Engine`` starts runs; each run is a ``RunAdapter``. The process runtime implements both; another engine
(e.g. Ray) implements them too and the handler does not change. Every method is thread-safe and returns at
once; outcomes arrive through ``concurrent.futures.Future``s, which callers wait on from any thread or wrap
on any event loop.
"""

from __future__ import annotations

import concurrent.futures
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from runtime.stream import EventStream

if TYPE_CHECKING:
    from actors import Context, Event, StartEvent, StopEvent, Workflow
    from actors.context.serializers import BaseSerializer


class RunAdapter(ABC):
    """One run, seen from outside the engine.

    ``result`` resolves with the run's StopEvent, or with the exception that ended it
    (``WorkflowCancelledByUser``, ``WorkflowTimeoutError``, a step's exception, ...). ``stop_event`` is set
    before ``result`` resolves: the StopEvent, or the ``Workflow*Event`` published last on failure, timeout
    and cancel. ``events`` carries what the run publishes, ending with that StopEvent.
    """

    run_id: str
    workflow: Workflow
    result: concurrent.futures.Future[StopEvent]
    events: EventStream
    stop_event: StopEvent | None = None

    @abstractmethod
    def send_event(self, event: Event, step: str | None = None) -> concurrent.futures.Future[None]:
        """Route ``event`` into the run, as a step's ``ctx.send_event`` would."""

    @abstractmethod
    def write_event_to_stream(self, event: Event) -> concurrent.futures.Future[None]:
        """Publish ``event`` on the run's stream (fails when the run is not running)."""

    @abstractmethod
    def cancel(self) -> concurrent.futures.Future[None]:
        """Graceful cancel: start no more steps, cancel async steps, let running ``def`` steps finish; the
        run then ends as cancelled."""

    @abstractmethod
    def abort(self) -> concurrent.futures.Future[bool]:
        """Hard cancel: end the run now as cancelled and stop its running steps by killing their workers.
        Resolves with False when the run had already ended."""

    @abstractmethod
    def store_call(self, op: str, *args: Any) -> concurrent.futures.Future[Any]:
        """Read or write the run's store ("get", "set"); after the run, reads its final contents."""

    @abstractmethod
    def previous_run(self) -> Any:
        """The engine's record of this ended run, for a new run to continue from (``run(ctx=...)``);
        raises while the run is going."""

    @abstractmethod
    def snapshot(self, serializer: BaseSerializer | None = None, include_state: bool = True) -> dict[str, Any]:
        """``Context.to_dict()`` of the run, going or ended: a JSON-serializable dict, taken consistently
        where the run lives; ``serializer`` encodes the state's values."""

    @abstractmethod
    def running_steps(self) -> concurrent.futures.Future[list[str]]:
        """The names of the steps with an invocation in progress."""


class Engine(ABC):
    """Something that runs workflows and hands out ``RunAdapter``s."""

    @abstractmethod
    def start_run(self, workflow: Workflow, start_event: StartEvent | None, ctx: Context[Any] | None,
                  run_id: str | None = None) -> RunAdapter:
        """Start a run (validated by the caller) and return its adapter at once. ``start_event`` is None
        when ``ctx`` continues a run still going (restored from a snapshot); ``run_id`` names the run."""

    @abstractmethod
    def shutdown(self) -> None:
        """Stop the engine and everything it started."""

    def on_engine_thread(self) -> bool:
        """Whether the calling thread is the engine's own (where a blocking wait would deadlock)."""
        return False
