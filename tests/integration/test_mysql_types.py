"""Every MariaDB column type through the real source: the snapshot and the binlog give the same values.

One wide table holds one column per case. Its rows are inserted once before the source starts (they
arrive as snapshot reads through PyMySQL) and once more while it streams (binlog rows events, decoded
by lakeward.connectors.mysql.decode); the streamed rows are then updated, so the update's before
image is checked too. Each case is its own test: the column's source and lake type in the schema
topic, the envelope values of the snapshot, the stream and the update's before image (identical),
and the Python values of `to_arrow(values, lake_type)` — what the Delta sink stores.
docs/type-mapping.md (MySQL/MariaDB section) is the table these cases check.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.connectors.mysql.source import MySQLSource
from lakeward.core.broker import SchemaReader
from lakeward.core.config import BrokerConfig
from lakeward.core.events import TableSchema

from .harness import BROKER, MYSQL, mquery, msql, server_id, server_lock, topic_prefix, unique_name
from .type_matrix import Case, check_case, check_delta_stores_every_column, f32, insert_statements, records

pytestmark = pytest.mark.integration


def wkb_point(x: float, y: float) -> bytes:
    return struct.pack("<BIdd", 1, 1, x, y)


CASES: list[Case] = [
    # --- integers --------------------------------------------------------------------------------
    Case("tinyint", "tinyint", ("-128", "127", "0", "NULL"), "byte", (-128, 127, 0, None), "tinyint(4)"),
    Case("tinyint_unsigned", "tinyint unsigned", ("0", "255", "NULL"), "short", (0, 255, None), "tinyint(3) unsigned"),
    Case("tinyint_1", "tinyint(1)", ("1", "0", "-5", "NULL"), "boolean", (True, False, True, None)),
    Case("bool", "bool", ("true", "false", "NULL"), "boolean", (True, False, None), "tinyint(1)"),
    Case("smallint", "smallint", ("-32768", "32767", "NULL"), "short", (-32768, 32767, None), "smallint(6)"),
    Case("smallint_unsigned", "smallint unsigned", ("65535", "0"), "integer", (65535, 0), "smallint(5) unsigned"),
    Case("mediumint", "mediumint", ("-8388608", "8388607", "NULL"), "integer", (-8388608, 8388607, None), "mediumint(9)"),
    Case("mediumint_unsigned", "mediumint unsigned", ("16777215", "0"), "integer", (16777215, 0), "mediumint(8) unsigned"),
    Case("int", "int", ("-2147483648", "2147483647", "NULL"), "integer", (-2147483648, 2147483647, None), "int(11)"),
    Case("int_unsigned", "int unsigned", ("4294967295", "0"), "long", (4294967295, 0), "int(10) unsigned"),
    Case("bigint", "bigint", ("-9223372036854775808", "9223372036854775807", "NULL"), "long",
         (-9223372036854775808, 9223372036854775807, None), "bigint(20)"),
    Case("bigint_unsigned", "bigint unsigned", ("18446744073709551615", "0", "NULL"), "decimal(20,0)",
         (Decimal("18446744073709551615"), Decimal("0"), None), "bigint(20) unsigned"),
    # --- decimals and floats ---------------------------------------------------------------------
    Case("decimal_10_2", "decimal(10,2)", ("12.5", "-99999999.99", "0", "0.005", "-0.001", "NULL"), "decimal(10,2)",
         (Decimal("12.50"), Decimal("-99999999.99"), Decimal("0.00"), Decimal("0.01"), Decimal("0.00"), None)),
    Case("decimal_5_0", "decimal(5,0)", ("12345", "-1", "0"), "decimal(5,0)", (Decimal("12345"), Decimal("-1"), Decimal("0"))),
    Case("decimal_38_10", "decimal(38,10)", ("1234567890123456789012345678.1234567891", "-0.0000000001"), "decimal(38,10)",
         (Decimal("1234567890123456789012345678.1234567891"), Decimal("-1E-10"))),
    Case("decimal_65_30", "decimal(65,30)", ("12345678901234567890123456789012345.123456789012345678901234567891", "-1", "NULL"),
         "string", ("12345678901234567890123456789012345.123456789012345678901234567891", "-1.000000000000000000000000000000", None)),
    Case("decimal_unsigned", "decimal(6,3) unsigned", ("999.999", "0.5"), "decimal(6,3)", (Decimal("999.999"), Decimal("0.500"))),
    Case("float", "float", ("1.1", "-2.5", "3.40282e38", "1.17549e-38", "0", "NULL"), "float",
         (f32(1.1), -2.5, f32(3.40282e38), f32(1.17549e-38), 0.0, None)),
    Case("double", "double", ("0.1", "5e-324", "1.7976931348623157e308", "-1.5e-7", "123456789.123456789", "NULL"), "double",
         (0.1, 5e-324, 1.7976931348623157e308, -1.5e-7, 123456789.12345679, None)),
    # --- bits --------------------------------------------------------------------------------------
    Case("bit_1", "bit(1)", ("b'1'", "b'0'", "NULL"), "boolean", (True, False, None)),
    Case("bit_10", "bit(10)", ("b'1010000001'", "b'0'", "NULL"), "string", ("1010000001", "0000000000", None)),
    Case("bit_64", "bit(64)", ("b'1000000000000000000000000000000000000000000000000000000000000001'",), "string",
         ("1000000000000000000000000000000000000000000000000000000000000001",)),
    # --- date and time ---------------------------------------------------------------------------
    Case("date", "date", ("'2024-02-29'", "'1000-01-01'", "'9999-12-31'", "'0001-01-01'", "'0000-00-00'", "'2024-00-15'", "NULL"), "date",
         (date(2024, 2, 29), date(1000, 1, 1), date(9999, 12, 31), date(1, 1, 1), None, None, None)),
    Case("datetime", "datetime", ("'2024-01-31 12:34:56'", "'0000-00-00 00:00:00'", "'9999-12-31 23:59:59'", "NULL"), "timestamp_ntz",
         (datetime(2024, 1, 31, 12, 34, 56), None, datetime(9999, 12, 31, 23, 59, 59), None)),
    Case("datetime_3", "datetime(3)", ("'2024-01-31 12:34:56.789'", "'2024-01-31 12:34:56.000'", "'1000-01-01 00:00:00.001'"),
         "timestamp_ntz", (datetime(2024, 1, 31, 12, 34, 56, 789000), datetime(2024, 1, 31, 12, 34, 56), datetime(1000, 1, 1, 0, 0, 0, 1000))),
    Case("datetime_6", "datetime(6)", ("'2024-01-31 12:34:56.123456'", "'9999-12-31 23:59:59.999999'", "'0001-01-01 00:00:00.000001'"),
         "timestamp_ntz", (datetime(2024, 1, 31, 12, 34, 56, 123456), datetime(9999, 12, 31, 23, 59, 59, 999999), datetime(1, 1, 1, 0, 0, 0, 1))),
    Case("timestamp", "timestamp NULL", ("'2024-01-31 12:00:00'", "'1970-01-01 00:00:01'", "'2038-01-19 03:14:07'", "'0000-00-00 00:00:00'", "NULL"),
         "timestamp", (datetime(2024, 1, 31, 12, tzinfo=UTC), datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC), datetime(2038, 1, 19, 3, 14, 7, tzinfo=UTC),
                       None, None), "timestamp"),
    Case("timestamp_6", "timestamp(6) NULL", ("'2024-01-31 12:00:00.5'", "'2024-07-01 00:00:00.000001'"), "timestamp",
         (datetime(2024, 1, 31, 12, 0, 0, 500000, tzinfo=UTC), datetime(2024, 7, 1, 0, 0, 0, 1, tzinfo=UTC)), "timestamp(6)"),
    Case("time", "time", ("'12:34:56'", "'-838:59:59'", "'838:59:59'", "'00:00:00'", "'-00:00:01'", "NULL"), "string",
         ("12:34:56", "-838:59:59", "838:59:59", "00:00:00", "-00:00:01", None)),
    Case("time_1", "time(1)", ("'-01:00:00.1'", "'12:00:00.9'", "'-00:00:00.1'"), "string", ("-01:00:00.1", "12:00:00.9", "-00:00:00.1")),
    Case("time_3", "time(3)", ("'-12:34:56.789'", "'00:00:00.001'", "'-00:00:00.5'", "'838:59:58.999'"), "string",
         ("-12:34:56.789", "00:00:00.001", "-00:00:00.500", "838:59:58.999")),
    Case("time_6", "time(6)", ("'-00:00:01.5'", "'-838:59:58.999999'", "'00:00:00.000001'"), "string",
         ("-00:00:01.500000", "-838:59:58.999999", "00:00:00.000001")),
    Case("year", "year", ("2024", "1901", "2155", "0", "NULL"), "short", (2024, 1901, 2155, 0, None), "year(4)"),
    # --- characters ------------------------------------------------------------------------------
    Case("char_5", "char(5)", ("'ab'", "''", "' x'", "'ab   '", "NULL"), "string", ("ab", "", " x", "ab", None)),
    Case("varchar", "varchar(20)", ("'héllo'", "'😀 ✓'", "''", "' sp '", "'NULL'", "NULL"), "string", ("héllo", "😀 ✓", "", " sp ", "NULL", None)),
    Case("varchar_300", "varchar(300)", ("repeat('é', 300)", "'x'"), "string", ("é" * 300, "x")),
    Case("varchar_latin1", "varchar(10) CHARACTER SET latin1", ("'héllo'", "'€ œ'", "_utf8mb4 0xC281"), "string", ("héllo", "€ œ", "\x81"),
         "varchar(10)"),
    Case("varchar_ucs2", "varchar(10) CHARACTER SET ucs2", ("'héllo'", "'Ω'"), "string", ("héllo", "Ω"), "varchar(10)"),
    Case("varchar_utf16", "varchar(10) CHARACTER SET utf16", ("'😀x'",), "string", ("😀x",), "varchar(10)"),
    Case("char_ascii", "char(3) CHARACTER SET ascii", ("'abc'",), "string", ("abc",), "char(3)"),
    Case("tinytext", "tinytext", ("'t'",), "string", ("t",)),
    Case("text", "text", ("'tab\\t nl\\n \"q\" back\\\\slash'", "repeat('z', 5000)", "NULL"), "string",
         ('tab\t nl\n "q" back\\slash', "z" * 5000, None)),
    Case("mediumtext", "mediumtext", ("repeat('m', 70000)",), "string", ("m" * 70000,)),
    Case("longtext", "longtext", ("'l'",), "string", ("l",)),
    # --- bytes -----------------------------------------------------------------------------------
    Case("binary_4", "binary(4)", ("x'0102'", "x'01020304'", "''", "x'00'", "NULL"), "binary",
         (b"\x01\x02\x00\x00", b"\x01\x02\x03\x04", b"\x00" * 4, b"\x00" * 4, None)),
    Case("varbinary", "varbinary(8)", ("x'00ff'", "''", "x'610000'"), "binary", (b"\x00\xff", b"", b"a\x00\x00")),
    Case("tinyblob", "tinyblob", ("x'00'",), "binary", (b"\x00",)),
    Case("blob", "blob", ("x'00ff41'", "''", "NULL"), "binary", (b"\x00\xffA", b"", None)),
    Case("mediumblob", "mediumblob", ("repeat(x'ab', 70000)",), "binary", (b"\xab" * 70000,)),
    Case("longblob", "longblob", ("x'01'",), "binary", (b"\x01",)),
    # --- enum, set, json -------------------------------------------------------------------------
    Case("enum", "enum('a','b','c d')", ("'b'", "'c d'", "'nope'", "NULL"), "string", ("b", "c d", "", None)),
    Case("set", "set('x','y','z')", ("'x,z'", "'z,x'", "''", "'y'", "NULL"), "string", ("x,z", "x,z", "", "y", None)),
    Case("enum_latin1", "enum('é','b') CHARACTER SET latin1", ("'é'", "'b'"), "string", ("é", "b"), "enum('é','b')"),
    Case("set_latin1", "set('ü','v') CHARACTER SET latin1", ("'ü,v'",), "string", ("ü,v",), "set('ü','v')"),
    Case("json", "json", ("'{\"b\": 1,  \"a\": [1, 2.50]}'", "'null'", "'\"str\"'", "NULL"), "string",
         ('{"b": 1,  "a": [1, 2.50]}', "null", '"str"', None)),
    # --- geometry (WKB, without MySQL's 4-byte SRID prefix) --------------------------------------
    Case("geometry", "geometry", ("ST_GeomFromText('POINT(1 2)')", "NULL"), "binary", (wkb_point(1, 2), None)),
    Case("point", "point", ("POINT(3, 4)",), "binary", (wkb_point(3, 4),)),
    Case("linestring", "linestring", ("ST_GeomFromText('LINESTRING(0 0, 1 1)')",), "binary",
         (struct.pack("<BII4d", 1, 2, 2, 0, 0, 1, 1),)),
    Case("polygon", "polygon", ("ST_GeomFromText('POLYGON((0 0, 1 0, 1 1, 0 0))')",), "binary",
         (struct.pack("<BIII8d", 1, 3, 1, 4, 0, 0, 1, 0, 1, 1, 0, 0),)),
    # --- MariaDB types ---------------------------------------------------------------------------
    Case("uuid", "uuid", ("'123e4567-e89b-12d3-a456-426614174000'", "'00000000-0000-0000-0000-000000000001'",
                          "'6ccd780c-baba-1026-9564-5b8c656024db'", "NULL"), "string",
         ("123e4567-e89b-12d3-a456-426614174000", "00000000-0000-0000-0000-000000000001", "6ccd780c-baba-1026-9564-5b8c656024db", None)),
    Case("inet6", "inet6", ("'2001:db8::1'", "'::ffff:1.2.3.4'", "'::1'", "'2001:db8:0:0:1:0:0:1'"), "string",
         ("2001:db8::1", "::ffff:1.2.3.4", "::1", "2001:db8::1:0:0:1")),
    Case("inet4", "inet4", ("'192.168.0.1'", "'0.0.0.0'"), "string", ("192.168.0.1", "0.0.0.0")),
]

ROWS = max(len(c.values) for c in CASES)
STREAM_ID = 1000


def quote(name: str) -> str:
    return f"`{name}`"


@dataclass
class Captured:
    schema: TableSchema | None = None
    stream_schema: TableSchema | None = None
    snapshot: dict[int, dict[str, Any]] | None = None
    stream: dict[int, dict[str, Any]] | None = None
    before: dict[int, dict[str, Any]] | None = None
    """`before` of the UPDATE of each streamed row."""
    sources: dict[str, dict[str, Any]] | None = None
    """The envelope's `source` of one event per op."""
    error: BaseException | None = None


