"""Every built-in PostgreSQL 15 type through the real source: snapshot and pgoutput give the same values.

One wide table holds one column per case. Its rows are inserted once before the source starts (they
arrive as snapshot reads, `SELECT col::text`) and once more while it streams (pgoutput inserts). The
source runs once for the module; each case is then its own test: the column's source and lake type
in the schema topic, the envelope values of the snapshot and of the stream (identical), and the
Python values of `to_arrow(values, lake_type)` — what the Delta sink stores. The same run checks that
unchanged TOASTed values are left out of `after` (and filled in under REPLICA IDENTITY FULL), and that
Delta stores every column with its lake type. docs/type-mapping.md is the table these cases check.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson
import psycopg
import pytest

from lakeward.connectors.postgres import catalog
from lakeward.connectors.postgres.config import PostgresSourceConfig
from lakeward.connectors.postgres.source import PostgresSource
from lakeward.core.broker import SchemaReader
from lakeward.core.config import BrokerConfig
from lakeward.core.events import TableSchema

from .harness import BROKER, create_database, drop_database, dsn_for, sql, topic_prefix
from .type_matrix import Case, check_case, check_delta_stores_every_column, f32, insert_statements, records

pytestmark = pytest.mark.integration

TS_MAX = datetime(9999, 12, 31, 23, 59, 59, 999999)
TS_MIN = datetime(1, 1, 1)
DATE_MAX, DATE_MIN = date(9999, 12, 31), date(1, 1, 1)
NAN = float("nan")
INF = float("inf")


SETUP = [
    "CREATE EXTENSION IF NOT EXISTS citext",
    "CREATE EXTENSION IF NOT EXISTS hstore",
    "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')",
    "CREATE DOMAIN price AS numeric(8,3) CHECK (VALUE >= 0)",
    "CREATE DOMAIN short_text AS varchar(5)",
    "CREATE DOMAIN yes AS boolean",
    "CREATE TYPE pair AS (n int, label text, flag bool)",
]

# A column of a domain type has atttypmod -1; catalog.type_infos must pass the domain's typtypmod on (PgType.typmod).

JSON_DOC = '{"b": 1,  "a": [1, 2.50], "s": "x,y}"}'

CASES: list[Case] = [
    # --- numbers ---------------------------------------------------------------------------------
    Case("smallint", "smallint", ("0", "-32768", "32767", "NULL"), "short", (0, -32768, 32767, None)),
    Case("integer", "integer", ("-2147483648", "2147483647", "NULL"), "integer", (-2147483648, 2147483647, None)),
    Case("bigint", "bigint", ("-9223372036854775808", "9223372036854775807", "NULL"), "long",
         (-9223372036854775808, 9223372036854775807, None)),
    Case("smallserial", "smallserial", ("1", "32767"), "short", (1, 32767), "smallint"),
    Case("serial", "serial", ("1", "2147483647"), "integer", (1, 2147483647), "integer"),
    Case("bigserial", "bigserial", ("1", "9223372036854775807"), "long", (1, 9223372036854775807), "bigint"),
    Case("real", "real", ("1.1", "'-0'", "'NaN'", "'Infinity'", "'-Infinity'", "3.4028235e38", "1e-45", "NULL"), "float",
         (f32(1.1), -0.0, NAN, INF, -INF, f32(3.4028235e38), f32(1e-45), None)),
    Case("double", "double precision",
         ("0.1", "'NaN'", "'Infinity'", "'-Infinity'", "1.7976931348623157e308", "5e-324", "-1.5e-7", "NULL"), "double",
         (0.1, NAN, INF, -INF, 1.7976931348623157e308, 5e-324, -1.5e-7, None)),
    Case("numeric_10_2", "numeric(10,2)", ("12.5", "-99999999.99", "0", "0.005", "'NaN'", "NULL"), "decimal(10,2)",
         (Decimal("12.50"), Decimal("-99999999.99"), Decimal("0.00"), Decimal("0.01"), None, None)),
    Case("numeric_38_10", "numeric(38,10)", ("1234567890123456789012345678.1234567891", "-0.0000000001"), "decimal(38,10)",
         (Decimal("1234567890123456789012345678.1234567891"), Decimal("-1E-10"))),
    Case("numeric_free", "numeric",
         ("12345678901234567890123456789012345678901234567890.000000000000000000001", "0.10", "'NaN'", "'Infinity'",
          "'-Infinity'", "1e-40", "NULL"), "string",
         ("12345678901234567890123456789012345678901234567890.000000000000000000001", "0.10", "NaN", "Infinity",
          "-Infinity", "0.0000000000000000000000000000000000000001", None)),
    Case("numeric_50_5", "numeric(50,5)", ("1234567890123456789012345678901234567890.123456", "'NaN'", "NULL"), "string",
         ("1234567890123456789012345678901234567890.12346", "NaN", None)),
    Case("numeric_neg_scale", "numeric(5,-2)", ("1234567", "-50", "NULL"), "decimal(7,0)",
         (Decimal("1234600"), Decimal("-100"), None)),
    Case("numeric_scale_gt_precision", "numeric(2,5)", ("0.00012", "-0.000994", "NULL"), "decimal(5,5)",
         (Decimal("0.00012"), Decimal("-0.00099"), None)),
    Case("money", "money", ("1234.56", "'-92233720368547758.08'", "'92233720368547758.07'", "0", "NULL"), "decimal(19,2)",
         (Decimal("1234.56"), Decimal("-92233720368547758.08"), Decimal("92233720368547758.07"), Decimal("0.00"), None)),
    # --- characters and bytes --------------------------------------------------------------------
    Case("char_n", "char(5)", ("'ab'", "''", "'abcde'", "' x'", "NULL"), "string", ("ab", "", "abcde", " x", None),
         "character(5)"),
    Case("varchar_n", "varchar(10)", ("'héllo'", "''", "' sp '", "NULL"), "string", ("héllo", "", " sp ", None),
         "character varying(10)"),
    Case("text", "text",
         ("'plain'", "''", "E'tab\\t nl\\n \"q\" back\\\\slash'", "'ünïcødé ✓ 😀'", "'NULL'", "'{a,b}'", "NULL"), "string",
         ("plain", "", 'tab\t nl\n "q" back\\slash', "ünïcødé ✓ 😀", "NULL", "{a,b}", None)),
    Case("char_1byte", '"char"', ("'a'", "'é'", "NULL"), "string", ("a", "\\303", None)),
    Case("name", "name", ("'a_name'", "'With Space'", "NULL"), "string", ("a_name", "With Space", None)),
    Case("citext", "citext", ("'MiXeD'", "NULL"), "string", ("MiXeD", None)),
    Case("bytea", "bytea", ("'\\x'", "'\\x00ff41'", "decode('0001027f80fe', 'hex')", "NULL"), "binary",
         (b"", b"\x00\xffA", b"\x00\x01\x02\x7f\x80\xfe", None)),
    # --- boolean, date and time ------------------------------------------------------------------
    Case("boolean", "boolean", ("true", "false", "NULL"), "boolean", (True, False, None)),
    Case("date", "date",
         ("'2024-02-29'", "'infinity'", "'-infinity'", "'0001-01-01'", "'9999-12-31'", "'0099-01-01'", "'2000-01-01 BC'",
          "'10000-01-01'", "NULL"), "date",
         (date(2024, 2, 29), DATE_MAX, DATE_MIN, DATE_MIN, DATE_MAX, date(99, 1, 1), DATE_MIN, DATE_MAX, None)),
    Case("timestamp_3", "timestamp(3)", ("'2024-01-31 12:34:56.789623'", "'infinity'", "'-infinity'", "NULL"), "timestamp_ntz",
         (datetime(2024, 1, 31, 12, 34, 56, 790000), TS_MAX, TS_MIN, None), "timestamp(3) without time zone"),
    Case("timestamp", "timestamp",
         ("'2024-01-31 12:34:56.123456'", "'2024-01-31 12:00:00+05'", "'infinity'", "'0044-03-15 12:00 BC'", "'10000-01-01'",
          "NULL"), "timestamp_ntz",
         (datetime(2024, 1, 31, 12, 34, 56, 123456), datetime(2024, 1, 31, 12), TS_MAX, TS_MIN, TS_MAX, None),
         "timestamp without time zone"),
    Case("timestamptz", "timestamptz",
         ("'2024-01-31 12:00:00+05:30'", "'2024-07-01 00:00:00.5 America/New_York'", "'1900-01-01 00:00:00+00:19:32'",
          "'infinity'", "'-infinity'", "'0001-01-01 00:30:00+01'", "NULL"), "timestamp",
         (datetime(2024, 1, 31, 6, 30, tzinfo=UTC), datetime(2024, 7, 1, 4, 0, 0, 500000, tzinfo=UTC),
          datetime(1899, 12, 31, 23, 40, 28, tzinfo=UTC), TS_MAX.replace(tzinfo=UTC), TS_MIN.replace(tzinfo=UTC),
          TS_MIN.replace(tzinfo=UTC), None), "timestamp with time zone"),
    Case("time", "time", ("'12:34:56.789'", "'24:00'", "'00:00'", "NULL"), "string", ("12:34:56.789", "24:00:00", "00:00:00", None),
         "time without time zone"),
    Case("timetz", "timetz", ("'12:34:56+05:30'", "'00:00:00-08'", "'23:59:59.999999+00'", "NULL"), "string",
         ("12:34:56+05:30", "00:00:00-08", "23:59:59.999999+00", None), "time with time zone"),
    Case("interval", "interval", ("'1 year 2 months 3 days 04:05:06.789'", "'-1 day'", "'0'", "'-178000000 years'", "NULL"),
         "string", ("P1Y2M3DT4H5M6.789S", "P-1D", "PT0S", "P-178000000Y", None)),
    # --- documents, identifiers ------------------------------------------------------------------
    Case("uuid", "uuid", ("'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'", "NULL"), "string", ("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", None)),
    Case("json", "json", (f"'{JSON_DOC}'", "'null'", "'\"str\"'", "NULL"), "string", (JSON_DOC, "null", '"str"', None)),
    Case("jsonb", "jsonb", (f"'{JSON_DOC}'", "'null'", "'\"str\"'", "NULL"), "string",
         ('{"a": [1, 2.50], "b": 1, "s": "x,y}"}', "null", '"str"', None)),
    Case("jsonpath", "jsonpath", ("'$.a[*] ? (@ > 1)'", "NULL"), "string", ('$."a"[*]?(@ > 1)', None)),
    Case("xml", "xml", ("'<a x=\"1\">t &amp; u</a>'", "NULL"), "string", ('<a x="1">t &amp; u</a>', None)),
    # --- network, bits ---------------------------------------------------------------------------
    Case("inet", "inet", ("'192.168.1.5'", "'192.168.1.5/24'", "'::1'", "'2001:db8::1/64'", "'10.0.0.1/32'", "NULL"), "string",
         ("192.168.1.5", "192.168.1.5/24", "::1", "2001:db8::1/64", "10.0.0.1", None)),
    Case("cidr", "cidr", ("'192.168.1.0/24'", "'10.1.2.3/32'", "'2001:db8::/32'", "NULL"), "string",
         ("192.168.1.0/24", "10.1.2.3/32", "2001:db8::/32", None)),
    Case("macaddr", "macaddr", ("'08-00-2B-01-02-03'", "NULL"), "string", ("08:00:2b:01:02:03", None)),
    Case("macaddr8", "macaddr8", ("'08:00:2b:01:02:03:04:05'", "'08:00:2b:01:02:03'", "NULL"), "string",
         ("08:00:2b:01:02:03:04:05", "08:00:2b:ff:fe:01:02:03", None)),
    Case("bit_4", "bit(4)", ("B'1010'", "NULL"), "string", ("1010", None)),
    Case("varbit", "varbit", ("B'101'", "B''", "NULL"), "string", ("101", "", None), "bit varying"),
    # --- geometry --------------------------------------------------------------------------------
    Case("point", "point", ("'(1.5,-2)'", "NULL"), "string", ("(1.5,-2)", None)),
    Case("line", "line", ("'{1,-1,0}'",), "string", ("{1,-1,0}",)),
    Case("lseg", "lseg", ("'[(0,0),(1,1)]'",), "string", ("[(0,0),(1,1)]",)),
    Case("box", "box", ("'(0,0),(1,1)'",), "string", ("(1,1),(0,0)",)),
    Case("path", "path", ("'[(0,0),(1,1),(2,0)]'", "'((0,0),(1,1))'"), "string", ("[(0,0),(1,1),(2,0)]", "((0,0),(1,1))")),
    Case("polygon", "polygon", ("'((0,0),(1,1),(1,0))'",), "string", ("((0,0),(1,1),(1,0))",)),
    Case("circle", "circle", ("'<(0,0),2.5>'",), "string", ("<(0,0),2.5>",)),
    # --- text search -----------------------------------------------------------------------------
    Case("tsvector", "tsvector", ("'a fat cat'", "to_tsvector('english', 'The rats ate')"), "string",
         ("'a' 'cat' 'fat'", "'ate':3 'rat':2")),
    Case("tsquery", "tsquery", ("'fat & (rat | cat)'",), "string", ("'fat' & ( 'rat' | 'cat' )",)),
    # --- ranges ----------------------------------------------------------------------------------
    Case("int4range", "int4range", ("'[1,5)'", "'(1,5]'", "'empty'", "'[,3)'", "NULL"), "string",
         ("[1,5)", "[2,6)", "empty", "(,3)", None)),
    Case("tstzrange", "tstzrange", ("'[2024-01-01 00:00+02, 2024-01-02 00:00+02)'",), "string",
         ('["2023-12-31 22:00:00+00","2024-01-01 22:00:00+00")',)),
    Case("numrange", "numrange", ("'[1.5,2.25]'",), "string", ("[1.5,2.25]",)),
    Case("int8range", "int8range", ("'[1,9223372036854775806]'",), "string", ("[1,9223372036854775807)",)),
    Case("daterange", "daterange", ("'[2024-01-01,2024-01-31]'", "'[-infinity,2024-01-01)'"), "string",
         ("[2024-01-01,2024-02-01)", "[-infinity,2024-01-01)")),
    Case("tsrange", "tsrange", ("'[2024-01-01 10:00, infinity)'",), "string", ('["2024-01-01 10:00:00",infinity)',)),
    Case("int4multirange", "int4multirange", ("'{[1,3), [5,7)}'", "'{}'"), "string", ("{[1,3),[5,7)}", "{}")),
    Case("datemultirange", "datemultirange", ("'{[2024-01-01,2024-01-05)}'",), "string", ("{[2024-01-01,2024-01-05)}",)),
    # --- system types ----------------------------------------------------------------------------
    Case("pg_lsn", "pg_lsn", ("'16/B374D848'", "NULL"), "string", ("16/B374D848", None)),
    Case("oid", "oid", ("4294967295", "0", "NULL"), "long", (4294967295, 0, None)),
    Case("regclass", "regclass", ("'pg_class'", "'public.wide'", "NULL"), "string", ("pg_class", "wide", None)),
    Case("regtype", "regtype", ("'integer'", "'mood'"), "string", ("integer", "mood")),
    Case("pg_snapshot", "pg_snapshot", ("'10:20:10,14,15'",), "string", ("10:20:10,14,15",)),
    Case("txid_snapshot", "txid_snapshot", ("'10:20:10,14,15'",), "string", ("10:20:10,14,15",)),
    Case("xid8", "xid8", ("'123'",), "string", ("123",)),
    Case("xid", "xid", ("'123'",), "string", ("123",)),
    Case("cid", "cid", ("'5'",), "string", ("5",)),
    Case("tid", "tid", ("'(0,1)'",), "string", ("(0,1)",)),
    Case("regproc", "regproc", ("'now'",), "string", ("now",)),
    Case("regprocedure", "regprocedure", ("'abs(integer)'",), "string", ("abs(integer)",)),
    Case("regoper", "regoper", ("'||/'",), "string", ("||/",)),
    Case("regoperator", "regoperator", ("'+(integer,integer)'",), "string", ("+(integer,integer)",)),
    Case("regnamespace", "regnamespace", ("'pg_catalog'",), "string", ("pg_catalog",)),
    Case("regrole", "regrole", ("'postgres'",), "string", ("postgres",)),
    Case("regconfig", "regconfig", ("'english'",), "string", ("english",)),
    Case("regdictionary", "regdictionary", ("'simple'",), "string", ("simple",)),
    Case("regcollation", "regcollation", ("'\"C\"'",), "string", ('"C"',)),
    Case("aclitem", "aclitem", ("'postgres=arw/postgres'",), "string", ("postgres=arw/postgres",)),
    Case("refcursor", "refcursor", ("'cur1'",), "string", ("cur1",)),
    Case("int2vector", "int2vector", ("'1 2 3'",), "string", ("1 2 3",)),
    Case("oidvector", "oidvector", ("'23 25'",), "string", ("23 25",)),
    # --- user-defined ----------------------------------------------------------------------------
    Case("enum", "mood", ("'happy'", "'sad'", "NULL"), "string", ("happy", "sad", None)),
    Case("domain_numeric", "price", ("1.5", "99999.999", "NULL"), "decimal(8,3)", (Decimal("1.500"), Decimal("99999.999"), None)),
    Case("domain_varchar", "short_text", ("'abc'", "NULL"), "string", ("abc", None)),
    Case("domain_info_schema", "information_schema.cardinal_number", ("7", "NULL"), "integer", (7, None)),
    Case("domain_bool", "yes", ("true", "false"), "boolean", (True, False)),
    Case("composite", "pair", ("ROW(1, 'a b', true)", "ROW(NULL, 'q\"x,y', false)", "ROW(NULL, NULL, NULL)", "NULL"), "string",
         ('(1,"a b",t)', '(,"q""x,y",f)', "(,,)", None)),
    Case("hstore", "hstore", ("'a=>1, b=>NULL'",), "string", ('"a"=>"1", "b"=>NULL',)),
    # --- arrays ----------------------------------------------------------------------------------
    Case("int_array", "integer[]", ("'{1,NULL,3}'", "'{}'", "'[0:2]={7,8,9}'", "ARRAY[NULL]::int[]", "NULL"), "array<integer>",
         ([1, None, 3], [], [7, 8, 9], [None], None)),
    Case("int_array_2d", "integer[][]",
         ("'{{1,2},{3,4}}'", "'{1,2}'", "'{{NULL,5}}'", "'[0:1][1:2]={{1,2},{3,4}}'", "'{{{1},{2}},{{3},{4}}}'", "'{}'"),
         "array<integer>", ([1, 2, 3, 4], [1, 2], [None, 5], [1, 2, 3, 4], [1, 2, 3, 4], []), "integer[]"),
    Case("text_array", "text[]",
         ("ARRAY['a', 'b,c', 'q\"x', 'back\\slash', 'NULL', NULL, '', ' sp ', '{br}', 'x;y', E'new\\nline\\\\']", "'{{a,\"b,c\"},{\"{x}\",NULL}}'"),
         "array<string>",
         (["a", "b,c", 'q"x', "back\\slash", "NULL", None, "", " sp ", "{br}", "x;y", "new\nline\\"], ["a", "b,c", "{x}", None])),
    Case("char_n_array", "char(3)[]", ("ARRAY['a', 'abc', NULL]",), "array<string>", (["a", "abc", None],), "character(3)[]"),
    Case("numeric_array", "numeric(5,2)[]", ("'{1.5,NULL,-999.99,NaN}'",), "array<decimal(5,2)>",
         ([Decimal("1.50"), None, Decimal("-999.99"), None],)),
    Case("numeric_free_array", "numeric[]", ("'{1.5,NaN,-Infinity}'",), "array<string>", (["1.5", "NaN", "-Infinity"],)),
    Case("float8_array", "float8[]", ("'{1.5,NaN,Infinity,-Infinity,NULL}'",), "array<double>", ([1.5, NAN, INF, -INF, None],),
         "double precision[]"),
    Case("timestamptz_array", "timestamptz[]", ("ARRAY['2024-01-31 12:00:00+05:30'::timestamptz, 'infinity', NULL]",),
         "array<timestamp>", ([datetime(2024, 1, 31, 6, 30, tzinfo=UTC), TS_MAX.replace(tzinfo=UTC), None],),
         "timestamp with time zone[]"),
    Case("date_array", "date[]", ("'{2024-01-01,-infinity,NULL}'",), "array<date>", ([date(2024, 1, 1), DATE_MIN, None],)),
    Case("uuid_array", "uuid[]", ("ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, NULL]",), "array<string>",
         (["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", None],)),
    Case("bool_array", "boolean[]", ("'{t,f,NULL}'",), "array<boolean>", ([True, False, None],)),
    Case("bytea_array", "bytea[]", ("ARRAY['\\x00ff'::bytea, '\\x'::bytea, NULL]",), "array<binary>", ([b"\x00\xff", b"", None],)),
    Case("jsonb_array", "jsonb[]", ("ARRAY['{\"a\": \"x,y}\"}'::jsonb, 'null'::jsonb, NULL]",), "array<string>",
         (['{"a": "x,y}"}', "null", None],)),
    Case("json_array", "json[]", ("ARRAY['{\"a\": \"x,y}\"}'::json, '[1,  2]']",), "array<string>", (['{"a": "x,y}"}', "[1,  2]"],)),
    Case("varchar_array", "varchar(5)[]", ("ARRAY['a b', '', NULL]",), "array<string>", (["a b", "", None],), "character varying(5)[]"),
    Case("interval_array", "interval[]", ("ARRAY['1 day'::interval, '-1 mon']",), "array<string>", (["P1D", "P-1M"],)),
    Case("money_array", "money[]", ("ARRAY[1234.5::money, (-1)::money]",), "array<decimal(19,2)>",
         ([Decimal("1234.50"), Decimal("-1.00")],)),
    Case("inet_array", "inet[]", ("ARRAY['10.0.0.1'::inet, '10.0.0.0/8', '::1']",), "array<string>", (["10.0.0.1", "10.0.0.0/8", "::1"],)),
    Case("box_array", "box[]", ("ARRAY['(0,0),(1,1)'::box, '(3,3),(2,2)'::box]",), "array<string>", (["(1,1),(0,0)", "(3,3),(2,2)"],)),
    Case("point_array", "point[]", ("ARRAY['(1,2)'::point, NULL]",), "array<string>", (["(1,2)", None],)),
    Case("range_array", "int4range[]", ("ARRAY['[1,3)'::int4range, 'empty']",), "array<string>", (["[1,3)", "empty"],)),
    Case("enum_array", "mood[]", ("ARRAY['ok'::mood, NULL]",), "array<string>", (["ok", None],)),
    Case("composite_array", "pair[]", ("ARRAY[ROW(1, 'a \"b\"', true)::pair, NULL]",), "array<string>",
         (['(1,"a ""b""",t)', None],)),
    Case("domain_array", "price[]", ("ARRAY[1.5::price, NULL]",), "array<decimal(8,3)>", ([Decimal("1.500"), None],)),
]

