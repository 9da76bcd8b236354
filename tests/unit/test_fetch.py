"""The sink's consumer gets aiokafka's fetched records as they are, a record batch at a time
(sinks/delta/fetch.py); every other consumer still gets ConsumerRecords. Built on real record
batches, as the broker would send them, and compared with what aiokafka itself returns."""

from __future__ import annotations

import asyncio
import struct

import pytest
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


def _batch(base: int, n: int, *, producer_id: int = -1, transactional: bool = False, compression: int = 0) -> bytes:
    b = DefaultRecordBatchBuilder(magic=2, compression_type=compression, is_transactional=int(transactional),
                                  producer_id=producer_id, producer_epoch=0 if producer_id >= 0 else -1,
                                  base_sequence=0 if producer_id >= 0 else -1, batch_size=1 << 20)
    for i in range(n):
        b.append(i, timestamp=None, key=b"k%d" % (base + i), value=b'{"op":"c","n":%d}' % (base + i), headers=HEADERS)
    raw = bytearray(b.build())
    struct.pack_into(">q", raw, 0, base)
    return bytes(raw)


def _control(base: int, producer_id: int, marker: int) -> bytes:
    """A transaction marker batch: aiokafka's builder cannot set the control bit, so it is set here
    (attributes bit 5) and the CRC, which covers the bytes from the attributes on, computed again."""
    b = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=1, producer_id=producer_id, producer_epoch=0,
                                  base_sequence=-1, batch_size=1 << 20)
    b.append(0, timestamp=None, key=struct.pack(">hh", 0, marker), value=struct.pack(">hi", 0, 0), headers=[])
    raw = bytearray(b.build())
    struct.pack_into(">q", raw, 0, base)
    struct.pack_into(">h", raw, 21, struct.unpack_from(">h", raw, 21)[0] | 0x20)
    struct.pack_into(">I", raw, 17, calc_crc32c(bytes(raw[21:])))
    return bytes(raw)


def _getall(data: bytes, fetch_offset: int, value_deserializer, *, isolation: int = READ_COMMITTED,
            aborted: list[tuple[int, int]] | None = None) -> tuple[list, int]:
    """FetchResult.getall (as the consumer calls it) over `data`: (the records, the position after)."""
    async def run() -> tuple[list, int]:  # aiokafka's subscription state wants a running loop
        part = PartitionRecords(TP, MemoryRecords(data), aborted or [], fetch_offset, None, value_deserializer, True, isolation)
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


def test_the_skipped_records_are_the_expected_ones():
    data, start, isolation, aborted = CASES["aborted"]
    raw, position = _getall(data(), start, fetch.as_fetched, isolation=isolation, aborted=aborted)
    assert [r.offset for r in raw] == [0, 1, 5, 6, 9, 10, 12]  # not 2-4 (aborted) nor the markers 7, 8, 11
    assert position == 13


def test_a_corrupt_batch_is_refused():
    data = bytearray(_batch(0, 3) + _batch(3, 3))
    data[-1] ^= 0xFF  # the second batch's last byte: its CRC no longer matches
    with pytest.raises(CorruptRecordException, match="Invalid CRC"):
        _getall(bytes(data), 0, fetch.as_fetched)


def test_the_buffer_takes_fetched_records():
    raw = _records(fetch.as_fetched)
    buf = Buffer()
    info = object.__new__(SchemaInfo)
    i, stop, _ = buf.accept(raw, 0, {b"abc": info}, 100, 1 << 20, 0.0)
    assert (i, stop) == (3, Stop.DONE)
    assert list(buf.events.offsets) == [0] and buf.duplicates == 1 and buf.tombstones == 1  # same position twice; a tombstone
    assert buf.next_offset == 3 and buf.events.keys == [b"k0"]
