"""A run's event stream keeps bounded memory and loses nothing; collect buffers cost O(1) per arrival."""

from __future__ import annotations

import asyncio
import pickle
import threading

from actors import Event
from actors.host import Packed
from runtime import END, EventStream
from runtime.run.collect import CollectBuffer


class Item(Event):
    i: int
    blob: bytes = b""


class Other(Event):
    i: int


def packed(ev: Event) -> Packed:
    return Packed(type(ev).__qualname__, pickle.dumps(ev))


def test_an_unread_stream_holds_at_most_its_memory_bound_and_gives_back_every_event_in_order() -> None:
    stream = EventStream(lambda p: pickle.loads(p.data), memory_limit=1 << 20)
    for i in range(200):  # 200 x 64 KiB = 12.5 MiB written, nobody reading
        stream.put_packed(packed(Item(i=i, blob=bytes(64 << 10))))
        assert stream.buffered_bytes() <= (1 << 20) + (70 << 10)
    stream.put(Other(i=-1))  # an unpickled (internal) event after the spilled ones keeps its place
    stream.close()
    got = []
    while (ev := stream.get(1)) is not END:
        got.append(ev)
    assert [e.i for e in got] == [*range(200), -1]
    assert all(len(e.blob) == 64 << 10 for e in got[:-1]) and isinstance(got[-1], Other)


def test_streamed_events_are_unpickled_by_the_reader_not_the_writer() -> None:
    decoded_on: list[str] = []

    def decode(p: Packed) -> object:
        decoded_on.append(threading.current_thread().name)
        return pickle.loads(p.data)

    stream = EventStream(decode)
    writer = threading.Thread(target=lambda: (stream.put_packed(packed(Item(i=1))), stream.close()),
                              name="writer")
    writer.start()
    writer.join()
    assert decoded_on == []
    assert stream.get(1).i == 1 and stream.get(1) is END
    assert decoded_on == [threading.current_thread().name]


def test_async_readers_on_two_loops_split_a_spilling_stream_and_see_every_event_once() -> None:
    stream = EventStream(lambda p: pickle.loads(p.data), memory_limit=16 << 10)
    seen: list[int] = []
    lock = threading.Lock()

    def reader() -> None:
        async def main() -> None:
            while (ev := await stream.aget()) is not END:
                with lock:
                    seen.append(ev.i)
        asyncio.run(main())

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for r in readers:
        r.start()
    for i in range(500):
        stream.put_packed(packed(Item(i=i, blob=bytes(1024))))
    stream.close()
    for r in readers:
        r.join(10)
    assert sorted(seen) == list(range(500))


def test_collect_returns_events_in_the_expected_order_oldest_first_per_type() -> None:
    buf = CollectBuffer()
    assert buf.add(Item(i=1), [Item, Other, Item]) is None
    assert buf.add(Item(i=2), [Item, Other, Item]) is None
    assert buf.add(Item(i=3), [Item, Other, Item]) is None
    got = buf.add(Other(i=9), [Item, Other, Item])
    assert got is not None and [(type(e).__name__, e.i) for e in got] == [("Item", 1), ("Other", 9), ("Item", 2)]
    assert [e.i for e in buf.events()] == [3]
