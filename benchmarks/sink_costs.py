#!/usr/bin/env python3
"""Where the Delta sink's CPU goes before the commit, per event, without a profiler's distortion.

    python benchmarks/sink_costs.py [--events 200000] [--repeat 5]

Needs no service. Builds `--events` envelopes as the PostgreSQL source streams them for the table of
benchmarks/pipeline.py (an insert each, the same `source` fields, ENVELOPE's bytes), packs them into
1 MiB zstd record batches with the two headers the sources send (aiokafka's own batch builder), then
times each step of the sink's hot path over all of them, in microseconds per event, best of
`--repeat`, the collector paused as the sink pauses it:

- taking the fetched records: aiokafka's path to ConsumerRecords, the same path handing over the
  fetched records (the `_consumer_record` hook), and a record batch at a time (sinks/delta/fetch.py);
- `Buffer.accept` over those records; and the sink's path when the C loop is built: the record
  batches decompressed and indexed (`fetch.FetchedRecords`), then `Buffer.accept` over them in C;
- `envelopes.read_whole` (pyarrow's JSON reader) over the buffered values, and `envelopes.read`,
  which has `_records.split` cut out the parts the planner reads first;
- `plan_mirror_arrow` (the read above, then keys, dedupe, columns in the lake types).

The MERGE and the Delta commit come on top (and asyncio, the consumer's network I/O): compare the sum
with the sink CPU seconds benchmarks/pipeline.py reports.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import struct
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka.consumer import fetcher
from aiokafka.consumer.fetcher import READ_COMMITTED, FetchResult, PartitionRecords
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from lakeward.core.events import (
    AFTER_ONLY,
    PG_POSITION,
    POSITION_HEADER,
    SCHEMA_HEADER,
    SOURCE_VERSION,
    Column,
    Position,
    TableSchema,
    envelope_tail,
    source_head,
)
from lakeward.sinks.delta import envelopes, fetch
from lakeward.sinks.delta.arrow import arrow_type
from lakeward.sinks.delta.batch import Catalog, SchemaInfo, plan_mirror_arrow
from lakeward.sinks.delta.buffer import Buffer

TP = TopicPartition("bench.shop.public.bench", 0)
COLUMNS = [("id", "long"), ("n", "integer"), ("s", "string"), ("amount", "decimal(12,2)"), ("created_at", "timestamp"), ("flag", "boolean")]
SCHEMA = TableSchema("shop", "public", "bench", tuple(Column(n, t, t) for n, t in COLUMNS), ("id",))
ZSTD = 4  # aiokafka's codec number, as the sources' producers send


def values(n: int) -> list[bytes]:
    """The envelopes of `n` inserts in transactions of 10,000 rows, as the PostgreSQL source builds them."""
    base = {"version": SOURCE_VERSION, "connector": "postgresql", "name": "shop", "db": "bench", "schema": "public", "table": "bench"}
    out = []
    for g in range(1, n + 1):
        txn = g // 10_000
        head = source_head({**base, "ts_ms": 1_764_547_200_000 + txn, "snapshot": "false", "txId": 1000 + txn, "lsn": 0})
        after = orjson.dumps({"id": g, "n": g % 100_000, "s": hashlib.md5(str(g).encode()).hexdigest(), "amount": f"{g % 1_000_000 / 100:.2f}",
                              "created_at": f"2024-01-{1 + g // 86_400 % 28:02d}T{g // 3600 % 24:02d}:{g // 60 % 60:02d}:{g % 60:02d}Z",
                              "flag": g % 3 == 0})
        out.append(AFTER_ONLY + after + envelope_tail(head, 0x1_0000_0000 + 120 * g, b"c", 1_764_547_200_123 + txn))
    return out


def record_batches(vals: list[bytes], schema_id: bytes) -> bytes:
    """The values as a fetch response's records: 1 MiB zstd batches of an idempotent producer."""
    raw = bytearray()
    offset = 0
    while offset < len(vals):
        b = DefaultRecordBatchBuilder(magic=2, compression_type=ZSTD, is_transactional=0, producer_id=1, producer_epoch=0,
                                      base_sequence=offset, batch_size=1 << 20)
        base = offset
        while offset < len(vals):
            key = b'{"id":%d}' % (offset + 1)
            headers = [(POSITION_HEADER, PG_POSITION.pack(0x1_0000_0000 + 120 * offset, Position.STREAM, 0)), (SCHEMA_HEADER, schema_id)]
            if b.append(offset - base, timestamp=None, key=key, value=vals[offset], headers=headers) is None:
                break  # the batch is full
            offset += 1
        batch = bytearray(b.build())
        struct.pack_into(">q", batch, 0, base)
        raw += batch
    return bytes(raw)


