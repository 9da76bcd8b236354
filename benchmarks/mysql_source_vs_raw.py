"""Benchmark: the MySQL source against the library it is built on, and end to end (not part of `make test`).

    .venv/bin/pytest -s -p no:cacheprovider benchmarks/mysql_source_vs_raw.py

In one run, on the same table and the same kind of binlog:
1. source alone: 200k rows inserted in one transaction while the source streams; its rate (binlog ->
   envelopes -> broker acknowledged).
2. raw decode: pymysqlreplication's own BinLogStreamReader over the same binlog range, every row's
   values decoded, nothing else: the ceiling of the library on this machine. Target: the source
   reaches at least 0.8x the raw rate (it decodes row images itself: see connectors/mysql/decode.py).
3. end to end: a mirror Delta sink joins (in the same process, as `lakeward run` with both does),
   catches up with (1), then another 200k-row transaction is timed from its commit until the Delta
   table's offsets cover its last event.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import WriteRowsEvent
from services import BROKER, MYSQL, mquery, msql, server_id

from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.connectors.mysql.source import MySQLSource
from lakeward.core.config import BrokerConfig, LakeConfig
from lakeward.sinks.delta.config import DeltaSinkConfig
from lakeward.sinks.delta.sink import DeltaSink

pytestmark = pytest.mark.integration

ROWS = 200_000
APPLY_TIMEOUT_S = 600


@pytest.fixture
def mysql_db():
    """A scratch database; dropped afterwards."""
    name = f"lw_{uuid.uuid4().hex[:10]}"
    msql(f"CREATE DATABASE `{name}`")
    yield name
    msql(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this run alone."""
    return f"t{uuid.uuid4().hex[:10]}"


def raw_decode_seconds(db: str, file: str, pos: int) -> tuple[int, float]:
    stream = BinLogStreamReader(connection_settings=dict(MYSQL), server_id=server_id(), blocking=False, resume_stream=True,
                                log_file=file, log_pos=pos, only_schemas=[db], enable_logging=False)
    started, rows = time.monotonic(), 0
    try:
        for ev in stream:
            if isinstance(ev, WriteRowsEvent):
                rows += len(ev.rows)
                if rows >= ROWS:  # the end of the first load (the end-to-end load follows it in the binlog)
                    break
    finally:
        stream.close()
    return rows, time.monotonic() - started


async def until_applied(sink: DeltaSink, events: int, task: asyncio.Task) -> None:
    """Until the sink's Delta commits cover `events` events (offsets 0..events-1) of its one table."""
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while not any(w.committed_offset == events - 1 for w in sink._writers.values()):
        assert not task.done() and time.monotonic() < deadline, "the sink stopped or fell behind"
        await asyncio.sleep(0.02)


def insert(db: str, first: int) -> None:
    # One transaction: its binlog events are written at commit, when the statement returns.
    msql("INSERT INTO items SELECT seq, seq % 1000, md5(seq), '2024-01-01 00:00:00.5' + INTERVAL seq SECOND, "
         f"seq * 1.25 FROM seq_{first}_to_{first + ROWS - 1}", db=db)


async def test_source_reaches_most_of_the_raw_decode_rate(mysql_db, prefix, tmp_path):
    db = mysql_db
    msql("CREATE TABLE items (id bigint PRIMARY KEY, v int, s varchar(64), created datetime(6), amount decimal(12,2))", db=db)
    cfg = MySQLSourceConfig(name="legacy", host=MYSQL["host"], port=MYSQL["port"], user=MYSQL["user"], password=MYSQL["password"],
                            tables=[f"{db}.*"], server_id=server_id())
    source = MySQLSource(cfg, broker=BrokerConfig(bootstrap_servers=BROKER, topic_prefix=prefix))
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    try:
        deadline = time.monotonic() + 30
        while source.events_published < 1:  # the snapshot's truncate marker: streaming comes next
            assert not task.done() and time.monotonic() < deadline, "the source did not start"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        file, pos = mquery("SHOW MASTER STATUS")[0][:2]
        base = source.events_published
        await asyncio.to_thread(insert, db, 1)
        started = time.monotonic()
        while source.events_published - base < ROWS:
            assert not task.done(), "the source stopped"
            await asyncio.sleep(0.01)
        await source._publisher.flush()  # acknowledged by the broker
        source_s = time.monotonic() - started

        # end to end: the sink catches up with the first load, then the second is timed from its commit
        sink = DeltaSink(DeltaSinkConfig(name="lake", sources=["legacy"]), broker=source.broker,
                         lake=LakeConfig(uri=str(tmp_path / "lake")))
        sink_stop = asyncio.Event()
        sink_task = asyncio.create_task(sink.run(sink_stop))
        try:
            await until_applied(sink, 1 + ROWS, sink_task)  # the snapshot's truncate marker + the first load
            await asyncio.to_thread(insert, db, ROWS + 1)
            started = time.monotonic()
            await until_applied(sink, 1 + 2 * ROWS, sink_task)
            e2e_s = time.monotonic() - started
        finally:
            sink_stop.set()
            async with asyncio.timeout(60):
                await sink_task
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task
    rows, raw_s = await asyncio.to_thread(raw_decode_seconds, db, file, pos)
    assert rows == ROWS
    ratio = raw_s / source_s
    print(f"source {ROWS / source_s:,.0f} rows/s, raw pymysqlreplication decode {ROWS / raw_s:,.0f} rows/s: {ratio:.2f}x; "
          f"end to end (binlog -> broker -> Delta mirror) {ROWS / e2e_s:,.0f} rows/s")
    assert ratio >= 0.8, f"source {ROWS / source_s:,.0f} rows/s is below 0.8x the raw decode rate {ROWS / raw_s:,.0f} rows/s"
