"""The sink's consumer gets aiokafka's fetched records as they are, a record batch at a time
(sinks/delta/fetch.py); every other consumer still gets ConsumerRecords. Built on real record
batches, as the broker would send them, and compared with what aiokafka itself returns."""

from __future__ import annotations

import asyncio
import shutil
import struct

import pytest
from aiokafka.consumer import fetcher
from aiokafka.consumer.fetcher import READ_COMMITTED, READ_UNCOMMITTED, FetchResult, PartitionRecords
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import ConsumerRecord, TopicPartition

from lakeward.sinks.delta import fetch
from lakeward.sinks.delta.batch import SchemaInfo
from lakeward.sinks.delta.buffer import Buffer, Stop

HEADERS = [("lakeward.pos", b"\x00\x01"), ("lakeward.schema", b"abc")]
TP = TopicPartition("t", 0)
ABORT, COMMIT = 0, 1


def _rebased(b: DefaultRecordBatchBuilder, base: int) -> bytearray:
    """The built batch, its base offset set to `base` (the builder starts every batch at 0)."""
    raw = bytearray(b.build())
    struct.pack_into(">q", raw, 0, base)
    return raw


def _batch(base: int, n: int, *, producer_id: int = -1, transactional: bool = False, compression: int = 0) -> bytes:
    b = DefaultRecordBatchBuilder(magic=2, compression_type=compression, is_transactional=int(transactional),
                                  producer_id=producer_id, producer_epoch=0 if producer_id >= 0 else -1,
                                  base_sequence=0 if producer_id >= 0 else -1, batch_size=1 << 20)
    for i in range(n):
        b.append(i, timestamp=None, key=b"k%d" % (base + i), value=b'{"op":"c","n":%d}' % (base + i), headers=HEADERS)
    return bytes(_rebased(b, base))


def _control(base: int, producer_id: int, marker: int) -> bytes:
    """A transaction marker batch: aiokafka's builder cannot set the control bit, so it is set here
    (attributes bit 5) and the CRC, which covers the bytes from the attributes on, computed again."""
    b = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=1, producer_id=producer_id, producer_epoch=0,
                                  base_sequence=-1, batch_size=1 << 20)
    b.append(0, timestamp=None, key=struct.pack(">hh", 0, marker), value=struct.pack(">hi", 0, 0), headers=[])
    raw = _rebased(b, base)
    struct.pack_into(">h", raw, 21, struct.unpack_from(">h", raw, 21)[0] | 0x20)
    struct.pack_into(">I", raw, 17, calc_crc32c(bytes(raw[21:])))
    return bytes(raw)


def _getall(data: bytes, fetch_offset: int, value_deserializer, *, isolation: int = READ_COMMITTED,
            aborted: list[tuple[int, int]] | None = None) -> tuple[list, int]:
    """FetchResult.getall (as the consumer calls it) over `data`: (the records, the position after)."""
    async def run() -> tuple[list, int]:  # aiokafka's subscription state wants a running loop
        # the fetcher's own MemoryRecords: fetch.RawRecords, which keeps the fetched bytes
        part = PartitionRecords(TP, fetcher.MemoryRecords(data), aborted or [], fetch_offset, None, value_deserializer, True,
                                isolation)
        subs = SubscriptionState()
        subs.assign_from_user({TP})
        subs.seek(TP, fetch_offset)
        assignment = subs.subscription.assignment
        records = FetchResult(TP, assignment=assignment, partition_records=part, backoff=0).getall()
        return records, assignment.state_value(TP).position

    return asyncio.run(run())


def _records(value_deserializer) -> list:
    b = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=-1, producer_epoch=-1,
                                  base_sequence=-1, batch_size=1 << 20)
    for i in range(3):
        b.append(i, timestamp=None, key=b"k%d" % i, value=None if i == 2 else b'{"op":"c"}', headers=HEADERS if i < 2 else [])
    return list(PartitionRecords(TP, MemoryRecords(bytes(b.build())), [], 0, None, value_deserializer, True, 0))


def _read(records: list) -> list[tuple]:
    return [(r.offset, r.key, r.value, list(r.headers)) for r in records]


