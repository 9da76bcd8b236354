"""The sink's consumer hands over records as aiokafka fetched them, a record batch at a time.

aiokafka builds a ConsumerRecord (a dataclass, plus a tuple of the headers) from each fetched record
before it returns it. The sink reads only a record's offset, key, value and headers, which the fetched
record (aiokafka's Cython DefaultRecord) has as well, and at the sink's rate that copy is a quarter of
what fetching costs: 3.0 -> 2.26 µs a record without it (1M events, docs/performance.md). And
`FetchResult.getall` takes the records one at a time through two Python frames (`PartitionRecords.
__next__` and its generator); taking each record batch's records in one `list.extend` is another
0.3 – 0.45 µs a record less (1.13 – 1.34 -> 0.82 – 0.88 µs, docs/performance.md).

aiokafka has no option for either, so the two hooks below are written by hand. A consumer whose
`value_deserializer` is `as_fetched` gets the fetched records themselves, batch by batch; every other
consumer gets ConsumerRecords, one by one, as before. If a later aiokafka drops a method a hook
replaces, that hook is not installed and the sink gets what aiokafka gives (the same records, only
slower); tests/unit/test_fetch.py fails then, so the change does not go unnoticed.
"""

from __future__ import annotations

from typing import Any

import aiokafka.errors as errors
from aiokafka.consumer.fetcher import READ_COMMITTED, FetchResult, PartitionRecords


def as_fetched(value: bytes | None) -> bytes | None:
    """The value as fetched. As a consumer's value_deserializer it also asks for the records as fetched."""
    return value


def take_all(part: Any) -> list[Any]:
    """Every record of a fetched partition (a PartitionRecords) at or above its fetch offset, as
    `PartitionRecords._unpack_records` yields them, but a record batch at a time: CRCs checked,
    control batches and (read_committed) aborted transactions skipped with aiokafka's own helpers."""
    # The generator aiokafka would have taken the records from holds the PartitionRecords (and the
    # fetched bytes) in a reference cycle, which aiokafka breaks once it is exhausted; unused, it is
    # dropped here so that reference counting frees the fetch (the collector is paused then).
    part._records_iterator = None
    out: list[Any] = []
    batches = part._records
    while batches.has_next():
        batch = batches.next_batch()
        if part._check_crcs and not batch.validate_crc():
            raise errors.CorruptRecordException(f"Invalid CRC - {part._tp}")
        if part._isolation_level == READ_COMMITTED and batch.producer_id is not None:
            part._consume_aborted_up_to(batch.base_offset)
            if batch.is_control_batch and part._contains_abort_marker(batch):
                part._aborted_producers.discard(batch.producer_id)
            if batch.is_transactional and batch.producer_id in part._aborted_producers:
                part.next_fetch_offset = batch.next_offset
                continue
        if not batch.is_control_batch:
            start = part.next_fetch_offset
            if getattr(batch, "base_offset", -1) >= start:
                out.extend(batch)
            else:  # the fetch began inside this batch (or a legacy one, which has no base offset)
                out.extend(r for r in batch if r.offset >= start)
        part.next_fetch_offset = batch.next_offset
    return out


def _install() -> bool:
    original_record = getattr(PartitionRecords, "_consumer_record", None)
    original_getall = getattr(FetchResult, "getall", None)
    if original_record is None or original_getall is None:
        return False
    if getattr(original_getall, "lakeward_hook", False):
        return True

    def _consumer_record(self: Any, tp: Any, record: Any) -> Any:
        if self._value_deserializer is as_fetched:
            return record
        return original_record(self, tp, record)

    def getall(self: Any, max_records: int | None = None) -> list[Any]:
        part = self._partition_records
        if max_records is not None or part is None or part._value_deserializer is not as_fetched:
            return original_getall(self, max_records)
        if not self.check_assignment(self._topic_partition):
            return []
        records = take_all(part)
        self._update_position()
        self._partition_records = None
        return records

    getall.lakeward_hook = True  # type: ignore[attr-defined]  # installed once per process
    PartitionRecords._consumer_record = _consumer_record
    FetchResult.getall = getall
    return True


INSTALLED = _install()
"""Whether consumers with `as_fetched` get the records as fetched, a batch at a time (else ConsumerRecords)."""