ROWS = max(len(c.values) for c in CASES)
STREAM_ID = 1000


def quote(name: str) -> str:
    return psycopg.sql.Identifier(name).as_string(None)


@dataclass
class Captured:
    schema: TableSchema | None = None
    stream_schema: TableSchema | None = None
    snapshot: dict[int, dict[str, Any]] | None = None
    stream: dict[int, dict[str, Any]] | None = None
    toast_update: dict[str, Any] | None = None
    """`after` of an UPDATE that left TOASTed jsonb, bytea and text[] values unchanged."""
    toast_full: tuple[dict[str, Any], dict[str, Any]] | None = None
    """The same with REPLICA IDENTITY FULL: (snapshot row, `after` of the UPDATE)."""
    error: BaseException | None = None
    case_errors: dict[str, str] | None = None
    """When the source failed: the cases whose converter raised, and on which value."""


async def _capture(dsn: str, prefix: str) -> Captured:
    broker = BrokerConfig(bootstrap_servers=BROKER, topic_prefix=prefix)
    cfg = PostgresSourceConfig(name="shop", type="postgres", dsn=dsn, tables=["public.*"], slot=f"lw_{prefix}",
                               status_interval_s=0.2)
    source = PostgresSource(cfg, broker=broker)
    topic, toast_topic = f"{prefix}.shop.public.wide", f"{prefix}.shop.public.toasty"
    full_topic = f"{prefix}.shop.public.toasty_full"
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    try:
        await records(broker, topic, 1 + ROWS, task)  # the truncate marker and the snapshot
        await records(broker, toast_topic, 2, task)
        await records(broker, full_topic, 2, task)
        sql(dsn, "BEGIN", *insert_statements(CASES, STREAM_ID + 1, quote), "COMMIT")
        sql(dsn, "UPDATE toasty SET n = 1 WHERE id = 1", "UPDATE toasty_full SET n = 1 WHERE id = 1")
        topic_records = await records(broker, topic, 1 + 2 * ROWS, task)
        toast_records = await records(broker, toast_topic, 3, task)
        full_records = await records(broker, full_topic, 3, task)
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task
    reader = SchemaReader(broker)
    out = Captured(snapshot={}, stream={}, toast_update=orjson.loads(toast_records[2].value)["after"],
                   toast_full=(orjson.loads(full_records[1].value)["after"], orjson.loads(full_records[2].value)["after"]))
    for r in topic_records:
        value = orjson.loads(r.value)
        schema = await reader.get("shop", dict(r.headers)["lakeward.schema"].decode())
        if value["op"] == "r":
            out.schema = schema
            out.snapshot[value["after"]["id"]] = value["after"]
        elif value["op"] == "c":
            out.stream_schema = schema
            out.stream[value["after"]["id"]] = value["after"]
    return out


