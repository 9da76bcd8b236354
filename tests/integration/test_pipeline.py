"""End to end through `lakeward run`: PostgreSQL -> Kafka -> Delta, compared row by row with the source."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from .harness import sql, wait_until, write_config
from .lakecheck import lake_equals_source, lake_rows, lake_table

pytestmark = pytest.mark.integration


def random_text(n: int = 16000) -> str:
    # Incompressible, so PostgreSQL moves it out of line (TOAST).
    return "".join(uuid.uuid4().hex for _ in range(n // 32))


def test_mirror_follows_every_kind_of_change(database, prefix, tmp_path, workers):
    sql(database,
        "CREATE TABLE orders (id int PRIMARY KEY, customer text, amount numeric(12,2), paid boolean, "
        "created_at timestamptz DEFAULT now(), note text)",
        "INSERT INTO orders (id, customer, amount, paid) SELECT g, 'c' || g, g * 1.25, g % 2 = 0 FROM generate_series(1, 500) g")
    lake = tmp_path / "lake"
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=lake)
    worker = workers(cfg).start()
    wait_until(lambda: lake_equals_source(database, lake, "orders"), timeout=60, what="the snapshot to land")

    note = random_text()
    sql(database,
        "INSERT INTO orders (id, customer, amount, paid, note) VALUES (1000, 'big', 9.99, false, %s)",
        params=(note,))
    sql(database,
        "UPDATE orders SET amount = amount + 1 WHERE id <= 100",
        "UPDATE orders SET paid = true WHERE id = 1000",         # `note` unchanged and TOASTed
        "UPDATE orders SET id = 5000 WHERE id = 7",             # primary-key change
        "DELETE FROM orders WHERE id BETWEEN 200 AND 250",
        "BEGIN; INSERT INTO orders (id, customer) VALUES (6000, 'x'); DELETE FROM orders WHERE id = 6000; COMMIT")
    wait_until(lambda: lake_equals_source(database, lake, "orders"), timeout=60, what="updates, deletes, pk change")
    assert next(r for r in lake_rows(lake, "orders") if r["id"] == 1000)["note"] == note, "the TOASTed value must survive"

    sql(database, "ALTER TABLE orders ADD COLUMN channel text", "UPDATE orders SET channel = 'web' WHERE id <= 10",
        "INSERT INTO orders (id, customer, channel) VALUES (7000, 'new', 'app')")
    wait_until(lambda: lake_equals_source(database, lake, "orders"), timeout=60, what="an added column")

    sql(database, "ALTER TABLE orders DROP COLUMN paid", "INSERT INTO orders (id, customer) VALUES (7001, 'after drop')")
    wait_until(lambda: lake_equals_source(database, lake, "orders", dropped=("paid",)), timeout=60, what="a dropped column")
    rows = {r["id"]: r for r in lake_rows(lake, "orders")}
    assert rows[7001]["paid"] is None and rows[2]["paid"] is True, "a dropped column stays, null for new rows"

    sql(database, "TRUNCATE orders", "INSERT INTO orders (id, customer) VALUES (1, 'after truncate')")
    wait_until(lambda: lake_equals_source(database, lake, "orders", dropped=("paid",)), timeout=60, what="truncate")

    assert worker.terminate() == 0, worker.output()
    meta = lake_rows(lake, "orders", metadata=True)
    assert set(meta[0]) >= {"_lakeward_op", "_lakeward_position", "_lakeward_committed_at"}


def test_changelog_appends_every_event_once(database, prefix, tmp_path, workers):
    sql(database, "CREATE TABLE t (id int PRIMARY KEY, v int)", "INSERT INTO t VALUES (1, 1), (2, 2)")
    lake = tmp_path / "lake"
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=lake, mode="changelog")
    worker = workers(cfg).start()
    wait_until(lambda: lake_table(lake, "t") is not None, timeout=60, what="the changelog table")
    sql(database, "UPDATE t SET v = 10 WHERE id = 1", "DELETE FROM t WHERE id = 2", "INSERT INTO t VALUES (3, 3)")

    def ops():
        rows = lake_rows(lake, "t", key="_lakeward_position", metadata=True)
        return [r["_lakeward_op"] for r in rows] if rows else []

    wait_until(lambda: len(ops()) >= 6 or str(ops()), timeout=60, what="all events in the changelog")
    assert ops() == ["t", "r", "r", "u", "d", "c"]
    assert worker.terminate() == 0


def test_table_without_primary_key(database, prefix, tmp_path, workers):
    """Changelog works for it; mirror stops that table with an error saying why, other tables flow."""
    sql(database, "CREATE TABLE keyless (a int, b text)", "INSERT INTO keyless VALUES (1, 'x')",
        "CREATE TABLE keyed (id int PRIMARY KEY)", "INSERT INTO keyed VALUES (1)")
    lake = tmp_path / "lake"
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=lake)
    worker = workers(cfg).start()
    wait_until(lambda: lake_equals_source(database, lake, "keyed"), timeout=60, what="the keyed table")
    wait_until(lambda: "no primary key" in worker.output(), timeout=30, what="the keyless table's error")
    assert "public.keyless has no primary key; mirror mode needs one" in worker.output()
    assert lake_table(lake, "keyless") is None
    worker.terminate()


def test_one_million_row_transaction(database, prefix, tmp_path, workers):
    sql(database, "CREATE TABLE big (id bigint PRIMARY KEY, v int, s text)")
    lake = tmp_path / "lake"
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=lake)
    worker = workers(cfg).start()
    wait_until(lambda: lake_table(lake, "big") is not None, timeout=60, what="the empty table")
    sql(database, "INSERT INTO big SELECT g, g % 1000, md5(g::text) FROM generate_series(1, 1000000) g")

    def checksum_matches():
        dt = lake_table(lake, "big")
        n = dt.to_pyarrow_dataset().count_rows() if dt else 0
        return n == 1_000_000 or f"{n} rows in the lake"

    wait_until(checksum_matches, timeout=300, what="1M rows", interval=2)
    wait_until(lambda: lake_equals_source(database, lake, "big"), timeout=60, what="every row and column")
    assert worker.terminate() == 0


def test_replay_rebuilds_the_mirror(database, prefix, tmp_path, workers):
    sql(database, "CREATE TABLE t (id int PRIMARY KEY, v text)", "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 300) g")
    lake = tmp_path / "lake"
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=lake)
    worker = workers(cfg).start()
    wait_until(lambda: lake_equals_source(database, lake, "t"), timeout=60, what="snapshot")
    sql(database, "UPDATE t SET v = 'changed' WHERE id % 3 = 0", "DELETE FROM t WHERE id % 5 = 0")
    wait_until(lambda: lake_equals_source(database, lake, "t"), timeout=60, what="changes")
    assert worker.terminate() == 0
    before = lake_rows(lake, "t")
    version_before = lake_table(lake, "t").version()

    out = subprocess.run([sys.executable, "-m", "lakeward.app.cli", "-c", str(cfg), "replay", "--sink", "lake", "--from-beginning"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert lake_rows(lake, "t") == before
    assert lake_equals_source(database, lake, "t") is True
    assert lake_table(lake, "t").version() < version_before, "replay must write a fresh table"
