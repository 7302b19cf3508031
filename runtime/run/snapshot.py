"""Snapshots of a run (``Context.to_dict``) and runs started from them (``run(ctx=...)``).

    supervisor thread: capture(run) -> a RunCapture of pickled copies, consistent (nothing runs between)
    caller's thread:   image(capture) -> actors' SnapshotImage -> JSON, with the caller's serializer
    caller's thread:   seed(run, image) fills a new RunState before it is handed to the supervisor
    supervisor thread: carry(run, previous) for a Context reused across runs (no JSON, Python types kept)

A snapshot of a run still going (or cancelled) holds what it had left to do: the inputs of the invocations in
progress (they run again from their start on resume), the queued and retrying ones, the steps waiting in
``wait_for_event``, the collect buffers. A run started from it continues (``resumes``) instead of starting from a
StartEvent. The JSON format is ``actors.context.snapshot``'s.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from actors.context.snapshot import LeftoverImage, SnapshotImage, WaiterImage
from actors.host import Packed

from runtime.run.state import RunState, RunStatus, StepInput, Waiter
from runtime.wire.codec import Codec

_RESUMABLE = {RunStatus.PENDING, RunStatus.RUNNING, RunStatus.CANCELLING, RunStatus.CANCELLED}


@dataclass
class RunCapture:
    """A run at one instant, as pickled copies (taken on the supervisor thread, read anywhere)."""

    workflow: str
    status: str
    is_running: bool
    state: Packed
    buffers: dict[str, list[Packed]] = field(default_factory=dict)
    waiters: list[Waiter] = field(default_factory=list)
    leftovers: list[tuple[str, str | None, Any]] = field(default_factory=list)


def capture(run: RunState, codec: Codec) -> RunCapture:
    """The run as it is now. On the supervisor thread: it reads run state that only this thread changes."""
    leftovers = list(run.leftovers)
    if not run.status.ended:
        leftovers += [("invoke", inv.step, inv.again()) for inv in run.invs.values()]
        leftovers += [("invoke", retry.step, retry.item) for retry in run.retries.values()]
        leftovers += [("invoke", step, item) for step, queue in run.queued.items() for item in queue]
    return RunCapture(
        run.wspec.name, run.status.value, run.status in _RESUMABLE, codec.pack(run.store),
        {key: [codec.pack(ev) for ev in buffer.events()] for key, buffer in run.buffers.items() if buffer},
        [dataclasses.replace(w, timer=None) for ws in run.waiters.values() for w in ws.values()],
        leftovers)


def image(cap: RunCapture, codec: Codec) -> SnapshotImage:
    """The capture as objects (unpickled here, on the caller's thread)."""
    unpack = codec.unpack

    def answers(resumed: tuple[tuple[str, Packed], ...]) -> list[tuple[str, Any]]:
        return [(wid, unpack(answer)) for wid, answer in resumed]

    waiters = [WaiterImage(w.step, w.waiter_id, w.lineage, w.event_type, dict(w.requirements), w.timeout,
                           unpack(w.event), None if w.waiter_event is None else unpack(w.waiter_event),
                           answers(w.resumed)) for w in cap.waiters]
    leftovers = []
    for kind, step, item in cap.leftovers:
        if kind == "invoke":
            leftovers.append(LeftoverImage("invoke", step, unpack(item.event), item.lineage, answers(item.resumed)))
        else:
            leftovers.append(LeftoverImage("route", step, unpack(item)))
    return SnapshotImage(cap.workflow, cap.status, cap.is_running, unpack(cap.state),
                         {key: [unpack(p) for p in events] for key, events in cap.buffers.items()},
                         waiters, leftovers)


def seed(run: RunState, img: SnapshotImage, codec: Codec) -> None:
    """Fill a new run from an image (a Context before its first run): its state always; its buffers, waiters
    and leftovers when it continues a run still going (``resumes``)."""
    if img.state is not None:
        run.store = copy.deepcopy(img.state)
    if not img.resumes:
        return
    run.resumes = True
    def pack(obj: Any) -> Packed:
        return codec.pack(obj, keys=run.class_keys)

    def answers(resumed: list[tuple[str, Any]]) -> tuple[tuple[str, Packed], ...]:
        return tuple((wid, pack(answer)) for wid, answer in resumed)

    for key, events in img.buffers.items():
        run.buffers.restore(key, list(events))
    for w in img.waiters:
        if w.step not in run.wspec.steps:
            raise ValueError(f"the snapshot waits in step '{w.step}', which {run.wspec.name} lacks")
        waiter = Waiter(w.step, pack(w.input), w.lineage, answers(w.resumed), w.waiter_id, w.event_type,
                        dict(w.requirements), w.timeout,
                        waiter_event=None if w.waiter_event is None else pack(w.waiter_event))
        run.waiters.setdefault(waiter.event_type, {})[(waiter.lineage, waiter.waiter_id)] = waiter
    for item in img.leftovers:
        if item.step is not None and item.step not in run.wspec.steps:
            raise ValueError(f"the snapshot has work for step '{item.step}', which {run.wspec.name} lacks")
        if item.kind == "invoke":
            run.leftovers.append(("invoke", item.step, StepInput(pack(item.event), item.lineage,
                                                                  answers(item.resumed))))
        else:
            run.leftovers.append(("route", item.step, pack(item.event)))


def carry(run: RunState, previous: RunState) -> None:
    """Like ``seed``, from an ended run of this process, without a round trip through objects: the state keeps
    its Python types (a reused ``Context``)."""
    run.store = copy.deepcopy(previous.store)
    if previous.status is not RunStatus.CANCELLED:
        return
    run.resumes = True
    for key, buffer in previous.buffers.items():
        run.buffers.restore(key, buffer.events())
    for event_type, waiters in previous.waiters.items():
        run.waiters[event_type] = {k: dataclasses.replace(w, timer=None) for k, w in waiters.items()}
    run.leftovers = list(previous.leftovers)
