"""Every event value both sources build is core's envelope: the same bytes as `envelope()` of the same
parts, for c/u/d/r/t, and positions as `Position` packs them."""

from __future__ import annotations

import struct
from typing import Any

import orjson
import pytest

from lakeward.connectors.mysql import events as mysql_events
from lakeward.connectors.mysql import tables
from lakeward.connectors.mysql.history import HistoryEntry
from lakeward.connectors.mysql.snapshot import BinlogPoint
from lakeward.connectors.mysql.types import ColumnDef
from lakeward.connectors.postgres import snapshot as pg_snapshot
from lakeward.connectors.postgres.config import PostgresSourceConfig
from lakeward.connectors.postgres.source import PostgresSource, _Table, _Txn
from lakeward.core.config import BrokerConfig
from lakeward.core.events import (
    AFTER_ONLY,
    ENVELOPE,
    MYSQL_EVENT_POSITION,
    MYSQL_POSITION,
    MYSQL_ROW,
    NEW_KEY_HEADER,
    NULL,
    OLD_KEY_HEADER,
    POSITION_HEADER,
    SCHEMA_HEADER,
    Column,
    Position,
    TableSchema,
    envelope,
    envelope_tail,
    source_head,
)

ROW = {"id": 7, "name": "héllo \"q\"", "price": "12.50", "tags": [1, None], "at": "2024-01-02T03:04:05Z"}


def test_template_is_envelope_byte_for_byte():
    source = {"connector": "x", "name": "n", "ts_ms": 5, "snapshot": "false", "txId": None, "lsn": 0}
    head = source_head(source)
    for op, before, after in (("c", None, ROW), ("u", ROW, {**ROW, "id": 8}), ("d", ROW, None), ("r", None, ROW), ("t", None, None)):
        expected = envelope(op, before, after, {**source, "lsn": 99}, 1234)
        built = ENVELOPE % (NULL if before is None else orjson.dumps(before), NULL if after is None else orjson.dumps(after), head, 99,
                            op.encode(), 1234)
        assert built == expected
        if before is None and after is not None:
            assert AFTER_ONLY + orjson.dumps(after) + envelope_tail(head, 99, op.encode(), 1234) == expected


def test_source_head_needs_an_integer_placeholder_last():
    with pytest.raises(ValueError):
        source_head({"lsn": 0, "name": "n"})


def test_position_structs_are_positions():
    assert MYSQL_EVENT_POSITION.pack(42, 100, 1, 180) + MYSQL_ROW.pack(6) == Position.mysql(42, 100, 1, 180, 6) == \
        MYSQL_POSITION.pack(42, 100, 1, 180, 6)


# --- PostgreSQL ------------------------------------------------------------------------------------


