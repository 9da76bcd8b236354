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
        await lab.until_rows(late, [{"id": 7}], timeout=30)
        status = await sink.status()

    errors = {t["table"]: t["error"] for t in status["tables"]}
    assert errors["shop.public.customers"] is None and errors["shop.public.late"] is None
    assert "shop.public.orders" in errors["shop.public.orders"] and "'qty'" in errors["shop.public.orders"]
    types = {t["table"]: t["error_type"] for t in status["tables"]}
    assert types == {"shop.public.customers": None, "shop.public.late": None, "shop.public.orders": "SchemaChangeError",
                     "shop.public.x": "TerminalError", "shop.public.bad": "PoisonEventError"}
    assert errors["shop.public.x"] == ("table shop.public.x has no primary key; mirror mode needs one: add a primary key, "
                                       "or use mode: changelog")
    bad_topic = table_topic(lab.prefix, "shop", "public", "bad")
    assert f"topic {bad_topic} partition 0 offset 1" in errors["shop.public.bad"]
    assert sorted(status["stopped_tables"]) == ["shop.public.bad", "shop.public.orders", "shop.public.x"]
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
    (table,) = status["tables"]
    # the first bad value in offset order, although another column fails first
    assert "partition 0 offset 1: column 'qty' value 'two' is not a valid integer" in table["error"]
    assert lab.data(t, ("id",)) == [{"id": 1}]  # the events before it are written
    assert table["committed_offset"] == 0
