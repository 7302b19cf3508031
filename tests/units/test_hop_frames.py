"""The frames of a hop: raw Done and Invoke round trips, what falls back to a pickled envelope, and the frame
parser's one-frame shortcut."""

from __future__ import annotations

from actors.host import Done, Invoke, Packed

from runtime.pool.shapes import Demand
from runtime.wire import raw
from runtime.wire.framing import FrameParser, frame


def _join(found: tuple[list[bytes], int] | None) -> bytes:
    assert found is not None
    parts, size = found
    data = b"".join(parts)
    assert len(data) == size
    return data


def test_a_done_with_a_plain_result_or_none_round_trips() -> None:
    for msg in (Done(7, Packed("Résumé", b"\x80\x05payload", 42)), Done(2**40, None)):
        data = _join(raw.done_parts(msg))
        assert data[0] == raw.DONE
        assert raw.parse_done(data) == msg


def test_a_done_whose_result_has_buffers_or_local_classes_is_pickled() -> None:
    assert raw.done_parts(Done(1, Packed("E", b"x", 3, buffers=(b"b" * 10,)))) is None
    assert raw.done_parts(Done(1, Packed("E", b"x", 3, classes=(5,)))) is None


def test_a_first_invoke_round_trips() -> None:
    msg = Invoke(9, "rün-id", 3, "stép", Packed("Ev", b"\x80\x05data", 11), first_try=1733100000.25)
    data = _join(raw.invoke_parts(msg))
    assert data[0] == raw.INVOKE
    assert raw.parse_invoke(data) == msg


def test_retries_resumed_waiters_and_odd_payloads_are_pickled() -> None:
    event = Packed("Ev", b"x", 1)
    for msg in (
        Invoke(1, "r", 1, "s", event, attempt=2),
        Invoke(1, "r", 1, "s", event, lineage=4),
        Invoke(1, "r", 1, "s", event, resumed=(("4:0", event),)),
        Invoke(1, "r", 1, "s", event, last_error=event),
        Invoke(1, "r", 1, "s", event, last_failed_at=1.0),
        Invoke(1, "r", 1, "s", Packed("Ev", b"x", 1, buffers=(b"b",))),
        Invoke(1, "r" * 70_000, 1, "s", event),
    ):
        assert raw.invoke_parts(msg) is None, msg


def test_the_parser_cuts_one_whole_frame_and_everything_else_as_before() -> None:
    parser = FrameParser()
    one = frame(b"x" * 100)
    assert parser.feed(one) == [b"x" * 100]
    assert parser.feed(one + one) == [b"x" * 100] * 2
    assert parser.feed(one[:7]) == [] and parser.feed(one[7:]) == [b"x" * 100]
    assert parser.feed(frame(b"")) == [b""]
    assert parser.pending() == 0


def test_demand_counts_by_need_and_kind() -> None:
    demand = Demand()
    demand.add("gpu", False)  # type: ignore[arg-type]
    demand.add("cpu", True)  # type: ignore[arg-type]
    demand.add("gpu", False)  # type: ignore[arg-type]
    assert demand.waiting_sync() == {"gpu": 2} and demand.total() == 3 and demand
    demand.remove("gpu", False)  # type: ignore[arg-type]
    demand.remove("gpu", False)  # type: ignore[arg-type]
    demand.remove("gpu", False)  # type: ignore[arg-type]  # one too many: ignored
    assert demand.waiting_sync() == {} and list(demand.items()) == [("cpu", True, 1)]
    demand.remove("cpu", True)  # type: ignore[arg-type]
    assert not demand and demand.total() == 0