async def _capture(db: str, prefix: str) -> Captured:
    broker = BrokerConfig(bootstrap_servers=BROKER, topic_prefix=prefix)
    cfg = MySQLSourceConfig(name="legacy", host=MYSQL["host"], port=MYSQL["port"], user=MYSQL["user"], password=MYSQL["password"],
                            tables=[f"{db}.wide"], server_id=server_id(), status_interval_s=0.2)
    source = MySQLSource(cfg, broker=broker)
    topic = f"{prefix}.legacy.{db}.wide"
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    try:
        await records(broker, topic, 1 + ROWS, task, timeout=60)  # the truncate marker and the snapshot
        msql("SET SESSION sql_mode = ''", "BEGIN", *insert_statements(CASES, STREAM_ID + 1, quote), "COMMIT", db=db)
        msql(f"UPDATE wide SET marker = 1 WHERE id > {STREAM_ID}", db=db)
        topic_records = await records(broker, topic, 1 + 3 * ROWS, task, timeout=60)
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task
    reader = SchemaReader(broker)
    out = Captured(snapshot={}, stream={}, before={}, sources={})
    for r in topic_records:
        value = orjson.loads(r.value)
        out.sources.setdefault(value["op"], value["source"])
        schema = await reader.get("legacy", dict(r.headers)["lakeward.schema"].decode())
        if value["op"] == "r":
            out.schema = schema
            out.snapshot[value["after"]["id"]] = value["after"]
        elif value["op"] == "c":
            out.stream_schema = schema
            out.stream[value["after"]["id"]] = value["after"]
        elif value["op"] == "u":
            out.before[value["before"]["id"]] = value["before"]
    return out


