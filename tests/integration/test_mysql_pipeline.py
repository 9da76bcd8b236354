"""End to end through `lakeward run`: MariaDB binlog -> Kafka -> Delta, compared row by row with the source."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time

import orjson
import pyarrow as pa
import pytest

from lakeward.core.broker import SchemaReader
from lakeward.core.config import BrokerConfig

from .harness import BROKER, mquery, msql, read_topic, wait_until, write_mysql_config
from .lakecheck import lake_equals_mysql, mysql_lake_rows, mysql_lake_table

pytestmark = pytest.mark.integration


def test_mirror_follows_every_kind_of_change(mysql_db, prefix, tmp_path, workers):
    db = mysql_db
    msql("CREATE TABLE orders (id int PRIMARY KEY, customer varchar(40), amount decimal(12,2), paid tinyint(1), "
         "created datetime(3) DEFAULT '2024-01-01 00:00:00', note text)",
         "INSERT INTO orders (id, customer, amount, paid) SELECT seq, concat('c', seq), seq * 1.25, seq % 2 FROM seq_1_to_500", db=db)
    lake = tmp_path / "lake"
    cfg = write_mysql_config(tmp_path / "lakeward.yaml", db=db, prefix=prefix, lake=lake)
    worker = workers(cfg).start()
    eq = lambda **kw: lake_equals_mysql(db, lake, "orders", booleans=("paid",), **kw)  # noqa: E731
    wait_until(eq, timeout=60, what="the snapshot to land")

    msql("INSERT INTO orders (id, customer, amount, paid, note) VALUES (1000, 'big', 9.99, 0, repeat('x', 20000))",
         "UPDATE orders SET amount = amount + 1 WHERE id <= 100",
         "UPDATE orders SET id = 5000 WHERE id = 7",             # primary-key change
         "DELETE FROM orders WHERE id BETWEEN 200 AND 250",
         "BEGIN", "INSERT INTO orders (id, customer) VALUES (6000, 'x')", "DELETE FROM orders WHERE id = 6000",
         "UPDATE orders SET paid = 1 WHERE id = 1000", "COMMIT", db=db)
    wait_until(eq, timeout=60, what="updates, deletes, pk change")

    # ALTERs in the middle of the stream: add, modify (same lake type), rename and drop columns.
    msql("ALTER TABLE orders ADD COLUMN channel varchar(10) AFTER customer",
         "UPDATE orders SET channel = 'web' WHERE id <= 10",
         "INSERT INTO orders (id, customer, channel) VALUES (7000, 'new', 'app')", db=db)
    wait_until(eq, timeout=60, what="an added column")
    # These fill in or convert values of existing rows without row events: the source reads the table again.
    msql("ALTER TABLE orders ADD COLUMN status varchar(10) NOT NULL DEFAULT 'new'", "UPDATE orders SET status = 'paid' WHERE id = 3", db=db)
    wait_until(eq, timeout=60, what="a column added with a default")
    assert "column 'status' was added with values for the existing rows without row events; reading the table again" in worker.output()
    msql("ALTER TABLE orders MODIFY customer varchar(80) NOT NULL",
         "INSERT INTO orders (id, customer) VALUES (7001, repeat('y', 70))", db=db)
    wait_until(eq, timeout=60, what="a modified column")
    msql("ALTER TABLE orders RENAME COLUMN note TO remark",
         "INSERT INTO orders (id, customer, remark) VALUES (7002, 'r', 'renamed')", db=db)
    wait_until(lambda: (mysql_lake_rows(lake, db, "orders") or [{}])[-1].get("remark") == "renamed", timeout=60, what="a renamed column")
    # A renamed column is a new lake column; rows written after the rename carry it.
    msql("UPDATE orders SET amount = amount + 0.01", db=db)
    wait_until(lambda: eq(dropped=("note",)), timeout=60, what="rows after a column rename")
    msql("ALTER TABLE orders DROP COLUMN paid", "INSERT INTO orders (id, customer) VALUES (7003, 'after drop')", db=db)
    wait_until(lambda: lake_equals_mysql(db, lake, "orders", dropped=("note", "paid")), timeout=60, what="a dropped column")
    rows = {r["id"]: r for r in mysql_lake_rows(lake, db, "orders")}
    assert rows[7003]["paid"] is None and rows[2]["paid"] is False, "a dropped column stays, null for new rows"

    msql("TRUNCATE TABLE orders", "INSERT INTO orders (id, customer) VALUES (1, 'after truncate')", db=db)
    wait_until(lambda: lake_equals_mysql(db, lake, "orders", dropped=("note", "paid")), timeout=60, what="truncate")

    # Tables that appear: CREATE TABLE (rows follow in the binlog) and RENAME TABLE (snapshotted).
    msql("CREATE TABLE fresh (id bigint PRIMARY KEY, v varchar(10))", "INSERT INTO fresh VALUES (1, 'a'), (2, 'b')",
         "UPDATE orders SET customer = 'renamed away' WHERE id = 1", "RENAME TABLE orders TO orders_v2",
         "INSERT INTO orders_v2 (id, customer) VALUES (2, 'after rename')", db=db)
    wait_until(lambda: lake_equals_mysql(db, lake, "fresh"), timeout=60, what="a created table")
    msql("CREATE TABLE copied (PRIMARY KEY (id)) SELECT * FROM fresh", db=db)  # one transaction: DDL, rows, XID
    wait_until(lambda: lake_equals_mysql(db, lake, "copied"), timeout=60, what="CREATE TABLE ... SELECT")
    wait_until(lambda: lake_equals_mysql(db, lake, "orders_v2"), timeout=60, what="a renamed table, snapshotted")
    wait_until(lambda: mysql_lake_rows(lake, db, "orders") == [] or "orders not emptied", timeout=60, what="the old name emptied")
    msql("DROP TABLE fresh", db=db)
    wait_until(lambda: mysql_lake_rows(lake, db, "fresh") == [] or "fresh not emptied", timeout=60, what="a dropped table emptied")

    assert worker.terminate() == 0, worker.output()[-3000:]
    meta = mysql_lake_rows(lake, db, "orders_v2", metadata=True)
    assert set(meta[0]) >= {"_lakeward_op", "_lakeward_position", "_lakeward_committed_at"}


def test_changelog_appends_every_event_once(mysql_db, prefix, tmp_path, workers):
    db = mysql_db
    msql("CREATE TABLE t (id int PRIMARY KEY, v int)", "INSERT INTO t VALUES (1, 1), (2, 2)", db=db)
    lake = tmp_path / "lake"
    cfg = write_mysql_config(tmp_path / "lakeward.yaml", db=db, prefix=prefix, lake=lake, mode="changelog")
    worker = workers(cfg).start()
    wait_until(lambda: mysql_lake_table(lake, db, "t") is not None, timeout=60, what="the changelog table")
    msql("UPDATE t SET v = 10 WHERE id = 1", "DELETE FROM t WHERE id = 2", "INSERT INTO t VALUES (3, 3)",
         "UPDATE t SET id = 4 WHERE id = 3", db=db)

    def ops():
        rows = mysql_lake_rows(lake, db, "t", key="_lakeward_position", metadata=True)
        return [r["_lakeward_op"] for r in rows] if rows else []

    wait_until(lambda: len(ops()) >= 8 or str(ops()), timeout=60, what="all events in the changelog")
    assert ops() == ["t", "r", "r", "u", "d", "c", "d", "c"]
    assert worker.terminate() == 0


@pytest.mark.parametrize("mode", ["mirror", "changelog"])
def test_type_change_delta_cannot_merge(mysql_db, prefix, tmp_path, workers, mode):
    """MODIFY to a type the table cannot merge into (decimal(10,2) -> decimal(20,4)): the source re-reads
    the table, and the mirror is rewritten with the new type from the re-read's truncate; a changelog,
    whose rows keep the old type, stops only that table with an error naming it and the column."""
    db = mysql_db
    msql("CREATE TABLE a (id int PRIMARY KEY, amount decimal(10,2))", "CREATE TABLE b (id int PRIMARY KEY)",
         "INSERT INTO a VALUES (1, 1.5)", "INSERT INTO b VALUES (1)", db=db)
    lake = tmp_path / "lake"
    worker = workers(write_mysql_config(tmp_path / "lakeward.yaml", db=db, prefix=prefix, lake=lake, mode=mode)).start()
    wait_until(lambda: mysql_lake_table(lake, db, "a") is not None and mysql_lake_table(lake, db, "b") is not None, timeout=60, what="snapshot")
    msql("ALTER TABLE a MODIFY amount decimal(20,4)", "INSERT INTO a VALUES (2, 2.5)", "INSERT INTO b VALUES (2)", db=db)
    if mode == "mirror":
        wait_until(lambda: lake_equals_mysql(db, lake, "a"), timeout=60, what="table a rewritten with the new type")
        assert str(pa.schema(mysql_lake_table(lake, db, "a").schema().to_arrow()).field("amount").type) == "decimal128(20, 4)"
    else:
        wait_until(lambda: "changed type" in worker.output(), timeout=60, what="the sink to stop table a")
        assert "column 'amount' changed type from decimal128(10, 2) to decimal128(20, 4)" in worker.output()
    def b_ids() -> set:
        rows = mysql_lake_rows(lake, db, "b", key="_lakeward_position", metadata=True) or []
        return {r["id"] for r in rows if r["id"] is not None}

    wait_until(lambda: b_ids() == {1, 2} or str(b_ids()), timeout=60, what="table b to keep flowing")
    assert worker.terminate() == 0


def test_one_million_row_transaction(mysql_db, prefix, tmp_path, workers):
    db = mysql_db
    msql("CREATE TABLE big (id bigint PRIMARY KEY, v int, s char(32))", db=db)
    lake = tmp_path / "lake"
    cfg = write_mysql_config(tmp_path / "lakeward.yaml", db=db, prefix=prefix, lake=lake)
    # Source and sink in their own processes (as in production), so each has a core.
    source, sink = workers(cfg, "--source", "legacy").start(), workers(cfg, "--sink", "lake").start()
    wait_until(lambda: mysql_lake_table(lake, db, "big") is not None, timeout=60, what="the empty table")
    started = time.monotonic()
    msql("INSERT INTO big SELECT seq, seq % 1000, md5(seq) FROM seq_1_to_1000000", db=db)

    def count():
        dt = mysql_lake_table(lake, db, "big")
        n = dt.to_pyarrow_dataset().count_rows() if dt else 0
        return n == 1_000_000 or f"{n} rows in the lake"

    wait_until(count, timeout=240, what="1M rows", interval=1)
    print(f"1M-row transaction in the lake after {time.monotonic() - started:.1f}s")
    # Every row and column (the source's values are a function of the id).
    t = mysql_lake_table(lake, db, "big").to_pyarrow_table().sort_by("id")
    ids = t.column("id").to_pylist()
    assert ids == list(range(1, 1_000_001))
    assert t.column("v").to_pylist() == [i % 1000 for i in ids]
    assert t.column("s").to_pylist() == [hashlib.md5(str(i).encode()).hexdigest() for i in ids]
    assert source.terminate() == 0 and sink.terminate() == 0


@pytest.mark.mariadb_globals  # it kills every binlog dump connection of the server, other tests' too
def test_source_survives_a_killed_binlog_connection(mysql_db, prefix, tmp_path, workers):
    db = mysql_db
    msql("CREATE TABLE t (id int PRIMARY KEY, v int)", "INSERT INTO t SELECT seq, 0 FROM seq_1_to_100", db=db)
    lake = tmp_path / "lake"
    worker = workers(write_mysql_config(tmp_path / "lakeward.yaml", db=db, prefix=prefix, lake=lake)).start()
    wait_until(lambda: lake_equals_mysql(db, lake, "t"), timeout=60, what="snapshot")
    for round_ in range(1, 4):
        msql(f"UPDATE t SET v = {round_} WHERE id % {round_ + 1} = 0", db=db)
        # What a failover, a restarted server or an admin does to the replication connection.
        for (thread,) in mquery("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%%'"):
            msql(f"KILL CONNECTION {thread}")
        msql(f"INSERT INTO t VALUES ({1000 + round_}, {round_})", db=db)
    wait_until(lambda: lake_equals_mysql(db, lake, "t"), timeout=90, what="lake == source after reconnects")
    assert worker.alive(), worker.output()[-2000:]
    assert "retrying in" in worker.output()
    assert worker.terminate() == 0


def test_snapshot_never_streams_changes_only(mysql_db, prefix, tmp_path, workers):
    db = mysql_db
    msql("CREATE TABLE t (id int PRIMARY KEY, v varchar(10))", "INSERT INTO t VALUES (1, 'old')", db=db)
    lake = tmp_path / "lake"
    cfg = write_mysql_config(tmp_path / "lakeward.yaml", db=db, prefix=prefix, lake=lake, extra_source="    snapshot: never\n")
    worker = workers(cfg).start()
    # The binlog reader's own line: the position it streams from is taken after the source's first log line.
    wait_until(lambda: re.search(r"streaming from \S+:\d+", worker.output()) is not None, timeout=60, what="the source to stream")
    msql("INSERT INTO t VALUES (2, 'new')", "UPDATE t SET v = 'changed' WHERE id = 1", db=db)
    wait_until(lambda: mysql_lake_rows(lake, db, "t") == [{"id": 1, "v": "changed"}, {"id": 2, "v": "new"}] or str(mysql_lake_rows(lake, db, "t")),
               timeout=60, what="the changes only")
    assert "snapshot of" not in worker.output()
    assert worker.terminate() == 0


async def _records(topic: str, n: int) -> list:
    return await read_topic(topic, min_count=n, timeout=60)


def test_restart_rereads_binlog_from_before_an_alter(mysql_db, prefix, tmp_path, workers):
    """The resume position predates an ALTER the source already processed: the re-read rows are decoded
    and typed as they were written (schema history), and carry the same positions and schema ids."""
    db = mysql_db
    msql("CREATE TABLE t (id int PRIMARY KEY, flag tinyint(1), doc longtext)", "INSERT INTO t VALUES (1, 1, '\"a\"')", db=db)
    lake = tmp_path / "lake"
    # Never writes a resume position while this config is in force: a restart re-reads from the snapshot.
    no_resume = write_mysql_config(tmp_path / "a.yaml", db=db, prefix=prefix, lake=lake, extra_source="    status_interval_s: 3600\n")
    no_resume.write_text(no_resume.read_text().replace("    status_interval_s: 0.2\n", "", 1))
    source = workers(no_resume, "--source", "legacy").start()
    topic = f"{prefix}.legacy.{db}.t"
    asyncio.run(_records(topic, 2))
    msql("INSERT INTO t VALUES (2, 0, '\"before\"')",
         # A column in the middle, and longtext -> json (MariaDB: the same binlog shape, another spelling).
         "ALTER TABLE t ADD COLUMN mid int AFTER id, MODIFY doc json",
         "INSERT INTO t VALUES (3, 7, 1, '{\"after\": true}')", db=db)
    first = asyncio.run(_records(topic, 4))
    source.kill()
    msql("ALTER TABLE t DROP COLUMN mid", "INSERT INTO t VALUES (4, 0, '[]')", db=db)
    normal = write_mysql_config(tmp_path / "b.yaml", db=db, prefix=prefix, lake=lake)
    source = workers(normal, "--source", "legacy").start()
    records = asyncio.run(_records(topic, 4 + 3))
    assert source.terminate() == 0, source.output()[-3000:]

    async def schemas(recs):
        reader = SchemaReader(BrokerConfig(bootstrap_servers=BROKER, topic_prefix=prefix))
        out = []
        for r in recs:
            h = dict(r.headers)
            s = await reader.get("legacy", h["lakeward.schema"].decode())
            out.append((h["lakeward.pos"], orjson.loads(r.value)["after"], {c.name: (c.source_type, c.lake_type) for c in s.columns}))
        return out

    before = asyncio.run(schemas(first))
    after = asyncio.run(schemas(records))
    by_pos = {p: (a, s) for p, a, s in after}
    for pos, row, schema in before:
        assert by_pos[pos] == (row, schema), "a re-published event must carry the same values and schema"
    rows = {a["id"]: (a, s) for _, a, s in after if a}
    assert rows[2][0] == {"id": 2, "flag": False, "doc": '"before"'}
    assert rows[2][1]["doc"] == ("longtext", "string") and rows[2][1]["flag"] == ("tinyint(1)", "boolean")
    assert rows[3][0] == {"id": 3, "mid": 7, "flag": True, "doc": '{"after": true}'}
    assert rows[3][1]["doc"] == ("json", "string") and "mid" in rows[3][1]
    assert rows[4][0] == {"id": 4, "flag": False, "doc": "[]"} and "mid" not in rows[4][1]
