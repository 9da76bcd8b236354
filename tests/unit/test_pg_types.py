"""PostgreSQL type mapping and text-value conversion, without a database."""

from __future__ import annotations

import pyarrow as pa
import pytest

from lakeward.connectors.postgres.types import (
    _SCALARS,
    SESSION_OPTIONS,
    PgType,
    map_type,
    numeric_lake_type,
    numeric_precision_scale,
    parse_array,
)
from lakeward.sinks.delta.arrow import arrow_type, to_arrow


def numeric_typmod(p: int, s: int) -> int:
    return ((p << 16) | (s & 0x7FF)) + 4


@pytest.mark.parametrize(
    ("name", "typmod", "lake"),
    [
        ("int2", -1, "short"), ("int4", -1, "integer"), ("int8", -1, "long"), ("float4", -1, "float"),
        ("float8", -1, "double"), ("bool", -1, "boolean"), ("text", -1, "string"), ("bytea", -1, "binary"),
        ("date", -1, "date"), ("timestamp", -1, "timestamp_ntz"), ("timestamptz", -1, "timestamp"),
        ("numeric", numeric_typmod(10, 2), "decimal(10,2)"), ("numeric", -1, "string"),
        ("numeric", numeric_typmod(50, 2), "string"), ("jsonb", -1, "string"), ("uuid", -1, "string"),
        ("interval", -1, "string"), ("time", -1, "string"), ("int4range", -1, "string"),
    ],
)
def test_scalar_mapping(name, typmod, lake):
    assert map_type(PgType(name, "r" if name.endswith("range") else "b"), typmod)[0] == lake
    arrow_type(lake)  # every lake type has an Arrow type


def test_negative_scale_numeric_is_a_whole_decimal():
    # numeric(5,-2) holds multiples of 100 below 10^7: decimal(7,0) stores them exactly (Delta has no negative scale).
    assert numeric_precision_scale(numeric_typmod(5, -2)) == (5, -2)
    assert map_type(PgType("numeric", "b"), numeric_typmod(5, -2))[0] == "decimal(7,0)"


@pytest.mark.parametrize(
    ("p", "s", "lake"),
    [
        (10, 2, "decimal(10,2)"), (38, 0, "decimal(38,0)"), (38, 38, "decimal(38,38)"), (1, 0, "decimal(1,0)"),
        (39, 0, "string"), (1000, 10, "string"), (5, -2, "decimal(7,0)"), (36, -2, "decimal(38,0)"), (37, -2, "string"),
        (2, 5, "decimal(5,5)"), (3, 39, "string"),
    ],
)
def test_numeric_precision_and_scale(p, s, lake):
    assert numeric_precision_scale(numeric_typmod(p, s)) == (p, s)
    assert numeric_lake_type(numeric_typmod(p, s)) == lake
    arrow_type(lake)


def test_enum_and_arrays():
    assert map_type(PgType("mood", "e"), -1)[0] == "string"
    lake, conv = map_type(PgType("_int4", "b", PgType("int4", "b")), -1)
    assert lake == "array<integer>" and conv("{1,NULL,3}") == [1, None, 3]
    lake, conv = map_type(PgType("_text", "b", PgType("text", "b")), -1)
    assert conv('{a,"b,c","q\\"x",NULL,"NULL"}') == ["a", "b,c", 'q"x', None, "NULL"]
    assert conv("{}") == []


@pytest.mark.parametrize(
    ("text", "delim", "elements"),
    [
        ("{}", ",", []),
        ("{1,NULL,3}", ",", ["1", None, "3"]),
        ("[0:2]={7,8,9}", ",", ["7", "8", "9"]),  # explicit lower bound: dropped
        ("[-3:-2]={7,8}", ",", ["7", "8"]),
        ('{"",NULL,"NULL"}', ",", ["", None, "NULL"]),
        ('{a,"b,c","q\\"x","back\\\\slash"," sp ","{br}"}', ",", ["a", "b,c", 'q"x', "back\\slash", " sp ", "{br}"]),
        ('{"(1,\\"a b\\",t)","[1,3)"}', ",", ['(1,"a b",t)', "[1,3)"]),
        ("{(1,1),(0,0);(3,3),(2,2)}", ";", ["(1,1),(0,0)", "(3,3),(2,2)"]),
        ('{"x;y";(1,1),(0,0)}', ";", ["x;y", "(1,1),(0,0)"]),
        # multi-dimensional values are flattened in row-major order (as unnest does)
        ("{{1,2},{3,4}}", ",", ["1", "2", "3", "4"]),
        ("[0:1][1:2]={{1,2},{3,4}}", ",", ["1", "2", "3", "4"]),
        ("{{{1},{2}},{{NULL},{4}}}", ",", ["1", "2", None, "4"]),
        ('{{a,"b,c"},{"{x}",NULL}}', ",", ["a", "b,c", "{x}", None]),
    ],
)
def test_parse_array(text, delim, elements):
    assert parse_array(text, delim) == elements


