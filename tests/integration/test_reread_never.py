"""`snapshot: never` skips the first copy of a table, not the re-read a row-rewriting DDL needs.

Both sources start with `snapshot: never` on a table that already has rows, so the lake holds only
what changed since capture began; an `ADD COLUMN ... DEFAULT` then changes every source row without a
row event. The re-read that follows makes the lake table equal to the source table, every row.
"""

from __future__ import annotations

import re

import pytest

from .harness import msql, sql, wait_until, write_config, write_mysql_config
from .lakecheck import lake_equals_mysql, lake_equals_source

pytestmark = pytest.mark.integration


def test_postgres_rereads_after_add_column_default_with_snapshot_never(database, prefix, tmp_path, workers):
    sql(database, "CREATE TABLE t (id int PRIMARY KEY, v text)", "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g")
    lake = tmp_path / "lake"
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=lake, extra_source="    snapshot: never\n")
    worker = workers(cfg).start()
    wait_until(lambda: "streaming from" in worker.output(), timeout=60, what="the source to stream")
    sql(database, "UPDATE t SET v = 'changed' WHERE id <= 3")
    sql(database, "ALTER TABLE t ADD COLUMN flag int NOT NULL DEFAULT 7", "UPDATE t SET v = 'after' WHERE id = 4")
    wait_until(lambda: lake_equals_source(database, lake, "t"), timeout=90, what="the re-read after ADD COLUMN DEFAULT")
    assert worker.terminate() == 0, worker.output()


def test_mysql_rereads_after_add_column_default_with_snapshot_never(mysql_db, prefix, tmp_path, workers):
    msql("CREATE TABLE t (id int PRIMARY KEY, v varchar(20))", db=mysql_db)
    msql(*[f"INSERT INTO t VALUES ({i}, 'v{i}')" for i in range(1, 51)], db=mysql_db)
    lake = tmp_path / "lake"
    cfg = write_mysql_config(tmp_path / "lakeward.yaml", db=mysql_db, prefix=prefix, lake=lake, extra_source="    snapshot: never\n")
    worker = workers(cfg).start()
    # The binlog reader's own line: the position it streams from is taken after the source's first log line.
    wait_until(lambda: re.search(r"streaming from \S+:\d+", worker.output()) is not None, timeout=60, what="the source to stream")
    msql("UPDATE t SET v = 'changed' WHERE id <= 3", db=mysql_db)
    msql("ALTER TABLE t ADD COLUMN flag int NOT NULL DEFAULT 7", "UPDATE t SET v = 'after' WHERE id = 4", db=mysql_db)
    wait_until(lambda: lake_equals_mysql(mysql_db, lake, "t"), timeout=90, what="the re-read after ADD COLUMN DEFAULT")
    assert worker.terminate() == 0, worker.output()
