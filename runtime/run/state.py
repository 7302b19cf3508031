"""A run's state, owned by the supervisor thread: status, store, collect buffers, per-step queues.

Nothing here does I/O; the supervisor reads and changes it on its own thread only.
"""

from __future__ import annotations

import enum
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from actors import Event, WorkflowRuntimeError
from actors.context.state_store import DictState, cleared, get_path, replace_state, set_path
from actors.host import MISSING, Packed

from runtime.run.collect import CollectBuffers

if TYPE_CHECKING:
    import asyncio

    from actors import Workflow
    from actors.host import WorkflowSpec

    from runtime.process_runtime import ProcessRunAdapter
    from runtime.pool.worker import Worker


class RunStatus(enum.Enum):
    """PENDING -> RUNNING -> (CANCELLING ->) COMPLETED | FAILED | TIMED_OUT | CANCELLED."""

    PENDING = "pending"
    RUNNING = "running"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed out"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in _ENDED

    @property
    def accepts_work(self) -> bool:
        return self is RunStatus.RUNNING


_ENDED = {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELLED}
_LEGAL: dict[RunStatus, set[RunStatus]] = {
    RunStatus.PENDING: {RunStatus.RUNNING} | _ENDED,
    RunStatus.RUNNING: {RunStatus.CANCELLING} | _ENDED,
    RunStatus.CANCELLING: _ENDED,
    **{ended: set() for ended in _ENDED},
}


Resumed = tuple[tuple[str, Packed], ...]


Recoveries = tuple[tuple[str, int], ...]


# StepInput and RetryState are values, never changed once made; not frozen dataclasses, whose __init__ sets
# each field through object.__setattr__ (a StepInput is made for every routed event).
@dataclass(slots=True, unsafe_hash=True)
class StepInput:
    """An event waiting for a slot of ``step``; ``lineage``/``resumed`` carry a waiting step's answers;
    ``recoveries`` how often each ``@catch_error`` handler already recovered along this chain of events."""

    event: Packed
    lineage: int = 0
    resumed: Resumed = ()
    recoveries: Recoveries = ()


@dataclass(slots=True, unsafe_hash=True)
class RetryState:
    """What a retried invocation knows of its earlier attempts (for ``ctx.retry_info()`` and the failure)."""

    attempt: int = 1
    first_try: float = 0.0  # time.monotonic() of the first attempt
    last_error: Packed | None = None
    last_failed_at: float | None = None  # time.time() of the last failure


@dataclass(eq=False, slots=True)
class Invocation:
    """One execution of one step on one event."""

    inv: int
    run: RunState
    step: str
    event: Packed
    is_async: bool
    attempt: int = 1
    first_try: float = field(default_factory=time.monotonic)
    worker: Worker | None = None
    finished: bool = False
    lineage: int = 0
    resumed: Resumed = ()
    crashes: int = 0  # crashed workers it was on along with other invocations (see on_death)
    recoveries: Recoveries = ()
    last_error: Packed | None = None  # the previous attempt's error, for ctx.retry_info()
    last_failed_at: float | None = None
    # Set once anything it did reached the run (an event routed, a stream item, a store write, a collect):
    # from then on it must never be run again from its start, or those effects would happen twice.
    visible: bool = False
    need: Any = None  # the shape of worker its step asks for (a ResourceRequest), set when it is created

    @property
    def root(self) -> int:
        return self.lineage or self.inv

    def again(self) -> StepInput:
        """This invocation's input, to run it again."""
        return StepInput(self.event, self.lineage, self.resumed, self.recoveries)

    def retry_state(self) -> RetryState:
        return RetryState(self.attempt, self.first_try, self.last_error, self.last_failed_at)


@dataclass(eq=False, slots=True)
class Waiter:
    """A step suspended in ``ctx.wait_for_event``: run ``step`` on ``event`` again when it is answered."""

    step: str
    event: Packed
    lineage: int
    resumed: Resumed
    waiter_id: str
    event_type: type
    requirements: dict[str, Any]
    timeout: float | None = None
    timer: asyncio.TimerHandle | None = None
    waiter_event: Packed | None = None

    def matches(self, event: Event) -> bool:
        return type(event) is self.event_type and all(
            getattr(event, k, MISSING) == v for k, v in self.requirements.items())


