"""MySQL/MariaDB column types -> lake types, and values -> envelope JSON values.

A column is described by a `ColumnDef`: what information_schema says about it (the snapshot and the
schema history), or — for a column the history does not describe — what the binlog's table map
event carries. One function, `lake_type`, maps a ColumnDef to its lake type, so the snapshot and the
stream agree on the schema. Values come from two places and must give identical envelope values:

  snapshot  PyMySQL over the text protocol, with the decoders in SNAPSHOT_CONV (temporal and decimal
            values stay text, FLOAT columns are read as `col + 0E0`); `snapshot_converter` finishes them.
  stream    binlog rows, decoded straight into envelope values by lakeward.connectors.mysql.decode,
            which follows the same ColumnDef.

The full table with the reasons is in docs/type-mapping.md.
"""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymysql.constants import FIELD_TYPE as PYMYSQL_FIELD
from pymysql.converters import conversions as _pymysql_conversions
from pymysqlreplication.constants import FIELD_TYPE as F

# Delta decimals hold at most 38 digits.
MAX_DECIMAL_PRECISION = 38

Converter = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class ColumnDef:
    """One column as the schema history keeps it (information_schema.COLUMNS, lower-cased)."""

    name: str
    data_type: str
    """`int`, `varchar`, `decimal`, ...; `json` also for MariaDB's JSON alias (LONGTEXT + json_valid)."""
    column_type: str
    """The full spelling, e.g. `int(10) unsigned`, `tinyint(1)`, `enum('a','b')`, `decimal(10,2)`."""
    nullable: bool = True
    charset: str | None = None
    """Character set of a character column (`utf8mb4`, `latin1`, ...); None otherwise."""
    precision: int | None = None
    """DECIMAL precision; number of bits of BIT(n)."""
    scale: int | None = None
    fsp: int | None = None
    """Fractional seconds digits of TIME/DATETIME/TIMESTAMP."""
    length: int | None = None
    """Declared length of CHAR/BINARY/VARCHAR/VARBINARY (characters, or bytes for binary)."""
    default: str | None = None
    """COLUMN_DEFAULT as information_schema spells it (None: no default, or NULL)."""
    generated: bool = False
    """A generated (VIRTUAL or STORED) column."""

    @property
    def unsigned(self) -> bool:
        return "unsigned" in self.column_type

    def to_list(self) -> list[Any]:
        return [self.name, self.data_type, self.column_type, self.nullable, self.charset, self.precision, self.scale, self.fsp, self.length,
                self.default, self.generated]

    @classmethod
    def from_list(cls, v: list[Any]) -> ColumnDef:
        return cls(*v)


INTEGERS = {"tinyint", "smallint", "mediumint", "int", "integer", "bigint"}
TEXTS = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext"}
BINARIES = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}
GEOMETRIES = {"geometry", "point", "linestring", "polygon", "multipoint", "multilinestring", "multipolygon",
              "geometrycollection", "geomcollection"}
TEMPORALS = {"date", "datetime", "timestamp"}


def is_boolean(col: ColumnDef, tinyint1_as_boolean: bool) -> bool:
    if col.data_type == "bit":
        return col.precision == 1
    return tinyint1_as_boolean and col.data_type == "tinyint" and col.column_type.startswith("tinyint(1)") and not col.unsigned


def lake_type(col: ColumnDef, tinyint1_as_boolean: bool = True) -> str:
    """The lake type of a column (see docs/type-mapping.md)."""
    t = col.data_type
    if is_boolean(col, tinyint1_as_boolean):
        return "boolean"
    if t in INTEGERS:
        unsigned = col.unsigned
        if t == "tinyint":
            return "short" if unsigned else "byte"
        if t == "smallint":
            return "integer" if unsigned else "short"
        if t == "mediumint":
            return "integer"
        if t in ("int", "integer"):
            return "long" if unsigned else "integer"
        return "decimal(20,0)" if unsigned else "long"
    if t in ("decimal", "numeric"):
        p, s = col.precision or 10, col.scale or 0
        return f"decimal({p},{s})" if p <= MAX_DECIMAL_PRECISION else "string"
    if t == "float":
        return "float"
    if t in ("double", "real", "double precision"):
        return "double"
    if t == "year":
        return "short"
    if t == "date":
        return "date"
    if t == "datetime":
        return "timestamp_ntz"
    if t == "timestamp":
        return "timestamp"
    if t in BINARIES or t in GEOMETRIES:
        return "binary"
    # bit(n > 1), time, char/varchar/text, enum, set, json, uuid, inet4, inet6
    return "string"


def source_type(col: ColumnDef) -> str:
    return "json" if col.data_type == "json" else col.column_type


