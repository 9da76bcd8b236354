"""The pure parts of PostgreSQL incremental snapshots: snapshot visibility, the xid ring, key removal, chunk SQL."""

from __future__ import annotations

import struct

import psycopg
import pytest

from lakeward.connectors.postgres import pgoutput
from lakeward.connectors.postgres.incremental import (
    Chunk,
    PgSnapshot,
    XidRing,
    chunk_query,
    job_failed,
    last_key_query,
    unsupported_reason,
    widen_xid,
)
from lakeward.connectors.postgres.source import _SnapshotState
from lakeward.core.snapshot import IncrementalJob

EPOCH = 3 << 32  # 64-bit xids of a cluster that wrapped its 32-bit xids three times


def test_snapshot_parse():
    s = PgSnapshot.parse("100:110:102,105")
    assert (s.xmin, s.xmax, s.xip) == (100, 110, frozenset({102, 105}))
    assert PgSnapshot.parse("7:7:").xip == frozenset()


def test_visibility_of_32_bit_xids():
    s = PgSnapshot.parse("100:110:102,105")
    assert s.visible(99) and s.visible(100) and s.visible(101) and s.visible(109)
    assert not s.visible(102) and not s.visible(105)  # in progress
    assert not s.visible(110) and not s.visible(200)  # started after the snapshot


def test_visibility_across_an_epoch():
    # xmax just past a 32-bit wrap: pgoutput's xid 0xFFFFFFF0 is of the previous epoch (visible), 5 of this one.
    xmin, xmax = EPOCH - 0x20, EPOCH + 10
    s = PgSnapshot(xmin, xmax, frozenset({EPOCH + 3}))
    assert s.visible(0xFFFFFFF0)  # EPOCH - 16: committed before the snapshot
    assert s.visible(5)
    assert not s.visible(3)  # in xip, matched on its 64-bit value
    assert not s.visible(10) and not s.visible(11)
    assert s.visible(0xFFFFFFD0)  # below xmin
    assert widen_xid(0xFFFFFFF0, xmax) == EPOCH - 16 and widen_xid(5, xmax) == EPOCH + 5
    assert widen_xid(5, EPOCH - 3) == EPOCH + 5  # the reference before the wrap, the xid after it


def test_ring_remembers_delivery_order_and_forgets_the_oldest():
    ring = XidRing(size=3)
    for xid in (10, 11, 12):
        ring.add(xid)
    mark = ring.count
    ring.add(13)
    assert ring.delivered(11, mark) and ring.delivered(12, mark)
    assert not ring.delivered(13, mark)  # delivered after the mark
    assert not ring.delivered(10, mark)  # evicted
    assert ring.delivered(EPOCH + 12, mark)  # xip values are 64-bit


def test_ring_keeps_a_readded_xid():
    ring = XidRing(size=2)
    ring.add(1)
    ring.add(2)
    ring.add(1)  # the same 32-bit xid again (a replay after reconnect)
    ring.add(3)  # evicts the first (1) entry only
    assert ring.delivered(1, ring.count) and ring.delivered(3, ring.count) and not ring.delivered(2, ring.count)


def _chunk(ring: XidRing) -> Chunk:
    return Chunk(IncrementalJob("r1", "public.t"), "nonce", ring.count)


def test_key_removal_before_and_after_the_snapshot_is_known():
    ring = XidRing()
    ring.add(90)
    c = _chunk(ring)
    c.changed(101, b'{"id":1}')  # visible: the chunk holds its effect
    c.changed(102, b'{"id":2}')  # in progress at the snapshot: the streamed event is newer
    c.set_snapshot(PgSnapshot.parse("100:110:102"), ring)
    assert c.retry is None and c.removed == {b'{"id":2}'}
    c.changed(111, b'{"id":3}')  # started after the snapshot
    c.changed(99, b'{"id":4}')
    c.rows = [(b'{"id":%d}' % i, {"id": i}) for i in range(1, 6)]
    assert [r["id"] for _, r in c.publishable()] == [1, 4, 5]


