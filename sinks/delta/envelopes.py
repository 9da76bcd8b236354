"""A batch of raw Debezium envelopes -> Arrow columns, parsed in C++ (pyarrow.json), not per row in Python.

The parse reads only what a flush writes (`op`, the `before` and `after` columns the lake table
has, `source.ts_ms`, `source.txId`) with an explicit schema derived from the lake types, never from
the JSON values. Where the C extension is built, `_records.split` first cuts the `before` and `after`
objects out of the envelopes (and reads `op`, `ts_ms` and `txId` itself), so the reader parses only
the row images; its scan gives up on anything it is not sure of, and the envelopes are then read
whole (`read_whole`): both ways give the same table. Each column then becomes its lake type by the same conversions as
`arrow.to_arrow` (the same Arrow casts; base64 binaries decoded by the same function), so both
ways give the same values. The reader is strict: a value of another JSON kind than its column's
(a "NaN" string among numbers, a number where a string belongs, an integer that does not fit) fails
the whole parse, and the planner then decodes the batch per event with orjson, which names the
offending event or writes it exactly as before.
"""

from __future__ import annotations

import base64

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from lakeward.core.types import ARRAY
from lakeward.sinks.delta.arrow import _INFINITY as INFINITY  # the same ±infinity rule as to_arrow
from lakeward.sinks.delta.arrow import arrow_type
from lakeward.sinks.delta.fetch import native

_INTEGERS = frozenset(("byte", "short", "integer", "long"))
_SOURCE = pa.struct([("ts_ms", pa.int64()), ("txId", pa.int64())])
_MIN_BLOCK = 4 << 20

ConversionError = (pa.ArrowException, ValueError, TypeError, OverflowError)
"""What a column's conversion may raise: the batch is then decoded per event instead."""


def json_type(lake_type: str) -> pa.DataType:
    """The Arrow type the JSON reader parses a column of `lake_type` into (before `from_json`)."""
    if lake_type == "boolean":
        return pa.bool_()
    if lake_type in _INTEGERS:
        return pa.int64()
    if lake_type in ("float", "double"):
        return pa.float64()
    if m := ARRAY.match(lake_type):
        return pa.list_(json_type(m.group(1)))
    return pa.string()  # string, binary (base64), date and timestamps (text), decimal (text)


def from_json(values: pa.Array, lake_type: str) -> pa.Array:
    """A column as the JSON reader parsed it (`json_type`) -> its lake type (`arrow.to_arrow`'s values)."""
    target = arrow_type(lake_type)
    if lake_type == "binary":
        decode = base64.b64decode
        return pa.array([None if v is None else decode(v) for v in values.to_pylist()], type=target)
    if lake_type in INFINITY:
        hi, lo = INFINITY[lake_type]
        values = pc.if_else(pc.equal(values, "infinity"), hi, pc.if_else(pc.equal(values, "-infinity"), lo, values))
        return pc.cast(values, target)
    if m := ARRAY.match(lake_type):
        lists = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        start, end = lists.offsets[0].as_py(), lists.offsets[-1].as_py()
        offsets = pc.subtract(lists.offsets, start).cast(pa.int64())
        inner = from_json(lists.values.slice(start, end - start), m.group(1))
        return pa.LargeListArray.from_arrays(offsets, inner, mask=lists.is_null())
    return pc.cast(values, target)  # booleans, integers (range-checked), floats, strings, decimals


def read(values: list[bytes], after: dict[str, str], before: dict[str, str]) -> pa.Table | None:
    """Parse envelopes into a table with columns `op`, `before`, `after` (structs of the named
    columns, in JSON types), `ts_ms` and `txid`; None when the reader rejects any of them."""
    if native is not None and (parts := native.split(values, bool(before), bool(after))) is not None:
        return _read_parts(len(values), parts, after, before)
    return read_whole(values, after, before)


def _json_fields(columns: dict[str, str]) -> list[tuple[str, pa.DataType]]:
    """The fields the JSON reader parses a row image's `columns` (name -> lake type) into."""
    return [(c, json_type(t)) for c, t in columns.items()]


def _read_json(data: bytes, schema: pa.Schema, rows: int, longest: int) -> pa.Table | None:
    """One JSON object per line -> a table of `schema` (other fields ignored); None when the reader
    refuses them or the lines are not `rows` documents (e.g. a value that is two, or none)."""
    try:
        table = pj.read_json(
            pa.py_buffer(data),
            read_options=pj.ReadOptions(use_threads=False, block_size=max(_MIN_BLOCK, longest + 1)),
            parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
    except pa.ArrowException:
        return None
    return table if table.num_rows == rows else None


def _lines(data: bytes, columns: dict[str, str], valid: pa.Array) -> pa.Array | None:
    """One `before` or `after` object per line ({} where it is null) -> a struct array of `columns`."""
    schema = pa.schema(_json_fields(columns))
    table = _read_json(data, schema, len(valid), len(data))
    if table is None:
        return None
    arrays = [col.combine_chunks() for col in table.columns]
    return pa.StructArray.from_arrays(arrays, fields=list(schema), mask=pc.invert(valid))


def _read_parts(n: int, parts: tuple[bytes, ...], after: dict[str, str], before: dict[str, str]) -> pa.Table | None:
    """`read` from the parts `_records.split` cut out of the envelopes: only `before` and `after`
    go through the JSON reader."""
    b_lines, b_valid, a_lines, a_valid, op_data, op_valid, op_offsets, ts, ts_valid, tx, tx_valid = parts

    def valid(flags: bytes) -> pa.Array:
        return pc.not_equal(pa.Array.from_buffers(pa.uint8(), n, [None, pa.py_buffer(flags)]), 0)

    def nullable(array: pa.Array, flags: bytes) -> pa.Array:
        return pc.if_else(valid(flags), array, pa.scalar(None, array.type))

    columns: dict[str, pa.Array] = {
        "op": nullable(pa.StringArray.from_buffers(n, pa.py_buffer(op_offsets), pa.py_buffer(op_data)), op_valid)}
    for name, lines, flags, fields in (("before", b_lines, b_valid, before), ("after", a_lines, a_valid, after)):
        if fields:
            struct = _lines(lines, fields, valid(flags))
            if struct is None:
                return None
            columns[name] = struct
    columns["ts_ms"] = nullable(pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(ts)]), ts_valid)
    columns["txid"] = nullable(pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(tx)]), tx_valid)
    return pa.table(columns)


def read_whole(values: list[bytes], after: dict[str, str], before: dict[str, str]) -> pa.Table | None:
    """`read`, every envelope through the JSON reader (where `_records.split` gives up, or is not built)."""
    fields = [pa.field("op", pa.string())]
    if before:
        fields.append(pa.field("before", pa.struct(_json_fields(before))))
    if after:
        fields.append(pa.field("after", pa.struct(_json_fields(after))))
    fields.append(pa.field("source", _SOURCE))
    table = _read_json(b"\n".join(values), pa.schema(fields), len(values), max(map(len, values), default=0))
    if table is None:
        return None
    source = table.column("source")
    table = table.drop_columns(["source"])
    return table.append_column("ts_ms", pc.struct_field(source, [0])).append_column("txid", pc.struct_field(source, [1]))
