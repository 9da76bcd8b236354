"""Delta sink: schema evolution, and tables that must stop (while the others keep flowing)."""

from __future__ import annotations

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lakeward.core.events import table_topic
from tests.sinks.conftest import dele, ins, upd

pytestmark = pytest.mark.integration


async def test_added_column_appears_and_dropped_column_stays(lab):
    v1 = await lab.table("shop", "public", "users", [("id", "long"), ("a", "string")], ["id"])
    await lab.publish(v1, [ins({"id": 1, "a": "x"}), ins({"id": 4, "a": "untouched"})])
    async with lab.sink():
        await lab.until_rows(v1, [{"id": 1, "a": "x"}, {"id": 4, "a": "untouched"}])
        v2 = await lab.table("shop", "public", "users", [("id", "long"), ("a", "string"), ("b", "long")], ["id"])
        await lab.publish(v2, [ins({"id": 2, "a": "y", "b": 2}), upd({"id": 1, "a": "x2", "b": 1})])
        await lab.until_rows(v1, [{"id": 1, "a": "x2", "b": 1}, {"id": 2, "a": "y", "b": 2}, {"id": 4, "a": "untouched", "b": None}])
        v3 = await lab.table("shop", "public", "users", [("id", "long"), ("b", "long")], ["id"])
        await lab.publish(v3, [ins({"id": 3, "b": 3}), upd({"id": 2, "b": 20})])
        await lab.until_rows(v1, [{"id": 1, "a": "x2", "b": 1}, {"id": 2, "a": None, "b": 20}, {"id": 3, "a": None, "b": 3},
                                  {"id": 4, "a": "untouched", "b": None}])
    schema = pa.schema(DeltaTable(lab.uri(v1)).schema().to_arrow())
    assert [f.name for f in schema] == ["id", "a", "_lakeward_op", "_lakeward_position", "_lakeward_committed_at", "b"]
    assert schema.field("b").type == pa.int64()


async def test_added_column_within_one_batch_and_in_changelog_mode(lab):
    v1 = await lab.table("shop", "public", "users", [("id", "long"), ("a", "string")], ["id"])
    v2 = await lab.table("shop", "public", "users", [("id", "long"), ("a", "string"), ("tags", "array<string>")], ["id"])
    await lab.publish(v1, [ins({"id": 1, "a": "x"})])
    await lab.publish(v2, [ins({"id": 2, "a": "y", "tags": ["p", None]}), dele({"id": 1, "a": "x", "tags": None})])
    async with lab.sink(mode="changelog"):
        await lab.until(lambda: len(lab.rows(v1)) == 3, what="3 changelog rows")
    rows = lab.data(v1, ("id", "a", "tags", "_lakeward_op"))
    assert rows == [{"id": 1, "a": "x", "tags": None, "_lakeward_op": "c"}, {"id": 1, "a": "x", "tags": None, "_lakeward_op": "d"},
                    {"id": 2, "a": "y", "tags": ["p", None], "_lakeward_op": "c"}]