def test_the_hooks_are_installed():
    assert fetch.INSTALLED, "aiokafka's FetchResult.getall or PartitionRecords._consumer_record is gone: the sink gets ConsumerRecords (slower)"
    assert getattr(FetchResult.getall, "lakeward_hook", False)


def test_the_c_loop_is_built_where_a_c_compiler_is():
    if shutil.which("cc") is not None:
        assert fetch.native is not None, "sinks/delta/_records.c was not built: `make venv` (pip install -e .) reports why"


def test_as_fetched_records_are_not_copied_and_read_the_same():
    raw, copied = _records(fetch.as_fetched), _records(None)
    assert not any(isinstance(r, ConsumerRecord) for r in raw)
    assert all(isinstance(r, ConsumerRecord) for r in copied)
    assert _read(raw) == _read(copied)


CASES = {
    # several batches, the fetch beginning inside the first one, compressed or not
    "plain": (lambda: _batch(0, 5) + _batch(5, 3) + _batch(8, 4), 2, READ_COMMITTED, None),
    "zstd": (lambda: _batch(0, 5, compression=4) + _batch(5, 300, compression=4), 3, READ_COMMITTED, None),
    # an idempotent producer (the sources' kind): every batch has a producer id, none is transactional
    "idempotent": (lambda: _batch(10, 4, producer_id=3) + _batch(14, 4, producer_id=3), 10, READ_COMMITTED, None),
    # transactions: producer 7's is aborted (its records are skipped under read_committed), 8's committed
    "aborted": (lambda: (_batch(0, 2) + _batch(2, 3, producer_id=7, transactional=True) + _batch(5, 2, producer_id=8, transactional=True)
                         + _control(7, 7, ABORT) + _control(8, 8, COMMIT) + _batch(9, 2, producer_id=7, transactional=True)
                         + _control(11, 7, COMMIT) + _batch(12, 1)), 0, READ_COMMITTED, [(7, 2)]),
    "aborted, read uncommitted": (lambda: _batch(0, 2) + _batch(2, 3, producer_id=7, transactional=True) + _control(5, 7, ABORT)
                                  + _batch(6, 2), 1, READ_UNCOMMITTED, [(7, 2)]),
}


@pytest.mark.parametrize("case", CASES)
def test_batch_at_a_time_returns_what_aiokafka_returns(case):
    data, start, isolation, aborted = CASES[case]
    raw, raw_position = _getall(data(), start, fetch.as_fetched, isolation=isolation, aborted=aborted)
    copied, position = _getall(data(), start, None, isolation=isolation, aborted=aborted)
    assert copied, "the case returns records"
    assert not any(isinstance(r, ConsumerRecord) for r in raw)
    assert _read(raw) == _read(copied)
    assert raw_position == position
    plain = case in ("plain", "zstd", "idempotent")  # no transactional or control batch
    assert isinstance(raw, fetch.FetchedRecords) == (plain and fetch.native is not None)


def test_the_skipped_records_are_the_expected_ones():
    data, start, isolation, aborted = CASES["aborted"]
    raw, position = _getall(data(), start, fetch.as_fetched, isolation=isolation, aborted=aborted)
    assert [r.offset for r in raw] == [0, 1, 5, 6, 9, 10, 12]  # not 2-4 (aborted) nor the markers 7, 8, 11
    assert position == 13


@pytest.mark.parametrize("deserializer", [fetch.as_fetched, None])
def test_a_corrupt_batch_is_refused(deserializer):
    data = bytearray(_batch(0, 3) + _batch(3, 3))
    data[-1] ^= 0xFF  # the second batch's last byte: its CRC no longer matches
    with pytest.raises(CorruptRecordException, match="Invalid CRC"):
        _getall(bytes(data), 0, deserializer)


def test_a_batch_cut_short_at_the_end_of_the_fetch_is_left_for_the_next_one():
    data = _batch(0, 3) + _batch(3, 3)
    raw, position = _getall(data[:-5], 0, fetch.as_fetched)
    copied, _ = _getall(data[:-5], 0, None)
    assert [r.offset for r in raw] == [r.offset for r in copied] == [0, 1, 2] and position == 3


