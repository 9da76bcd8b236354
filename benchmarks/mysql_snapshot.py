"""Benchmark: the MySQL initial snapshot's reader against `mariadb --quick` (not part of `make test`).

    .venv/bin/python -m benchmarks.mysql_snapshot [rows]

Creates `lw_bench_snapshot.wide` (id bigint PRIMARY KEY, n int, s text, amount decimal(12,2), created_at
timestamp, flag boolean) with `rows` rows (default 1M) once, then times, in one run:
1. `mariadb --quick` selecting the table into /dev/null (the server and the C client: the ceiling);
2. PyMySQL alone fetching the table's rows (unbuffered, in chunks), nothing else: the driver's ceiling;
3. the source's reader thread taking the snapshot (chunks planned and read, rows converted into
   ready events) at snapshot_parallelism 1 and 2, the events drained without a broker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pymysql.cursors

from lakeward.connectors.mysql import catalog, snapshot
from lakeward.connectors.mysql.binlog import Plan, Reader
from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.connectors.mysql.handover import Failed, SnapshotDone
from lakeward.connectors.mysql.history import SchemaHistory

sys.path.insert(0, os.path.dirname(__file__))  # also run as `python -m benchmarks.mysql_snapshot`
from services import MYSQL, mquery, msql

DB, TABLE = "lw_bench_snapshot", "wide"


def config(parallelism: int = 1) -> MySQLSourceConfig:
    return MySQLSourceConfig(name="bench", host=MYSQL["host"], port=MYSQL["port"], user=MYSQL["user"], password=MYSQL["password"],
                             tables=[f"{DB}.{TABLE}"], snapshot_parallelism=parallelism, server_id=2_999_999)


def ensure_table(rows: int) -> None:
    msql(f"CREATE DATABASE IF NOT EXISTS {DB}")
    have = mquery(f"SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '{DB}' AND table_name = '{TABLE}'")[0][0]
    if have and mquery(f"SELECT COUNT(*) FROM {DB}.{TABLE}")[0][0] == rows:
        return
    msql(f"DROP TABLE IF EXISTS {DB}.{TABLE}",
         f"CREATE TABLE {DB}.{TABLE} (id bigint PRIMARY KEY, n int NOT NULL, s text, amount decimal(12,2), "
         "created_at timestamp NOT NULL, flag boolean)",
         f"INSERT INTO {DB}.{TABLE} SELECT seq, seq % 1000, concat('row ', md5(seq)), seq / 100, from_unixtime(1600000000 + seq), "
         f"seq % 2 FROM seq_1_to_{rows}", db=DB)


def mariadb_quick() -> float:
    started = time.monotonic()
    subprocess.run(["mariadb", "--quick", "-h", MYSQL["host"], "-P", str(MYSQL["port"]), "-u", MYSQL["user"], f"-p{MYSQL['password']}",
                    "-e", f"SELECT * FROM {DB}.{TABLE}"], stdout=subprocess.DEVNULL, check=True)
    return time.monotonic() - started


def pymysql_fetch() -> float:
    conn = catalog.connect(config(), snapshot=True)
    started = time.monotonic()
    try:
        with conn.cursor(pymysql.cursors.SSCursor) as cur:
            cur.execute(f"SELECT * FROM {DB}.{TABLE}")
            while cur.fetchmany(snapshot.PIECE_ROWS):
                pass
    finally:
        conn.close()
    return time.monotonic() - started


def reader(parallelism: int) -> tuple[float, int]:
    cfg = config(parallelism)
    conn = catalog.connect(cfg)
    server = catalog.server_info(conn)
    conn.close()
    r = Reader(cfg, "bench", server, SchemaHistory("bench"), Plan([(DB, TABLE)], None, {}, initial=True), lambda: None)
    started = time.monotonic()
    r.start()
    events = 0
    try:
        while True:
            batch = r.handover.queue.get()
            for item in batch:
                if type(item) is tuple:
                    events += 1
                elif isinstance(item, Failed):
                    raise item.error
            if any(isinstance(item, SnapshotDone) for item in batch):
                return time.monotonic() - started, events
    finally:
        r.stop_flag.set()
        r.join(30)


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    ensure_table(rows)
    for _round in range(2):
        s = mariadb_quick()
        print(f"mariadb --quick > /dev/null: {s:.2f}s  {rows / s:,.0f} rows/s")
        s = pymysql_fetch()
        print(f"PyMySQL fetch only:          {s:.2f}s  {rows / s:,.0f} rows/s")
        for p in (1, 2):
            s, events = reader(p)
            assert events == rows + 1, events
            print(f"reader, parallelism {p}:      {s:.2f}s  {rows / s:,.0f} rows/s")


if __name__ == "__main__":
    main()
