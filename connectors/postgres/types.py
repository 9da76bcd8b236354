"""PostgreSQL types -> lake types, and PostgreSQL text values -> envelope JSON values.

Both pgoutput (text format) and the snapshot (`SELECT col::text`) hand us every value in
PostgreSQL's text output, produced under fixed session settings (see SESSION_OPTIONS), so one
converter per column serves both. Where `::text` differs from the type's output function (boolean
gives `true` instead of `t`, inet appends `/32` to hosts, character(n) drops its padding) the
converter accepts both spellings. The full table is in docs/type-mapping.md.

Converters run once per value: keep them to a comparison or two on the common path.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass

# Output settings for every connection whose text values we decode: UTC timestamps, ISO dates,
# ISO 8601 intervals, shortest-exact floats, hex bytea and the C locale's money format ($1,234.56).
# The walsender formats pgoutput values with them too.
SESSION_OPTIONS = (
    "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=iso_8601 -c extra_float_digits=3 -c bytea_output=hex "
    "-c lc_monetary=C"
)

Converter = Callable[[str], object]

# Delta decimals hold at most 38 digits.
MAX_DECIMAL_PRECISION = 38

# money is a 64-bit count of cents under lc_monetary=C: at most 19 digits, 2 after the point.
MONEY_LAKE_TYPE = "decimal(19,2)"


def _bool(v: str) -> bool:
    return v[0] == "t"  # `t` from the output function, `true` from the snapshot's ::text


def _float(v: str) -> object:
    # NaN and ±Infinity stay strings: JSON has no literal for them (see lakeward.core.types).
    return float(v) if v[-1].isdigit() else v


def _bytea(v: str) -> str:
    return base64.b64encode(bytes.fromhex(v[2:])).decode()


def _text(v: str) -> str:
    return v


def _decimal(v: str) -> str | None:
    # A constrained numeric column may hold NaN (never ±Infinity); a Delta decimal cannot: null.
    return None if v == "NaN" else v


def _money(v: str) -> str:
    # lc_monetary=C: `$1,234.56`, `-$1,234.56`.
    return v.replace("$", "").replace(",", "")


def _bpchar(v: str) -> str:
    # character(n) pads with spaces that PostgreSQL itself treats as insignificant; ::text strips them.
    return v.rstrip(" ")


def _inet(v: str) -> str:
    # inet's output omits the netmask of a host; inet::text (the snapshot) always writes it.
    if not v.endswith(_HOST_MASKS):
        return v
    if v[-1] == "8":  # /128: an IPv6 host
        return v[:-4]
    return v if ":" in v else v[:-3]  # /32 is a host in IPv4 only


_HOST_MASKS = ("/32", "/128")


def _date(v: str) -> str:
    # Delta dates run from 0001-01-01 to 9999-12-31: BC dates and years past 9999 are written as
    # -infinity / infinity, which the sink stores as those extremes (like PostgreSQL's ±infinity).
    if len(v) == 10:
        return v
    if v[-1] == "C":  # `0044-03-15 BC`
        return "-infinity"
    return v if v[-1] == "y" else "infinity"  # `±infinity` or a year with five or more digits


def _timestamp(v: str) -> str:
    # `2024-01-31 12:00:00.123456[+00]`; out of Delta's range as for dates.
    if v[4] == "-" and v[-1] != "C":
        return v
    if v[-1] == "C":
        return "-infinity"
    return v if v[-1] == "y" else "infinity"


_STRING_TYPES = {
    "text", "varchar", "name", "char", "citext", "time", "timetz", "interval", "json", "jsonb",
    "jsonpath", "xml", "uuid", "cidr", "macaddr", "macaddr8", "bit", "varbit", "point",
    "line", "lseg", "box", "path", "polygon", "circle", "tsvector", "tsquery", "pg_lsn", "txid_snapshot",
    "pg_snapshot", "regclass", "regtype", "regproc", "regprocedure", "regoper", "regoperator", "regconfig",
    "regdictionary", "regnamespace", "regrole", "regcollation", "xid", "xid8", "cid", "tid", "int2vector",
    "oidvector", "aclitem", "refcursor",
}

_SCALARS: dict[str, tuple[str, Converter]] = {
    "bool": ("boolean", _bool),
    "int2": ("short", int),
    "int4": ("integer", int),
    "int8": ("long", int),
    "oid": ("long", int),
    "float4": ("float", _float),
    "float8": ("double", _float),
    "bytea": ("binary", _bytea),
    "date": ("date", _date),
    "timestamp": ("timestamp_ntz", _timestamp),
    "timestamptz": ("timestamp", _timestamp),
    "money": (MONEY_LAKE_TYPE, _money),
    "bpchar": ("string", _bpchar),
    "inet": ("string", _inet),
    **dict.fromkeys(_STRING_TYPES, ("string", _text)),
}

# Array types whose elements are separated by something else than a comma (pg_type.typdelim).
_DELIMITERS = {"box": ";"}


@dataclass(frozen=True, slots=True)
class PgType:
    """What the catalog says about a type (domains already resolved to their base type)."""

    name: str
    """pg_type.typname of the (base) type, e.g. `int4`, `_int4` for int4[]."""
    kind: str
    """pg_type.typtype: b base, e enum, r range, m multirange, c composite, p pseudo."""
    element: PgType | None = None
    """For arrays: the element type."""
    typmod: int = -1
    """For a domain: the typmod of its base type (pg_type.typtypmod), e.g. numeric(8,3) of
    `CREATE DOMAIN price AS numeric(8,3)`; a column of a domain type has atttypmod -1."""


def numeric_precision_scale(typmod: int) -> tuple[int, int] | None:
    if typmod < 4:
        return None  # unconstrained numeric
    precision = ((typmod - 4) >> 16) & 0xFFFF
    scale = (typmod - 4) & 0x7FF
    if scale & 0x400:  # PostgreSQL 15 allows negative scales (11-bit two's complement)
        scale -= 0x800
    return precision, scale


def numeric_lake_type(typmod: int) -> str:
    """decimal(p,s) when Delta can hold every value of numeric(p,s) exactly, else string."""
    ps = numeric_precision_scale(typmod)
    if ps is None:
        return "string"  # unconstrained: any number of digits, and ±Infinity
    precision, scale = ps
    if scale < 0:  # numeric(5,-2) rounds to hundreds: integers of up to 7 digits
        precision, scale = precision - scale, 0
    elif scale > precision:  # numeric(2,5): |v| < 0.001, 5 digits after the point
        precision = scale
    if precision > MAX_DECIMAL_PRECISION:
        return "string"
    return f"decimal({precision},{scale})"


def map_type(t: PgType, typmod: int) -> tuple[str, Converter]:
    """The lake type of a column and the converter from its text value to the envelope's JSON value."""
    if typmod < 0:
        typmod = t.typmod
    if t.element is not None and t.name not in ("int2vector", "oidvector"):
        element_lake, element_conv = map_type(t.element, typmod)
        if element_lake.startswith("array<"):  # not created by PostgreSQL; be safe
            return "string", _text
        return f"array<{element_lake}>", _array_converter(element_conv, _DELIMITERS.get(t.element.name, ","))
    if t.kind == "e":
        return "string", _text
    if t.name == "numeric":
        lake = numeric_lake_type(typmod)
        # Unconstrained (or wider than Delta can hold) numerics keep their exact digits as text.
        return lake, (_text if lake == "string" else _decimal)
    if t.name in _SCALARS:
        return _SCALARS[t.name]
    # Ranges, multiranges, composites, extension types: their text form is lossless and readable.
    return "string", _text


