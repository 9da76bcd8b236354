"""The sink's consumer hands over records as aiokafka fetched them, a record batch at a time.

aiokafka builds a ConsumerRecord (a dataclass, plus a tuple of the headers) from each fetched record
before it returns it. The sink reads only a record's offset, key, value and headers, which the fetched
record (aiokafka's Cython DefaultRecord) has as well, and at the sink's rate that copy is a quarter of
what fetching costs: 3.0 -> 2.26 µs a record without it (1M events, docs/performance.md). And
`FetchResult.getall` takes the records one at a time through two Python frames (`PartitionRecords.
__next__` and its generator); taking each record batch's records in one `list.extend` is another
0.3 – 0.45 µs a record less (1.13 – 1.34 -> 0.82 – 0.88 µs, docs/performance.md).

Where the C extension is built (`_records.c`), the sink gets no record objects at all: the fetcher's
MemoryRecords is wrapped to keep the fetched bytes (`RawRecords`), each plain v2 record batch is
checked, decompressed and indexed (`take_batches`), and `Buffer.accept` reads the records from the
batches in C (`FetchedRecords`): 0.41 + 0.35 µs an event, against 0.90 + 0.72 for the record
objects and the Python loop (docs/performance.md).

aiokafka has no option for any of this, so the hooks below are written by hand. A consumer whose
`value_deserializer` is `as_fetched` gets the fetched records themselves, batch by batch; every other
consumer gets ConsumerRecords, one by one, as before. If a later aiokafka drops a method a hook
replaces, that hook is not installed and the sink gets what aiokafka gives (the same records, only
slower); tests/unit/test_fetch.py fails then, so the change does not go unnoticed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import aiokafka.consumer.fetcher as fetcher
import aiokafka.errors as errors
from aiokafka import codec
from aiokafka.consumer.fetcher import READ_COMMITTED, FetchResult, PartitionRecords
from aiokafka.record._crecords.cutil import crc32c_cython as crc32c

from lakeward.core.events import NEW_KEY_HEADER, OLD_KEY_HEADER, POSITION_HEADER, SCHEMA_HEADER

native: Any  # the _records module, or None (typed by _records.pyi where it is used)
try:  # the record-batch loop in C (_records.c), built where a C compiler was found
    from lakeward.sinks.delta import _records as native
except ImportError:  # pragma: no cover - a build without a C compiler
    native = None
else:
    native.headers(POSITION_HEADER, SCHEMA_HEADER, OLD_KEY_HEADER, NEW_KEY_HEADER)


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


class Record(NamedTuple):
    """One record of a `FetchedRecords`, taken out of its batch (for the few records the sink looks at
    one by one: a poison event, the first event of a new schema)."""

    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


class Chunk(NamedTuple):
    """Records `lo` .. `hi - 1` of one fetched record batch, decompressed."""

    records: bytes
    """The batch's records section."""
    starts: memoryview
    """Where each record at or above the fetch offset starts in it, then where the last one ends (uint32)."""
    base_offset: int
    lo: int
    hi: int


class FetchedRecords(Sequence[Record]):
    """A partition's fetched records as their record batches, not one object per record: `Buffer.
    accept` takes them a batch at a time in C (`_records.accept`); indexing and iterating give
    `Record`s, the same offset, key, value and headers as aiokafka's records."""

    __slots__ = ("chunks", "_ends")

    def __init__(self, chunks: list[Chunk]):
        self.chunks = [c for c in chunks if c.hi > c.lo]
        self._ends: list[int] = []
        n = 0
        for c in self.chunks:
            n += c.hi - c.lo
            self._ends.append(n)

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def locate(self, i: int) -> tuple[int, int]:
        """(chunk number, record number in that chunk's `starts`) of record `i` (0 <= i <= len)."""
        for k, end in enumerate(self._ends):
            if i < end:
                c = self.chunks[k]
                return k, c.hi - (end - i)
        return len(self.chunks), 0

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1 or stop != len(self):
                return list(self)[i]
            k, j = self.locate(start)
            return FetchedRecords([self.chunks[k]._replace(lo=j), *self.chunks[k + 1:]] if k < len(self.chunks) else [])
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("record index out of range")
        k, j = self.locate(i)
        return _record(self.chunks[k], j)

    def __iter__(self) -> Iterator[Record]:
        for c in self.chunks:
            for j in range(c.lo, c.hi):
                yield _record(c, j)

    def __add__(self, other: Any) -> Any:
        """Records fetched later, queued behind these (a partition writer's backlog)."""
        if isinstance(other, FetchedRecords):
            return FetchedRecords(self.chunks + other.chunks)
        return list(self) + list(other)

    def __radd__(self, other: Any) -> Any:
        return list(other) + list(self)