def test_the_buffer_takes_fetched_records():
    raw = _records(fetch.as_fetched)
    buf = Buffer()
    info = object.__new__(SchemaInfo)
    i, stop, _ = buf.accept(raw, 0, {b"abc": info}, 100, 1 << 20, 0.0)
    assert (i, stop) == (3, Stop.DONE)
    assert list(buf.events.offsets) == [0] and buf.duplicates == 1 and buf.tombstones == 1  # same position twice; a tombstone
    assert buf.next_offset == 3 and buf.events.keys == [b"k0"]


# --- the C loop (_records.accept) against the Python one, on the same fetched bytes ------------------

P = [struct.pack(">q", n) for n in range(40)]


def _mixed_batch(base: int, compression: int = 0) -> bytes:
    """Records of every kind `Buffer.accept` tells apart: events, repeats by position, tombstones,
    key changes (the `d` with the new key, then the `c` with the old), headers in another order or
    with other headers among them, poison records (a header missing, or null), unknown schemas."""
    rows: list[tuple[bytes | None, bytes | None, list]] = [
        (b"k1", b'{"op":"c","n":1}', [("lakeward.pos", P[1]), ("lakeward.schema", b"s1")]),
        (b"k2", b'{"op":"c","n":2}', [("lakeward.pos", P[2]), ("lakeward.schema", b"s1")]),
        (b"k2", b'{"op":"u","n":2}', [("lakeward.pos", P[2]), ("lakeward.schema", b"s1")]),  # a repeat
        (b"k1", None, []),  # a tombstone
        (None, b'{"op":"c","n":3}', [("lakeward.schema", b"s2"), ("x", b"y"), ("lakeward.pos", P[3])]),  # no key
        (b"k3", b'{"op":"d","n":3}', [("lakeward.pos", P[4]), ("lakeward.schema", b"s1"), ("__debezium.newkey", b"k4")]),
        (b"k4", b'{"op":"c","n":4}', [("lakeward.pos", P[5]), ("lakeward.schema", b"s1"), ("__debezium.oldkey", b"k3")]),
        (b"k5", b'{"op":"c","n":5}', [("lakeward.pos", P[6])]),  # poison: no schema header
        (b"k6", b'{"op":"c","n":6}', [("lakeward.pos", None), ("lakeward.schema", b"s1")]),  # poison: a null position
        (b"k7", b'{"op":"c","n":7}', [("lakeward.pos", P[7]), ("lakeward.schema", b"new")]),  # an unknown schema
        (b"k8", b"", [("lakeward.pos", P[8] + b"\x00"), ("lakeward.schema", b"s2")]),  # an empty value, a longer position
        (b"k9", b'{"op":"c","n":9}', [("lakeward.pos", P[8]), ("lakeward.schema", b"s2")]),  # shorter: a repeat
        (b"k3", b'{"op":"d","n":10}', [("lakeward.pos", P[9]), ("lakeward.schema", b"s1"), ("__debezium.newkey", None)]),
    ]
    b = DefaultRecordBatchBuilder(magic=2, compression_type=compression, is_transactional=0, producer_id=-1, producer_epoch=-1,
                                  base_sequence=-1, batch_size=1 << 20)
    for i, (key, value, headers) in enumerate(rows):
        b.append(i, timestamp=None, key=key, value=value, headers=headers)
    return bytes(_rebased(b, base))


