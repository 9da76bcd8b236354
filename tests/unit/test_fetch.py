"""The sink's consumer gets aiokafka's fetched records as they are (sinks/delta/fetch.py); every other
consumer still gets ConsumerRecords. Built on a real record batch, as the broker would send it."""

from __future__ import annotations

from aiokafka.consumer.fetcher import PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import ConsumerRecord, TopicPartition

from lakeward.sinks.delta import fetch
from lakeward.sinks.delta.batch import SchemaInfo
from lakeward.sinks.delta.buffer import Buffer, Stop

HEADERS = [("lakeward.pos", b"\x00\x01"), ("lakeward.schema", b"abc")]


def _records(value_deserializer) -> list:
    b = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=-1, producer_epoch=-1,
                                  base_sequence=-1, batch_size=1 << 20)
    for i in range(3):
        b.append(i, timestamp=None, key=b"k%d" % i, value=None if i == 2 else b'{"op":"c"}', headers=HEADERS if i < 2 else [])
    tp = TopicPartition("t", 0)
    return list(PartitionRecords(tp, MemoryRecords(bytes(b.build())), [], 0, None, value_deserializer, True, 0))


def test_the_hook_is_installed():
    assert fetch.INSTALLED, "aiokafka's PartitionRecords._consumer_record is gone: the sink gets ConsumerRecords (slower)"


def test_as_fetched_records_are_not_copied_and_read_the_same():
    raw, copied = _records(fetch.as_fetched), _records(None)
    assert not any(isinstance(r, ConsumerRecord) for r in raw)
    assert all(isinstance(r, ConsumerRecord) for r in copied)
    for a, b in zip(raw, copied, strict=True):
        assert (a.offset, a.key, a.value, list(a.headers)) == (b.offset, b.key, b.value, list(b.headers))


def test_the_buffer_takes_fetched_records():
    raw = _records(fetch.as_fetched)
    buf = Buffer()
    info = object.__new__(SchemaInfo)
    i, stop, _ = buf.accept(raw, 0, {b"abc": info}, 100, 1 << 20, 0.0)
    assert (i, stop) == (3, Stop.DONE)
    assert list(buf.events.offsets) == [0] and buf.duplicates == 1 and buf.tombstones == 1  # same position twice; a tombstone
    assert buf.next_offset == 3 and buf.events.keys == [b"k0"]
