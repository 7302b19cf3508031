"""The supervisor's door: every call is answered, nothing a callback raises ends the loop thread, and the
loop thread is known by identity."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

from actors import RuntimeBrokenError
from runtime.supervisor.door import Door, DoorState


def make_door() -> tuple[Door, list[str]]:
    deaths: list[str] = []
    door = Door("test-door", deaths.append)
    door.open()
    return door, deaths


async def nothing() -> None:
    return None


def test_a_call_runs_on_the_loop_thread_and_returns_its_value() -> None:
    door, _ = make_door()
    try:
        assert door.call(lambda: (door.in_loop_thread(), 41 + 1)).result(5) == (True, 42)
        assert not door.in_loop_thread()
    finally:
        door.close(nothing, 5)


def test_a_call_that_raises_hands_its_exception_to_the_caller() -> None:
    door, _ = make_door()
    try:
        with pytest.raises(KeyError):
            door.call(lambda: {}["x"]).result(5)
    finally:
        door.close(nothing, 5)


def test_system_exit_escaping_a_loop_callback_does_not_end_the_loop_thread() -> None:
    door, deaths = make_door()
    try:
        def raise_exit() -> None:
            raise SystemExit(3)

        door.call_soon(raise_exit)  # straight onto the loop, not through a future
        time.sleep(0.1)
        assert door.call(lambda: "still here").result(5) == "still here"
        assert door.thread.is_alive() and deaths == [] and door.state is DoorState.OPEN
    finally:
        door.close(nothing, 5)


@pytest.mark.timeout(60)
def test_calls_racing_close_are_all_answered_with_a_result_or_runtime_broken_error() -> None:
    door, _ = make_door()
    answered: list[str] = []
    stop = threading.Event()

    def caller() -> None:
        # Calls until one is refused: after close() every call is, so each thread ends with "broken".
        while not stop.is_set():
            fut = door.call(lambda: "ok")
            try:
                answered.append(fut.result(10))
            except RuntimeBrokenError:
                answered.append("broken")
                return
            except concurrent.futures.TimeoutError:
                answered.append("HUNG")
                return

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    door.close(nothing, 5)
    for t in threads:
        t.join(15)
    stop.set()  # only a safety net for the assertion below, should a thread still loop
    assert not any(t.is_alive() for t in threads)
    assert "HUNG" not in answered and answered.count("broken") == 8
    assert door.state is DoorState.CLOSED
    with pytest.raises(RuntimeBrokenError):
        door.call(lambda: 1).result(1)


def test_a_dying_loop_thread_breaks_the_door_loudly_and_refuses_later_calls() -> None:
    door, deaths = make_door()

    def broken_run_forever() -> None:
        raise MemoryError("the loop thread ran out of memory")

    # The loop thread can only die by an exception that run_forever itself lets out: emulate one by
    # making the next run_forever fail, then stopping the current one.
    door.loop.run_forever = broken_run_forever  # type: ignore[method-assign]
    stopped = door.call(door.loop.stop)
    assert stopped.result(5) is None
    door.thread.join(5)
    assert not door.thread.is_alive()
    assert door.state is DoorState.BROKEN and len(deaths) == 1 and "MemoryError" in deaths[0]
    with pytest.raises(RuntimeBrokenError, match="MemoryError"):
        door.call(lambda: 1).result(1)
    door.close(nothing, 1)
    assert door.state is DoorState.CLOSED


def test_a_thread_reusing_a_dead_loop_threads_ident_is_not_taken_for_the_loop_thread() -> None:
    door, _ = make_door()
    door.close(nothing, 5)
    seen: list[bool] = []
    for _ in range(50):  # idents are reused quickly: one of these threads likely gets the old one
        t = threading.Thread(target=lambda: seen.append(door.in_loop_thread()))
        t.start()
        t.join()
    assert seen == [False] * 50
