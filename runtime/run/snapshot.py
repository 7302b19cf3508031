"""JSON snapshots of a finished run (``Context.to_dict``) and runs seeded from them (``run(ctx=...)``).

A snapshot holds the state, the collect buffers, the steps suspended in ``wait_for_event`` (their input event,
their answers so far) and what had not run yet ("leftovers"). Events are stored as ``{"type": "module:Qual",
"data": model_dump(mode="json")}`` and found again among the workflow's own event classes first, so classes
from ``__main__`` or a notebook resolve too.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from actors import (
    Event, HumanResponseEvent, InputRequiredEvent, StartEvent, StopEvent, WorkflowRuntimeError,
    WorkflowTimeoutError,
)
from actors.host import Packed

from runtime.wire.codec import Codec
from runtime.run.state import RunState, RunStatus, StepInput, Waiter

_BUILTIN = (Event, StartEvent, StopEvent, InputRequiredEvent, HumanResponseEvent)
VERSION = 1


def _type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class _Types:
    def __init__(self, known: set[type]) -> None:
        self.by_name = {_type_name(t): t for t in (*_BUILTIN, *known)}

    def resolve(self, name: str) -> type:
        cls = self.by_name.get(name)
        if cls is not None:
            return cls
        module, _, qual = name.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in qual.split("."):
                obj = getattr(obj, part)
        except Exception as exc:
            raise WorkflowRuntimeError(f"snapshot names event type {name}, which cannot be found: {exc}") \
                from exc
        return obj  # type: ignore[no-any-return]


def _event_json(ev: Any) -> dict[str, Any]:
    if isinstance(ev, BaseException):
        return {"error": type(ev).__name__, "message": str(ev)}
    return {"type": _type_name(type(ev)), "data": ev.model_dump(mode="json")}


def to_dict(run: RunState, codec: Codec) -> dict[str, Any]:
    """The JSON-serializable snapshot of an ended run."""
    ev = lambda packed: _event_json(codec.unpack(packed))  # noqa: E731
    store = run.store
    try:
        state = store.model_dump(mode="json") if isinstance(store, BaseModel) else to_jsonable_python(store)
    except Exception as exc:
        raise WorkflowRuntimeError(f"the run's state cannot be written as JSON: {exc}") from exc
    waiters = [{
        "step": w.step, "waiter_id": w.waiter_id, "lineage": w.lineage,
        "event_type": _type_name(w.event_type), "requirements": to_jsonable_python(w.requirements),
        "timeout": w.timeout, "input": ev(w.event),
        "waiter_event": None if w.waiter_event is None else ev(w.waiter_event),
        "resumed": [[wid, ev(answer)] for wid, answer in w.resumed],
    } for ws in run.waiters.values() for w in ws.values()]
    leftovers = []
    for kind, step, item in run.leftovers:
        if kind == "invoke":
            leftovers.append({"kind": kind, "step": step, "input": ev(item.event), "lineage": item.lineage,
                              "resumed": [[wid, ev(a)] for wid, a in item.resumed]})
        else:
            leftovers.append({"kind": kind, "step": step, "event": ev(item)})
    return {
        "version": VERSION, "workflow": run.wspec.name, "status": run.status.value, "state": state,
        "buffers": {k: [_event_json(e) for e in v.events()] for k, v in run.buffers.items() if v},
        "waiters": waiters, "leftovers": leftovers,
    }


def seed(run: RunState, data: dict[str, Any], codec: Codec) -> None:
    """Fill a new run from a snapshot (or from a finished run's context): state always; buffers, waiters
    and leftovers make it continue where the snapshot stopped instead of starting from its StartEvent."""
    if not data:
        return
    types = _Types(run.wspec.event_types())
    resume = data.get("status") == RunStatus.CANCELLED.value  # else: a new run that keeps the state

    def event(obj: dict[str, Any]) -> Any:
        if "error" in obj:
            if obj["error"] == "WorkflowTimeoutError":
                return WorkflowTimeoutError(obj["message"])
            return WorkflowRuntimeError(obj["message"])
        model: Any = types.resolve(obj["type"])
        return model.model_validate(obj["data"])

    def packed(obj: dict[str, Any]) -> Packed:
        return codec.pack(event(obj))

    state_type = run.wspec.state_type
    try:
        run.store = state_type.model_validate(data["state"]) if state_type else dict(data["state"])
    except Exception as exc:
        raise WorkflowRuntimeError(f"the snapshot's state does not fit {run.wspec.name}: {exc}") from exc
    if not resume:
        return
    for key, events in data.get("buffers", {}).items():
        run.buffers.restore(key, [event(e) for e in events])
    for w in data.get("waiters", []):
        waiter = Waiter(w["step"], packed(w["input"]), w["lineage"],
                        tuple((wid, packed(a)) for wid, a in w["resumed"]), w["waiter_id"],
                        types.resolve(w["event_type"]), w["requirements"], w.get("timeout"),
                        waiter_event=packed(w["waiter_event"]) if w.get("waiter_event") else None)
        run.waiters.setdefault(waiter.event_type, {})[(waiter.lineage, waiter.waiter_id)] = waiter
    for item in data.get("leftovers", []):
        if item["kind"] == "invoke":
            resumed = tuple((wid, packed(a)) for wid, a in item["resumed"])
            run.leftovers.append(("invoke", item["step"],
                                  StepInput(packed(item["input"]), item["lineage"], resumed)))
        else:
            run.leftovers.append(("route", item["step"], packed(item["event"])))
    for name in {w.step for ws in run.waiters.values() for w in ws.values()}:
        if name not in run.wspec.steps:
            raise WorkflowRuntimeError(f"the snapshot waits in step '{name}', which {run.wspec.name} lacks")


def carry(run: RunState, previous: RunState) -> None:
    """Like ``seed``, from an ended run of this process, without the JSON round trip: the state keeps its
    Python types (a reused ``Context``)."""
    run.store = copy.deepcopy(previous.store)
    if previous.status is not RunStatus.CANCELLED:
        return
    for key, buffer in previous.buffers.items():
        run.buffers.restore(key, buffer.events())
    for event_type, waiters in previous.waiters.items():
        run.waiters[event_type] = {k: dataclasses.replace(w, timer=None) for k, w in waiters.items()}
    run.leftovers = list(previous.leftovers)
