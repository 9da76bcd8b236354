"""Benchmark: the MySQL source against the library it is built on (not part of `make test`).

    .venv/bin/pytest -s -p no:cacheprovider benchmarks/mysql_source_vs_raw.py


200k rows are inserted while the source streams; the source's rate (binlog -> envelopes -> broker
acknowledged) is compared with pymysqlreplication's own raw decode rate (BinLogStreamReader, every
row's values decoded, nothing else) over the same binlog range, measured in the same run. Target: the
source reaches at least 0.8x the raw rate (it decodes row images itself: see connectors/mysql/decode.py).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import WriteRowsEvent

from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.connectors.mysql.source import MySQLSource
from lakeward.core.config import BrokerConfig

from tests.integration.conftest import BROKER, prefix  # noqa: F401 (fixture)
from tests.integration.mysql_fixtures import MYSQL, mquery, msql, mysql_db, server_id  # noqa: F401

pytestmark = pytest.mark.integration

ROWS = 200_000


def raw_decode_seconds(db: str, file: str, pos: int) -> tuple[int, float]:
    stream = BinLogStreamReader(connection_settings=dict(MYSQL), server_id=server_id(), blocking=False, resume_stream=True,
                                log_file=file, log_pos=pos, only_schemas=[db], enable_logging=False)
    started, rows = time.monotonic(), 0
    try:
        for ev in stream:
            if isinstance(ev, WriteRowsEvent):
                rows += len(ev.rows)
    finally:
        stream.close()
    return rows, time.monotonic() - started


async def test_source_reaches_most_of_the_raw_decode_rate(mysql_db, prefix):
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
        # One transaction: its binlog events are written at commit, when the statement returns.
        await asyncio.to_thread(msql, "INSERT INTO items SELECT seq, seq % 1000, md5(seq), '2024-01-01 00:00:00.5' + INTERVAL seq SECOND, "
                                      f"seq * 1.25 FROM seq_1_to_{ROWS}", db=db)
        started = time.monotonic()
        while source.events_published - base < ROWS:
            assert not task.done(), "the source stopped"
            await asyncio.sleep(0.01)
        await source._publisher.flush()  # acknowledged by the broker
        source_s = time.monotonic() - started
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    rows, raw_s = await asyncio.to_thread(raw_decode_seconds, db, file, pos)
    assert rows == ROWS
    ratio = raw_s / source_s
    print(f"source {ROWS / source_s:,.0f} rows/s, raw pymysqlreplication decode {ROWS / raw_s:,.0f} rows/s: {ratio:.2f}x")
    assert ratio >= 0.8, f"source {ROWS / source_s:,.0f} rows/s is below 0.8x the raw decode rate {ROWS / raw_s:,.0f} rows/s"
