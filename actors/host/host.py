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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import threading
import traceback
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
from .backend import WorkerBackend


class ActorHost:
    """Hosts the step invocations the supervisor sends to this worker."""

    def __init__(self, mailbox: Mailbox, loop: asyncio.AbstractEventLoop) -> None:
        self.mailbox = mailbox
        self.loop = loop
        self.pid = os.getpid()
        self.workflows: dict[int, tuple[Workflow, WorkflowSpec]] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.step_thread = ThreadPoolExecutor(1, thread_name_prefix="procflow-step")
        self._requests: dict[int, concurrent.futures.Future[Any]] = {}
        self._req_ids = itertools.count(1)
        self._req_lock = threading.Lock()
        self.load_errors: dict[int, BaseException] = {}
        self._backlog: deque[object] = deque()
        self._loop_thread = threading.get_ident()

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

    def wait(self, fut: concurrent.futures.Future[Any]) -> Any:
        """``fut.result()``, but on the loop thread read the inbox meanwhile (see the module docstring)."""
        if threading.get_ident() != self._loop_thread:
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
            self.tasks[msg.inv] = self.loop.create_task(self._invoke(msg))
        elif isinstance(msg, CancelInvocations):
            for inv in msg.invs:
                task = self.tasks.get(inv)
                if task is not None:
                    task.cancel()
        elif isinstance(msg, LoadWorkflow):
            try:
                self.workflows[msg.key] = self.mailbox.load_definition(msg.definition)
            except Exception as exc:  # reported by every invocation of this workflow
                self.load_errors[msg.key] = exc
        elif isinstance(msg, DropWorkflow):
            self.workflows.pop(msg.key, None)
        elif isinstance(msg, Shutdown):
            self.loop.stop()

    async def _invoke(self, msg: Invoke) -> None:
        if msg.workflow not in self.workflows:
            cause = self.load_errors.get(msg.workflow)
            error = WorkflowRuntimeError(
                f"worker {self.pid} could not load the workflow's definition to run step '{msg.step}': "
                f"{cause!r}")
            error.__cause__ = cause  # its traceback travels in the Failed message's text
            self.tasks.pop(msg.inv, None)
            self.mailbox.send(self._failed(msg, error))
            return
        workflow, wspec = self.workflows[msg.workflow]
        spec = wspec.steps[msg.step]
        try:
            if spec.is_async:
                outcome = await self._call_async(msg, workflow, wspec)
            else:
                outcome = await self.loop.run_in_executor(
                    self.step_thread, self._call_sync, msg, workflow, wspec)
        except asyncio.CancelledError:
            # The supervisor asked for this cancel (CancelInvocations); report it and end the task here:
            # this task is the invocation's outermost frame, nothing above it waits for the cancellation.
            outcome = Cancelled(msg.inv)
        finally:
            self.tasks.pop(msg.inv, None)
        self.mailbox.send(outcome)

    async def _call_async(self, msg: Invoke, workflow: Workflow, wspec: WorkflowSpec) -> object:
        try:
            fn, kwargs = self._prepare(msg, workflow, wspec)
            result = await fn(**kwargs)
            return self._done(msg, result)
        except asyncio.CancelledError:
            raise
        except Suspend as suspend:
            return self._suspended(msg, suspend)
        except BaseException as exc:  # noqa: BLE001 -- see the module docstring
            return self._failed(msg, exc)

    def _call_sync(self, msg: Invoke, workflow: Workflow, wspec: WorkflowSpec) -> object:
        try:
            fn, kwargs = self._prepare(msg, workflow, wspec)
            return self._done(msg, fn(**kwargs))
        except Suspend as suspend:
            return self._suspended(msg, suspend)
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
            return Done(msg.inv, self.mailbox.pack(result))
        except PayloadError as exc:
            raise PayloadError(f"step '{msg.step}' returned {type(result).__name__}, which cannot be "
                               f"pickled to leave worker {self.pid}: {exc}") from exc

    def _failed(self, msg: Invoke, exc: BaseException) -> Failed:
        tb = "".join(traceback.format_exception(exc))
        try:
            packed = self.mailbox.pack(exc)
            self.mailbox.unpack(packed)  # an exception that pickles but cannot unpickle would be lost
        except Exception:
            substitute = WorkflowRuntimeError(
                f"step '{msg.step}' raised {type(exc).__name__}: {exc} (the exception itself cannot be "
                "pickled, so it is reported as this error)")
            packed = self.mailbox.pack(substitute)
        return Failed(msg.inv, packed, tb)
