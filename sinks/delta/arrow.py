"""The Arrow side of the lake types (lakeward.core.types): the Arrow type that stores each lake
type in Delta, the physical types every sink commit writes, the table features a type needs, and a
column of JSON envelope values turned back into an Arrow array.
"""

from __future__ import annotations

import base64
from functools import cache

import pyarrow as pa
import pyarrow.compute as pc

from lakeward.core.errors import SchemaChangeError
from lakeward.core.types import ARRAY as _ARRAY
from lakeward.core.types import DECIMAL as _DECIMAL

PRIMITIVE: dict[str, pa.DataType] = {
    "boolean": pa.bool_(),
    "byte": pa.int8(),
    "short": pa.int16(),
    "integer": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "string": pa.large_string(),
    "binary": pa.large_binary(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "timestamp_ntz": pa.timestamp("us"),
}


# Delta (like Spark) cannot store infinite dates and timestamps: they become the extremes of the range.
_INFINITY = {
    "date": ("9999-12-31", "0001-01-01"),
    "timestamp": ("9999-12-31 23:59:59.999999+00", "0001-01-01 00:00:00+00"),
    "timestamp_ntz": ("9999-12-31 23:59:59.999999", "0001-01-01 00:00:00"),
}


@cache
def arrow_type(lake_type: str) -> pa.DataType:
    """The Arrow type that stores `lake_type` in Delta."""
    if lake_type in PRIMITIVE:
        return PRIMITIVE[lake_type]
    if m := _DECIMAL.match(lake_type):
        return pa.decimal128(int(m.group(1)), int(m.group(2)))
    if m := _ARRAY.match(lake_type):
        return pa.large_list(arrow_type(m.group(1)))
    raise ValueError(f"unknown lake type {lake_type!r}")


# Physical Arrow types of the Parquet files every sink commit writes. delta-rs' MERGE (DataFusion)
# writes strings and binaries as views and lists with 32-bit offsets and an `element` field, whatever
# its input; plain writes store their input's types. So every commit kind is cast to what MERGE
# writes, and a column has one physical type in every file the sink writes (docs/type-mapping.md).
_VIEW: dict[pa.DataType, pa.DataType] = {
    pa.string(): pa.string_view(), pa.large_string(): pa.string_view(), pa.string_view(): pa.string_view(),
    pa.binary(): pa.binary_view(), pa.large_binary(): pa.binary_view(), pa.binary_view(): pa.binary_view(),
}


def storage_type(t: pa.DataType) -> pa.DataType:
    """The physical Arrow type a sink commit writes for a column of Arrow type `t`."""
    if t in _VIEW:
        return _VIEW[t]
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        v = t.value_field
        return pa.list_(pa.field("element", storage_type(v.type), v.nullable, v.metadata))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, storage_type(f.type), f.nullable, f.metadata) for f in t])
    if pa.types.is_map(t):
        return pa.map_(storage_type(t.key_type), storage_type(t.item_type))
    return t


def storage_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` with every column in its physical type (see `storage_type`)."""
    return pa.schema([pa.field(f.name, storage_type(f.type), f.nullable, f.metadata) for f in schema],
                     metadata=schema.metadata)


def to_storage(table: pa.Table) -> pa.Table:
    """`table` cast to its physical types; the same table when it has them already."""
    target = storage_schema(table.schema)
    return table if target.equals(table.schema) else table.cast(target)


TIMESTAMP_NTZ_FEATURE = "timestampNtz"


def required_features(t: pa.DataType) -> set[str]:
    """Delta table features (protocol names) a column of Arrow type `t` needs, nested types included.

    `timestamp_ntz` (an Arrow timestamp without a time zone) needs `timestampNtz` (reader 3 /
    writer 7): without it delta-rs and Spark refuse to read the table at all.
    """
    if pa.types.is_timestamp(t):
        return set() if t.tz else {TIMESTAMP_NTZ_FEATURE}
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return required_features(t.value_type)
    if pa.types.is_struct(t):
        return set().union(*(required_features(f.type) for f in t))
    if pa.types.is_map(t):
        return required_features(t.key_type) | required_features(t.item_type)
    return set()


def same_storage(a: pa.DataType, b: pa.DataType) -> bool:
    """Whether two Arrow types store the same Delta type (Delta reads strings back as large or not)."""
    norm = {pa.string(): pa.large_string(), pa.binary(): pa.large_binary(), pa.string_view(): pa.large_string(),
            pa.binary_view(): pa.large_binary()}
    if pa.types.is_list(a) or pa.types.is_large_list(a):
        return (pa.types.is_list(b) or pa.types.is_large_list(b)) and same_storage(a.value_type, b.value_type)
    return norm.get(a, a) == norm.get(b, b)


def to_arrow(values: list, lake_type: str) -> pa.Array:
    """Turn a column of JSON-decoded envelope values (None = null) into an Arrow array of the lake type."""
    target = arrow_type(lake_type)
    if lake_type in ("boolean", "byte", "short", "integer", "long", "string"):
        return pa.array(values, type=target)
    if lake_type in ("float", "double"):
        return pa.array([float(v) if isinstance(v, str) else v for v in values], type=target)
    if lake_type == "binary":
        return pa.array([None if v is None else base64.b64decode(v) for v in values], type=target)
    if lake_type in _INFINITY:
        hi, lo = _INFINITY[lake_type]
        fixed = [hi if v == "infinity" else lo if v == "-infinity" else v for v in values]
        return pc.cast(pa.array(fixed, type=pa.string()), target)
    if lake_type.startswith("decimal("):
        return pc.cast(pa.array(values, type=pa.string()), target)
    if m := _ARRAY.match(lake_type):
        element = m.group(1)
        offsets = [0]
        flat: list = []
        validity = []
        for v in values:
            if v is not None:
                flat.extend(v)
            validity.append(v is not None)
            offsets.append(len(flat))
        inner = to_arrow(flat, element)
        mask = pa.array([not ok for ok in validity], type=pa.bool_())
        return pa.LargeListArray.from_arrays(pa.array(offsets, type=pa.int64()), inner, mask=mask)
    raise ValueError(f"unknown lake type {lake_type!r}")


def check_evolution(table: str, column: str, old: pa.DataType, new: pa.DataType) -> None:
    """Raise SchemaChangeError if a column's type changed in a way the Delta table can't store."""
    if same_storage(old, new):
        return
    raise SchemaChangeError(
        f"table {table}: column {column!r} changed type from {old} to {new}, which the Delta table cannot "
        f"store; stopped this table. Rebuild it (`lakeward replay --table {table} --from-beginning` after "
        f"dropping the lake table) or add the column under a new name."
    )