class Collected:
    """Takes what a source hands to BatchPublisher (append, extend)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]] = []

    def append(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        self.events.append((topic, key, value, headers))


def pg_source() -> tuple[PostgresSource, _Table, Collected]:
    src = PostgresSource(PostgresSourceConfig(name="shop", dsn="postgresql://x@127.0.0.1/shop", tables=["public.*"]), broker=BrokerConfig())
    schema = TableSchema("shop", "public", "items", (Column("id", "int4", "int"), Column("name", "text", "string")), ("id",))
    base = {"version": "0.1.0", "connector": "postgresql", "name": "shop", "db": "shop", "schema": "public", "table": "items"}
    counts = dict.fromkeys((b"c", b"u", b"d", b"r", b"t"), 0)
    t = _Table(schema, "lw.shop.public.items", b"sid1", ["id", "name"], [int, str], ["id"], base, counts=counts)
    src._relations[16384] = t
    collected = Collected()
    src._publisher = collected  # type: ignore[assignment]
    src._now_ms = 1_700_000_000_123
    return src, t, collected


def pg_tuple(*values: str | None) -> bytes:
    out = struct.pack(">h", len(values))
    for v in values:
        out += b"n" if v is None else b"t" + struct.pack(">i", len(v.encode())) + v.encode()
    return out


def xlog(lsn: int, payload: bytes) -> bytes:
    return b"w" + struct.pack(">QQQ", lsn, lsn, 0) + payload


def pg_expected(op: str, before: dict | None, after: dict | None, lsn: int, snapshot: str = "false", tx: int | None = 900,
                ts_ms: int = 1_699_999_999_000) -> bytes:
    source = {"version": "0.1.0", "connector": "postgresql", "name": "shop", "db": "shop", "schema": "public", "table": "items",
              "ts_ms": ts_ms, "snapshot": snapshot, "txId": tx, "lsn": lsn}
    return envelope(op, before, after, source, 1_700_000_000_123)


def test_postgres_stream_events_are_the_envelope():
    src, t, got = pg_source()
    txn = _Txn()
    txn.begin(0x5000, 900, 1_699_999_999_000)
    rel = struct.pack(">I", 16384)
    src._change(xlog(0x4001, b"I" + rel + b"N" + pg_tuple("1", "a")), ord("I"), txn)
    src._change(xlog(0x4002, b"U" + rel + b"N" + pg_tuple("1", "b")), ord("U"), txn)
    src._change(xlog(0x4003, b"U" + rel + b"K" + pg_tuple("1", None) + b"N" + pg_tuple("2", "b")), ord("U"), txn)
    src._change(xlog(0x4004, b"D" + rel + b"K" + pg_tuple("2", None)), ord("D"), txn)
    src._emit(t, b"t", b"{}", None, None, txn.head(t, 16384), 0x4005, Position.postgres(0x5000, Position.STREAM, 5))
    a, b, b2 = {"id": 1, "name": "a"}, {"id": 1, "name": "b"}, {"id": 2, "name": "b"}
    expected = [
        (b'{"id":1}', pg_expected("c", None, a, 0x4001), 1, None),
        (b'{"id":1}', pg_expected("u", None, b, 0x4002), 2, None),
        (b'{"id":1}', pg_expected("d", {"id": 1}, None, 0x4003), 3, (NEW_KEY_HEADER, b'{"id":2}')),
        (b'{"id":2}', pg_expected("c", None, b2, 0x4003), 4, (OLD_KEY_HEADER, b'{"id":1}')),
        (b'{"id":2}', pg_expected("d", {"id": 2}, None, 0x4004), 5, None),
        (b"{}", pg_expected("t", None, None, 0x4005), 5, None),
    ]
    assert len(got.events) == len(expected)
    for (topic, key, value, headers), (want_key, want_value, seq, link) in zip(got.events, expected, strict=True):
        assert (topic, key) == ("lw.shop.public.items", want_key)
        assert value == want_value, value
        assert orjson.loads(value) == orjson.loads(want_value)
        assert headers[:2] == [(POSITION_HEADER, Position.postgres(0x5000, Position.STREAM, seq)), (SCHEMA_HEADER, b"sid1")]
        assert headers[2:] == ([link] if link else [])
    assert t.counts == {b"c": 2, b"u": 1, b"d": 2, b"r": 0, b"t": 1}


def test_postgres_snapshot_rows_are_the_envelope():
    """`r` rows of a snapshot chunk: core's prefix + `after` + tail (the SQL-built path and the Python one)."""
    src, t, got = pg_source()
    head = t.source_head(1_699_999_999_000, "true", None)
    tail = envelope_tail(head, 0x6000, b"r", 1_700_000_000_123)
    expected = pg_expected("r", None, {"id": 1, "name": "a"}, 0x6000, snapshot="true", tx=None)
    sql_built = pg_snapshot.RowSql("", True, True, [], [], t.key)
    assert sql_built.finish([(b'{"id":1}', b'{"id":1,"name":"a"}')], AFTER_ONLY, tail) == [(b'{"id":1}', expected)]
    in_python = pg_snapshot.RowSql("", False, True, [], [(b',"name":', str)], t.key)
    assert in_python.finish([(b'{"id":1}', b'{"id":1', "a")], AFTER_ONLY, tail) == [(b'{"id":1}', expected)]
    # An incremental snapshot's rows go through the stream's _emit.
    src._emit(t, b"r", b'{"id":1}', None, {"id": 1, "name": "a"}, t.source_head(1_699_999_999_000, "incremental", None), 0x6000,
              Position.postgres(0x6000, Position.SNAPSHOT, 1))
    assert got.events[0][2] == pg_expected("r", None, {"id": 1, "name": "a"}, 0x6000, snapshot="incremental", tx=None)


# --- MySQL -----------------------------------------------------------------------------------------


def mysql_info() -> tables.TableInfo:
    entry = HistoryEntry("inv", "stock", Position.mysql(3, 4, 0, 0, 0), "e", (ColumnDef("id", "int", "int", False),
                         ColumnDef("qty", "int", "int")), ("id",))
    return tables.from_entry("inv", "lw", entry, True)