def _record(chunk: Chunk, j: int) -> Record:
    """Record number `j` of `chunk`'s batch (an index into its `starts`)."""
    return Record(*native.record(chunk.records, chunk.starts[j], chunk.base_offset))


class RawRecords:
    """aiokafka's MemoryRecords, and the fetched bytes it reads (which it does not expose)."""

    __slots__ = ("raw", "_records")

    def __init__(self, raw: bytes):
        self.raw = raw
        self._records = _MemoryRecords(raw)

    def size_in_bytes(self) -> int:
        return self._records.size_in_bytes()

    def has_next(self) -> bool:
        return self._records.has_next()

    def next_batch(self) -> Any:
        return self._records.next_batch()


_MemoryRecords = fetcher.MemoryRecords
_HEAD = struct.Struct(">qiib")  # base offset, length, partition leader epoch, magic
_CRC = struct.Struct(">IhiqqqhiI")  # crc, attributes, last offset delta, ..., records count
_RECORDS_AT = 61  # the v2 batch header's size
_DECODE = {1: codec.gzip_decode, 2: codec.snappy_decode, 3: codec.lz4_decode, 4: codec.zstd_decode}


def take_batches(part: Any) -> FetchedRecords | list[Any]:
    """`take_all`, as a FetchedRecords: when the fetch holds only plain v2 record batches (neither
    control nor transactional batches, which is all Lakeward's sources write) and the C loop is
    built; else `take_all`'s records."""
    raw = getattr(part._records, "raw", None)
    if native is None or raw is None:
        return take_all(part)
    batches = []
    pos, n = 0, len(raw)
    while n - pos >= 12:
        base, length, _, magic = _HEAD.unpack_from(raw, pos)
        end = pos + 12 + length
        if end > n:
            break  # a partial batch at the end of the fetch: fetched again next time, as aiokafka does
        if magic != 2 or length < _RECORDS_AT - 12:
            return take_all(part)
        crc, attributes, last_delta, *_, count = _CRC.unpack_from(raw, pos + 17)
        if attributes & 0x30:  # transactional or control
            return take_all(part)
        batches.append((pos, end, base, crc, attributes, last_delta, count))
        pos = end
    part._records_iterator = None  # as in take_all
    view = memoryview(raw)
    chunks = []
    for pos, end, base, crc, attributes, last_delta, count in batches:
        if part._check_crcs and crc32c(view[pos + 21:end]) != crc:
            raise errors.CorruptRecordException(f"Invalid CRC - {part._tp}")
        codec_id = attributes & 0x07
        records = bytes(view[pos + _RECORDS_AT:end]) if codec_id == 0 else _DECODE[codec_id](view[pos + _RECORDS_AT:end])
        try:
            starts = memoryview(native.starts(records, count, base, part.next_fetch_offset)).cast("I")
        except ValueError as e:
            raise errors.CorruptRecordException(f"{e} - {part._tp}") from None
        chunks.append(Chunk(records, starts, base, 0, len(starts) - 1))
        part.next_fetch_offset = base + last_delta + 1
    return FetchedRecords(chunks)


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

    def getall(self: Any, max_records: int | None = None) -> Sequence[Any]:
        part = self._partition_records
        if max_records is not None or part is None or part._value_deserializer is not as_fetched:
            return original_getall(self, max_records)
        if not self.check_assignment(self._topic_partition):
            return []
        records = take_batches(part)
        self._update_position()
        self._partition_records = None
        return records

    getall.lakeward_hook = True  # type: ignore[attr-defined]  # installed once per process
    PartitionRecords._consumer_record = _consumer_record
    FetchResult.getall = getall
    fetcher.MemoryRecords = RawRecords  # the fetcher builds one per partition fetch
    return True


INSTALLED = _install()
"""Whether consumers with `as_fetched` get the records as fetched, a batch at a time (else ConsumerRecords)."""
