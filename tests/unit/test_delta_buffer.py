"""The Delta sink's buffer without a broker or a lake: dedupe by offset and position, the batch cut
rules, and key-change pairs that never end up in two batches."""

from __future__ import annotations

from types import SimpleNamespace

import orjson

from lakeward.core.events import (
    NEW_KEY_HEADER,
    OLD_KEY_HEADER,
    POSITION_HEADER,
    SCHEMA_HEADER,
    Column,
    Position,
    TableSchema,
)
from lakeward.sinks.delta.batch import SchemaInfo
from lakeward.sinks.delta.buffer import Buffer, Stop

SCHEMA = TableSchema("shop", "public", "t", (Column("id", "bigint", "long"), Column("v", "text", "string")), ("id",))
INFO = SchemaInfo.of(SCHEMA)
SID = SCHEMA.id.encode()
INFOS = {SID: INFO}


def pos(n: int) -> bytes:
    return Position.postgres(0x1000 + n, Position.STREAM, 0)


def rec(offset: int, n: int | None = None, *, value: bytes | None = b'{"op":"c","after":{"id":1,"v":"x"}}', link: tuple[str, bytes] | None = None,
        headers: list | None = None) -> SimpleNamespace:
    h = headers if headers is not None else [(POSITION_HEADER, pos(offset if n is None else n)), (SCHEMA_HEADER, SID)]
    if link is not None:
        h = [*h, link]
    return SimpleNamespace(offset=offset, value=value, key=b'{"id":1}', headers=h)


def accept(buf: Buffer, records: list, max_rows: int = 100, max_bytes: int = 1 << 20, start: int = 0) -> tuple[int, Stop, object]:
    return buf.accept(records, start, INFOS, max_rows, max_bytes, 0.0)


def test_rereads_by_offset_and_repeats_by_position_are_dropped():
    buf = Buffer()
    buf.restart(3, pos(3))  # offsets 0..2 applied, position 3 applied
    records = [rec(1), rec(2), rec(3, 2), rec(4, 3), rec(5, 5), rec(6, 4), rec(7, None, value=None), rec(8, 6)]
    assert accept(buf, records) == (8, Stop.DONE, None)
    assert list(buf.events.offsets) == [5, 8]  # 1, 2: below the resume offset; 3, 4, 6: old positions; 7: a tombstone
    assert (buf.duplicates, buf.tombstones, buf.next_offset, buf.last, buf.last_position) == (3, 1, 9, 8, pos(6))
    batch = buf.take(3, 1.0)
    assert batch is not None and (batch.first, batch.last, batch.position) == (3, 8, pos(6))
    assert len(buf) == 0 and buf.last is None and buf.take(9, 2.0) is None


def test_a_batch_of_only_dropped_offsets_still_moves_the_txn():
    buf = Buffer()
    buf.restart(0, pos(10))
    accept(buf, [rec(0, 1), rec(1, 2)])
    batch = buf.take(0, 0.0)
    assert batch is not None and len(batch.events) == 0 and (batch.first, batch.last, batch.position) == (0, 1, pos(10))


def test_full_by_rows_and_by_bytes():
    buf = Buffer()
    assert accept(buf, [rec(i) for i in range(5)], max_rows=2) == (2, Stop.FULL, None)
    assert buf.full(2, 1 << 20)
    buf.take(0, 0.0)
    value = b'{"op":"c","after":{"id":1,"v":"' + b"x" * 100 + b'"}}'
    assert accept(buf, [rec(i, value=value) for i in range(2, 5)], max_bytes=150) == (2, Stop.FULL, None)
    assert list(buf.events.offsets) == [2, 3] and buf.nbytes == 2 * len(value)


def test_schema_and_poison_records_stop_the_loop_unconsumed():
    buf = Buffer()
    other = rec(1, headers=[(POSITION_HEADER, pos(1)), (SCHEMA_HEADER, b"unknown")])
    bare = rec(2, headers=[(SCHEMA_HEADER, SID)])
    records = [rec(0), other, bare, rec(3)]
    assert accept(buf, records) == (1, Stop.SCHEMA, b"unknown")
    assert buf.next_offset == 1
    assert accept(buf, records, start=1) == (1, Stop.SCHEMA, b"unknown")  # still unknown: the caller resolves it
    i, stop, arg = accept(buf, records, start=2)
    assert (i, stop, arg) == (2, Stop.POISON, bare)
    buf.reject(bare, "no position")
    assert accept(buf, records, start=3) == (4, Stop.DONE, None)
    batch = buf.take(0, 0.0)
    assert batch is not None and [d.offset for d in batch.dead] == [2] and batch.dead[0].reason == "no position"
    assert list(batch.events.offsets) == [0, 3] and batch.last == 3


def test_a_key_change_is_never_split_across_batches():
    """The `d` (header newkey) ends the buffer: the batch ends before it, the `d` waits for its `c`."""
    buf = Buffer()
    d = rec(2, value=b'{"op":"d","before":{"id":1}}', link=(NEW_KEY_HEADER, b'{"id":2}'))
    c = rec(3, value=b'{"op":"c","after":{"id":2}}', link=(OLD_KEY_HEADER, b'{"id":1}'))
    # full at 3 rows, but the 3rd is the `d`: not full until its `c` is in
    assert accept(buf, [rec(0), rec(1), d], max_rows=3) == (3, Stop.DONE, None)
    assert buf.open_pair and buf.flushable
    batch = buf.take(0, 0.0)
    assert batch is not None and list(batch.events.offsets) == [0, 1] and (batch.last, batch.position) == (1, pos(1))
    assert list(buf.events.offsets) == [2] and buf.events.links == {0: (NEW_KEY_HEADER, b'{"id":2}')}
    assert not buf.flushable and buf.take(2, 0.0) is None  # only the dangling `d`: nothing may be cut
    assert accept(buf, [c, rec(4, value=None)], max_rows=3) == (2, Stop.DONE, None)  # the `c`, then a tombstone
    assert not buf.open_pair
    batch = buf.take(2, 0.0)
    assert batch is not None and list(batch.events.offsets) == [2, 3] and batch.last == 4
    assert batch.events.links == {0: (NEW_KEY_HEADER, b'{"id":2}'), 1: (OLD_KEY_HEADER, b'{"id":1}')}
    assert batch.events.headers(1)[-1] == (OLD_KEY_HEADER, b'{"id":1}')


def test_dead_letters_after_a_dangling_delete_stay_with_it():
    buf = Buffer()
    d = rec(1, value=b'{"op":"d","before":{"id":1}}', link=(NEW_KEY_HEADER, orjson.dumps({"id": 2})))
    accept(buf, [rec(0), d])
    bare = rec(2, headers=[])
    assert accept(buf, [bare])[1] is Stop.POISON
    buf.reject(bare, "bad")
    batch = buf.take(0, 0.0)
    assert batch is not None and batch.dead == [] and batch.last == 0
    assert [x.offset for x in buf.dead] == [2] and buf.last == 2
