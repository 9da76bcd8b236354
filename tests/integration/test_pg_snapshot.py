"""The PostgreSQL initial snapshot, chunked and parallel, through `lakeward run`: tables with composite,
uuid and text keys and without a key, split into many chunks (key ranges or CTID page ranges) and
read by several connections at one consistent point; the lake equals the source and the topics hold
each table's `t`, then its rows in chunk order at increasing positions, keyed as the stream keys them."""

from __future__ import annotations

import orjson
import pytest

from .harness import sql, wait_until, write_config
from .lakecheck import no_repeated_positions
from .pg_snapshot_checks import (
    changelog_equals,
    chunk_indexes,
    mirror_equals,
    op_of,
    position,
    read_events,
    source_rows,
    state_doc,
    table_records,
)

pytestmark = pytest.mark.integration

KEYED = {"pairs": ("a", "b"), "uids": ("id",), "words": ("w",)}
SMALL = [f"small{i}" for i in range(6)]
ROWS = {"pairs": 6000, "uids": 5000, "words": 4000, "nokey": 7000, **dict.fromkeys(SMALL, 3)}


def _tables(dsn: str) -> None:
    sql(dsn,
        # Composite key; float (converted in Python) next to numeric and timestamptz (JSON built in SQL).
        "CREATE TABLE pairs (a int, b text, f float8, n numeric(10,2), ts timestamptz, PRIMARY KEY (a, b))",
        "INSERT INTO pairs SELECT g % 37, 'k' || g, g / 7.0, g / 100.0, timestamptz '2024-01-01' + g * interval '1 minute' "
        "FROM generate_series(1, 6000) g",
        "CREATE TABLE uids (id uuid PRIMARY KEY, n int, s text)",
        "INSERT INTO uids SELECT md5(g::text)::uuid, g, repeat('x', g % 50) FROM generate_series(1, 5000) g",
        # Text keys with characters JSON escapes: the message key must be what the stream makes.
        "CREATE TABLE words (w text PRIMARY KEY, n int)",
        "INSERT INTO words SELECT 'w' || g || CASE g % 5 WHEN 0 THEN ' é' WHEN 1 THEN '\"q' WHEN 2 THEN E'\\\\b' "
        "WHEN 3 THEN E'\\t\\x01' ELSE '' END, g FROM generate_series(1, 4000) g",
        "CREATE TABLE nokey (n int, s text)",
        "INSERT INTO nokey SELECT g, md5(g::text) FROM generate_series(1, 7000) g",
        *(f"CREATE TABLE {t} (id int PRIMARY KEY, v text)" for t in SMALL),
        *(f"INSERT INTO {t} VALUES (1, 'a'), (2, NULL), (3, 'c')" for t in SMALL))


def _check_topic(prefix: str, table: str, key: tuple[str, ...], rows: int, min_chunks: int) -> None:
    records = table_records(prefix, table, min_count=rows + 1)
    assert op_of(records[0]) == "t", f"{table}: the snapshot starts with its reset"
    positions = [position(r) for r in records]
    assert positions == sorted(positions) and len(set(positions)) == len(positions), f"{table}: positions must increase"
    reads = read_events(records)
    assert len(reads) == rows, f"{table}: {len(reads)} rows read, {rows} in the table"
    assert len(chunk_indexes(records)) >= min_chunks, f"{table}: read in {len(chunk_indexes(records))} chunks"
    for r in reads:
        after = orjson.loads(r.value)["after"]
        expected = orjson.dumps({k: after[k] for k in key}) if key else orjson.dumps(after)
        assert r.key == expected, f"{table}: message key {r.key!r} is not the stream's {expected!r}"