@pytest.fixture(scope="module")
def captured() -> Captured:
    db, prefix = unique_name("lw_"), topic_prefix()
    msql(f"CREATE DATABASE `{db}`")
    try:
        columns = ", ".join(f"{quote(c.name)} {c.ddl}" for c in CASES)
        msql(f"CREATE TABLE wide (id int PRIMARY KEY, marker int, {columns}, gen int AS (id * 2) VIRTUAL)", db=db)
        msql("SET SESSION sql_mode = ''", *insert_statements(CASES, 1, quote), db=db)
        try:
            with server_lock("mariadb", exclusive=False):  # the module's one source run; its tests read what it captured
                out = asyncio.run(_capture(db, prefix))
        except Exception as e:  # noqa: BLE001 - reported by every case
            out = Captured(error=e)
        yield out
    finally:
        msql(f"DROP DATABASE IF EXISTS `{db}`")


def check_source_ran(captured: Captured) -> None:
    if captured.error is not None:
        pytest.fail(f"the source failed: {captured.error!r}")


def test_snapshot_and_stream_share_one_schema(captured):
    check_source_ran(captured)
    assert captured.schema is not None and captured.schema == captured.stream_schema
    assert len(captured.snapshot) == len(captured.stream) == len(captured.before) == ROWS
    assert captured.schema.primary_key == ("id",)
    assert captured.schema.column("gen").lake_type == "integer", "a virtual generated column is captured too"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_type(case: Case, captured: Captured):
    check_source_ran(captured)
    stream = check_case(case, captured.schema, captured.snapshot, captured.stream, STREAM_ID)
    before = [captured.before[STREAM_ID + 1 + i][case.name] for i in range(len(case.values))]
    assert before == stream, "an update's before image must decode like the insert"


