"""What runs inside a Ray actor: a procflow ``ActorHost`` on a uvloop thread, fed and drained by actor calls.

    actor.deliver(seq, frames, refs)  [concurrency group "inbox", one thread]  -> os.pipe() inbox -> the
                                 host's reader callback on the actor's uvloop thread (frames kept in ``seq``
                                 order); ``refs``: the ObjectRefs of the large buffers the frames name
    actor.drain(batch)          [group "outbox", one thread]  <- Outbox <- the host's threads (loop and step
                                 thread) sending pickled messages; waits up to DRAIN_POLL s for a first one;
                                 with them, the next delivery seq it expects (the earlier ones are in) and
                                 the tokens of their large buffers
    actor.fetch(batch)          [group "outbox"]  the large buffers of that batch, as return values: Ray
                                 stores them, owned by the driver (``objects.py``)
    actor.ping()                [default group]  pid, Ray node id and node IP, once the host is up

The calls may be sent twice by the driver (``link.py`` retries a call that failed with Ray's
``ActorUnavailableError``, which says the call "may or may not have been executed"), so they are idempotent:
a delivery whose ``seq`` was seen is dropped, ``drain(batch)`` asked again for the batch it last answered
answers it again instead of taking new messages (which would lose the first answer's), and ``fetch(batch)``
returns that batch's buffers as often as it is asked (they are let go at the next batch).

The actor has no restarts: a dead worker is replaced by the pool, not by Ray, so that its invocations fail or
retry under the supervisor's rules. It is owned by the driver, so Ray ends it when the driver dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from typing import Any, NamedTuple

import psutil
import ray
import uvloop

from actors.host import ActorHost, Ready

from runtime.workers.process.main import PipeInbox
from runtime.workers.ray import objects
from runtime.workers.ray.objects import Pending, WorkerObjects

DRAIN_POLL = 1.0  # seconds a drain() waits for a first message before returning an empty batch


class Outbox:
    """Pickled messages from the host's threads (loop and step thread), taken in batches by ``drain``, with
    the large buffers they carry (``Pending``, by token) and the entries of the Ray objects they send on."""

    def __init__(self) -> None:
        self._items: list[bytes] = []
        self._pending: list[tuple[int, Pending]] = []
        self._refs: list[Any] = []
        self._cond = threading.Condition()

    def put(self, data: bytes, pending: list[tuple[int, Pending]], refs: list[Any]) -> None:
        with self._cond:
            self._items.append(data)
            if pending:
                self._pending += pending
            if refs:
                self._refs += refs
            if len(self._items) == 1:
                self._cond.notify()

    def take(self, timeout: float) -> Batch:
        """Everything queued, waiting up to ``timeout`` for a first item; no messages if none came."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            batch = Batch(self._items, self._pending, self._refs)
            self._items, self._pending, self._refs = [], [], []
            return batch


class Batch(NamedTuple):
    messages: list[bytes]
    pending: list[tuple[int, Pending]]
    refs: list[Any]


class RayMailbox(PipeInbox):
    """The ``Mailbox`` of an actor host inside a Ray actor: a pipe inbox, an ``Outbox``, a codec."""

    def __init__(self, inbox_fd: int, outbox: Outbox, threshold: int | None) -> None:
        super().__init__(inbox_fd)
        self._outbox = outbox
        if threshold is not None:
            self._codec.oob = WorkerObjects(threshold)

    def send(self, msg: object, now: bool = False) -> None:
        refs: list[Any] = []
        pending: list[tuple[int, Pending]] = []
        data = objects.dumps(msg, refs, pending)
        self._outbox.put(data, pending, refs)

    def orphaned(self) -> None:
        """Exit with what the steps started. Unreached in practice: the actor holds its inbox's write end,
        so the inbox never reports EOF, and Ray ends an actor whose owner (the driver) died."""
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
        os._exit(0)