def test_retry_when_an_in_progress_xid_was_streamed_before_the_chunk():
    ring = XidRing()
    ring.add(102)  # its commit was decoded, yet the snapshot still counts it in progress
    c = _chunk(ring)
    c.set_snapshot(PgSnapshot.parse("100:110:102"), ring)
    assert c.retry and "102" in c.retry
    ok = _chunk(ring)
    ring.add(105)  # streamed after the chunk started: its changes are noted instead
    ok.set_snapshot(PgSnapshot.parse("100:110:105"), ring)
    assert ok.retry is None


def test_chunk_query_single_key_first_chunk_with_where():
    sql = chunk_query("public", "Items", ["id", "v"], ["id"], ["bigint"], after=False, where="v % 10 = 0 -- hot", limit=500)
    assert sql == 'SELECT "id", "v" FROM "public"."Items" WHERE (v %% 10 = 0 -- hot\n) ORDER BY "id" LIMIT 500'


def test_chunk_query_composite_key_after():
    sql = chunk_query("s", "t", ["region", "n", "x"], ["region", "n"], ["text", "integer"], after=True, where=None, limit=100)
    assert sql == 'SELECT "region", "n", "x" FROM "s"."t" WHERE ("region", "n") > (CAST(%s AS text), CAST(%s AS integer)) ORDER BY "region", "n" LIMIT 100'


def test_chunk_query_stops_at_the_jobs_last_key():
    sql = chunk_query("s", "t", ["region", "n"], ["region", "n"], ["text", "integer"], after=True, until=True, where="n > 0", limit=10)
    assert sql == ('SELECT "region", "n" FROM "s"."t" WHERE ("region", "n") > (CAST(%s AS text), CAST(%s AS integer)) '
                   'AND ("region", "n") <= (CAST(%s AS text), CAST(%s AS integer)) AND (n > 0\n) ORDER BY "region", "n" LIMIT 10')
    assert last_key_query("s", "t", ["region", "n"], where="n % 2 = 0") == \
        'SELECT CAST("region" AS text) AS key_0, CAST("n" AS text) AS key_1 FROM "s"."t" WHERE (n %% 2 = 0\n) ORDER BY "region" DESC, "n" DESC LIMIT 1'


def test_which_read_errors_stop_a_job():
    assert job_failed(psycopg.errors.UndefinedColumn("column nope does not exist"))
    assert job_failed(psycopg.errors.SyntaxError("syntax error"))
    assert job_failed(psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"))
    assert not job_failed(psycopg.OperationalError("server closed the connection"))
    assert not job_failed(psycopg.errors.QueryCanceled("canceling statement"))
    assert not job_failed(ValueError("x"))


def test_unsupported_before_14():
    assert unsupported_reason(150004) is None and unsupported_reason(140000) is None
    assert "PostgreSQL 13" in unsupported_reason(130011) and "14" in unsupported_reason(130011)


def test_state_document_keeps_jobs_and_the_signal_offset():
    state = _SnapshotState("slot", 0x1_0000_0010, True, ["public.t"],
                           jobs=[IncrementalJob("r1", "public.t", "request", "v > 1", ["5"], 5, 1)], signals_offset=7)
    back = _SnapshotState.from_json(state.to_json())
    assert back.jobs == state.jobs and back.signals_offset == 7
    old = _SnapshotState.from_json(b'{"slot": "s", "consistent_lsn": "0/10", "done": true}')
    assert old.jobs == [] and old.signals_offset == 0


def test_begin_xid_is_unsigned():
    b = pgoutput.decode(b"B" + struct.pack(">QqI", 1, 2, 0xFFFFFFF0))
    assert b.xid == 0xFFFFFFF0


@pytest.mark.parametrize("content", [b"", b"not json", b"[1]"])
def test_watermark_messages_that_are_not_ours_decode(content):
    m = pgoutput.decode(b"M" + struct.pack(">bQ", 0, 0x10) + b"lakeward.watermark\0" + struct.pack(">i", len(content)) + content)
    assert m.prefix == "lakeward.watermark" and m.content == content and not m.transactional