def test_parse_array_refuses_non_arrays():
    with pytest.raises(ValueError, match="not an array literal"):
        parse_array("1 2 3")


def test_value_conversions_round_trip_to_arrow():
    _, f = map_type(PgType("float8", "b"), -1)
    assert [f("1.5"), f("NaN"), f("-Infinity")] == [1.5, "NaN", "-Infinity"]
    arr = to_arrow([1.5, "NaN", "-Infinity", None], "double").to_pylist()
    assert arr[0] == 1.5 and arr[1] != arr[1] and arr[2] == float("-inf") and arr[3] is None
    _, b = map_type(PgType("bytea", "b"), -1)
    assert to_arrow([b("\\x00ff41"), None], "binary").to_pylist() == [b"\x00\xffA", None]
    ts = to_arrow(["2024-01-31 12:00:00.123456+00", "infinity", None], "timestamp")
    assert ts.type == pa.timestamp("us", tz="UTC") and str(ts[0]) == "2024-01-31 12:00:00.123456+00:00"
    assert to_arrow(["12.50", None], "decimal(10,2)").to_pylist()[0].as_tuple().exponent == -2
    lists = to_arrow([[1, None], None, []], "array<integer>").to_pylist()
    assert lists == [[1, None], None, []]


def conv(name: str, typmod: int = -1, kind: str = "b"):
    return map_type(PgType(name, kind), typmod)[1]


def array_conv(name: str, typmod: int = -1):
    return map_type(PgType("_" + name, "b", PgType(name, "b")), typmod)


def test_every_scalar_maps_to_a_known_lake_type():
    for name, (lake, _) in _SCALARS.items():
        arrow_type(lake)
        assert map_type(PgType("_" + name, "b", PgType(name, "b")), -1)[0] in (f"array<{lake}>", "string"), name


def test_session_pins_every_output_setting():
    for setting in ("TimeZone=UTC", "DateStyle=ISO,YMD", "IntervalStyle=iso_8601", "extra_float_digits=3", "bytea_output=hex",
                    "lc_monetary=C"):
        assert f"-c {setting}" in SESSION_OPTIONS


def test_boolean_accepts_output_and_cast_spellings():
    # pgoutput sends the output function's `t`/`f`; the snapshot's `col::text` gives `true`/`false`.
    f = conv("bool")
    assert [f("t"), f("f"), f("true"), f("false")] == [True, False, True, False]


def test_decimal_nan_becomes_null():
    f = conv("numeric", numeric_typmod(10, 2))
    assert [f("12.50"), f("NaN"), f("-0.01")] == ["12.50", None, "-0.01"]
    assert to_arrow([f("12.50"), f("NaN")], "decimal(10,2)").to_pylist()[1] is None
    # unconstrained numeric keeps every spelling
    assert conv("numeric")("NaN") == "NaN" and conv("numeric")("-Infinity") == "-Infinity"


def test_money_is_a_decimal_of_cents():
    lake, f = map_type(PgType("money", "b"), -1)
    assert lake == "decimal(19,2)"
    values = [f("$1,234.56"), f("-$92,233,720,368,547,758.08"), f("$0.00")]
    assert values == ["1234.56", "-92233720368547758.08", "0.00"]
    assert [str(d) for d in to_arrow(values, lake).to_pylist()] == values


def test_character_padding_and_inet_host_masks_agree_between_snapshot_and_stream():
    assert conv("bpchar")("ab   ") == conv("bpchar")("ab") == "ab"
    assert conv("bpchar")("") == "" and conv("bpchar")(" x") == " x"
    f = conv("inet")
    assert f("10.0.0.1/32") == f("10.0.0.1") == "10.0.0.1"
    assert f("::1/128") == f("::1") == "::1"
    assert f("2001:db8::/32") == "2001:db8::/32" and f("10.0.0.0/8") == "10.0.0.0/8"
    assert conv("cidr")("10.1.2.3/32") == "10.1.2.3/32"


