#!/usr/bin/env python3
"""Where the PostgreSQL source's CPU goes, per event, without a profiler's distortion.

    python benchmarks/source_costs.py [--rows 200000]

Loads `--rows` inserts (the table of benchmarks/pipeline.py) into a scratch database, captures the
slot's pgoutput stream with a bare libpq loop (that loop's rate is printed: the walsender's pace),
then times each step of the source's hot path over the captured messages, in microseconds per
event: the code as it is now, next to the per-step approach it replaced (decode to a list, convert,
build the `source` dict, dumps the whole envelope, lz4 level 9). Each step is timed alone over all
rows, best of 5; the sum is a floor for the worker (asyncio, the producer's network I/O and the GC
come on top: compare with the source CPU seconds benchmarks/pipeline.py reports).
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import psycopg
from psycopg import pq

from lakeward.connectors.postgres import pgoutput
from lakeward.connectors.postgres.replication import XLOG_PAYLOAD, xlog_start
from lakeward.connectors.postgres.source import _Table
from lakeward.connectors.postgres.types import SESSION_OPTIONS, PgType, map_type
from lakeward.core.events import ENVELOPE, NULL, PG_POSITION, POSITION_HEADER, Column, TableSchema

sys.path.insert(0, os.path.dirname(__file__))
from services import ADMIN_DSN, INSERT, TABLE_DDL, dsn_for

COLUMNS = [("id", "int8", -1), ("n", "int4", -1), ("s", "text", -1), ("amount", "numeric", (12 << 16 | 2) + 4),
           ("created_at", "timestamptz", -1), ("flag", "bool", -1)]


def capture(rows: int) -> tuple[list[bytes], float]:
    db = f"lw_costs_{uuid.uuid4().hex[:6]}"
    slot = f"{db}_slot"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{db}"')
    dsn = dsn_for(db)
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(TABLE_DDL.format(name="bench"))
            c.execute("CREATE PUBLICATION costs_pub FOR TABLE bench")
            c.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            for a in range(1, rows + 1, 10_000):
                c.execute(INSERT.format(name="bench"), (a, min(a + 9_999, rows)))
            end = one(c, "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
        conn = psycopg.Connection.connect(dsn, autocommit=True, replication="database", options=SESSION_OPTIONS)
        pg = conn.pgconn
        pg.send_query(f"START_REPLICATION SLOT {slot} LOGICAL 0/0 (proto_version '1', publication_names 'costs_pub')".encode())
        while (r := pg.get_result()) is not None and r.status != pq.ExecStatus.COPY_BOTH:
            pass
        msgs, started = [], time.perf_counter()
        while True:
            n, data = pg.get_copy_data(0)
            if n <= 0:
                raise SystemExit(f"the stream ended early ({n})")
            buf = bytes(data)
            if buf[0] == 119 and buf[XLOG_PAYLOAD] == 73:
                msgs.append(buf)
            elif buf[0] == 107 and struct.unpack_from(">Q", buf, 1)[0] >= end:
                break
        seconds = time.perf_counter() - started
        conn.close()
        return msgs, seconds
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as c:
            for _ in range(100):
                if not one(c, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s AND active", (slot,)):
                    break
                time.sleep(0.1)
            c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (slot,))
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def one(conn: psycopg.Connection, statement: str, params: Any = None) -> Any:
    """The first column of the statement's one row."""
    row = conn.execute(statement, params).fetchone()
    assert row is not None, statement
    return row[0]


def best(fn: Callable[[], object], n: int, repeat: int = 5) -> float:
    """µs per event, best of `repeat` (the machine may be shared: the minimum is the cost)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    args = ap.parse_args()
    msgs, seconds = capture(args.rows)
    n = len(msgs)
    print(f"captured {n:,} inserts; a bare libpq loop drained them at {n / seconds:,.0f} rows/s ({seconds:.2f}s)\n")

    names, converters, cols = [], [], []
    for name, typ, typmod in COLUMNS:
        lake, conv = map_type(PgType(typ, "b"), typmod)
        names.append(name)
        converters.append(conv)
        cols.append(Column(name, typ, lake, name != "id"))
    schema = TableSchema("shop", "public", "bench", tuple(cols), ("id",))
    base = {"version": "0.1.0", "connector": "postgresql", "name": "shop", "db": "bench", "schema": "public", "table": "bench"}
    t = _Table(schema, "lakeward.shop.public.bench", schema.id.encode(), names, converters, ["id"], base)
    head = t.source_head(1_700_000_000_000, "false", 1234)
    rows = [pgoutput.decode_row(m, XLOG_PAYLOAD + 6, t.columns)[0] for m in msgs]
    keys = [t.key(r) for r in rows]
    values = [ENVELOPE % (NULL, orjson.dumps(r), head, i, b"c", 1_700_000_000_123) for i, r in enumerate(rows)]
    sizes = sum(map(len, values)) / n

    def new_decode():
        for m in msgs:
            xlog_start(m)
            pgoutput.decode_row(m, XLOG_PAYLOAD + 6, t.columns)

    def old_decode():
        for m in msgs:
            struct.unpack_from(">QQQ", m, 1)
            ins = pgoutput.decode(m[XLOG_PAYLOAD:])
            assert isinstance(ins, pgoutput.Insert)
            pgoutput.convert_row(ins.new, t.columns)

    def new_key():
        for r in rows:
            t.key(r)

    def old_key():
        for r in rows:
            orjson.dumps({k: r.get(k) for k in t.pk})

    def new_value():
        for i, r in enumerate(rows):
            ENVELOPE % (NULL, orjson.dumps(r), head, i, b"c", 1_700_000_000_123)

    def old_value():
        for i, r in enumerate(rows):
            source = {**base, "ts_ms": 1_700_000_000_000, "snapshot": "false", "txId": 1234, "lsn": i}
            orjson.dumps({"before": None, "after": r, "source": source, "op": "c", "ts_ms": int(time.time() * 1000)})

    def position():
        for i in range(n):
            [(POSITION_HEADER, PG_POSITION.pack(123, 1, i)), t.schema_header]

    from aiokafka.producer.message_accumulator import BatchBuilder

    codecs = {None: 0, "lz4": 3, "zstd": 4}  # the record batch attribute aiokafka's producer passes

    def batches(compression: str | None) -> Callable[[], None]:
        def run():
            b = BatchBuilder(1 << 20, codecs[compression])
            headers = [(POSITION_HEADER, b"\0" * 17), t.schema_header]
            for k, v in zip(keys, values, strict=True):
                if b.append(key=k, value=v, timestamp=None, headers=headers) is None:
                    b._build()
                    b = BatchBuilder(1 << 20, codecs[compression])
                    b.append(key=k, value=v, timestamp=None, headers=headers)
            b._build()
        return run

    steps = [
        ("decode the XLogData + tuple, convert the values", best(new_decode, n), best(old_decode, n)),
        ("event key (primary key as JSON)", best(new_key, n), best(old_key, n)),
        ("envelope JSON", best(new_value, n), best(old_value, n)),
        ("position + headers", best(position, n), best(position, n)),
        ("record batches: append, build, compress (zstd | lz4-9)", best(batches("zstd"), n), best(batches("lz4"), n)),
    ]
    print(f"{'step':<52} {'now µs':>8} {'before µs':>10}")
    for name, now, before in steps:
        print(f"{name:<52} {now:>8.2f} {before:>10.2f}")
    print(f"{'sum':<52} {sum(s[1] for s in steps):>8.2f} {sum(s[2] for s in steps):>10.2f}")
    print(f"\nenvelope: {sizes:.0f} bytes on average")


if __name__ == "__main__":
    main()
