"""Primary-key changes of rows with out-of-line (TOASTed) values, end to end through `lakeward run`.

With REPLICA IDENTITY DEFAULT, PostgreSQL does not send an unchanged TOASTed value again when the key
changes (pgoutput `u`): the source emits d(old key) + c(new key) without the column, and the sink must
take the value stored under the old key — from the same batch or from the lake — never NULL.
"""

from __future__ import annotations

import psycopg
import pytest

from .harness import sql, wait_until, write_config
from .lakecheck import compare, lake_equals_source, lake_rows, lake_table, source_rows

pytestmark = pytest.mark.integration

# Random text does not compress: ~22 kB stored out of line, in the TOAST table.
BIG = "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 700))"


def assert_out_of_line(dsn: str, table: str, column: str) -> None:
    with psycopg.connect(dsn) as conn:
        n, stored = conn.execute(f"SELECT count(*), min(pg_column_size({column})) FROM {table} WHERE {column} IS NOT NULL").fetchone()
        toast = conn.execute(f"SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = '{table}'::regclass").fetchone()[0]
        chunks = conn.execute(f"SELECT count(*) FROM {toast}").fetchone()[0]
    assert n and stored > 8000 and chunks > 0, f"{table}.{column} is not stored out of line ({n} rows, {stored} B, {chunks} chunks)"


KEY_CHANGES = [
    "UPDATE docs SET id = 100 WHERE id = 1",                                            # old key only in the lake
    "BEGIN; UPDATE docs SET id = 200 WHERE id = 2; UPDATE docs SET id = 300 WHERE id = 200; COMMIT",  # a chain 2->200->300
    "BEGIN; UPDATE docs SET id = 400 WHERE id = 3; UPDATE docs SET small = 'after' WHERE id = 400; COMMIT",  # then an update
    f"BEGIN; INSERT INTO docs VALUES (9, 's9', {BIG}, {BIG}); UPDATE docs SET id = 900 WHERE id = 9; COMMIT",  # row new in the batch
    "BEGIN; UPDATE docs SET small = 'u4' WHERE id = 4; UPDATE docs SET id = 500 WHERE id = 4; COMMIT",  # updated, then moved
    "UPDATE docs SET id = id + 1000 WHERE id IN (5, 7, 8)",                              # several rows in one statement
]


def _docs(dsn: str, identity: str = "DEFAULT") -> None:
    sql(dsn, "CREATE TABLE docs (id int PRIMARY KEY, small text, big text, big2 text)",
        f"ALTER TABLE docs REPLICA IDENTITY {identity}",
        f"INSERT INTO docs SELECT g, 's' || g, {BIG}, CASE WHEN g % 2 = 0 THEN {BIG} END FROM generate_series(1, 8) g")
    assert_out_of_line(dsn, "docs", "big")


def _no_nulls(lake, table: str, columns: tuple[str, ...], key: str = "id") -> None:
    for r in lake_rows(lake, table, key):
        for c in columns:
            assert r[c] is not None, f"{table}: row {r[key]} lost {c}"


@pytest.mark.parametrize("batch", ["interval", "one_event_per_batch"])
def test_key_change_keeps_unchanged_toasted_values(database, prefix, tmp_path, workers, batch):
    """Every key change lands with its TOASTed values: from the lake (old key committed earlier), from
    the same batch (chains, rows inserted in it), and with batches of one event, which must not cut
    between the `d` and the `c` of a key change."""
    _docs(database)
    lake = tmp_path / "lake"
    extra = "    batch_rows: 1\n" if batch == "one_event_per_batch" else ""
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=lake, extra_sink=extra)
    worker = workers(cfg).start()
    wait_until(lambda: lake_equals_source(database, lake, "docs"), timeout=90, what="the snapshot")
    for statement in KEY_CHANGES:
        sql(database, statement)
    wait_until(lambda: lake_equals_source(database, lake, "docs"), timeout=90, what="the key changes")
    _no_nulls(lake, "docs", ("big",))
    assert {r["id"] for r in lake_rows(lake, "docs")} == {100, 300, 400, 500, 6, 900, 1005, 1007, 1008}
    assert worker.alive(), worker.output()
    assert worker.terminate() == 0, worker.output()


def test_key_change_composite_key_and_replica_identity_full(database, prefix, tmp_path, workers):
    """Composite keys (one part changes, or both) with several TOASTed columns; and REPLICA IDENTITY FULL,
    where the old tuple carries the values itself."""
    sql(database,
        "CREATE TABLE pairs (a int, b text, doc text, doc2 text, n int, PRIMARY KEY (a, b))",
        f"INSERT INTO pairs SELECT g, 'k' || g, {BIG}, {BIG}, g FROM generate_series(1, 6) g")
    assert_out_of_line(database, "pairs", "doc2")
    _docs(database, "FULL")
    lake = tmp_path / "lake"
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=lake)
    worker = workers(cfg).start()

    def both_equal():
        return lake_equals_source(database, lake, "docs") is True and compare(
            "pairs", lake_rows(lake, "pairs", key="a"), source_rows(database, "pairs", key="a"))

    wait_until(both_equal, timeout=90, what="the snapshots")
    sql(database,
        "UPDATE pairs SET a = 10 WHERE a = 1",                        # one part of the key
        "UPDATE pairs SET a = 20, b = 'new' WHERE a = 2",             # both parts
        "BEGIN; UPDATE pairs SET b = 'x' WHERE a = 3; UPDATE pairs SET a = 30 WHERE a = 3; UPDATE pairs SET n = -3 WHERE a = 30; COMMIT",
        "UPDATE pairs SET b = 'y', doc2 = 'replaced' WHERE a = 4",    # one TOASTed column changes, the other not
        *KEY_CHANGES)
    wait_until(both_equal, timeout=90, what="the key changes")
    _no_nulls(lake, "docs", ("big",))
    _no_nulls(lake, "pairs", ("doc", "doc2"), key="a")
    assert worker.terminate() == 0, worker.output()


