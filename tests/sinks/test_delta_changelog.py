"""Delta sink, mode changelog; resuming from the Delta log; commit fencing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lakeward.core.events import table_topic
from lakeward.sinks.delta.batch import Plan
from lakeward.sinks.delta.lake import LakeTable
from lakeward.sinks.delta.sink import DeltaSink
from tests.sinks.conftest import dele, ins, trunc, upd

pytestmark = pytest.mark.integration

COLS = [("id", "long"), ("small", "string"), ("big", "string")]


async def test_changelog_appends_every_event_with_its_metadata(lab):
    t = await lab.table("shop", "public", "docs", COLS, ["id"])
    pos = await lab.publish(t, [
        ins({"id": 1, "small": "a", "big": "B"}, ts_ms=1_700_000_000_000),
        upd({"id": 1, "small": "a2"}, ts_ms=1_700_000_001_000),  # big unchanged (TOAST)
        dele({"id": 1, "small": "a2", "big": "B"}),
        trunc(),
        ins({"id": 2, "small": "b", "big": None}),
    ])
    await lab.publish(t, [upd({"id": 2, "small": "REPEAT"}, pos=pos[4])])  # a repeat: dropped
    async with lab.sink(mode="changelog") as sink:
        await lab.until(lambda: len(lab.rows(t)) == 5, what="5 rows")
        await lab.until_committed(sink, 5)
        status = (await sink.status()).tables[0]
    rows = lab.rows(t, sort=("_lakeward_offset",))
    assert [(r["_lakeward_offset"], r["_lakeward_op"], r["id"], r["small"], r["big"], r["_lakeward_unchanged"]) for r in rows] == [
        (0, "c", 1, "a", "B", None),
        (1, "u", 1, "a2", None, ["big"]),
        (2, "d", 1, "a2", "B", None),
        (3, "t", None, None, None, None),
        (4, "c", 2, "b", None, None),
    ]
    assert [r["_lakeward_position"] for r in rows] == [p.hex() for p in pos]
    assert rows[1]["_lakeward_committed_at"] == datetime(2023, 11, 14, 22, 13, 21, tzinfo=UTC)
    txids = [r["_lakeward_txid"] for r in rows]
    assert txids[3] is None and all(isinstance(x, int) for x in txids[:3]) and txids[0] < txids[1] < txids[2]
    assert status.duplicates_dropped == 1 and status.committed_offset == 5


async def test_restart_resumes_from_the_delta_txn_without_duplicates(lab):
    t = await lab.table("shop", "public", "events", [("id", "long"), ("v", "string")], ["id"])
    await lab.publish(t, [ins({"id": i, "v": "x"}) for i in range(50)])
    async with lab.sink(mode="changelog", name="first", batch_rows=20):
        await lab.until(lambda: len(lab.rows(t)) == 50, what="50 rows")
    await lab.publish(t, [upd({"id": i, "v": "y"}) for i in range(30)])
    # Another consumer group: no Kafka offsets to fall back on; only the Delta txn says where to resume.
    async with lab.sink(mode="changelog", name="second") as sink:
        await lab.until(lambda: len(lab.rows(t)) >= 80, what="80 rows")
        await lab.publish(t, [dele({"id": 0})])
        await lab.until(lambda: len(lab.rows(t)) >= 81, what="81 rows")
        # it resumed at offset 50 (the txn + 1): nothing re-read, so nothing had to be dropped by position
        assert (await sink.status()).tables[0].duplicates_dropped == 0
    async with lab.sink(mode="changelog", name="third") as sink:  # nothing new: nothing written again
        await lab.until(lambda: [w.next_offset for w in sink._writers.values()] == [81], what="third sink caught up")
        status = (await sink.status()).tables[0]
    rows = lab.rows(t, sort=("_lakeward_offset",))
    assert [r["_lakeward_offset"] for r in rows] == list(range(81))
    # status of a sink that is not running: read from the lake and the broker
    await lab.publish(t, [ins({"id": 100, "v": "z"})])
    offline = await DeltaSink(lab.config(mode="changelog", name="third"), broker=lab.broker, lake=lab.lake).status()
    (table,) = offline.tables
    assert (offline.running, table.table, table.committed_offset, table.lag) == (False, "shop.public.events", 80, 1)
    assert table.last_position == rows[-1]["_lakeward_position"] and table.version == DeltaTable(lab.uri(t)).version()
    assert [r["_lakeward_op"] for r in rows] == ["c"] * 50 + ["u"] * 30 + ["d"]
    assert status.committed_offset == 80 and status.rows_applied == 0 and status.duplicates_dropped == 0


async def test_mirror_restart_with_new_events_and_kafka_offsets_for_monitoring(lab):
    t = await lab.table("shop", "public", "events", [("id", "long"), ("v", "string")], ["id"])
    await lab.publish(t, [ins({"id": i, "v": "x"}) for i in range(10)])
    async with lab.sink(name="same"):
        await lab.until_rows(t, [{"id": i, "v": "x"} for i in range(10)])
    await lab.publish(t, [upd({"id": i, "v": "y"}) for i in range(5)] + [dele({"id": 9})])
    async with lab.sink(name="same") as sink:
        await lab.until_rows(t, [{"id": i, "v": "y" if i < 5 else "x"} for i in range(9)])
        tp = next(iter(sink._writers))
        committed = None
        for _ in range(50):  # the Kafka offset is committed after the Delta commit, asynchronously
            committed = await sink._consumer.committed(tp)
            if committed == 16:
                break
            await asyncio.sleep(0.1)
    assert committed == 16


def test_a_stale_writer_is_fenced_by_the_delta_txn(tmp_path):
    """Two workers believe they own the partition: the one on the older snapshot must not apply."""
    uri = str(tmp_path / "t")
    topic = "p.shop.public.t"
    a = LakeTable(uri, {}, topic, 0, "shop.public.t", "s")
    b = LakeTable(uri, {}, topic, 0, "shop.public.t", "s")
    rows = pa.table({"id": pa.array([1], pa.int64()), "_lakeward_op": pa.array(["c"])})
    assert a.load().exists is False and b.load().exists is False
    res = a.commit(Plan("append", rows, events=1), expected=None, txn=4, position=b"\x01", first=0)
    assert res.ok and res.version == 0
    # b still thinks nothing was written: it must not write offsets 0..4 again
    res = b.commit(Plan("append", rows, events=1), expected=None, txn=4, position=b"\x01", first=0)
    assert not res.ok and res.txn == 4
    # both on the same snapshot: the second commit conflicts on the app transaction
    a.load(), b.load()
    assert a.commit(Plan("append", rows, events=1), expected=4, txn=9, position=b"\x02", first=5).ok
    res = b.commit(Plan("append", rows, events=1), expected=4, txn=9, position=b"\x02", first=5)
    assert not res.ok and res.txn == 9
    dt = DeltaTable(uri)
    assert dt.to_pyarrow_table().num_rows == 2
    assert dt.transaction_version(f"lakeward:{topic}:0") == 9
    state = LakeTable(uri, {}, topic, 0, "shop.public.t", "s").load()
    assert (state.txn, state.position) == (9, b"\x02")


def test_table_topics_pattern_selects_sources_and_tables():
    import re

    from lakeward.sinks.delta.sink import topic_pattern

    p = re.compile(topic_pattern("lw.x", ["shop", "crm"], ["public.*", "*.orders"]))
    assert [t for t in [
        "lw.x.shop.public.a", "lw.x.crm.public.b.c", "lw.x.shop.sales.orders", "lw.x.shop.sales.items", "lw.x.shop.__schemas",
        "lw.x.shop.__state.x", "lw.x.other.public.a", "lwAx.shop.public.a", "lw.x.shop.public", table_topic("lw.x", "shop", "public", "z"),
    ] if p.match(t)] == ["lw.x.shop.public.a", "lw.x.crm.public.b.c", "lw.x.shop.sales.orders", "lw.x.shop.public.z"]


async def test_stop_flushes_what_is_buffered(lab):
    t = await lab.table("shop", "public", "events", [("id", "long"), ("v", "string")], ["id"])
    await lab.publish(t, [ins({"id": i, "v": "x"}) for i in range(5)])
    async with lab.sink(mode="changelog", batch_interval_s=3600) as sink:
        await lab.until(lambda: [w.status().buffered_events for w in sink._writers.values()] == [5], what="5 buffered events")
        assert lab.rows(t) == []
    assert [r["_lakeward_offset"] for r in lab.rows(t)] == [0, 1, 2, 3, 4]


async def test_two_workers_share_the_tables_and_hand_them_over_exactly_once(lab):
    tables = [await lab.table("shop", "public", f"t{i}", [("id", "long"), ("v", "string")], ["id"]) for i in range(4)]
    sent = {t.table: 0 for t in tables}

    async def burst(n: int) -> None:
        for t in tables:
            await lab.publish(t, [ins({"id": sent[t.table] + i, "v": "x"}) for i in range(n)])
            sent[t.table] += n

    def all_written() -> bool:
        return all(len(lab.rows(t)) >= sent[t.table] for t in tables)

    await burst(20)
    async with lab.sink(mode="changelog", name="shared") as a:
        await lab.until(lambda: len(a._writers) == 4, what="worker a owns all tables")
        async with lab.sink(mode="changelog", name="shared") as b:
            await lab.until(lambda: len(b._writers) > 0 and len(a._writers) + len(b._writers) == 4, within_s=30, what="tables split")
            await burst(30)
            await lab.until(all_written, what="all rows")
        # b stopped: a takes its tables over and resumes from their Delta txns
        await lab.until(lambda: len(a._writers) == 4, within_s=30, what="worker a owns all tables again")
        await burst(25)
        await lab.until(all_written, what="all rows after the handover")
    for t in tables:
        assert [r["_lakeward_offset"] for r in lab.rows(t, sort=("_lakeward_offset",))] == list(range(75)), t.table


async def test_a_writer_that_finds_another_txn_in_the_table_resumes_after_it(lab):
    """Someone else (a zombie worker of the group) committed offsets 10..14: the sink's commit on its
    older snapshot must not land; it re-reads from offset 15 and never writes 10..14 itself."""
    t = await lab.table("shop", "public", "events", [("id", "long"), ("v", "string")], ["id"])
    await lab.publish(t, [ins({"id": i, "v": "x"}) for i in range(10)])
    async with lab.sink(mode="changelog", batch_interval_s=0.5) as sink:
        await lab.until(lambda: len(lab.rows(t)) == 10, what="10 rows")
        (w,) = sink._writers.values()
        zombie = LakeTable(lab.uri(t), {}, w.tp.topic, 0, "shop.public.events", "zombie")
        await asyncio.to_thread(zombie.load)
        rows = pa.table({"id": pa.array([-1], pa.int64()), "_lakeward_offset": pa.array([-1], pa.int64())})
        assert (await asyncio.to_thread(zombie.commit, Plan("append", rows, events=5), expected=9, txn=14, position=None, first=10)).ok
        await lab.publish(t, [ins({"id": i, "v": "y"}) for i in range(10, 20)])
        await lab.until(lambda: len(lab.rows(t)) == 16, what="16 rows")
        await lab.until_committed(sink, 19)
        assert (await sink.status()).tables[0].committed_offset == 19
    offsets = [r["_lakeward_offset"] for r in lab.rows(t, sort=("_lakeward_offset",))]
    assert offsets == [-1] + list(range(10)) + list(range(15, 20))


async def test_a_recreated_topic_behind_the_lake_stops_the_table(lab):
    """The Delta txn says offsets up to 5 were applied, the (recreated) topic holds only 2 events:
    seeking past its end would silently skip them."""
    t = await lab.table("shop", "public", "events", [("id", "long"), ("v", "string")], ["id"])
    await lab.publish(t, [ins({"id": i, "v": "x"}) for i in range(2)])
    uri = lab.uri(t)
    topic = table_topic(lab.prefix, "shop", "public", "events")
    rows = pa.table({"id": pa.array([-1], pa.int64()), "_lakeward_offset": pa.array([5], pa.int64())})
    assert LakeTable(uri, {}, topic, 0, "shop.public.events", "old").commit(Plan("append", rows, events=1), expected=None, txn=5,
                                                                             position=None, first=0).ok
    async with lab.sink(mode="changelog") as sink:
        await lab.until(lambda: any(w.error for w in sink._writers.values()), what="the table to stop")
        (status,) = (await sink.status()).tables
    assert "applied offsets up to 5" in status.error and "ends at 2" in status.error
    assert len(lab.rows(t)) == 1