async def _converter_errors(dsn: str) -> dict[str, str]:
    """Which columns' converters raise (run offline over the snapshot text), to name the culprit of a failure."""
    conn = await catalog.connect(dsn)
    try:
        _, columns = await catalog.table_columns(conn, "public", "wide")
        _, converters = await catalog.SchemaBuilder("shop").build(conn, "public", "wide", columns, ("id",))
        select = ", ".join(f"{quote(c[0])}::text" for c in columns)
        rows = await (await conn.execute(f"SELECT {select} FROM wide ORDER BY id")).fetchall()
    finally:
        await conn.close()
    errors: dict[str, str] = {}
    for i, ((name, _, _), convert) in enumerate(zip(columns, converters, strict=True)):
        for row in rows:
            try:
                if row[i] is not None:
                    convert(row[i])
            except Exception as e:  # noqa: BLE001
                errors[name] = f"{e!r} converting {row[i]!r}"
                break
    return errors


@pytest.fixture(scope="module")
def captured() -> Captured:
    """Runs the source once over the wide table; every case reads its column from here."""
    name, prefix = create_database(), topic_prefix()
    dsn = dsn_for(name)
    try:
        columns = ", ".join(f"{quote(c.name)} {c.ddl}" for c in CASES)
        sql(dsn, *SETUP, f"CREATE TABLE wide (id int PRIMARY KEY, {columns})", *insert_statements(CASES, 1, quote))
        # Incompressible values, so PostgreSQL stores them out of line (TOAST).
        big = [uuid.uuid4().hex for _ in range(700)]
        sql(dsn, "CREATE TABLE toasty (id int PRIMARY KEY, n int, doc jsonb, blob bytea, tags text[])")
        sql(dsn, "CREATE TABLE toasty_full (LIKE toasty INCLUDING ALL)", "ALTER TABLE toasty_full REPLICA IDENTITY FULL")
        for table in ("toasty", "toasty_full"):
            sql(dsn, f"INSERT INTO {table} VALUES (1, 0, %s, %s, %s)", params=(orjson.dumps(big).decode(), os.urandom(20000), big))
        try:
            out = asyncio.run(_capture(dsn, prefix))
        except Exception as e:  # noqa: BLE001 - reported by every case, naming the culprit
            out = Captured(error=e, case_errors=asyncio.run(_converter_errors(dsn)))
        yield out
    finally:
        drop_database(name)