def test_parallel_snapshot_of_many_chunks(database, prefix, tmp_path, workers):
    _tables(database)
    mirror, changelog = tmp_path / "mirror", tmp_path / "changelog"
    extra = "    snapshot_parallelism: 3\n    snapshot_chunk_rows: 500\n"
    cfg = write_config(tmp_path / "mirror.yaml", dsn=database, prefix=prefix, lake=mirror, extra_source=extra)
    log_cfg = write_config(tmp_path / "log.yaml", dsn=database, prefix=prefix, lake=changelog, mode="changelog", sink_name="log",
                           extra_source=extra)
    source = workers(cfg, "--source", "shop").start()
    sinks = [workers(cfg, "--sink", "lake").start(), workers(log_cfg, "--sink", "log").start()]

    for table, key in KEYED.items():
        wait_until(lambda table=table, key=key: mirror_equals(database, mirror, table, key), timeout=90, what=f"mirror {table} == source")
    for table in SMALL:
        wait_until(lambda table=table: mirror_equals(database, mirror, table, ("id",)), timeout=60, what=f"mirror {table} == source")
    wait_until(lambda: changelog_equals(database, changelog, "nokey"), timeout=60, what="changelog nokey == source")

    assert "on 3 connections" in source.output()
    for table, key in KEYED.items():
        _check_topic(prefix, table, key, ROWS[table], ROWS[table] // 500)
    _check_topic(prefix, "nokey", (), ROWS["nokey"], 3)
    for table in SMALL:
        _check_topic(prefix, table, ("id",), 3, 1)
    doc = state_doc(prefix)
    assert doc["done"] and not doc["progress"] and set(doc["tables"]) == {f"public.{t}" for t in ROWS}

    # Streaming goes on from the slot's consistent point.
    sql(database, "INSERT INTO pairs VALUES (99, 'new', 1.5, 2.5, now())", "DELETE FROM uids WHERE n <= 10",
        "UPDATE words SET n = -n WHERE n % 100 = 0", "INSERT INTO nokey VALUES (-1, 'streamed')")
    for table, key in KEYED.items():
        wait_until(lambda table=table, key=key: mirror_equals(database, mirror, table, key), timeout=60, what=f"mirror {table} == source after changes")
    wait_until(lambda: changelog_equals(database, changelog, "nokey"), timeout=60, what="changelog nokey == source after changes")
    for w in (source, *sinks):
        assert w.terminate() == 0, w.output()[-3000:]
    for table in ROWS:
        no_repeated_positions(changelog, table)


def test_ctid_chunking(database, prefix, tmp_path, workers):
    """`snapshot_chunking: ctid`: keyed tables too are read by heap page ranges, holes (deleted rows)
    and rows moved by updates included; a table without a key always is."""
    sql(database,
        "CREATE TABLE items (id int PRIMARY KEY, v text)",
        "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 6000) g",
        "DELETE FROM items WHERE id % 3 = 0",
        "UPDATE items SET v = 'moved' WHERE id % 10 = 1",
        "CREATE TABLE logs (n int, s text)",
        "INSERT INTO logs SELECT g, repeat('y', g % 30) FROM generate_series(1, 5000) g")
    items = len(source_rows(database, "items"))
    mirror, changelog = tmp_path / "mirror", tmp_path / "changelog"
    extra = "    snapshot_parallelism: 2\n    snapshot_chunk_rows: 300\n    snapshot_chunking: ctid\n"
    cfg = write_config(tmp_path / "mirror.yaml", dsn=database, prefix=prefix, lake=mirror, extra_source=extra)
    log_cfg = write_config(tmp_path / "log.yaml", dsn=database, prefix=prefix, lake=changelog, mode="changelog", sink_name="log",
                           extra_source=extra)
    started = [workers(cfg, "--source", "shop").start(), workers(cfg, "--sink", "lake").start(), workers(log_cfg, "--sink", "log").start()]
    wait_until(lambda: mirror_equals(database, mirror, "items", ("id",)), timeout=90, what="mirror items == source")
    wait_until(lambda: changelog_equals(database, changelog, "logs"), timeout=60, what="changelog logs == source")
    _check_topic(prefix, "items", ("id",), items, 8)
    _check_topic(prefix, "logs", (), 5000, 8)
    for w in started:
        assert w.terminate() == 0, w.output()[-3000:]
    no_repeated_positions(changelog, "items")
    no_repeated_positions(changelog, "logs")