def fetched(raw: bytes, value_deserializer: Any, max_records: int | None, *, batches: bool = False) -> Any:
    """FetchResult.getall over `raw`, as the consumer calls it after a fetch; with `batches` over the
    fetcher's records class (fetch.RawRecords), which gives the sink a FetchedRecords."""

    async def run() -> list[Any]:  # aiokafka's subscription state wants a running loop
        subs = SubscriptionState()
        subs.assign_from_user({TP})
        subs.seek(TP, 0)
        part = PartitionRecords(TP, (fetcher.MemoryRecords if batches else MemoryRecords)(raw), [], 0, None, value_deserializer, True, READ_COMMITTED)
        return FetchResult(TP, assignment=subs.subscription.assignment, partition_records=part, backoff=0).getall(max_records)

    return asyncio.run(run())


def best(step: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """The least CPU seconds of `repeat` runs of `step` (the collector paused), and its last result."""
    least, result = float("inf"), None
    for _ in range(repeat):
        result = None  # the previous run's objects are freed before the clock starts
        gc.collect()
        gc.disable()
        try:
            t0 = time.process_time()
            result = step()
            least = min(least, time.process_time() - t0)
        finally:
            gc.enable()
    return least, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    n = args.events
    info = SchemaInfo.of(SCHEMA)
    vals = values(n)
    raw = record_batches(vals, SCHEMA.id.encode())
    catalog = Catalog({c: arrow_type(t) for c, t in COLUMNS}, dict(COLUMNS))
    print(f"{n:,} envelopes of {sum(map(len, vals)) / n:.0f} bytes, {len(raw) / n:.1f} bytes each in zstd record batches; "
          f"fetch hooks installed: {fetch.INSTALLED}")
    rows: list[tuple[str, float]] = []

    def step(name: str, fn: Callable[[], Any]) -> Any:
        seconds, result = best(fn, args.repeat)
        rows.append((name, seconds / n * 1e6))
        return result

    step("fetched records -> ConsumerRecords, one at a time (aiokafka)", lambda: fetched(raw, None, None))
    step("fetched records as they are, one at a time", lambda: fetched(raw, fetch.as_fetched, n))
    records = step("fetched records as they are, a record batch at a time", lambda: fetched(raw, fetch.as_fetched, None))
    assert len(records) == n

    def accept(records: Any) -> Buffer:
        buffer = Buffer()
        buffer.accept(records, 0, {SCHEMA.id.encode(): info}, n + 1, 1 << 40, 0.0)
        return buffer

    buffered = step("Buffer.accept over them (Python)", lambda: accept(records))
    assert len(buffered) == n
    if fetch.native is not None:
        records = None
        batches = step("fetched record batches, decompressed and indexed (the sink)", lambda: fetched(raw, fetch.as_fetched, None, batches=True))
        assert isinstance(batches, fetch.FetchedRecords) and len(batches) == n
        in_c = step("Buffer.accept over them (C, the sink)", lambda: accept(batches))
        assert in_c.events.values == buffered.events.values and in_c.events.offsets == buffered.events.offsets
    events = buffered.events
    lake_types = dict(COLUMNS)
    whole = step("envelopes.read_whole (pyarrow's JSON reader over the envelopes)",
                 lambda: envelopes.read_whole(events.values, lake_types, {"id": "long"}))
    table = step("envelopes.read (the sink: before and after cut out in C, then the reader)",
                 lambda: envelopes.read(events.values, lake_types, {"id": "long"}))
    assert whole is not None and table is not None and table.equals(whole)
    assert table is not None and table.num_rows == n
    planned = step("plan_mirror_arrow (the read, then keys and lake columns)", lambda: plan_mirror_arrow(events, catalog))
    assert planned is not None and planned[0].data is not None and planned[0].data.num_rows == n
    width = max(len(name) for name, _ in rows)
    print(f"{'step':<{width}}  µs per event")
    for name, us in rows:
        print(f"{name:<{width}}  {us:12.3f}")


if __name__ == "__main__":
    main()