def schema_nullable(col: ColumnDef) -> bool:
    """Zero dates ('0000-00-00') become null, so temporal columns are nullable in the lake."""
    return col.nullable or col.data_type in TEMPORALS


# --- envelope values shared by the snapshot and the stream --------------------------------------

_F32 = struct.Struct("<f")


def float32(x: float) -> float:
    """The shortest decimal that reads back as the same float4, as a Python float (1.1, not
    1.100000023841858): what the lake's float column stores, written the same from both paths."""
    if x != x or x in (float("inf"), float("-inf")) or x == 0.0:
        return x
    for digits in (6, 7, 8, 9):
        s = float(f"{x:.{digits}g}")
        if _F32.unpack(_F32.pack(s))[0] == x:
            return s
    return x


def b64(v: bytes) -> str:
    return base64.b64encode(v).decode()


def time_text(negative: bool, hours: int, minutes: int, seconds: int, micros: int, fsp: int) -> str:
    """TIME as MySQL prints it: `[-]HH:MM:SS[.f...]` with `fsp` fraction digits, hours up to 838."""
    out = f"{'-' if negative else ''}{hours:02d}:{minutes:02d}:{seconds:02d}"
    if fsp:
        out += "." + f"{micros:06d}"[:fsp]
    return out


def datetime_text(y: int, mo: int, d: int, h: int, mi: int, s: int, us: int) -> str | None:
    """`YYYY-MM-DD HH:MM:SS[.ffffff]` (6 digits, only when not zero: like Python's isoformat), or None
    for zero and partial-zero dates ('0000-00-00', '2024-00-15'), which no lake type can hold."""
    if not (y and mo and d):
        return None
    if us:
        return f"{y:04d}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d}.{us:06d}"
    return f"{y:04d}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d}"


# --- snapshot: PyMySQL values -> envelope values ------------------------------------------------

# Keep temporal and decimal values as the server's text (exact digits, zero dates survive), bits and
# binary strings as bytes; integers and doubles are parsed by PyMySQL as usual.
SNAPSHOT_CONV: dict[Any, Any] = dict(_pymysql_conversions)  # encoders (by Python type) and decoders
for _t in (PYMYSQL_FIELD.DATE, PYMYSQL_FIELD.DATETIME, PYMYSQL_FIELD.TIMESTAMP, PYMYSQL_FIELD.TIME, PYMYSQL_FIELD.NEWDATE,
           PYMYSQL_FIELD.DECIMAL, PYMYSQL_FIELD.NEWDECIMAL, PYMYSQL_FIELD.BIT):
    SNAPSHOT_CONV.pop(_t, None)


def _snap_date(v: str) -> str | None:
    # '0000-00-00', '2024-00-15', '0000-01-01': not dates.
    if v[5:7] == "00" or v[8:10] == "00" or v[:4] == "0000":
        return None
    return v


def _snap_datetime(v: str) -> str | None:
    # '2024-01-31 12:00:00[.123]' -> the stream's spelling: fraction as 6 digits, left out when zero.
    if v[5:7] == "00" or v[8:10] == "00" or v[:4] == "0000":
        return None
    if len(v) > 19:
        frac = v[20:]
        if frac.strip("0"):
            return v[:20] + frac.ljust(6, "0")
        return v[:19]
    return v


def _snap_timestamp(v: str) -> str | None:
    d = _snap_datetime(v)
    return None if d is None else d + "+00"


def _bits(n: int) -> Converter:
    def convert(v: bytes) -> str:
        return format(int.from_bytes(v, "big"), f"0{n}b")

    return convert


def _bit1(v: bytes) -> bool:
    return int.from_bytes(v, "big") != 0


def _nonzero(v: int) -> bool:
    return v != 0


def _geometry(v: bytes) -> str:
    # MySQL's internal geometry value: a 4-byte SRID (little-endian), then standard WKB.
    return b64(v[4:])


def snapshot_converter(col: ColumnDef, tinyint1_as_boolean: bool = True) -> Converter | None:
    """Turns the value PyMySQL returns (with SNAPSHOT_CONV) into the envelope value; None: as is."""
    t = col.data_type
    if t == "bit":
        return _bit1 if col.precision == 1 else _bits(col.precision or 1)
    if is_boolean(col, tinyint1_as_boolean):
        return _nonzero
    if t == "bigint" and col.unsigned:
        return str
    if t == "float":
        return float32
    if t == "date":
        return _snap_date
    if t == "datetime":
        return _snap_datetime
    if t == "timestamp":
        return _snap_timestamp
    if t in GEOMETRIES:
        return _geometry
    if t in BINARIES:
        return b64
    # integers, double, decimal (text), time (text, fsp digits), year, strings, enum, set, json,
    # uuid, inet4, inet6 (text): already the envelope value.
    return None