async def test_broken_tables_stop_alone_and_the_others_keep_flowing(lab):
    good = await lab.table("shop", "public", "customers", [("id", "long"), ("n", "string")], ["id"])
    orders = await lab.table("shop", "public", "orders", [("id", "long"), ("qty", "integer")], ["id"])
    nopk = await lab.table("shop", "public", "x", [("v", "string")], [])
    bad = await lab.table("shop", "public", "bad", [("id", "long"), ("n", "integer")], ["id"])
    await lab.publish(good, [ins({"id": 1, "n": "a"})])
    await lab.publish(orders, [ins({"id": 1, "qty": 1}), ins({"id": 2, "qty": 2})])
    await lab.publish(nopk, [ins({"v": "no key"})])
    await lab.publish(bad, [ins({"id": 1, "n": 1}), {"op": "c", "before": None, "after": {"id": 2}, "raw": b"{not json"},
                            ins({"id": 3, "n": 3})])
    async with lab.sink() as sink:
        await lab.until_rows(good, [{"id": 1, "n": "a"}])
        await lab.until_rows(orders, [{"id": 1, "qty": 1}, {"id": 2, "qty": 2}])
        await lab.until_rows(bad, [{"id": 1, "n": 1}])  # the events before the undecodable one
        # qty becomes a string: Delta can't store that in the integer column
        orders2 = await lab.table("shop", "public", "orders", [("id", "long"), ("qty", "string")], ["id"])
        await lab.publish(orders2, [ins({"id": 3, "qty": "three"})])
        await lab.publish(orders, [ins({"id": 4, "qty": 4})])  # after the bad event: must not be applied either
        await lab.until(lambda: len([t for t in sink._writers.values() if t.error]) == 3, what="three stopped tables")
        # the good table keeps flowing, also a table whose topic appears now (pattern subscription)
        await lab.publish(good, [upd({"id": 1, "n": "a2"}), ins({"id": 2, "n": "b"})])
        late = await lab.table("shop", "public", "late", [("id", "long")], ["id"])
        await lab.publish(late, [ins({"id": 7})])
        await lab.until_rows(good, [{"id": 1, "n": "a2"}, {"id": 2, "n": "b"}])
        await lab.until_rows(late, [{"id": 7}], within_s=30)
        status = await sink.status()

    errors = {t.table: t.error for t in status.tables}
    assert errors["shop.public.customers"] is None and errors["shop.public.late"] is None
    assert "shop.public.orders" in errors["shop.public.orders"] and "'qty'" in errors["shop.public.orders"]
    types = {t.table: t.error_type for t in status.tables}
    assert types == {"shop.public.customers": None, "shop.public.late": None, "shop.public.orders": "SchemaChangeError",
                     "shop.public.x": "TerminalError", "shop.public.bad": "PoisonEventError"}
    assert errors["shop.public.x"] == ("table shop.public.x has no primary key; mirror mode needs one: add a primary key, "
                                       "or use mode: changelog")
    bad_topic = table_topic(lab.prefix, "shop", "public", "bad")
    assert f"topic {bad_topic} partition 0 offset 1" in errors["shop.public.bad"]
    assert sorted(status.stopped_tables) == ["shop.public.bad", "shop.public.orders", "shop.public.x"]
    # nothing after the stop point was written; the txn points right before the offending event
    assert lab.data(orders) == [{"id": 1, "qty": 1}, {"id": 2, "qty": 2}]
    assert DeltaTable(lab.uri(orders)).transaction_version(f"lakeward:{table_topic(lab.prefix, 'shop', 'public', 'orders')}:0") == 1
    assert DeltaTable(lab.uri(bad)).transaction_version(f"lakeward:{bad_topic}:0") == 0
    assert lab.rows(nopk) == []

    # a restarted sink stops at the same place again (the error is not skipped silently)
    async with lab.sink() as sink:
        await lab.until(lambda: len([t for t in sink._writers.values() if t.error]) == 3, what="stopped again")
    assert lab.data(orders) == [{"id": 1, "qty": 1}, {"id": 2, "qty": 2}]
    assert lab.data(bad) == [{"id": 1, "n": 1}]


async def test_value_that_does_not_convert_stops_the_table_at_its_offset(lab):
    t = await lab.table("shop", "public", "orders", [("id", "long"), ("amount", "decimal(5,2)"), ("qty", "integer")], ["id"])
    await lab.publish(t, [ins({"id": 1, "amount": "1.00", "qty": 1}), ins({"id": 2, "amount": "2.00", "qty": "two"}),
                          ins({"id": 3, "amount": "not a number", "qty": 3}), ins({"id": 4, "amount": "4.00", "qty": 4})])
    async with lab.sink(mode="changelog") as sink:
        await lab.until(lambda: any(w.error for w in sink._writers.values()), what="the table to stop")
        status = await sink.status()
    (table,) = status.tables
    # the first bad value in offset order, although another column fails first
    assert "partition 0 offset 1: column 'qty' value 'two' is not a valid integer" in table.error
    assert lab.data(t, ("id",)) == [{"id": 1}]  # the events before it are written
    assert table.committed_offset == 0


