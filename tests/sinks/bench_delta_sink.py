"""Throughput of the Delta sink (a script, not a test): `python -m tests.sinks.bench_delta_sink [N]`.

Part 1 times the stages of one flush on N events in-process (buffer, decode and plan in Arrow,
Delta commit). Part 2 publishes N events to the local broker first (not timed), then times a DeltaSink
from start until the lake holds them all, in mirror mode (snapshot + updates) and changelog mode.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import orjson

from lakeward.core.events import (
    POSITION_HEADER,
    SCHEMA_HEADER,
    Column,
    Position,
    TableSchema,
    envelope,
)
from lakeward.sinks.delta.batch import plan
from lakeward.sinks.delta.lake import LakeTable
from lakeward.sinks.delta.table import PartitionWriter

BATCH_ROWS = int(os.environ.get("BENCH_BATCH_ROWS", "200000"))
"""Rows per flush (the config default); try BENCH_BATCH_ROWS=50000 for more, smaller flushes."""
COLUMNS = [("id", "long"), ("customer_id", "long"), ("status", "string"), ("amount", "decimal(12,2)"), ("qty", "integer"),
           ("note", "string"), ("created_at", "timestamp"), ("updated_at", "timestamp"), ("paid", "boolean"), ("score", "double")]
SCHEMA = TableSchema("shop", "public", "orders", tuple(Column(n, t, t) for n, t in COLUMNS), ("id",))


def row(i: int, v: int = 0) -> dict:
    return {"id": i, "customer_id": i % 5000, "status": ("new", "paid", "shipped")[(i + v) % 3], "amount": f"{(i % 10000) / 100 + v:.2f}",
            "qty": i % 17 + v, "note": f"order {i} note text v{v}", "created_at": "2024-01-31 12:00:00.123456+00",
            "updated_at": f"2024-02-0{1 + v % 9} 08:30:00+00", "paid": bool(i % 2), "score": i * 0.5}


def events(n: int, op: str, v: int, start_lsn: int) -> list[tuple[bytes, bytes, bytes]]:
    src = {"connector": "postgresql", "name": "shop", "schema": "public", "table": "orders", "txId": 1234, "ts_ms": 1_700_000_000_000}
    out = []
    for i in range(n):
        after = row(i, v)
        out.append((orjson.dumps({"id": i}), envelope(op, None, after, {**src, "lsn": start_lsn + i}, 1_700_000_000_000),
                    Position.postgres(start_lsn + i, Position.SNAPSHOT if op == "r" else Position.STREAM, 0)))
    return out


class _NoFeed:
    def seek(self, tp, offset):
        pass

    def committed(self, tp, next_offset):
        pass


class _Schemas:
    async def get(self, source, schema_id):
        return SCHEMA


async def stages(n: int) -> None:
    sid = SCHEMA.id.encode()
    for mode in ("mirror", "changelog"):
        with tempfile.TemporaryDirectory() as d:
            uri = str(Path(d) / "t")
            for label, op, v, lsn in (("insert/snapshot", "r", 0, 1 << 32), ("update all", "u", 1, 2 << 32)):
                msgs = events(n, op, v, lsn)
                records = [SimpleNamespace(offset=i + (n if v else 0), value=val, key=key,
                                           headers=[(POSITION_HEADER, pos), (SCHEMA_HEADER, sid)]) for i, (key, val, pos) in enumerate(msgs)]
                from aiokafka import TopicPartition

                lake = LakeTable(uri, {}, "bench.shop.public.orders", 0, "shop.public.orders", "bench")
                w = PartitionWriter(TopicPartition("bench.shop.public.orders", 0), source="shop", schema="public", table="orders", mode=mode,
                                lake=lake, schemas=_Schemas(), feed=_NoFeed(), batch_rows=10 * n, batch_bytes=1 << 40, batch_interval_s=1e9)
                await w.open()
                t0 = time.perf_counter()
                await w.ingest(records, w.epoch)
                t1 = time.perf_counter()
                planned, _ = plan(w.buffer.events, w.committer.catalog_snapshot(), mode, "t", 0)
                t2 = time.perf_counter()
                res = lake.commit(planned, expected=w.committed_offset, txn=records[-1].offset, position=w.buffer.last_position,
                                  first=records[0].offset)
                t3 = time.perf_counter()
                assert res.ok
                kind = planned.kind if w.committer.version is not None else "create"
                print(f"  {mode:9} {label:16} {n} events: decode {n / (t1 - t0):>9,.0f}/s  plan {n / (t2 - t1):>9,.0f}/s  "
                      f"commit ({kind}) {n / (t3 - t2):>9,.0f}/s  => flush total {n / (t3 - t0):>9,.0f} rows/s")


async def end_to_end(n: int) -> None:
    from tests.sinks.conftest import Lab

    for mode in ("mirror", "changelog"):
        with tempfile.TemporaryDirectory() as d:
            async with Lab(Path(d)) as lab:
                t = await lab.table("shop", "public", "orders", COLUMNS, ["id"])
                topic = f"{lab.prefix}.shop.public.orders"
                sid = t.id.encode()
                from lakeward.core.broker import BatchPublisher

                pub = BatchPublisher(lab._producer)
                half = n // 2
                # a snapshot of n/2 rows, then n/2 updates of them
                for key, val, pos in [(b"{}", envelope("t", None, None, {"ts_ms": 0}, 0), Position.postgres(1 << 32, 0, 0))] + \
                        events(half, "r", 0, (1 << 32) + 1) + events(n - half, "u", 1, 2 << 32):
                    pub.append(topic, key, val, [(POSITION_HEADER, pos), (SCHEMA_HEADER, sid)])
                    if pub.has_full:
                        await pub.send_full()
                await pub.flush()
                first: list[float] = []
                ingest = PartitionWriter.ingest

                async def timed_ingest(self, records, epoch, first=first, ingest=ingest):  # when the first record reached the sink
                    first.append(time.perf_counter())
                    await ingest(self, records, epoch)

                PartitionWriter.ingest = timed_ingest  # type: ignore[method-assign]
                t0 = time.perf_counter()
                async with lab.sink(mode=mode, batch_rows=BATCH_ROWS, batch_interval_s=1.0) as sink:
                    while True:
                        st = (await sink.status()).tables
                        if st and st[0].committed_offset == n:
                            break
                        if st and st[0].error:
                            raise SystemExit(st[0].error)
                        await asyncio.sleep(0.05)
                    elapsed = time.perf_counter() - t0
                PartitionWriter.ingest = ingest  # type: ignore[method-assign]
                rows = len(lab.rows(t)) if mode == "mirror" else n + 1
                print(f"  {mode:9} end to end: {n + 1} events in {elapsed:.2f}s = {(n + 1) / elapsed:,.0f} events/s incl. consumer "
                      f"start and group join; {(n + 1) / (t0 + elapsed - first[0]):,.0f} events/s from the first event consumed "
                      f"(lake rows {rows}, commits {st[0].commits})")


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    logging.basicConfig(level=logging.WARNING)
    from lakeward.app.runner import tune_gc

    tune_gc()  # as run_workers does
    print(f"flush stages, {n} events:")
    await stages(n)
    print(f"end to end through the local broker, {n} events:")
    await end_to_end(n)


if __name__ == "__main__":
    asyncio.run(main())
