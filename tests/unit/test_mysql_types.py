"""MySQL/MariaDB column types -> lake types, and the snapshot's value conversions, without a server."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pymysqlreplication.constants import FIELD_TYPE as F

from lakeward.connectors.mysql.types import (
    ColumnDef,
    column_def,
    def_from_binlog,
    enum_members,
    json_columns,
    lake_type,
    matches_binlog,
    snapshot_converter,
)
from lakeward.sinks.delta.arrow import arrow_type


def col(data_type: str, column_type: str | None = None, **kw) -> ColumnDef:
    return ColumnDef("c", data_type, column_type or data_type, **kw)


@pytest.mark.parametrize(("c", "lake"), [
    (col("tinyint", "tinyint(4)"), "byte"), (col("tinyint", "tinyint(3) unsigned"), "short"), (col("tinyint", "tinyint(1)"), "boolean"),
    (col("smallint", "smallint(6)"), "short"), (col("smallint", "smallint(5) unsigned"), "integer"),
    (col("mediumint", "mediumint(8) unsigned"), "integer"), (col("int", "int(11)"), "integer"), (col("int", "int(10) unsigned"), "long"),
    (col("bigint", "bigint(20)"), "long"), (col("bigint", "bigint(20) unsigned"), "decimal(20,0)"),
    (col("decimal", "decimal(10,2)", precision=10, scale=2), "decimal(10,2)"),
    (col("decimal", "decimal(65,30)", precision=65, scale=30), "string"),
    (col("float"), "float"), (col("double"), "double"), (col("bit", "bit(1)", precision=1), "boolean"),
    (col("bit", "bit(8)", precision=8), "string"), (col("date"), "date"), (col("datetime", "datetime(6)", fsp=6), "timestamp_ntz"),
    (col("timestamp"), "timestamp"), (col("time"), "string"), (col("year", "year(4)"), "short"), (col("varchar", "varchar(10)"), "string"),
    (col("longtext"), "string"), (col("json"), "string"), (col("binary", "binary(4)"), "binary"), (col("blob"), "binary"),
    (col("enum", "enum('a')"), "string"), (col("set", "set('a')"), "string"), (col("geometry"), "binary"), (col("point"), "binary"),
    (col("uuid"), "string"), (col("inet6"), "string"), (col("inet4"), "string"),
])
def test_lake_types(c, lake):
    assert lake_type(c) == lake
    arrow_type(lake)


def test_tinyint1_as_boolean_can_be_switched_off():
    assert lake_type(col("tinyint", "tinyint(1)"), tinyint1_as_boolean=False) == "byte"
    assert snapshot_converter(col("tinyint", "tinyint(1)"), tinyint1_as_boolean=False) is None


def test_snapshot_converters():
    assert snapshot_converter(col("date"))("0000-00-00") is None
    assert snapshot_converter(col("date"))("2024-00-15") is None
    assert snapshot_converter(col("date"))("2024-02-29") == "2024-02-29"
    conv = snapshot_converter(col("datetime", fsp=3))
    assert conv("2024-01-31 12:34:56.780") == "2024-01-31 12:34:56.780000"
    assert conv("2024-01-31 12:34:56.000") == "2024-01-31 12:34:56"
    assert conv("0000-00-00 00:00:00.000") is None
    assert snapshot_converter(col("timestamp"))("2024-01-31 12:00:00") == "2024-01-31 12:00:00+00"
    assert snapshot_converter(col("bit", "bit(10)", precision=10))(b"\x02\x81") == "1010000001"
    assert snapshot_converter(col("bit", "bit(1)", precision=1))(b"\x01") is True
    assert snapshot_converter(col("bigint", "bigint(20) unsigned"))(2**64 - 1) == "18446744073709551615"
    assert snapshot_converter(col("point"))(b"\x00\x00\x00\x00\x01") == "AQ=="
    assert snapshot_converter(col("varchar")) is None and snapshot_converter(col("decimal", precision=5, scale=2)) is None


def test_information_schema_rows():
    row = {"COLUMN_NAME": "doc", "DATA_TYPE": "longtext", "COLUMN_TYPE": "longtext", "IS_NULLABLE": "YES", "CHARACTER_SET_NAME": "utf8mb4",
           "NUMERIC_PRECISION": None, "NUMERIC_SCALE": None, "DATETIME_PRECISION": None, "CHARACTER_MAXIMUM_LENGTH": 4294967295}
    assert column_def(row, json_columns(["json_valid(`doc`)"])).data_type == "json"
    assert column_def(row, set()).data_type == "longtext"
    bit = {**row, "COLUMN_NAME": "b", "DATA_TYPE": "bit", "COLUMN_TYPE": "bit(12)", "NUMERIC_PRECISION": 12, "CHARACTER_SET_NAME": None}
    assert column_def(bit, set()).precision == 12
    assert enum_members("enum('a','it''s','c,d')") == ["a", "it's", "c,d"]


def lib(code: int, name: str = "c", **kw):
    base = {"name": name, "type": code, "unsigned": False, "character_set_name": None, "enum_values": None, "set_values": None}
    return SimpleNamespace(**{**base, **kw})


def test_history_columns_apply_only_where_the_binlog_agrees():
    tiny1 = col("tinyint", "tinyint(1)")
    assert matches_binlog(tiny1, lib(F.TINY))
    assert not matches_binlog(tiny1, lib(F.TINY, unsigned=True))
    assert not matches_binlog(tiny1, lib(F.LONG))
    assert not matches_binlog(tiny1, lib(F.TINY, name="other"))
    dec = col("decimal", "decimal(10,2)", precision=10, scale=2)
    assert matches_binlog(dec, lib(F.NEWDECIMAL, precision=10, decimals=2))
    assert not matches_binlog(dec, lib(F.NEWDECIMAL, precision=12, decimals=2))
    assert matches_binlog(col("json", "longtext"), lib(F.BLOB, character_set_name="utf8", length_size=4))
    assert not matches_binlog(col("varchar", "varchar(5)"), lib(F.VARCHAR, character_set_name="binary", max_length=5))
    assert matches_binlog(col("uuid"), lib(F.STRING, character_set_name="binary", max_length=16))
    assert not matches_binlog(col("enum", "enum('a','b')"), lib(F.ENUM, enum_values=["", "a", "b", "c"]))


def test_definitions_from_the_table_map_alone():
    assert def_from_binlog(lib(F.TINY), True, None).column_type == "tinyint"
    assert lake_type(def_from_binlog(lib(F.LONGLONG, unsigned=True), True, None)) == "decimal(20,0)"
    assert def_from_binlog(lib(F.NEWDECIMAL, precision=12, decimals=3), False, None).column_type == "decimal(12,3)"
    assert def_from_binlog(lib(F.BLOB, character_set_name="binary", length_size=3), True, None).data_type == "mediumblob"
    assert def_from_binlog(lib(F.BLOB, character_set_name="utf8", length_size=1), True, None).data_type == "tinytext"
    assert def_from_binlog(lib(F.ENUM, enum_values=["", "a", "b"]), True, None).column_type == "enum('a','b')"
    assert def_from_binlog(lib(F.TIME2, fsp=3), True, None).column_type == "time(3)"