def snapshot_expr(col: ColumnDef, quoted: str) -> str:
    """The select-list expression for a column: FLOAT widened to DOUBLE, because the text protocol
    prints a FLOAT with 6 significant digits only."""
    if col.data_type == "float":
        return f"({quoted} + 0E0)"
    return quoted


# --- information_schema rows -> ColumnDef ---------------------------------------------------------

_JSON_CHECK = re.compile(r"json_valid\(\s*`?((?:[^`]|``)+?)`?\s*\)", re.I)


def json_columns(check_clauses: list[str]) -> set[str]:
    """Column names that a MariaDB CHECK (json_valid(`col`)) marks as JSON."""
    out = set()
    for clause in check_clauses:
        for m in _JSON_CHECK.finditer(clause or ""):
            out.add(m.group(1).replace("``", "`"))
    return out


def column_def(row: dict[str, Any], json_names: set[str]) -> ColumnDef:
    """A ColumnDef from an information_schema.COLUMNS row (dict with upper-case keys)."""
    data_type = str(row["DATA_TYPE"]).lower()
    column_type = str(row["COLUMN_TYPE"]).lower()
    name = row["COLUMN_NAME"]
    if data_type == "longtext" and name in json_names:
        data_type = "json"
    precision = row.get("NUMERIC_PRECISION")
    scale = row.get("NUMERIC_SCALE")
    if data_type == "bit":
        m = re.match(r"bit\((\d+)\)", column_type)
        precision, scale = (int(m.group(1)) if m else 1), None
    elif data_type not in ("decimal", "numeric"):
        precision = scale = None
    fsp = row.get("DATETIME_PRECISION")
    if data_type not in ("time", "datetime", "timestamp"):
        fsp = None
    length = row.get("CHARACTER_MAXIMUM_LENGTH") if data_type in ("char", "binary", "varchar", "varbinary") else None
    return ColumnDef(
        name=name,
        data_type=data_type,
        column_type=column_type,
        nullable=str(row["IS_NULLABLE"]).upper() == "YES",
        charset=row.get("CHARACTER_SET_NAME") if data_type in TEXTS or data_type in ("enum", "set", "json") else None,
        precision=None if precision is None else int(precision),
        scale=None if scale is None else int(scale),
        fsp=None if fsp is None else int(fsp),
        length=None if length is None else int(length),
        default=None if row.get("COLUMN_DEFAULT") in (None, "NULL") else str(row["COLUMN_DEFAULT"]),
        generated="GENERATED" in str(row.get("EXTRA") or "").upper(),
    )


# --- the binlog's view of a column --------------------------------------------------------------

# The table map's type code each information_schema type is written with.
_BINLOG_TYPES: dict[str, tuple[int, ...]] = {
    "tinyint": (F.TINY,), "smallint": (F.SHORT,), "mediumint": (F.INT24,), "int": (F.LONG,), "integer": (F.LONG,),
    "bigint": (F.LONGLONG,), "float": (F.FLOAT,), "double": (F.DOUBLE,), "real": (F.DOUBLE,),
    "decimal": (F.NEWDECIMAL,), "numeric": (F.NEWDECIMAL,), "year": (F.YEAR,), "date": (F.DATE, F.NEWDATE),
    "datetime": (F.DATETIME2, F.DATETIME), "timestamp": (F.TIMESTAMP2, F.TIMESTAMP), "time": (F.TIME2, F.TIME),
    "bit": (F.BIT,), "char": (F.STRING,), "binary": (F.STRING,), "varchar": (F.VARCHAR, F.VAR_STRING),
    "varbinary": (F.VARCHAR, F.VAR_STRING), "enum": (F.ENUM,), "set": (F.SET,), "json": (F.JSON, F.BLOB),
    "uuid": (F.STRING,), "inet6": (F.STRING,), "inet4": (F.STRING,),
    **dict.fromkeys(("tinytext", "text", "mediumtext", "longtext", "tinyblob", "blob", "mediumblob", "longblob"), (F.BLOB,)),
    **dict.fromkeys(GEOMETRIES, (F.GEOMETRY,)),
}
_NUMERIC_CODES = {F.TINY, F.SHORT, F.INT24, F.LONG, F.LONGLONG, F.NEWDECIMAL, F.FLOAT, F.DOUBLE}
_STRING_CODES = {F.STRING, F.VARCHAR, F.VAR_STRING, F.BLOB}