def test_key_change_in_changelog_mode(database, prefix, tmp_path, workers):
    """The changelog holds the events as they are: the `c` of a key change lists the unchanged columns in
    _lakeward_unchanged (their value is the old key's), right after the `d` of the old key."""
    _docs(database)
    lake = tmp_path / "lake"
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=lake, mode="changelog")
    worker = workers(cfg).start()
    wait_until(lambda: lake_table(lake, "docs") is not None, timeout=90, what="the changelog table")
    sql(database, "UPDATE docs SET id = 100 WHERE id = 2")

    def rows():
        return lake_rows(lake, "docs", key="_lakeward_position", metadata=True) or []

    wait_until(lambda: len(rows()) >= 11 or f"{len(rows())} rows", timeout=60, what="the key change in the changelog")
    d, c = rows()[-2:]
    assert (d["_lakeward_op"], d["id"], c["_lakeward_op"], c["id"]) == ("d", 2, "c", 100)
    assert c["small"] == "s2" and c["big"] is None and c["big2"] is None
    assert c["_lakeward_unchanged"] == ["big", "big2"]
    snapshot = next(r for r in rows() if r["_lakeward_op"] == "r" and r["id"] == 2)
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT big FROM docs WHERE id = 100").fetchone()[0] == snapshot["big"]
    assert worker.terminate() == 0, worker.output()


def test_key_change_whose_value_is_nowhere_stops_the_table(database, prefix, tmp_path, workers):
    """`snapshot: never`: the lake never had the row, so the moved row's TOASTed value is not there.
    The table stops with an error naming it and the column; no NULL is written, other tables go on."""
    _docs(database)
    sql(database, "CREATE TABLE other (id int PRIMARY KEY, v text)")
    lake = tmp_path / "lake"
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=lake, extra_source="    snapshot: never\n")
    worker = workers(cfg).start()
    wait_until(lambda: "streaming from" in worker.output(), timeout=60, what="the source to stream")
    sql(database, "INSERT INTO docs VALUES (50, 'fifty', 'small enough', NULL)", "UPDATE docs SET id = 101 WHERE id = 1",
        "INSERT INTO other VALUES (1, 'flows')")
    wait_until(lambda: "stopped this table rather than write NULL" in worker.output(), timeout=60, what="the error")
    out = worker.output()
    assert "table shop.public.docs: the primary key changed from {\"id\":1} to {\"id\":101}" in out
    assert "column(s) 'big'" in out and "not in the batch, nor in the lake under the old key" in out
    wait_until(lambda: lake_equals_source(database, lake, "other"), timeout=60, what="the other table")
    rows = lake_rows(lake, "docs")
    assert rows is None or all(r["big"] is not None for r in rows), rows
    worker.terminate()


def test_replica_identity_using_index_keys_the_mirror(database, prefix, tmp_path, workers):
    """REPLICA IDENTITY USING INDEX on a unique index without the primary key: deletes carry only the
    index's columns, and a primary-key change sends no old tuple. The index keys the events and the
    mirror, also when the identity is switched while the table is captured."""
    sql(database,
        "CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL, note text)",
        "CREATE UNIQUE INDEX accounts_email ON accounts (email)",
        "INSERT INTO accounts SELECT g, 'a' || g || '@x', 'n' || g FROM generate_series(1, 6) g",
        "CREATE TABLE handles (id int PRIMARY KEY, handle text NOT NULL, note text)",
        "CREATE UNIQUE INDEX handles_handle ON handles (handle)",
        "ALTER TABLE handles REPLICA IDENTITY USING INDEX handles_handle",
        "INSERT INTO handles SELECT g, 'h' || g, 'n' || g FROM generate_series(1, 6) g")
    lake = tmp_path / "lake"
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=lake)
    worker = workers(cfg).start()

    def equal(table: str) -> bool:
        return compare(table, lake_rows(lake, table, key="id"), source_rows(database, table, key="id")) is True

    wait_until(lambda: equal("accounts") and equal("handles"), timeout=90, what="the snapshots")
    changes = [
        "UPDATE {t} SET note = 'changed' WHERE id = 1",          # no old tuple: the index did not change
        "UPDATE {t} SET id = 100 WHERE id = 2",                  # primary-key change, index unchanged: no old tuple
        "UPDATE {t} SET {c} = {c} || '-moved' WHERE id = 3",     # the index changes: old tuple = old index value
        "DELETE FROM {t} WHERE id = 4",                          # old tuple = index value only
        "UPDATE {t} SET id = 500, {c} = 'fresh' WHERE id = 5",   # both
    ]
    sql(database, "ALTER TABLE accounts REPLICA IDENTITY USING INDEX accounts_email")
    for statement in changes:
        sql(database, statement.format(t="accounts", c="email"), statement.format(t="handles", c="handle"))
    wait_until(lambda: equal("accounts") and equal("handles"), timeout=90, what="the changes under the index identity")
    assert {r["id"] for r in lake_rows(lake, "handles", key="id")} == {1, 100, 3, 500, 6}
    assert worker.alive(), worker.output()
    assert worker.terminate() == 0, worker.output()
