"""PostgreSQL types -> lake types, and PostgreSQL text values -> envelope JSON values.

Both pgoutput (text format) and the snapshot (`SELECT col::text`) hand us every value in
PostgreSQL's text output, produced under fixed session settings (see SESSION_OPTIONS), so one
converter per column serves both. The full table is in docs/type-mapping.md.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

# Output settings for every connection whose text values we decode: UTC timestamps, ISO dates,
# ISO 8601 intervals and shortest-exact floats. The walsender formats pgoutput values with them too.
SESSION_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=iso_8601 -c extra_float_digits=3 -c bytea_output=hex"

Converter = Callable[[str], object]

# Delta decimals hold at most 38 digits.
MAX_DECIMAL_PRECISION = 38


def _bool(v: str) -> bool:
    return v == "t"


def _float(v: str) -> object:
    # NaN and ±Infinity stay strings: JSON has no literal for them (see lakeward.core.types).
    return float(v) if v[-1].isdigit() else v


def _bytea(v: str) -> str:
    return base64.b64encode(bytes.fromhex(v[2:])).decode()


def _text(v: str) -> str:
    return v


_STRING_TYPES = {
    "text", "varchar", "bpchar", "name", "char", "citext", "time", "timetz", "interval", "json", "jsonb",
    "jsonpath", "xml", "uuid", "money", "inet", "cidr", "macaddr", "macaddr8", "bit", "varbit", "point",
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
    "date": ("date", _text),
    "timestamp": ("timestamp_ntz", _text),
    "timestamptz": ("timestamp", _text),
    **{name: ("string", _text) for name in _STRING_TYPES},
}


@dataclass(frozen=True, slots=True)
class PgType:
    """What the catalog says about a type (domains already resolved to their base type)."""

    name: str
    """pg_type.typname of the (base) type, e.g. `int4`, `_int4` for int4[]."""
    kind: str
    """pg_type.typtype: b base, e enum, r range, m multirange, c composite, p pseudo."""
    element: PgType | None = None
    """For arrays: the element type."""


def numeric_precision_scale(typmod: int) -> tuple[int, int] | None:
    if typmod < 4:
        return None  # unconstrained numeric
    precision = ((typmod - 4) >> 16) & 0xFFFF
    scale = (typmod - 4) & 0x7FF
    if scale & 0x400:  # PostgreSQL 15 allows negative scales (11-bit two's complement)
        scale -= 0x800
    return precision, scale


def map_type(t: PgType, typmod: int) -> tuple[str, Converter]:
    """The lake type of a column and the converter from its text value to the envelope's JSON value."""
    if t.element is not None:
        element_lake, element_conv = map_type(t.element, typmod)
        if element_lake.startswith("array<") or t.element.name == "box":
            return "string", _text
        return f"array<{element_lake}>", _array_converter(element_conv)
    if t.kind == "e":
        return "string", _text
    if t.name == "numeric":
        ps = numeric_precision_scale(typmod)
        if ps is None or ps[0] > MAX_DECIMAL_PRECISION or ps[1] < 0:
            # Unconstrained (or wider than Delta can hold) numerics keep their exact digits as text.
            return "string", _text
        return f"decimal({ps[0]},{ps[1]})", _text
    if t.name in _SCALARS:
        return _SCALARS[t.name]
    # Ranges, composites, extension types: their text form is lossless and readable.
    return "string", _text


def parse_array(text: str) -> list[str | None]:
    """Split a one-dimensional PostgreSQL array literal into element texts (None for NULL).

    Written by hand: psycopg parses arrays only into Python objects through its loaders, and here
    we need the elements' text to reuse the per-type converters.
    """
    if text.startswith("["):  # explicit bounds, e.g. [0:2]={1,2,3}
        text = text[text.index("=") + 1 :]
    if text == "{}":
        return []
    if not (text.startswith("{") and text.endswith("}")):
        raise ValueError(f"not an array literal: {text[:40]!r}")
    out: list[str | None] = []
    i, n = 1, len(text) - 1
    while i < n:
        c = text[i]
        if c == "{":
            raise ValueError("multi-dimensional arrays are not supported")
        if c == '"':
            buf = []
            i += 1
            while text[i] != '"':
                if text[i] == "\\":
                    i += 1
                buf.append(text[i])
                i += 1
            out.append("".join(buf))
            i += 1
        else:
            j = text.find(",", i)
            j = n if j < 0 or j > n else j
            item = text[i:j].strip()
            out.append(None if item == "NULL" else item)
            i = j
        if i < n and text[i] == ",":
            i += 1
    return out


def _array_converter(element: Converter) -> Converter:
    def convert(v: str) -> list:
        return [None if e is None else element(e) for e in parse_array(v)]

    return convert