def _drive(records, max_rows: int, max_bytes: int, infos: dict) -> list:
    """Feed `records` to a Buffer as the partition writer does, cutting a batch whenever it is full:
    every step and every batch, as plain values."""
    buf, steps, i = Buffer(), [], 0
    infos = dict(infos)

    def names(infos_of_events: list) -> list[bytes]:  # each event's schema, by id
        return [next(sid for sid, info in infos.items() if info is x) for x in infos_of_events]
    while True:
        i, stop, arg = buf.accept(records, i, infos, max_rows, max_bytes, 1.0)
        steps.append((i, stop, (arg.offset, arg.key, arg.value, list(arg.headers)) if stop is Stop.POISON else arg))
        if stop is Stop.DONE:
            break
        if stop is Stop.POISON:
            buf.reject(arg, "poison")
            i += 1
        elif stop is Stop.SCHEMA:
            infos[arg] = SchemaInfo.__new__(SchemaInfo)
        elif (batch := buf.take(buf.next_offset, 1.0)) is not None:
            e = batch.events
            steps.append(("batch", list(e.offsets), e.positions, e.values, e.keys, names(e.infos), e.links,
                          batch.first, batch.last, batch.position, [(d.offset, d.key, d.value, d.headers) for d in batch.dead]))
    e = buf.events
    steps.append(("end", list(e.offsets), e.positions, e.values, e.keys, names(e.infos), e.links, buf.next_offset,
                  buf.last_position, buf.nbytes, buf.last, buf.open_pair, buf.duplicates, buf.tombstones))
    return steps


@pytest.mark.skipif(fetch.native is None, reason="the C loop is not built (no C compiler at install)")
@pytest.mark.parametrize("max_rows,max_bytes", [(1000, 1 << 20), (1, 1 << 20), (2, 1 << 20), (3, 1 << 20), (1000, 40)])
@pytest.mark.parametrize("start", [0, 5])
def test_the_c_loop_buffers_what_the_python_loop_buffers(max_rows, max_bytes, start):
    data = _mixed_batch(0) + _mixed_batch(13, compression=4) + _mixed_batch(26)
    raw, _ = _getall(data, start, fetch.as_fetched)
    copied, _ = _getall(data, start, None)
    assert isinstance(raw, fetch.FetchedRecords) and len(raw) == len(copied) == 39 - start
    infos = {b"s1": SchemaInfo.__new__(SchemaInfo), b"s2": SchemaInfo.__new__(SchemaInfo)}
    native, python = _drive(raw, max_rows, max_bytes, infos), _drive(copied, max_rows, max_bytes, infos)
    assert native == python
    assert any(s[1] is Stop.POISON for s in python if s[0] not in ("batch", "end"))
    assert any(s[1] is Stop.SCHEMA for s in python if s[0] not in ("batch", "end"))
    assert any(s[0] == "batch" for s in python) == (max_rows < 1000 or max_bytes < 1000)


@pytest.mark.skipif(fetch.native is None, reason="the C loop is not built (no C compiler at install)")
def test_fetched_records_index_slice_and_add_like_a_list():
    raw, _ = _getall(_batch(0, 5) + _batch(5, 3), 2, fetch.as_fetched)
    as_list = _read(raw)
    assert [r.offset for r in raw] == [2, 3, 4, 5, 6, 7]
    assert _read([raw[0], raw[3], raw[-1]]) == [as_list[0], as_list[3], as_list[-1]]
    assert _read(raw[4:]) == as_list[4:] and _read(raw[3:]) == as_list[3:] and not raw[6:]
    assert _read(raw[2:] + raw[5:]) == as_list[2:] + as_list[5:]
    copied, _ = _getall(_batch(0, 5) + _batch(5, 3), 2, None)  # a backlog of aiokafka's records, then batches
    assert _read(copied + raw) == _read(raw + copied) == as_list + as_list
    with pytest.raises(IndexError):
        raw[6]


@pytest.mark.skipif(fetch.native is None, reason="the C loop is not built (no C compiler at install)")
def test_a_malformed_record_is_refused():
    data = bytearray(_batch(0, 3))
    data[61] = 0x7F  # the first record's length: now past the end of the batch
    struct.pack_into(">I", data, 17, calc_crc32c(bytes(data[21:])))  # a valid CRC over the bad bytes
    with pytest.raises(CorruptRecordException, match="malformed record"):
        _getall(bytes(data), 0, fetch.as_fetched)


def test_without_the_c_extension_the_sink_gets_aiokafka_records(monkeypatch):
    monkeypatch.setattr(fetch, "native", None)
    raw, position = _getall(_batch(0, 5) + _batch(5, 3), 2, fetch.as_fetched)
    assert isinstance(raw, list) and [r.offset for r in raw] == [2, 3, 4, 5, 6, 7] and position == 8
