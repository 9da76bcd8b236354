"""Operational behaviour against the real services: dropped connections, idle slots."""

from __future__ import annotations

import time

import psycopg
import pytest

from .harness import ADMIN_DSN, sql, wait_until, write_config
from .lakecheck import lake_equals_source

pytestmark = pytest.mark.integration


def slot_confirmed(slot: str) -> int:
    with psycopg.connect(ADMIN_DSN) as conn:
        row = conn.execute("SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def test_source_survives_a_killed_replication_connection(database, prefix, tmp_path, workers):
    sql(database, "CREATE TABLE t (id int PRIMARY KEY, v int)", "INSERT INTO t SELECT g, 0 FROM generate_series(1, 100) g")
    lake = tmp_path / "lake"
    worker = workers(write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=lake)).start()
    wait_until(lambda: lake_equals_source(database, lake, "t"), timeout=60, what="snapshot")
    for round_ in range(1, 4):
        sql(database, f"UPDATE t SET v = {round_} WHERE id % {round_ + 1} = 0")
        # What a failover, a restarted server or an admin does to the walsender.
        sql(ADMIN_DSN, f"SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'lw_{prefix}' AND active")
        sql(database, f"INSERT INTO t VALUES ({1000 + round_}, {round_})")
    wait_until(lambda: lake_equals_source(database, lake, "t"), timeout=90, what="lake == source after reconnects")
    assert worker.alive(), worker.output()[-2000:]
    assert "retrying in" in worker.output()
    assert worker.terminate() == 0


def test_idle_database_does_not_pin_wal(database, prefix, tmp_path, workers):
    """Only another database writes; the captured one is idle. Its slot must still advance."""
    sql(database, "CREATE TABLE t (id int PRIMARY KEY)")
    lake = tmp_path / "lake"
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=lake,
                       extra_source="    heartbeat_interval_s: 0.5\n")
    worker = workers(cfg, "--source", "shop").start()
    wait_until(lambda: slot_confirmed(f"lw_{prefix}") > 0, timeout=60, what="the slot")
    other = f"other_{prefix}"
    sql(ADMIN_DSN, f"CREATE TABLE {other} (id int, pad text)")
    try:
        sql(ADMIN_DSN, f"INSERT INTO {other} SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g")
        with psycopg.connect(ADMIN_DSN) as conn:
            written = int(conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])
        wait_until(lambda: slot_confirmed(f"lw_{prefix}") >= written or f"{written - slot_confirmed(f'lw_{prefix}')} bytes behind",
                   timeout=30, what="the idle slot to move past the other database's writes")
    finally:
        sql(ADMIN_DSN, f"DROP TABLE {other}")
    time.sleep(0.5)
    assert worker.terminate() == 0