def matches_binlog(col: ColumnDef, lib_col: Any) -> bool:
    """Whether a history ColumnDef describes the table map's column (same name and binlog shape), so
    its details (TINYINT(1), JSON, UUID, the spelling) may be trusted for this table map."""
    if col.name != lib_col.name or lib_col.type not in _BINLOG_TYPES.get(col.data_type, ()):
        return False
    code = lib_col.type
    if code in _NUMERIC_CODES and code != F.NEWDECIMAL and col.unsigned != bool(lib_col.unsigned):
        return False
    if code == F.NEWDECIMAL and (col.precision, col.scale) != (lib_col.precision, lib_col.decimals):
        return False
    if code == F.BIT and col.precision != lib_col.bits:
        return False
    if code in _STRING_CODES:
        binary = lib_col.character_set_name == "binary"
        if binary != (col.data_type in BINARIES or col.data_type in ("uuid", "inet6", "inet4")):
            return False
    if code in (F.TIME2, F.DATETIME2, F.TIMESTAMP2) and (col.fsp or 0) != lib_col.fsp:
        return False
    if col.data_type in ("enum", "set"):
        members = lib_col.enum_values[1:] if code == F.ENUM else lib_col.set_values
        # pymysqlreplication decodes members as UTF-8 and leaves "" where that fails (latin1 members).
        mine = enum_members(col.column_type)
        if members is not None and (len(members) != len(mine) or any(b not in ("", h) for b, h in zip(members, mine, strict=False))):
            return False
    return True


def enum_members(column_type: str) -> list[str]:
    """The members of `enum('a','b''c')` / `set(...)` as written."""
    inner = column_type[column_type.index("(") + 1 : column_type.rindex(")")]
    return [m.replace("''", "'").replace("\\\\", "\\") for m in re.findall(r"'((?:[^']|'')*)'", inner)]


_BLOB_PREFIX = {1: "tiny", 2: "", 3: "medium", 4: "long"}


def def_from_binlog(lib_col: Any, nullable: bool, charset: str | None) -> ColumnDef:
    """A ColumnDef from the table map alone (no history describes this column): everything but
    display widths (TINYINT(1) is a plain TINYINT here), MariaDB's JSON alias and exact lengths."""
    code = lib_col.type
    name = lib_col.name
    u = " unsigned" if lib_col.unsigned else ""
    binary = getattr(lib_col, "character_set_name", None) == "binary"

    def d(data_type: str, column_type: str | None = None, **kw: Any) -> ColumnDef:
        return ColumnDef(name, data_type, column_type or data_type, nullable, **kw)

    ints = {F.TINY: "tinyint", F.SHORT: "smallint", F.INT24: "mediumint", F.LONG: "int", F.LONGLONG: "bigint"}
    if code in ints:
        return d(ints[code], ints[code] + u)
    if code == F.NEWDECIMAL:
        return d("decimal", f"decimal({lib_col.precision},{lib_col.decimals}){u}", precision=lib_col.precision, scale=lib_col.decimals)
    if code == F.FLOAT:
        return d("float", "float" + u)
    if code == F.DOUBLE:
        return d("double", "double" + u)
    if code == F.YEAR:
        return d("year", "year(4)")
    if code in (F.DATE, F.NEWDATE):
        return d("date")
    if code in (F.DATETIME2, F.DATETIME, F.TIMESTAMP2, F.TIMESTAMP, F.TIME2, F.TIME):
        base = {F.DATETIME2: "datetime", F.DATETIME: "datetime", F.TIMESTAMP2: "timestamp", F.TIMESTAMP: "timestamp"}.get(code, "time")
        fsp = getattr(lib_col, "fsp", 0) or 0
        return d(base, f"{base}({fsp})" if fsp else base, fsp=fsp)
    if code == F.BIT:
        return d("bit", f"bit({lib_col.bits})", precision=lib_col.bits)
    if code == F.ENUM:
        members = lib_col.enum_values[1:] if lib_col.enum_values else []
        return d("enum", "enum(" + ",".join("'" + m.replace("'", "''") + "'" for m in members) + ")", charset=charset)
    if code == F.SET:
        members = lib_col.set_values or []
        return d("set", "set(" + ",".join("'" + m.replace("'", "''") + "'" for m in members) + ")", charset=charset)
    if code == F.STRING:
        return d("binary", f"binary({lib_col.max_length})", length=lib_col.max_length) if binary else d("char", charset=charset)
    if code in (F.VARCHAR, F.VAR_STRING):
        return d("varbinary", f"varbinary({lib_col.max_length})", length=lib_col.max_length) if binary else d("varchar", charset=charset)
    if code == F.BLOB:
        prefix = _BLOB_PREFIX.get(lib_col.length_size, "")
        return d(prefix + "blob") if binary else d(prefix + "text", charset=charset)
    if code == F.JSON:
        return d("json")
    if code == F.GEOMETRY:
        return d("geometry")
    raise ValueError(f"column {name!r}: binlog column type {code} is not supported")
