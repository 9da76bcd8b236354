"""The machinery of the type matrices (test_pg_types.py, test_mysql_types.py): one wide table with a
column per case, its rows read by the real source as snapshot rows and again as streamed inserts;
each case then checks its column's types and values, and one check writes every column to Delta."""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.schema import ArrayType

from lakeward.core import broker
from lakeward.core.config import BrokerConfig
from lakeward.core.events import TableSchema
from lakeward.sinks.delta.arrow import to_arrow


@dataclass(frozen=True)
class Case:
    name: str
    """Test id and column name."""
    ddl: str
    """The column type as written in CREATE TABLE."""
    values: tuple[str, ...]
    """SQL literals, one per row."""
    lake: str
    expected: tuple
    """Python values of to_arrow(envelope values, lake).to_pylist()."""
    source: str | None = None
    """The source type the schema reports (PostgreSQL: format_type(); MariaDB: COLUMN_TYPE), when it differs from `ddl`."""
    xfail: str | None = None
    """Why this case fails today (strict: it must start passing once the reason is fixed)."""


def f32(x: float) -> float:
    """The float4 nearest to x, as Python reads it back from Arrow."""
    return struct.unpack("f", struct.pack("f", x))[0]


def insert_statements(cases: list[Case], first_id: int, quote: Callable[[str], str]) -> list[str]:
    """One INSERT into `wide` per row: the cases' i-th literals (DEFAULT where a case has fewer)."""
    rows = max(len(c.values) for c in cases)
    cols = ", ".join(quote(c.name) for c in cases)
    out = []
    for i in range(rows):
        values = ", ".join(c.values[i] if i < len(c.values) else "DEFAULT" for c in cases)
        out.append(f"INSERT INTO wide (id, {cols}) VALUES ({first_id + i}, {values})")
    return out


async def records(cfg: BrokerConfig, topic: str, count: int, task: asyncio.Task, timeout: float = 30) -> list:
    """The records of `topic` once there are `count`; fails at once if the source stopped."""
    deadline = time.monotonic() + timeout
    while True:
        if task.done():
            task.result()  # raises what stopped the source
            raise AssertionError("the source stopped")
        got = await broker.read_topic(cfg, topic)
        if len(got) >= count:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{topic}: {len(got)} records after {timeout}s, expected {count}")
        await asyncio.sleep(0.1)


def same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN and -0.0 is told from 0.0."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, datetime) and isinstance(b, datetime) and (a.tzinfo is None) != (b.tzinfo is None):
        return False
    return type(a) is type(b) and a == b or (a is None and b is None)


def check_case(case: Case, schema: TableSchema, snapshot: dict[int, dict[str, Any]], stream: dict[int, dict[str, Any]],
               stream_id: int) -> list[Any]:
    """The case's column: its source and lake type, the same envelope values from the snapshot (rows
    1..n) and the stream (rows stream_id+1..), and what to_arrow makes of them; returns the stream's values."""
    assert len(case.values) == len(case.expected), "a case lists one expected value per literal"
    column = schema.column(case.name)
    assert (column.source_type, column.lake_type) == (case.source or case.ddl, case.lake)
    n = len(case.values)
    from_snapshot = [snapshot[1 + i][case.name] for i in range(n)]
    from_stream = [stream[stream_id + 1 + i][case.name] for i in range(n)]
    assert from_snapshot == from_stream, "the snapshot and the stream must give the same envelope values"
    got = to_arrow(from_stream, column.lake_type).to_pylist()
    assert same(got, list(case.expected)), f"\n got      {got}\n expected {list(case.expected)}\n envelope {from_stream}"
    return from_stream


def delta_type(t: Any) -> str:
    """A Delta schema type spelled like a lake type: `decimal(10,2)`, `array<integer>`."""
    if isinstance(t, ArrayType):
        return f"array<{delta_type(t.element_type)}>"
    return t.type


def check_delta_stores_every_column(schema: TableSchema, stream: dict[int, dict[str, Any]], table: Path) -> None:
    """The sink's path in small: to_arrow per lake type, one Delta write; the Delta type is the lake type."""
    ids = sorted(stream)
    columns = {c.name: to_arrow([stream[i].get(c.name) for i in ids], c.lake_type) for c in schema.columns}
    write_deltalake(str(table), pa.table(columns))
    dt = DeltaTable(str(table))
    assert {f.name: delta_type(f.type) for f in dt.schema().fields} == {c.name: c.lake_type for c in schema.columns}
    stored = dt.to_pyarrow_table().sort_by("id")
    for name, written in columns.items():
        assert same(stored.column(name).to_pylist(), written.to_pylist()), name
