"""PostgreSQL type mapping and text-value conversion, without a database."""

from __future__ import annotations

import pyarrow as pa
import pytest

from lakeward.connectors.postgres.types import PgType, map_type, numeric_precision_scale, parse_array
from lakeward.core.types import arrow_type, to_arrow


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


def test_negative_scale_numeric_is_text():
    assert numeric_precision_scale(numeric_typmod(5, -2)) == (5, -2)
    assert map_type(PgType("numeric", "b"), numeric_typmod(5, -2))[0] == "string"


def test_enum_and_arrays():
    assert map_type(PgType("mood", "e"), -1)[0] == "string"
    lake, conv = map_type(PgType("_int4", "b", PgType("int4", "b")), -1)
    assert lake == "array<integer>" and conv("{1,NULL,3}") == [1, None, 3]
    lake, conv = map_type(PgType("_text", "b", PgType("text", "b")), -1)
    assert conv('{a,"b,c","q\\"x",NULL,"NULL"}') == ["a", "b,c", 'q"x', None, "NULL"]
    assert conv("{}") == []


def test_multidimensional_array_is_refused_clearly():
    with pytest.raises(ValueError, match="multi-dimensional"):
        parse_array("{{1,2},{3,4}}")


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
