"""What runs inside a Ray actor: a procflow ``ActorHost`` on a uvloop thread, fed and drained by actor calls.

    actor.deliver(seq, frames)  [concurrency group "inbox", one thread]  -> os.pipe() inbox -> the host's
                                 reader callback on the actor's uvloop thread (frames kept in ``seq`` order)
    actor.drain(batch)          [group "outbox", one thread]  <- Outbox <- the host's threads (loop and step
                                 thread) sending pickled messages; waits up to DRAIN_POLL s for a first one;
                                 with them, the next delivery seq it expects (the earlier ones are in)
    actor.ping()                [default group]  pid, Ray node id and node IP, once the host is up

Both calls may be sent twice by the driver (``link.py`` retries a call that failed with Ray's
``ActorUnavailableError``, which says the call "may or may not have been executed"), so both are idempotent:
a delivery whose ``seq`` was seen is dropped, and ``drain(batch)`` asked again for the batch it last answered
answers it again instead of taking new messages (which would lose the first answer's).

The actor has no restarts: a dead worker is replaced by the pool, not by Ray, so that its invocations fail or
retry under the supervisor's rules. It is owned by the driver, so Ray ends it when the driver dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import sys
import threading
from typing import Any

import psutil
import ray
import uvloop

from actors.host import ActorHost, Ready

from runtime.workers.process.main import PipeInbox

DRAIN_POLL = 1.0  # seconds a drain() waits for a first message before returning an empty batch


class Outbox:
    """Pickled messages from the host's threads (loop and step thread), taken in batches by ``drain``."""

    def __init__(self) -> None:
        self._items: list[bytes] = []
        self._cond = threading.Condition()

    def put(self, data: bytes) -> None:
        with self._cond:
            self._items.append(data)
            if len(self._items) == 1:
                self._cond.notify()

    def take(self, timeout: float) -> list[bytes]:
        """Everything queued, waiting up to ``timeout`` for a first item; [] if none came."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            items, self._items = self._items, []
            return items


class RayMailbox(PipeInbox):
    """The ``Mailbox`` of an actor host inside a Ray actor: a pipe inbox, an ``Outbox``, a codec."""

    def __init__(self, inbox_fd: int, outbox: Outbox) -> None:
        super().__init__(inbox_fd)
        self._outbox = outbox

    def send(self, msg: object, now: bool = False) -> None:
        self._outbox.put(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))

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

    def __init__(self, sys_path: list[str]) -> None:
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
        self._batch = 0  # the last drain batch answered, and its messages (sent again if asked again)
        self._last: list[bytes] = []
        started = threading.Event()
        failure: list[BaseException] = []
        threading.Thread(target=self._serve, args=(started, failure), name="procflow-actor-loop",
                         daemon=True).start()
        started.wait()
        if failure:
            raise failure[0]

    def _serve(self, started: threading.Event, failure: list[BaseException]) -> None:
        try:
            mailbox = RayMailbox(self._inbox_r, self._outbox)
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
    def deliver(self, seq: int, frames: bytes) -> None:
        """Write framed messages into the host's inbox, in ``seq`` order; a ``seq`` seen before is dropped.

        Ray already runs a one-thread group's calls in submission order; the sequence number keeps the
        order when the driver sends a call again after a transient failure. The write may block while the
        host's loop is busy: that holds only this thread.
        """
        if seq < self._next_seq or seq in self._early:
            return
        self._early[seq] = frames
        while self._next_seq in self._early:
            view = memoryview(self._early.pop(self._next_seq))
            self._next_seq += 1
            while view:
                view = view[os.write(self._inbox_w, view):]

    @ray.method(concurrency_group="outbox")
    def drain(self, batch: int) -> tuple[int, list[bytes]]:
        """Batch ``batch`` of the host's pickled messages, waiting up to ``DRAIN_POLL`` s for one (the
        batch last answered, again, if it is asked for again), and the first delivery ``seq`` not yet
        written to the inbox: every earlier one is in, so the driver can forget them."""
        if batch != self._batch:
            self._batch, self._last = batch, self._outbox.take(DRAIN_POLL)
        return self._next_seq, self._last


# Ray's typed overloads of ray.remote() leave out concurrency_groups, which it accepts at run time.
RemoteWorker: Any = ray.remote(concurrency_groups={"inbox": 1, "outbox": 1})(  # type: ignore[call-overload]
    RayWorker)
