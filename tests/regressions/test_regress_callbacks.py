"""Regressions of the reliability issue: done callbacks that freeze or kill the runtime.

Defects 3 and 4 of the issue (the number is in each test's comment). A done callback runs on the runtime's
own thread, so a bad one can freeze the runtime: each scenario runs in a child interpreter, bounded, so that
a hang is a failure and not a stuck CI job.
"""

from __future__ import annotations

import pytest
from regress_util import run_child


# --- defect 3: blocking calls inside a done callback ----------------------------------------------------
DONE_CALLBACK = """
class Go(HumanResponseEvent):  # sent by the caller only: LlamaIndex validation wants a HumanResponseEvent
    pass

class Gated(Workflow):
    @step
    async def begin(self, ctx: Context, ev: StartEvent) -> StopEvent | None:
        await ctx.store.set("total", 42)
        return None

    @step
    async def go(self, ev: Go) -> StopEvent:
        return StopEvent(result="done")

class Quick(Workflow):
    @step
    async def only(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.x + 1)

out = {{}}
called = threading.Event()

def callback(h):
    try:
        out["stop_event_set"] = h.get_stop_event() is not None
        value = {call}
        out["call"] = "returned"
        if isinstance(value, list):  # iter_events: what the stream held
            value = [type(e).__name__ + ":" + str(getattr(e, "result", "")) for e in value]
        out["value"] = value
    except (RuntimeError, WorkflowError) as exc:
        out["call"] = "raised " + type(exc).__name__
    except BaseException as exc:
        out["call"] = "raised unexpected " + type(exc).__name__ + ": " + str(exc)[:100]
    finally:
        called.set()

rt = ProcessRuntime(workers=1).start(wait=True)
h = Gated(runtime=rt, timeout=30).run()
h.add_done_callback(callback)  # before the run can end: the callback runs on the runtime's thread
h.send_event_sync(Go())
out["first"] = h.result(timeout=10)
out["callback_ran"] = called.wait(5)
if not out["callback_ran"]:
    out["later"] = "not tried: the callback is still blocked"
else:
    try:
        out["later"] = Quick(runtime=rt, timeout=30).run(x=41).result(timeout=5)
    except BaseException as exc:
        out["later"] = "raised " + type(exc).__name__
report(**out)
if out["later"] != 42:
    os._exit(0)  # the runtime is wedged: the parent kills what is left
rt.shutdown()
"""

CALLBACK_CALLS = {
    "store_get_sync": "h.ctx.store.get_sync('total', default=None)",
    "cancel_run_sync": "h.cancel_run_sync()",
    "send_event_sync": "h.send_event_sync(Go())",
    "iter_events": "list(h.iter_events())",
    "collect_events": "h.ctx.collect_events(Go(), [Go])",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", list(CALLBACK_CALLS))
def test_a_blocking_call_inside_a_done_callback_raises_or_returns_and_the_runtime_keeps_serving(
        call: str) -> None:
    # defect 3: a done callback runs on the runtime's own thread; a blocking call there must raise
    # RuntimeError (or a WorkflowError) or work at once (the run is over), never deadlock the runtime.
    child = run_child(DONE_CALLBACK.format(call=CALLBACK_CALLS[call]), timeout=45)
    out = child.result
    assert out is not None, child.describe()
    assert out["first"] == "done"
    assert out["callback_ran"], f"the callback never finished (a deadlock): {out}"
    assert out["call"] == "returned" or out["call"] in (
        "raised RuntimeError", "raised WorkflowRuntimeError"), out
    assert out["later"] == 42, f"the runtime stopped serving after the callback: {out}"
    if call == "iter_events" and out["call"] == "returned":
        assert out["value"] and out["value"][-1] == "StopEvent:done", out


@pytest.mark.timeout(60)
def test_a_done_callback_runs_once_the_runs_state_is_final() -> None:
    # defect 3: inside the callback the run is over: its stop event is set and its stream is complete,
    # so reading the stream with a bound gives every event up to the StopEvent (or is refused).
    call = "list(h.iter_events(timeout=3))"
    child = run_child(DONE_CALLBACK.format(call=call), timeout=45)
    out = child.result
    assert out is not None, child.describe()
    assert out["callback_ran"] and out["stop_event_set"], out
    assert out["call"] in ("returned", "raised RuntimeError"), out
    if out["call"] == "returned":
        assert out["value"] and out["value"][-1] == "StopEvent:done", out
    assert out["later"] == 42, out


# --- defect 4: a done callback ending with SystemExit ---------------------------------------------------
CALLBACK_EXIT = """
class Exits(Workflow):
    @step
    def leave(self, ev: StartEvent) -> StopEvent:
        sys.exit(9)

class Fine(Workflow):
    @step
    def only(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.x * 2)

MODE = {mode!r}

def callback(h):
    if MODE == "raise_system_exit":
        raise SystemExit(3)
    if MODE == "raise_keyboard_interrupt":
        raise KeyboardInterrupt
    h.result()  # re-raises the step's SystemExit

rt = ProcessRuntime(workers=1).start(wait=True)
h = Exits(runtime=rt, timeout=30).run()
h.add_done_callback(callback)
try:
    h.result(timeout=10)
    first = "returned"
except BaseException as exc:
    first = type(exc).__name__
later = []
for x in (1, 2):
    try:
        later.append(Fine(runtime=rt, timeout=30).run(x=x).result(timeout=5))
    except BaseException as exc:
        later.append("raised " + type(exc).__name__)
        break
report(first=first, later=later, broken=rt.broken)
if later != [2, 4]:
    os._exit(0)
errors = []
def shut():  # from another thread, as an atexit hook or a server would
    try:
        rt.shutdown()
    except BaseException as exc:
        errors.append(type(exc).__name__ + ": " + str(exc)[:100])
t = threading.Thread(target=shut)
t.start()
t.join(20)
report(first=first, later=later, broken=rt.broken, shutdown_errors=errors, shutdown_done=not t.is_alive())
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["raise_system_exit", "result_reraises_step_sys_exit",
                                  "raise_keyboard_interrupt"])
def test_nothing_a_done_callback_raises_ends_the_runtime(mode: str) -> None:
    # defect 4: a callback raising SystemExit (or calling result() that re-raises a step's sys.exit) kills
    # the supervisor thread today: later runs hang. Later runs must still work, and shutdown too.
    child = run_child(CALLBACK_EXIT.format(mode=mode), timeout=45)
    out = child.result
    assert out is not None, child.describe()
    assert out["first"] == "SystemExit", out  # the step's sys.exit, re-raised unwrapped
    assert out["later"] == [2, 4], f"later runs no longer work after the callback: {out}"
    assert out.get("shutdown_done") and out.get("shutdown_errors") == [], out