@pytest.mark.parametrize(
    ("name", "text", "envelope"),
    [
        ("date", "2024-01-31", "2024-01-31"), ("date", "infinity", "infinity"), ("date", "-infinity", "-infinity"),
        ("date", "2000-01-01 BC", "-infinity"), ("date", "10000-01-01", "infinity"), ("date", "5874897-12-31", "infinity"),
        ("timestamp", "2024-01-31 12:00:00.5", "2024-01-31 12:00:00.5"), ("timestamp", "0044-03-15 12:00:00 BC", "-infinity"),
        ("timestamp", "10000-01-01 00:00:00", "infinity"), ("timestamp", "-infinity", "-infinity"),
        ("timestamptz", "2024-01-31 12:00:00+00", "2024-01-31 12:00:00+00"), ("timestamptz", "0001-12-31 23:00:00+00 BC", "-infinity"),
        ("timestamptz", "294276-12-31 23:59:59+00", "infinity"), ("timestamptz", "infinity", "infinity"),
    ],
)
def test_dates_outside_delta_range_are_clamped(name, text, envelope):
    lake, f = map_type(PgType(name, "b"), -1)
    assert f(text) == envelope
    to_arrow([f(text)], lake)  # the sink can store it


def test_domain_typmod_applies_when_the_column_has_none():
    price = PgType("numeric", "b", typmod=numeric_typmod(8, 3))  # CREATE DOMAIN price AS numeric(8,3)
    assert map_type(price, -1)[0] == "decimal(8,3)"
    assert map_type(PgType("_numeric", "b", price), -1)[0] == "array<decimal(8,3)>"
    assert map_type(PgType("numeric", "b"), numeric_typmod(5, 1))[0] == "decimal(5,1)"


def test_array_element_converters():
    lake, f = array_conv("numeric", numeric_typmod(5, 2))
    assert lake == "array<decimal(5,2)>" and f("{1.50,NULL,NaN}") == ["1.50", None, None]
    lake, f = array_conv("float8")
    assert to_arrow([f("{1.5,NaN,-Infinity,NULL}")], lake).to_pylist()[0][2] == float("-inf")
    lake, f = array_conv("bytea")
    assert to_arrow([f('{"\\\\x00ff","\\\\x",NULL}')], lake).to_pylist() == [[b"\x00\xff", b"", None]]
    lake, f = array_conv("bool")
    assert f("{t,f,NULL}") == [True, False, None]
    lake, f = array_conv("money")
    assert lake == "array<decimal(19,2)>" and f('{$1.00,"$1,234.00"}') == ["1.00", "1234.00"]
    lake, f = array_conv("box")
    assert lake == "array<string>" and f("{(1,1),(0,0);(3,3),(2,2)}") == ["(1,1),(0,0)", "(3,3),(2,2)"]
    lake, f = array_conv("timestamptz")
    assert lake == "array<timestamp>" and f('{"2024-01-31 06:30:00+00",infinity,"0044-03-15 12:00:00+00 BC"}') == [
        "2024-01-31 06:30:00+00", "infinity", "-infinity"]
    lake, f = array_conv("bpchar")
    assert f('{"a  ",abc}') == ["a", "abc"]


def test_vector_types_are_not_arrays():
    # int2vector/oidvector have an element type in pg_type but print as `1 2 3`.
    assert map_type(PgType("int2vector", "b", PgType("int2", "b")), -1)[0] == "string"
    assert map_type(PgType("oidvector", "b", PgType("oid", "b")), -1)[1]("23 25") == "23 25"


@pytest.mark.parametrize("kind", ["e", "r", "m", "c"])
def test_enums_ranges_multiranges_composites_are_text(kind):
    lake, f = map_type(PgType("anything", kind), -1)
    assert lake == "string" and f("(1,\"a b\",t)") == "(1,\"a b\",t)"


def test_unknown_extension_types_are_text():
    assert map_type(PgType("geometry", "b"), -1)[0] == "string"
    assert map_type(PgType("_hstore", "b", PgType("hstore", "b")), -1)[0] == "array<string>"