@dataclass(eq=False, slots=True)
class PendingRetry:
    """A failed invocation waiting for its retry delay; it holds its step's slot meanwhile."""

    timer: asyncio.TimerHandle
    step: str
    item: StepInput
    retry: RetryState


@dataclass(eq=False, slots=True)
class RunState:
    """Everything about one run. Built on the caller's thread, then owned by the supervisor thread alone
    (handed over by ``Supervisor.begin`` through the door)."""

    run_id: str
    workflow: Workflow
    wspec: WorkflowSpec
    wf_key: int
    adapter: ProcessRunAdapter
    start_event: Packed | None  # None for a run continuing a snapshot (it does not start over)
    # The workflow's definition travels with every run, so a worker can always be given it: no run can
    # reach a worker before its definition does, whatever order racing first runs arrive in.
    definition: Packed
    # The event class keys the definition carries: every payload of the run that a worker may read is
    # packed with these only (a worker knows the keys of the definitions it loaded, not every one).
    class_keys: frozenset[int]
    status: RunStatus = RunStatus.PENDING
    store: Any = field(default_factory=DictState)  # a DictState, or the workflow's Context[State] model
    buffers: CollectBuffers = field(default_factory=CollectBuffers)
    retries: dict[int, PendingRetry] = field(default_factory=dict)
    previous: RunState | None = None  # the ended run a reused Context continues from (see carry)
    queued: dict[str, deque[StepInput]] = field(default_factory=lambda: defaultdict(deque))
    active: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    invs: dict[int, Invocation] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None
    waiters: dict[type, dict[tuple[int, str], Waiter]] = field(default_factory=dict)
    waiter_events_written: set[tuple[int, str]] = field(default_factory=set)
    state_holder: object = None
    state_queue: deque[tuple[object, Any]] = field(default_factory=deque)
    # What a resumed run starts from instead of its StartEvent, and what a cancelled run leaves behind:
    # ("route", step or None, event) and ("invoke", step, StepInput) entries.
    leftovers: list[tuple[str, str | None, Any]] = field(default_factory=list)
    resumes: bool = False  # started from a snapshot of a run still going: no StartEvent, leftovers instead
    idle: bool = False  # WorkflowIdleEvent published, and no work since (see report.maybe_idle)

    def transition(self, to: RunStatus) -> None:
        if to not in _LEGAL[self.status]:
            raise RuntimeError(f"run {self.run_id} cannot go from {self.status.value} to {to.value}")
        self.status = to

    # --- the state: requests from steps (``holder`` is the invocation id) or the caller ("caller") ---------
    def state_op(self, op: str, args: tuple[Any, ...], holder: object) -> Any:
        if op == "get":
            return get_path(self.store, *args)
        if op == "set":
            set_path(self.store, *args)
            return None
        if op == "collect":
            buffer_id, event, expected = args
            return self.buffers[buffer_id].add(event, expected)
        if op == "get_state":
            return self.store
        if op == "set_state":
            self.store = replace_state(self.store, args[0], self.wspec.state_type)
            return None
        if op == "clear":
            self.store = cleared(self.store)
            return None
        if op == "unlock_state":
            if self.state_holder != holder:
                raise WorkflowRuntimeError("edit_state(): the state lock is not held")
            if args[0] is not MISSING:
                self.store = replace_state(self.store, args[0], self.wspec.state_type)
            self._unlock_state()
            return None
        raise WorkflowRuntimeError(f"unknown state operation {op!r}")

    def lock_state(self, holder: object, grant: Callable[[Any], bool]) -> None:
        """Grant the run's state lock to ``holder`` now or when it is free (FIFO). ``grant`` returns
        False when its asker is gone (a caller that stopped waiting): the lock goes to the next."""
        self.state_queue.append((holder, grant))
        if self.state_holder is None:
            self._unlock_state()

    def drop_state_holder(self, holder: object) -> None:
        """``holder`` (an invocation) ended: free the lock it held (its edit is dropped), stop waiting."""
        if self.state_queue:
            self.state_queue = deque(e for e in self.state_queue if e[0] != holder)
        if self.state_holder == holder:
            self._unlock_state()

    def _unlock_state(self) -> None:
        self.state_holder = None
        while self.state_queue:
            holder, grant = self.state_queue.popleft()
            self.state_holder = holder
            if grant(self.store):
                return
        self.state_holder = None