def test_delta_stores_every_column(captured: Captured, tmp_path):
    check_source_ran(captured)
    check_delta_stores_every_column(captured.schema, captured.stream, tmp_path / "wide")


def test_geometry_is_plain_wkb(captured: Captured):
    check_source_ran(captured)
    wkb = base64.b64decode(captured.stream[STREAM_ID + 1]["point"])
    assert wkb[:1] == b"\x01" and struct.unpack("<I", wkb[1:5])[0] == 1, "little-endian WKB point"


def test_debezium_mysql_source_block(captured: Captured):
    check_source_ran(captured)
    server_id = mquery("SELECT @@server_id")[0][0]
    for op, snapshot in (("t", "first"), ("r", "true"), ("c", "false"), ("u", "false")):
        src = captured.sources[op]
        assert set(src) == {"version", "connector", "name", "db", "table", "server_id", "ts_ms", "snapshot", "gtid", "file", "pos", "row"}
        assert (src["connector"], src["name"], src["table"], src["snapshot"], src["server_id"]) == ("mysql", "legacy", "wide", snapshot, server_id)
        assert src["file"].startswith("mariadb-bin.") and src["pos"] > 0 and src["gtid"].count("-") == 2
    assert captured.sources["c"]["gtid"] != captured.sources["u"]["gtid"], "each transaction has its own GTID"
