"""The driver's side of one Ray worker actor: ``RayLink``, the pool's handle on it.

    supervisor -> worker:  RayLink.send(msg): pickled, framed, coalesced per loop iteration (as Channel does)
                           -> actor.deliver.remote(seq, frames, refs)  kept until a drain's answer says the
                                                                       actor has it; one that stays unacked
                                                                       and failed as unavailable is sent
                                                                       again (same seq)
    worker -> supervisor:  bridge thread: first actor.ping() (its pid and node; a worker that does not
                           answer within launch_timeout never started), then a long poll of
                           actor.drain(batch), one call in flight [-> actor.fetch(batch) if the batch
                           carries large buffers: stored by Ray, owned by the driver] -> unpickle ->
                           loop.call_soon_threadsafe
    death:                 the pending call raises (killed, crashed, node lost) -> call_soon_threadsafe(
                           on_death), after every message already drained. ``ActorUnavailableError`` (Ray
                           cannot reach the actor for now) is retried for up to UNAVAILABLE_GRACE s first.
    kill (hard cancel, timeout, shutdown): RayLink.signal -> ray.kill(actor, no_restart=True); on this
                           machine, SIGKILL escalation of the actor's process and what its steps started

A worker on another machine is never signalled through psutil: only an actor whose node is this process's
node is "local" (under Ray Client, ``ray://``, none is: see ``launcher.local_node_id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import psutil
import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError

from runtime.pool.link import WorkerLink
from runtime.wire.framing import frame
from runtime.workers.ray import objects
from runtime.workers.ray.actor import DRAIN_POLL

if TYPE_CHECKING:
    from actors import ResourceRequest

    from runtime.workers.ray.objects import RayObjects

log = logging.getLogger("procflow")

UNAVAILABLE_GRACE = 30.0  # seconds an unreachable actor is retried before it counts as dead
DELIVERY_CHECK = 0.5  # seconds a delivery may stay unacknowledged before its call's outcome is looked at
PROCFLOW_PACKAGES = ("actors", "runtime", "handler")


@dataclass(frozen=True, slots=True)
class Starting:
    """A worker actor Ray was asked to create: its handle and shape, and how long it may take to start."""

    actor: Any
    shape: ResourceRequest
    launch_timeout: float
    local_node: str | None  # this process's Ray node (None: no actor is local, as under Ray Client)
    closing: threading.Event  # set at shutdown: a start in progress gives up
    objects: RayObjects | None = None  # the driver's table of large buffers (None: all in band)


class _Gone(Exception):
    """The actor is dead or never started; the message says why."""


class RayLink(WorkerLink):
    """The pool's handle on one RayWorker actor."""

    def __init__(self, loop: asyncio.AbstractEventLoop, starting: Starting,
                 on_message: Callable[[object], None], on_death: Callable[[], None]) -> None:
        self.loop, self.actor, self.pid = loop, starting.actor, 0
        self._starting = starting
        self.node_id: str | None = None
        self.ip: str | None = None
        self._local: psutil.Process | None = None
        self.started = False
        self.launch_timed_out = False
        self._on_message, self._on_death = on_message, on_death
        self._frames: list[bytes] = []
        self._refs: list[Any] = []  # the ObjectRefs the queued frames name (they go in the same call)
        self._seq = 0
        self._flush_pending = False
        self._closed = False  # loop thread only
        self._stopping = threading.Event()  # tells the bridge to stop (close() before a death was seen)
        # (seq, frames, the ObjectRefs they name, the call's ref, sent at)
        self._unacked: deque[tuple[int, bytes, list[Any], Any, float]] = deque()
        self._unacked_lock = threading.Lock()
        self._kill_lock = threading.Lock()
        self._killed = False
        self._dead_because: str | None = None  # written by the bridge before it posts on_death
        self._raw_error = ""
        self._descendants: list[psutil.Process] | None = None
        self._bridge = threading.Thread(target=self._run, name="procflow-ray-bridge", daemon=True)
        self._bridge.start()

    # --- to the actor (loop thread) ---------------------------------------------------------------------
    def send(self, msg: object) -> None:
        """Queue ``msg``; the frames of one loop iteration leave in one ``deliver`` call at its end."""
        if self._closed:
            return
        self._frames.append(frame(objects.dumps(msg, self._refs, None)))
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        if self._closed or not self._frames:
            return
        data = b"".join(self._frames)
        self._frames.clear()
        refs, self._refs = self._refs, []
        self._deliver(self._seq, data, refs)
        self._seq += 1

    def _deliver(self, seq: int, data: bytes, refs: list[Any]) -> None:
        try:
            ref = self.actor.deliver.remote(seq, data, refs)
        except Exception as exc:  # noqa: BLE001 -- Ray going away; the bridge reports the death
            log.warning("procflow: delivering to Ray worker pid %d failed: %r", self.pid, exc)
            return
        with self._unacked_lock:
            self._unacked.append((seq, data, refs, ref, time.monotonic()))

    # --- from the actor (bridge thread) -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._wait_started()
            self._pump()
        except _Gone as gone:
            self._dead_because = str(gone)
        except Exception as exc:  # noqa: BLE001 -- RayActorError (killed, crashed, node lost) or Ray gone
            self._raw_error = _plain(str(exc))
            self._dead_because = death_reason(exc)
        if self._stopping.is_set():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
            self.loop.call_soon_threadsafe(self._on_death)

    def _wait_started(self) -> None:
        """Wait for the actor's first answer: Ray may first have to find it a node, or never can."""
        start = self._starting
        deadline = time.monotonic() + start.launch_timeout
        ping = self.actor.ping.remote()
        while True:
            ready, _ = ray.wait([ping], timeout=0.25)
            if self._stopping.is_set() or start.closing.is_set():
                raise _Gone("the runtime shut down while it was starting")
            if ready:
                try:
                    pid, node_id, ip = ray.get(ping)
                    break
                except ActorUnavailableError as exc:
                    log.warning("procflow: a starting Ray worker is unreachable; retrying: %s",
                                _plain(str(exc)).splitlines()[0])
                    ping = self.actor.ping.remote()  # not reached yet: ask again, within the deadline
            if time.monotonic() > deadline:
                self.launch_timed_out = True
                self._kill_actor()
                raise _Gone(f"no node had room for {_bundle_text(start.shape)} within "
                            f"{start.launch_timeout:g} s (`ray status` shows the cluster's resources)")
        self.pid, self.node_id, self.ip = pid, node_id, ip
        if start.local_node is not None and node_id == start.local_node:
            with contextlib.suppress(psutil.Error):
                self._local = psutil.Process(pid)
        self.started = True

    def _pump(self) -> None:
        batch, unreachable_since = 1, 0.0
        while not self._stopping.is_set():
            try:
                acked, data, tokens = ray.get(self.actor.drain.remote(batch))
            except ActorUnavailableError as exc:
                unreachable_since = self._unreachable(unreachable_since, exc)
                continue
            if unreachable_since:
                log.warning("procflow: Ray worker pid %d%s is reachable again", self.pid, self.where())
                unreachable_since = 0.0
            self._received(batch, data, tokens)
            batch += 1
            if self._forget_delivered(acked):
                self._check_deliveries()

    def _received(self, batch: int, data: list[bytes], tokens: list[int]) -> None:
        """Hand a drained batch to the loop, its large buffers fetched first. (A function of its own: the
        pump's frame, waiting on the next drain, must not keep this batch's messages and buffers alive.)"""
        gone: _Gone | None = None
        fetched: dict[int, Any] = {}
        if tokens:
            try:
                fetched = self._fetch(batch, tokens)
            except _Gone as exc:
                gone = exc  # the messages still go, then the death (their buffers say they are lost)
        if data:
            msgs = objects.loads(data, fetched, self._starting.objects)
            self.loop.call_soon_threadsafe(self._hand_over, msgs)
        if gone is not None:
            raise gone

    def _fetch(self, batch: int, tokens: list[int]) -> dict[int, Any]:
        """Have the actor return the large buffers of ``batch``: Ray stores each once, on the actor's node,
        owned by this driver (the caller). Returns once the call has finished, so that whatever the
        supervisor routes is already the driver's; if the actor died first, each buffer's ref carries
        that error to its reader."""
        since = 0.0
        while True:
            first, *refs = self.actor.fetch.options(num_returns=len(tokens) + 1).remote(batch)
            try:
                while not self._stopping.is_set():
                    with contextlib.suppress(GetTimeoutError):
                        ray.get(first, timeout=1.0)
                        break
            except ActorUnavailableError as exc:
                since = self._unreachable(since, exc)  # raises _Gone once it has lasted too long
                continue
            except Exception as exc:  # noqa: BLE001 -- the actor died: the next drain says so
                log.debug("procflow: fetching large buffers from Ray worker pid %d: %r", self.pid, exc)
            return dict(zip(tokens, refs))

    def _unreachable(self, since: float, exc: BaseException) -> float:
        """Ray cannot reach the actor for now: wait a little and go on, up to UNAVAILABLE_GRACE s."""
        now = time.monotonic()
        if not since:
            log.warning("procflow: Ray worker pid %d%s is unreachable; retrying for up to %g s: %s",
                        self.pid, self.where(), UNAVAILABLE_GRACE, _plain(str(exc)).splitlines()[0])
            since = now
        elif now - since > UNAVAILABLE_GRACE:
            raise _Gone(f"Ray could not reach it for {UNAVAILABLE_GRACE:g} s: {death_reason(exc)}")
        self._stopping.wait(min(1.0, 0.05 * 2 ** min(5, int((now - since) / 0.5))))
        self._check_deliveries()
        return since

    def _forget_delivered(self, acked: int) -> bool:
        """Drop deliveries before ``acked`` (the actor has them); True if one has waited long enough to be
        looked at (a delivery whose call failed holds up every later one in the actor)."""
        with self._unacked_lock:
            while self._unacked and self._unacked[0][0] < acked:
                self._unacked.popleft()
            return bool(self._unacked) and time.monotonic() - self._unacked[0][4] > DELIVERY_CHECK

    def _check_deliveries(self) -> None:
        """Send again, with the same ``seq``, deliveries whose call Ray could not get through."""
        with self._unacked_lock:
            pending = list(self._unacked)
        if not pending:
            return
        done, _ = ray.wait([item[3] for item in pending], num_returns=len(pending), timeout=0)
        finished = set(done)
        retry: list[tuple[int, bytes, list[Any]]] = []
        for seq, data, refs, ref, _ in pending:
            if ref not in finished:
                continue
            try:
                ray.get(ref)
            except ActorUnavailableError:
                retry.append((seq, data, refs))
            except Exception:  # noqa: BLE001 -- the actor is dead: the drain says so
                pass
        with self._unacked_lock:
            self._unacked = deque(item for item in self._unacked if item[3] not in finished)
        for seq, data, refs in retry:
            log.warning("procflow: Ray worker pid %d%s was unreachable for a delivery; retrying it",
                        self.pid, self.where())
            self._deliver(seq, data, refs)

    def _hand_over(self, msgs: list[object]) -> None:
        for msg in msgs:
            if self._closed:
                return
            self._on_message(msg)

    # --- ending it --------------------------------------------------------------------------------------
    def _kill_actor(self) -> None:
        with self._kill_lock:
            if self._killed:
                return
            self._killed = True
        try:
            ray.kill(self.actor, no_restart=True)
        except Exception as exc:  # noqa: BLE001 -- dead already, or Ray gone
            log.debug("procflow: ray.kill of worker pid %d: %r", self.pid, exc)

    def signal(self, sig: int) -> None:
        """End the actor: ``ray.kill`` at the first signal, SIGKILL of its process (on this machine) at
        ``SIGKILL``; what its steps started on this machine gets ``sig`` too. Gone is fine.

        ``ray.kill`` and not ``ray.cancel``: steps are not Ray tasks of their own but run inside the actor's
        host, and for actor tasks ``ray.cancel(force=True)`` raises ``ValueError`` while a plain cancel only
        sets a flag in a threaded actor, so nothing there stops a ``def`` step spinning in pure Python.
        Killing the actor does, and by the placement rule a worker running a ``def`` step runs nothing
        else, so exactly that run's step is stopped (async steps of other runs are never on that worker)."""
        local = self._local
        if self._descendants is None:  # seen once, at the first signal: a dead parent hides them later
            self._descendants = []
            if local is not None:
                with contextlib.suppress(psutil.Error):
                    self._descendants = local.children(recursive=True)
        self._kill_actor()
        if sig == signal.SIGKILL and local is not None:
            with contextlib.suppress(psutil.Error):  # psutil checks the pid was not reused
                local.kill()
        for child in self._descendants:
            with contextlib.suppress(psutil.Error):
                child.send_signal(sig)

    def close(self) -> None:
        self._closed = True
        self._stopping.set()
        if not self._killed:  # a death we did not cause: the actor is gone, ray.kill is a no-op then
            self.signal(signal.SIGTERM)
        self._bridge.join(DRAIN_POLL + 2.0)
        for child in self._descendants or []:
            with contextlib.suppress(psutil.Error):
                child.kill()

    # --- describing it ----------------------------------------------------------------------------------
    def where(self) -> str:
        if self.node_id is None:
            return ""
        return f" on node {self.ip} ({self.node_id[:8]})"

    def describe_exit(self) -> str:
        if not self._closed:
            return "still running"
        reason = self._dead_because or "reason unknown"
        hint = self.explain(self._raw_error) if self._raw_error else None
        if not self.started:
            return f"Ray did not start its actor: {reason}" + (f". {hint}" if hint else "")
        return f"its Ray actor died{self.where()}: {reason}"

    def explain(self, error_text: str) -> str | None:
        match = re.search(r"No module named '([\w.]+)'", error_text)
        if match is None:
            return None
        top = match.group(1).split(".")[0]
        where = f"node {self.ip} ({self.node_id[:8]})" if self.node_id else "the node Ray chose"
        if top in PROCFLOW_PACKAGES:
            return (f"procflow is not importable on {where}: install it there, or ship it with "
                    "RayRuntime(init_options={'runtime_env': {'py_modules': [actors, runtime, handler]}})")
        return (f"module '{top}' is not importable on {where}: install it on every node, or ship it with "
                f"RayRuntime(init_options={{'runtime_env': {{'py_modules': [{top}]}}}}) (the imported module "
                "or its directory)")


# --- Ray's error messages -----------------------------------------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b:?")


def _plain(text: str) -> str:
    return _ANSI.sub("", text)


def death_reason(exc: BaseException) -> str:
    """What a Ray error says happened, in a line: why the actor died ("... killed by `ray.kill`", "... its
    node has died"), the exception its creation raised, else its last line; never an empty repr."""
    text = _plain(str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return repr(exc) if repr(exc) != f"{type(exc).__name__}()" else type(exc).__name__
    for line in lines:
        if line.startswith("The actor is dead because"):
            reason = line.removeprefix("The actor is dead because").strip()
            # Ray appends a paragraph of generic advice (OOM killer, ``ray stop``...) to a worker's death.
            return reason.split(" Some common causes include")[0].rstrip(".")
    raised = [line for line in lines if _EXC_LINE.match(line)]
    if "creation task" in text and raised:
        return f"its creation raised {raised[-1]}"
    return (raised[-1] if raised else lines[-1]).split(" Some common causes include")[0].rstrip(".")


def _bundle_text(shape: ResourceRequest) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in shape.bundle().items()) + "}"