def mysql_source(snapshot: str, gtid: str | None, file: str, pos: int, row: int, ts_ms: int) -> dict[str, Any]:
    return {"version": "0.1.0", "connector": "mysql", "name": "inv", "db": "inv", "table": "stock", "server_id": 11, "ts_ms": ts_ms,
            "snapshot": snapshot, "gtid": gtid, "file": file, "pos": pos, "row": row}


def test_mysql_source_head_is_core_source_head():
    info = mysql_info()
    assert info.source_head(11, 5, b"false", b'"0-1-9"', b'"b.000003"', 700) == source_head(
        mysql_source("false", "0-1-9", "b.000003", 700, 0, 5))


def test_mysql_stream_events_are_the_envelope():
    info = mysql_info()
    out: list[Any] = []
    ev = mysql_events.RowsEvent(info, out, file_index=3, txn_pos=500, event_pos=700, server_id=11, ts_ms=1_699_999_999_000,
                                gtid_json=b'"0-1-9"', file_json=b'"b.000003"')
    a, b, c = {"id": 1, "qty": 5}, {"id": 1, "qty": 6}, {"id": 2, "qty": 6}
    ev.created([a])
    ev.deleted([a, b])
    assert ev.updated([(a, b), (b, c)]) == 1
    now = ev.now

    def want(op: str, before: dict | None, after: dict | None, row: int) -> bytes:
        return envelope(op, before, after, mysql_source("false", "0-1-9", "b.000003", 700, row, 1_699_999_999_000), now)

    expected = [
        (b'{"id":1}', want("c", None, a, 0), 0), (b'{"id":1}', want("d", a, None, 0), 0), (b'{"id":1}', want("d", b, None, 1), 2),
        (b'{"id":1}', want("u", a, b, 0), 0), (b'{"id":1}', want("d", b, None, 1), 2), (b'{"id":2}', want("c", None, c, 1), 3),
    ]
    assert len(out) == len(expected)
    for (topic, key, value, headers), (want_key, want_value, row) in zip(out, expected, strict=True):
        assert (topic, key, value) == ("lw.inv.inv.stock", want_key, want_value)
        assert orjson.loads(value) == orjson.loads(want_value)
        assert headers == [(POSITION_HEADER, Position.mysql(3, 500, Position.STREAM, 700, row)), (SCHEMA_HEADER, info.schema_id)]


def test_mysql_truncate_and_read_events_are_the_envelope():
    info = mysql_info()
    point = BinlogPoint("b.000003", 900, "0-1-9")
    head = info.source_head(11, 1_699_999_999_000, b"first", b'"0-1-9"', b'"b.000003"', 900)
    topic, key, value, headers = mysql_events.truncate(info, head, Position.mysql(3, 900, 0, 0, 0))
    assert (topic, key) == ("lw.inv.inv.stock", b"{}")
    source = mysql_source("first", "0-1-9", "b.000003", 900, 0, 1_699_999_999_000)
    assert value == envelope("t", None, None, source, orjson.loads(value)["ts_ms"])
    assert headers == [(POSITION_HEADER, Position.mysql(3, 900, 0, 0, 0)), (SCHEMA_HEADER, info.schema_id)]

    head = info.source_head(11, 1_699_999_999_000, b"true", b'"0-1-9"', b'"b.000003"', 900)
    convert = mysql_events.read_events(info, head, True)
    snap = convert([(1, 5), (2, None)], mysql_events.snapshot_positions(point, (4 << 32) + 1, 2))
    incr = convert([(1, 5)], mysql_events.row_positions(point, 1 << 62, 1))
    source = mysql_source("true", "0-1-9", "b.000003", 900, 0, 1_699_999_999_000)
    for (_, key, value, headers), row, pos in (
            (snap[0], {"id": 1, "qty": 5}, Position.mysql(3, 900, 0, (4 << 32) + 1, 0)),
            (snap[1], {"id": 2, "qty": None}, Position.mysql(3, 900, 0, (4 << 32) + 2, 0)),
            (incr[0], {"id": 1, "qty": 5}, Position.mysql(3, 900, 0, 1 << 62, 1))):
        assert key == orjson.dumps({"id": row["id"]})
        assert value == envelope("r", None, row, source, orjson.loads(value)["ts_ms"])
        assert headers == [(POSITION_HEADER, pos), (SCHEMA_HEADER, info.schema_id)]
