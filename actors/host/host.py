"""The actor host: the loop inside a worker process that runs step invocations.

Data flow inside one worker:

    supervisor --inbox--> [loop thread] reader callback: Reply -> resolves the request's future
                                                          other -> dispatch (Invoke starts a task, ...)
    [loop thread]   runs async steps as tasks; many at once
    [step thread]   runs plain ``def`` steps, one at a time (the supervisor never sends two); it waits for
                    replies on futures that the loop thread resolves
    both threads --mailbox.send (locked)--> outbox --> supervisor

An async step that blocks for a reply (``collect_events`` is synchronous) blocks the loop thread, so that
thread then reads the inbox itself until its reply comes, keeping everything else it reads, in order, in
a backlog the loop dispatches next.

A step's exception, including SystemExit and KeyboardInterrupt raised by its code, is reported as ``Failed``
and the worker lives on: it may be hosting other runs' async steps. Only the supervisor ends a worker
(``Shutdown``, or a kill). When the inbox reports EOF the parent is gone and the worker exits.

Every invocation is one task, whose coroutine sends the invocation's outcome as its last act (``_end``): it
catches whatever its step raises, ``CancelledError`` included, so it ends exactly one way. A task cancelled
before it ever ran (its ``CancelInvocations`` read in the same batch as its ``Invoke``) runs none of its code,
and the cancel itself answers ``Cancelled`` for it. So every invocation ends with exactly one outcome message,
sent in the loop iteration its step ended in (no done callback: one iteration less per invocation).
Reporting cannot fail: a failure is described with fallbacks (``safe``), down to a message prepared when the
host started; if even that cannot be sent, the worker exits, and the supervisor sees a death instead of
waiting for ever.

``Cancelled`` means the supervisor asked for it: ``CancelInvocations`` records the invocation in
``_cancel_requested`` before cancelling its task. A ``CancelledError`` of any other origin (a task the step
awaited was cancelled) is the step's failure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..context import Context, Suspend
from ..errors import PayloadError, WorkflowRuntimeError
from ..events import Event
from .protocol import (
    CancelInvocations, Cancelled, Done, DropWorkflow, Failed, Invoke, LoadWorkflow, Mailbox,
    Reply, Request, Shutdown, Suspended,
)
from ..workflow import Workflow, WorkflowSpec
from . import resources
from .backend import WorkerBackend
from .safe import release_frames, safe_text, safe_traceback, type_name

# The exit status of a worker that could not report an invocation's outcome (it exits rather than leave the
# supervisor waiting for an outcome that never comes).
EXIT_UNREPORTABLE = 70


class ActorHost:
    """Hosts the step invocations the supervisor sends to this worker."""

    def __init__(self, mailbox: Mailbox, loop: asyncio.AbstractEventLoop) -> None:
        self.mailbox = mailbox
        self.loop = loop
        self.pid = os.getpid()
        self.workflows: dict[int, tuple[Workflow, WorkflowSpec]] = {}
        # Per workflow key: the event class keys its definition carries. What a step sends on to other
        # workers (results, sent events) is packed with these only: another worker of the run loaded this
        # definition, not necessarily the others this worker holds.
        self.class_keys: dict[int, frozenset[int]] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self._unstarted: dict[int, Invoke] = {}  # invocations whose task has not begun to run yet
        self.step_thread = ThreadPoolExecutor(1, thread_name_prefix="procflow-step")
        self._requests: dict[int, concurrent.futures.Future[Any]] = {}
        self._req_ids = itertools.count(1)
        self._req_lock = threading.Lock()
        self.load_errors: dict[int, BaseException] = {}
        self._backlog: deque[object] = deque()
        self._loop_thread = threading.get_ident()
        self._cancel_requested: set[int] = set()  # invocations CancelInvocations named, until they end
        # Invocations of this worker that asked for the run's state lock and have not given it back: an
        # async step blocking the loop thread for the lock while one of them holds it would never get it.
        self.state_lock_users: set[int] = set()
        # The failure reported when nothing better can be described (prepared now, while memory is there).
        self._last_resort = mailbox.pack(WorkflowRuntimeError(
            f"a step failed in worker {self.pid}, and its exception could not be described or sent "
            "(was the worker out of memory?)"))

    # --- reading the inbox (loop thread) ---------------------------------------------------------------------
    def start(self) -> None:
        self.loop.add_reader(self.mailbox.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        try:
            msgs = self.mailbox.recv_ready()
        except EOFError:
            self.mailbox.orphaned()  # the parent is gone: nobody is left to report to
        self._backlog.extend(msgs)
        self._drain()

    def _drain(self) -> None:
        while self._backlog:
            msg = self._backlog.popleft()
            if isinstance(msg, Reply):
                self._resolve(msg)
            else:
                self.dispatch(msg)

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def wait(self, fut: concurrent.futures.Future[Any]) -> Any:
        """``fut.result()``, but on the loop thread read the inbox meanwhile (see the module docstring)."""
        if not self.on_loop_thread():
            return fut.result()
        while not fut.done():
            try:
                msgs = self.mailbox.recv_wait()
            except EOFError:
                self.mailbox.orphaned()
            for msg in msgs:
                if isinstance(msg, Reply):
                    self._resolve(msg)
                else:
                    self._backlog.append(msg)
        if self._backlog:
            self.loop.call_soon(self._drain)
        return fut.result()

    def _resolve(self, msg: Reply) -> None:
        with self._req_lock:
            fut = self._requests.pop(msg.req, None)
        if fut is None:
            return
        # The asking step may have been cancelled meanwhile (its future cancelled with it).
        if not fut.set_running_or_notify_cancel():
            return
        try:
            value = self.mailbox.unpack(msg.value)
        except PayloadError as exc:
            fut.set_exception(exc)
            return
        if msg.ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def request(self, inv: int, op: str, *args: Any) -> concurrent.futures.Future[Any]:
        """Ask the supervisor about run state; thread-safe; the reply resolves the future."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        packed = self.mailbox.pack(args)
        with self._req_lock:
            req = next(self._req_ids)
            self._requests[req] = fut
        self.mailbox.send(Request(req, inv, op, packed))
        return fut

    # --- the loop thread -----------------------------------------------------------------------------------
    def dispatch(self, msg: object) -> None:
        if isinstance(msg, Invoke):
            self.tasks[msg.inv] = self.loop.create_task(self._run(msg))
            self._unstarted[msg.inv] = msg
        elif isinstance(msg, CancelInvocations):
            for inv in msg.invs:
                running = self.tasks.get(inv)
                if running is None:
                    continue
                running.cancel()
                never_ran = self._unstarted.pop(inv, None)
                if never_ran is not None:  # its coroutine is closed without running: it cannot answer
                    self._end(never_ran, Cancelled(inv))
                else:
                    self._cancel_requested.add(inv)
        elif isinstance(msg, LoadWorkflow):
            try:
                workflow, wspec, keys = self.mailbox.load_definition(msg.definition)
                self.workflows[msg.key] = (workflow, wspec)
                self.class_keys[msg.key] = keys
            except Exception as exc:  # reported by every invocation of this workflow
                self.load_errors[msg.key] = exc
        elif isinstance(msg, DropWorkflow):
            # The event classes it registered go with it unless another definition uses them (the codec
            # holds classes weakly).
            self.workflows.pop(msg.key, None)
            self.class_keys.pop(msg.key, None)
            self.load_errors.pop(msg.key, None)
        elif isinstance(msg, Shutdown):
            self.loop.stop()

    async def _run(self, msg: Invoke) -> None:
        """The invocation's task: runs it and sends its one outcome."""
        self._unstarted.pop(msg.inv, None)
        outcome: object
        try:
            found = self.workflows.get(msg.workflow)
            if found is None:
                outcome = self._failed(msg, self._not_loaded(msg))
            elif found[1].steps[msg.step].is_async:
                outcome = await self._call_async(msg, *found)
            else:
                outcome = await self.loop.run_in_executor(self.step_thread, self._call_sync, msg, *found)
        except asyncio.CancelledError as exc:  # while it awaited a def step's thread
            outcome = Cancelled(msg.inv) if msg.inv in self._cancel_requested else self._failed(
                msg, self._unrequested_cancel(msg, exc))
        except BaseException as exc:  # noqa: BLE001 -- see the module docstring
            outcome = self._failed(msg, exc)
        self._end(msg, outcome)

    def _not_loaded(self, msg: Invoke) -> WorkflowRuntimeError:
        cause = self.load_errors.get(msg.workflow)
        error = WorkflowRuntimeError(
            f"worker {self.pid} could not load the workflow's definition to run step '{msg.step}': {cause!r}")
        error.__cause__ = cause  # its traceback travels in the Failed message's text
        return error

    def _end(self, msg: Invoke, outcome: object) -> None:
        """The invocation is over: send its one outcome (exactly once per invocation)."""
        try:
            self.tasks.pop(msg.inv, None)
            self.state_lock_users.discard(msg.inv)
            self._cancel_requested.discard(msg.inv)
            # The last invocation in flight: its outcome leaves now, not at the end of the loop iteration.
            self.mailbox.send(outcome, now=not self.tasks)
        except BaseException:  # noqa: BLE001 -- nothing can be reported: die, so the supervisor sees it
            self._unreportable(msg)

    def _unreportable(self, msg: Invoke) -> None:
        try:
            sys.stderr.write(f"procflow worker {self.pid}: the outcome of step '{msg.step}' (invocation "
                             f"{msg.inv}) cannot be reported; exiting\n")
            sys.stderr.flush()
        finally:
            os._exit(EXIT_UNREPORTABLE)

    def _unrequested_cancel(self, msg: Invoke, exc: BaseException | None) -> WorkflowRuntimeError:
        """A CancelledError nobody asked this invocation for is the step's failure, reported as this error (a
        CancelledError reaching the caller would read as a cancel of the caller's own task)."""
        error = WorkflowRuntimeError(
            f"step '{msg.step}' raised CancelledError, but its run did not cancel it (was a task or future "
            "it awaited cancelled?)")
        error.__cause__ = exc
        return error

    async def _call_async(self, msg: Invoke, workflow: Workflow, wspec: WorkflowSpec) -> object:
        try:
            fn, kwargs = self._prepare(msg, workflow, wspec)
            spec = wspec.steps[msg.step]
            if spec.resources:
                kwargs.update(await resources.inject(spec, workflow))
            result = await fn(**kwargs)
            return self._done(msg, result)
        except Suspend as suspend:
            return self._suspended(msg, suspend)
        except asyncio.CancelledError as exc:
            if msg.inv in self._cancel_requested:
                return Cancelled(msg.inv)
            return self._failed(msg, self._unrequested_cancel(msg, exc))
        except BaseException as exc:  # noqa: BLE001 -- see the module docstring
            return self._failed(msg, exc)

    def _call_sync(self, msg: Invoke, workflow: Workflow, wspec: WorkflowSpec) -> object:
        try:
            fn, kwargs = self._prepare(msg, workflow, wspec)
            kwargs.update(resources.inject_blocking(wspec.steps[msg.step], workflow, self.loop))
            return self._done(msg, fn(**kwargs))
        except Suspend as suspend:
            return self._suspended(msg, suspend)
        except asyncio.CancelledError as exc:  # a def step cannot be cancelled: never a requested cancel
            return self._failed(msg, self._unrequested_cancel(msg, exc))
        except BaseException as exc:  # noqa: BLE001 -- see the module docstring
            return self._failed(msg, exc)

    def _suspended(self, msg: Invoke, suspend: Suspend) -> object:
        wait = suspend.wait
        try:
            return Suspended(msg.inv, suspend.waiter_id, self.mailbox.pack(wait.event_type),
                             self.mailbox.pack(wait.requirements), wait.timeout,
                             None if wait.waiter_event is None else self.mailbox.pack(wait.waiter_event))
        except PayloadError as exc:
            return self._failed(msg, PayloadError(
                f"step '{msg.step}': wait_for_event({wait.event_type.__name__}) has a waiter event or "
                f"requirements that cannot be pickled: {exc}"))

    def _prepare(self, msg: Invoke, workflow: Workflow, wspec: WorkflowSpec
                 ) -> tuple[Any, dict[str, Any]]:
        spec = wspec.steps[msg.step]
        try:
            event = self.mailbox.unpack(msg.event)
        except PayloadError as exc:
            raise PayloadError(
                f"step '{msg.step}': could not unpickle its input {msg.event.type_name} "
                f"in worker {self.pid}: {exc}") from exc
        kwargs: dict[str, Any] = {spec.ev_param: event}
        if spec.ctx_param is not None:
            kwargs[spec.ctx_param] = Context._bound(WorkerBackend(self, msg, wspec), workflow)
        fn = spec.fn if spec.free_function else spec.fn.__get__(workflow)
        return fn, kwargs

    def _done(self, msg: Invoke, result: Any) -> object:
        if result is None:
            return Done(msg.inv, None)
        if not isinstance(result, Event):
            raise WorkflowRuntimeError(
                f"step '{msg.step}' returned {type(result).__name__}, not an Event or None")
        try:
            return Done(msg.inv, self.mailbox.pack(result, self.class_keys.get(msg.workflow)))
        except PayloadError as exc:
            raise PayloadError(f"step '{msg.step}' returned {type(result).__name__}, which cannot be "
                               f"pickled to leave worker {self.pid}: {exc}") from exc

    def _failed(self, msg: Invoke, exc: BaseException) -> Failed:
        """The ``Failed`` message for ``exc``; never raises for anything ``exc`` does. Tries: the exception
        itself, then again with its frames' locals released (a step that ran out of memory still holds what
        it allocated), then the message prepared at start."""
        for attempt in range(2):
            try:
                return self._describe_failure(msg, exc)
            except BaseException:  # noqa: BLE001 -- the exception is hostile, or memory is short
                if attempt == 0:
                    release_frames(exc)
        return Failed(msg.inv, self._last_resort, f"{type_name(exc)} (its description failed)\n")

    def _describe_failure(self, msg: Invoke, exc: BaseException) -> Failed:
        tb = safe_traceback(exc)
        try:
            packed = self.mailbox.pack(exc)
            # What the supervisor will see: it must unpickle, and as an exception (a __reduce__ may say else).
            copy = self.mailbox.unpack(packed)
            if not isinstance(copy, BaseException):
                raise PayloadError(f"it unpickles as {type_name(copy)}, not as an exception")
        except Exception as err:
            packed = self.mailbox.pack(WorkflowRuntimeError(
                f"step '{msg.step}' raised {type_name(exc)}: {safe_text(exc)} (the exception itself cannot "
                f"be sent to the parent, so it is reported as this error: {safe_text(err)})"))
        return Failed(msg.inv, packed, tb)