# Array output quotes an element holding a delimiter, brace, quote, backslash or whitespace (or spelled
# NULL), escaping only `"` and `\` inside the quotes; everything else is a bare element.
_QUOTED = {d: re.compile(r'"((?:[^"\\]|\\.)*)"|([^{}"' + d + r"]+)", re.DOTALL) for d in (",", ";")}
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def parse_array(text: str, delim: str = ",") -> list[str | None]:
    """The element texts of a PostgreSQL array's text output (None for NULL), in storage order.

    Written by hand: psycopg parses arrays only into Python objects through its loaders, and here
    we need the elements' text to reuse the per-type converters. Explicit lower bounds
    (`[0:2]={1,2,3}`) are dropped; a multi-dimensional value is flattened in row-major order
    (`{{1,2},{3,4}}` -> 1, 2, 3, 4, as `unnest` does): the column's type (int[] for 1-D and 2-D
    alike) can't tell, and one value must never stop the source.
    """
    if text[0] == "[":  # explicit bounds, e.g. [0:2]={1,2,3} or [1:2][0:1]={{...}}
        text = text[text.index("=") + 1 :]
    if not (text[0] == "{" and text[-1] == "}"):
        raise ValueError(f"not an array literal: {text[:40]!r}")
    if '"' not in text:
        # Common case: no element needed quoting, so no element holds a delimiter, brace or space.
        inner = text[1:-1]
        if not inner:
            return []
        if inner[0] == "{":
            inner = inner.replace("{", "").replace("}", "")
        return [None if e == "NULL" else e for e in inner.split(delim)]
    out: list[str | None] = []
    for quoted, bare in _QUOTED[delim].findall(text):
        if bare:
            out.append(None if bare == "NULL" else bare)
        else:  # a quoted element (possibly ""): `"NULL"` is the string NULL
            out.append(_ESCAPE.sub(r"\1", quoted) if "\\" in quoted else quoted)
    return out


def _array_converter(element: Converter, delim: str = ",") -> Converter:
    if element is _text:
        def convert(v: str) -> list:
            return parse_array(v, delim)
    else:
        def convert(v: str) -> list:
            return [None if e is None else element(e) for e in parse_array(v, delim)]

    return convert