class RayWorker:
    """One procflow worker inside a Ray actor: an ``ActorHost`` on a uvloop in a thread of its own.

    A threaded actor: Ray runs ``deliver`` and ``drain`` on their own one-thread concurrency groups (so a
    long-polling ``drain`` never holds up a delivery, and deliveries run one at a time), ``ping`` on the
    default one.
    """

    def __init__(self, sys_path: list[str], threshold: int | None = None) -> None:
        # The driver's import path, appended (never in front: on another node the worker's own
        # site-packages must win): modules imported by the driver from a tests or scripts directory then
        # import here too, as they do in forkserver/spawn workers.
        for entry in sys_path:
            if entry not in sys.path:
                sys.path.append(entry)
        self._inbox_r, self._inbox_w = os.pipe()
        self._outbox = Outbox()
        self._next_seq = 0
        self._early: dict[int, bytes] = {}
        self._threshold = threshold  # large buffers from this size on go through Ray's object store
        self._batch = 0  # the last drain batch answered, and its messages (sent again if asked again)
        self._last = Batch([], [], [])
        started = threading.Event()
        failure: list[BaseException] = []
        threading.Thread(target=self._serve, args=(started, failure), name="procflow-actor-loop",
                         daemon=True).start()
        started.wait()
        if failure:
            raise failure[0]

    def _serve(self, started: threading.Event, failure: list[BaseException]) -> None:
        try:
            mailbox = RayMailbox(self._inbox_r, self._outbox, self._threshold)
            loop = uvloop.new_event_loop()
            asyncio.set_event_loop(loop)
            host = ActorHost(mailbox, loop)  # built on this thread: the host takes it as its loop thread
            host.start()
            mailbox.send(Ready(os.getpid()))  # first, as in worker_main: the pool counts it as "ready"
        except BaseException as exc:  # noqa: BLE001 -- reported by __init__, so the actor creation fails
            failure.append(exc)
            started.set()
            return
        started.set()
        try:
            loop.run_forever()
        finally:
            # Shutdown stopped the loop: leave as a worker process does. Ray reports the actor dead, and
            # the link reports that to the pool.
            os._exit(0)

    def ping(self) -> tuple[int, str, str]:
        """The actor's pid, Ray node id and node IP address."""
        return os.getpid(), ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()

    @ray.method(concurrency_group="inbox")
    def deliver(self, seq: int, frames: bytes, refs: list[Any]) -> None:
        """Write framed messages into the host's inbox, in ``seq`` order; a ``seq`` seen before is dropped.
        ``refs`` are the ObjectRefs the frames name, kept for the host's reader (``objects.INBOUND``).

        Ray already runs a one-thread group's calls in submission order; the sequence number keeps the
        order when the driver sends a call again after a transient failure. The write may block while the
        host's loop is busy: that holds only this thread.
        """
        if seq < self._next_seq or seq in self._early:
            return
        if refs:
            objects.INBOUND.add(refs)
        self._early[seq] = frames
        while self._next_seq in self._early:
            view = memoryview(self._early.pop(self._next_seq))
            self._next_seq += 1
            while view:
                view = view[os.write(self._inbox_w, view):]

    @ray.method(concurrency_group="outbox")
    def drain(self, batch: int) -> tuple[int, list[bytes], list[int]]:
        """Batch ``batch`` of the host's pickled messages, waiting up to ``DRAIN_POLL`` s for one (the
        batch last answered, again, if it is asked for again), and the first delivery ``seq`` not yet
        written to the inbox: every earlier one is in, so the driver can forget them. With them, the tokens
        of the large buffers they carry (the driver ``fetch``es them). The batch, with the buffers and the
        entries of the Ray objects it sends on, is kept until the next one is asked for: by then the
        driver has unpickled it and holds those objects itself."""
        if batch != self._batch:
            self._batch, self._last = batch, self._outbox.take(DRAIN_POLL)
        last = self._last
        return self._next_seq, last.messages, [token for token, _ in last.pending]

    @ray.method(concurrency_group="outbox")
    def fetch(self, batch: int) -> tuple[Any, ...]:
        """``True``, then the large buffers of batch ``batch`` in token order: called by the driver with
        ``num_returns`` = 1 + their number, so that Ray stores each as a return value the driver owns."""
        if batch != self._batch:
            raise RuntimeError(f"fetch({batch}): the batch answered last is {self._batch}")
        return (True, *[entry.stored() for _, entry in self._last.pending])


# Ray's typed overloads of ray.remote() leave out concurrency_groups, which it accepts at run time.
RemoteWorker: Any = ray.remote(concurrency_groups={"inbox": 1, "outbox": 1})(  # type: ignore[call-overload]
    RayWorker)