def check_source_ran(captured: Captured, case: Case | None = None) -> None:
    if captured.error is None:
        return
    culprits = captured.case_errors or {}
    if case is not None and case.name in culprits:
        pytest.fail(f"the source failed on this column: {culprits[case.name]}")
    pytest.fail(f"the source failed ({captured.error!r}) on column(s) {', '.join(culprits) or '?'}")


def test_snapshot_and_stream_share_one_schema(captured):
    check_source_ran(captured)
    assert captured.schema is not None and captured.schema == captured.stream_schema
    assert len(captured.snapshot) == len(captured.stream) == ROWS


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c.name, marks=[pytest.mark.xfail(reason=c.xfail, strict=True)] if c.xfail else []) for c in CASES
])
def test_type(case: Case, captured: Captured):
    check_source_ran(captured, case)
    check_case(case, captured.schema, captured.snapshot, captured.stream, STREAM_ID)


def test_unchanged_toasted_values_are_absent(captured: Captured):
    """An UPDATE that leaves TOASTed values alone: pgoutput doesn't send them, and the event leaves them out."""
    check_source_ran(captured)
    assert captured.toast_update == {"id": 1, "n": 1}


def test_replica_identity_full_fills_unchanged_toasted_values(captured: Captured):
    """With REPLICA IDENTITY FULL the old row carries the TOASTed values, and the source copies them into `after`."""
    check_source_ran(captured)
    snapshot, after = captured.toast_full
    assert after == {**snapshot, "n": 1} and len(after["blob"]) > 20000


def test_delta_stores_every_column(captured: Captured, tmp_path):
    check_source_ran(captured)
    check_delta_stores_every_column(captured.schema, captured.stream, tmp_path / "wide")
