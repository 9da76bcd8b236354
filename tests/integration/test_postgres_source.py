"""The PostgreSQL source alone, against real PostgreSQL and Kafka: what lands on the topics."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import orjson
import psycopg
import pytest

from lakeward.connectors.postgres.config import PostgresSourceConfig
from lakeward.connectors.postgres.source import PostgresSource
from lakeward.core.broker import SchemaReader
from lakeward.core.config import BrokerConfig
from lakeward.core.errors import ConnectionFailed, SourceSetupError

from .harness import BROKER, read_topic, sql

pytestmark = pytest.mark.integration


def make_source(dsn: str, prefix: str, **kw) -> PostgresSource:
    cfg = PostgresSourceConfig(name="shop", type="postgres", dsn=dsn, tables=kw.pop("tables", ["public.*"]),
                               slot=f"lw_{prefix}", status_interval_s=0.2, **kw)
    return PostgresSource(cfg, broker=BrokerConfig(bootstrap_servers=BROKER, topic_prefix=prefix))


@contextlib.asynccontextmanager
async def running(source: PostgresSource):
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    try:
        yield task
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task


def big_text(n: int = 20000) -> str:
    # Random text does not compress, so PostgreSQL stores it out of line (TOAST).
    return "".join(uuid.uuid4().hex for _ in range(n // 32))


async def test_snapshot_then_stream_every_op(database, prefix):
    sql(database,
        "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(10,2), doc text)",
        "INSERT INTO items VALUES (1, 'a', 1.50, NULL), (2, 'b', 2.00, NULL)")
    source = make_source(database, prefix)
    topic = f"{prefix}.shop.public.items"
    doc = big_text()
    async with running(source):
        await read_topic(topic, min_count=3)  # truncate marker + 2 snapshot rows
        sql(database, "INSERT INTO items VALUES (3, 'c', 3.25, %s)", params=(doc,))
        sql(database,
            "UPDATE items SET name = 'c2' WHERE id = 3",  # doc unchanged and TOASTed: not sent
            "UPDATE items SET id = 30 WHERE id = 3",       # primary-key change
            "DELETE FROM items WHERE id = 1",
            "TRUNCATE items")
        records = await read_topic(topic, min_count=9)
    ops = [orjson.loads(r.value)["op"] for r in records]
    assert ops == ["t", "r", "r", "c", "u", "d", "c", "d", "t"]
    values = [orjson.loads(r.value) for r in records]
    assert values[1]["after"] == {"id": 1, "name": "a", "price": "1.50", "doc": None}
    assert values[1]["source"]["snapshot"] == "true"
    assert values[3]["after"]["doc"] == doc
    assert values[4]["after"] == {"id": 3, "name": "c2", "price": "3.25"}, "an unchanged TOASTed value must be absent"
    assert values[5]["before"] == {"id": 3} and records[5].key == b'{"id":3}'
    assert values[6]["after"]["id"] == 30 and records[6].key == b'{"id":30}'
    assert values[7]["before"] == {"id": 1}
    assert all(v["source"]["connector"] == "postgresql" and v["source"]["table"] == "items" for v in values)
    streamed = values[3:]
    assert all(v["source"]["txId"] and v["source"]["lsn"] and v["source"]["snapshot"] == "false" for v in streamed)

    positions = [dict(r.headers)["lakeward.pos"] for r in records]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    schema = await SchemaReader(BrokerConfig(bootstrap_servers=BROKER, topic_prefix=prefix)).get("shop", dict(records[0].headers)["lakeward.schema"].decode())
    assert [(c.name, c.source_type, c.lake_type) for c in schema.columns] == [
        ("id", "integer", "integer"), ("name", "text", "string"), ("price", "numeric(10,2)", "decimal(10,2)"), ("doc", "text", "string")]
    assert schema.primary_key == ("id",)


async def test_restart_resumes_without_losing_changes(database, prefix):
    sql(database, "CREATE TABLE t (id int PRIMARY KEY, v int)", "INSERT INTO t SELECT g, g FROM generate_series(1, 100) g")
    topic = f"{prefix}.shop.public.t"
    async with running(make_source(database, prefix)):
        await read_topic(topic, min_count=101)
    sql(database, "UPDATE t SET v = -v WHERE id <= 10")  # while the source is down
    async with running(make_source(database, prefix)):
        records = await read_topic(topic, min_count=111)
        await asyncio.sleep(1)
    values = [orjson.loads(r.value) for r in records]
    assert [v["op"] for v in values].count("r") == 100, "a finished snapshot must not run again"
    updates = [v["after"] for v in values if v["op"] == "u"]
    assert sorted(u["id"] for u in updates) == list(range(1, 11)) and all(u["v"] == -u["id"] for u in updates)


async def test_new_matching_table_is_snapshotted_and_streamed(database, prefix):
    sql(database, "CREATE TABLE a (id int PRIMARY KEY)")
    async with running(make_source(database, prefix, table_refresh_interval_s=0.5)):
        await read_topic(f"{prefix}.shop.public.a", min_count=1)
        sql(database, "CREATE TABLE b (id int PRIMARY KEY, v text)", "INSERT INTO b VALUES (1, 'before')")
        records = await read_topic(f"{prefix}.shop.public.b", min_count=2, timeout=30)
        sql(database, "INSERT INTO b VALUES (2, 'after')")
        records = await read_topic(f"{prefix}.shop.public.b", min_count=3, timeout=30)
    rows = {orjson.loads(r.value)["after"]["id"] for r in records if orjson.loads(r.value)["after"]}
    assert rows == {1, 2}


async def test_setup_errors_name_the_fix(database, prefix):
    with pytest.raises(SourceSetupError, match=r"table public.nope does not exist in 127.0.0.1:5432/lw_\w+; check `tables:`"):
        await make_source(database, prefix, tables=["public.nope"]).check()
    role = f"r_{uuid.uuid4().hex[:8]}"
    sql(database, f"CREATE ROLE {role} LOGIN")
    try:
        info = psycopg.conninfo.conninfo_to_dict(database)
        info["user"] = role
        dsn = psycopg.conninfo.make_conninfo(**info)
        with pytest.raises(SourceSetupError, match=rf"user {role} on .* lacks the REPLICATION attribute: run `ALTER ROLE {role} REPLICATION`"):
            await make_source(dsn, prefix).check()
    finally:
        sql(database, f"DROP ROLE {role}")
    with pytest.raises(ConnectionFailed, match=r"cannot reach PostgreSQL at 127.0.0.1:1/shop"):
        await make_source("postgresql://u:secret@127.0.0.1:1/shop", prefix).check()