@pytest.mark.parametrize("mode", ["mirror", "changelog"])
async def test_timestamp_ntz_columns_added_by_schema_evolution_keep_the_table_readable(lab, mode):
    """ALTER TABLE ... ADD COLUMN x timestamp (and timestamp[]): on an existing table and on a new one,
    with several flushes after it, readable by delta-rs and DuckDB, protocol with timestampNtz."""
    import datetime as dt

    import duckdb

    v1 = await lab.table("shop", "public", "old", [("id", "long"), ("a", "string")], ["id"])
    fresh = await lab.table("shop", "public", "fresh", [("id", "long"), ("x", "timestamp_ntz")], ["id"])
    await lab.publish(v1, [ins({"id": 1, "a": "x"})])
    await lab.publish(fresh, [ins({"id": 1, "x": "2024-01-31 12:00:00"})])
    cols = ("id", "a", "x", "xs") if mode == "mirror" else ("id", "a", "x", "xs", "_lakeward_op")
    async with lab.sink(mode=mode):
        await lab.until(lambda: len(lab.rows(v1)) == 1, what="first row")
        v2 = await lab.table("shop", "public", "old", [("id", "long"), ("a", "string"), ("x", "timestamp_ntz"),
                                                       ("xs", "array<timestamp_ntz>")], ["id"])
        for i in range(2, 5):  # one flush each
            await lab.publish(v2, [ins({"id": i, "a": f"r{i}", "x": f"2024-02-0{i} 10:00:00.25", "xs": [f"2024-03-0{i} 00:00:00", None]}),
                                   upd({"id": 1, "a": f"x{i}", "x": None, "xs": []})])
            await lab.until(lambda i=i: any(r["id"] == i for r in lab.rows(v1)), what=f"row {i}")
        await lab.publish(fresh, [ins({"id": 2, "x": "2024-02-01 00:00:00"}), dele({"id": 1, "x": None})])
        if mode == "mirror":
            want = [{"id": 1, "a": "x4", "x": None, "xs": []}] + [
                {"id": i, "a": f"r{i}", "x": dt.datetime(2024, 2, i, 10, 0, 0, 250000), "xs": [dt.datetime(2024, 3, i), None]} for i in range(2, 5)]
            await lab.until_rows(v1, want, cols=cols)
            await lab.until_rows(fresh, [{"id": 2, "x": dt.datetime(2024, 2, 1)}])
        else:
            await lab.until(lambda: len(lab.rows(v1)) == 7 and len(lab.rows(fresh)) == 3, what="changelog rows")
    for ts in (v1, fresh):
        p = DeltaTable(lab.uri(ts)).protocol()
        assert (p.min_reader_version, p.min_writer_version) == (3, 7)
        assert "timestampNtz" in (p.reader_features or []) and "timestampNtz" in (p.writer_features or [])
    rows = DeltaTable(lab.uri(v1)).to_pyarrow_table().to_pylist()
    assert len(rows) == (4 if mode == "mirror" else 7)
    assert sorted(r["x"] for r in rows if r["x"] is not None) == [dt.datetime(2024, 2, i, 10, 0, 0, 250000) for i in range(2, 5)]
    con = duckdb.connect()
    con.register("t", DeltaTable(lab.uri(v1)).to_pyarrow_dataset())
    got = con.sql("SELECT id, x, xs FROM t ORDER BY id, x NULLS FIRST").fetchall()
    assert [g for g in got if g[0] == 3] == [(3, dt.datetime(2024, 2, 3, 10, 0, 0, 250000), [dt.datetime(2024, 3, 3), None])]
