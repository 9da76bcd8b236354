"""A replication slot that exists before the source first runs: used, never dropped; refused with the
fix when it cannot be used (snapshot: initial, another plugin, another database, a physical slot)."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from lakeward.core.errors import SourceSetupError

from .harness import ADMIN_DSN, dsn_for, sql, wait_until, write_config
from .lakecheck import lake_equals_source
from .test_postgres_source import make_source

pytestmark = pytest.mark.integration


def slot_lsn(dsn: str, slot: str) -> str | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    return row[0] if row else None


def test_existing_slot_streams_every_change_it_retained(database, prefix, tmp_path, workers):
    """Publication and slot created before the first deploy; changes made before Lakeward ever ran
    reach the lake, because the slot is used from its confirmed position (snapshot: never)."""
    slot = f"lw_{prefix}"
    sql(database, "CREATE TABLE t (id int PRIMARY KEY, v text)",
        "CREATE PUBLICATION lakeward_shop FOR TABLE t WITH (publish_via_partition_root = true)",
        f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    created_at = slot_lsn(database, slot)
    sql(database, "INSERT INTO t SELECT g, 'before deploy ' || g FROM generate_series(1, 50) g",
        "UPDATE t SET v = 'updated' WHERE id <= 10", "DELETE FROM t WHERE id > 45")
    lake = tmp_path / "lake"
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=lake, extra_source="    snapshot: never\n")
    worker = workers(cfg).start()
    wait_until(lambda: lake_equals_source(database, lake, "t"), timeout=90, what="the changes the slot retained")
    sql(database, "INSERT INTO t VALUES (100, 'after deploy')")
    wait_until(lambda: lake_equals_source(database, lake, "t"), timeout=60, what="a change after the deploy")
    out = worker.output()
    assert "dropping the slot" not in out and f"using the existing slot {slot} from its confirmed position {created_at}" in out
    assert worker.terminate() == 0, worker.output()
    # A restart resumes it (the state topic now names it) rather than treating it as foreign again.
    sql(database, "INSERT INTO t VALUES (101, 'while down')")
    worker = workers(cfg).start()
    wait_until(lambda: lake_equals_source(database, lake, "t"), timeout=60, what="the change made while down")
    assert f"resuming slot {slot}" in worker.output()
    assert worker.terminate() == 0, worker.output()


async def test_existing_slot_with_initial_snapshot_is_refused_and_kept(database, prefix):
    slot = f"lw_{prefix}"
    sql(database, "CREATE TABLE t (id int PRIMARY KEY)", f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')",
        "INSERT INTO t VALUES (1)")
    before = slot_lsn(database, slot)
    with pytest.raises(SourceSetupError) as e:
        await make_source(database, prefix).run(_never())
    msg = str(e.value)
    assert f"replication slot {slot} already exists and this source did not create it" in msg
    assert "set `snapshot: never`" in msg and f"pg_drop_replication_slot('{slot}')" in msg and before in msg
    assert slot_lsn(database, slot) == before, "the slot and the WAL it retains must stay"


async def test_unusable_slots_are_refused_with_the_fix(database, prefix):
    slot = f"lw_{prefix}"
    sql(database, "CREATE TABLE t (id int PRIMARY KEY)")
    for source_kw in ({}, {"snapshot": "never"}):
        sql(database, f"SELECT pg_create_logical_replication_slot('{slot}', 'test_decoding')")
        with pytest.raises(SourceSetupError, match=rf"replication slot {slot} in database lw_\w+ uses the output plugin test_decoding; "
                                                   r"Lakeward reads pgoutput: set `slot:` of this source to another name"):
            await make_source(database, prefix, **source_kw).run(_never())
        assert slot_lsn(database, slot) is not None
        sql(database, f"SELECT pg_drop_replication_slot('{slot}')")

    other = f"lw_{uuid.uuid4().hex[:10]}"
    sql(ADMIN_DSN, f'CREATE DATABASE "{other}"')
    try:
        sql(dsn_for(other), f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
        with pytest.raises(SourceSetupError, match=rf"replication slot {slot} belongs to database {other}, not lw_\w+ "
                                                   r"\(slot names are cluster-wide\): set `slot:`"):
            await make_source(database, prefix, snapshot="never").run(_never())
        assert slot_lsn(database, slot) is not None
        sql(ADMIN_DSN, f"SELECT pg_drop_replication_slot('{slot}')")
    finally:
        sql(ADMIN_DSN, f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')

    sql(ADMIN_DSN, f"SELECT pg_create_physical_replication_slot('{slot}')")
    try:
        with pytest.raises(SourceSetupError, match=rf"replication slot {slot} is a physical slot; Lakeward needs a logical slot"):
            await make_source(database, prefix, snapshot="never").run(_never())
    finally:
        sql(ADMIN_DSN, f"SELECT pg_drop_replication_slot('{slot}')")


async def test_slot_older_than_its_publication_is_a_setup_error(database, prefix):
    """pgoutput reads the publication as of each change: changes a slot retained from before the
    publication existed cannot be decoded through it. A clear error, not an endless retry."""
    slot = f"lw_{prefix}"
    sql(database, "CREATE TABLE t (id int PRIMARY KEY)", f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')",
        "INSERT INTO t VALUES (1)")
    with pytest.raises(SourceSetupError, match=r"publication \"lakeward_shop\" does not exist.*create the publication .* before the slot"):
        await make_source(database, prefix, snapshot="never").run(_never())
    assert slot_lsn(database, slot) is not None


def _never():
    import asyncio

    return asyncio.Event()
