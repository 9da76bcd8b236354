"""Comparing a lake table with its source table, row by row and column by column."""

from __future__ import annotations

from pathlib import Path

import psycopg
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError


def source_rows(dsn: str, table: str, key: str = "id") -> list[dict]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(f"SELECT * FROM {table} ORDER BY {key}")
        names = [d.name for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def lake_table(lake: Path | str, table: str, source: str = "shop", *, storage_options: dict[str, str] | None = None) -> DeltaTable | None:
    """`lake` is a local path or an object-store URI (`s3://bucket/prefix`, with its storage options)."""
    schema, name = table.split(".") if "." in table else ("public", table)
    try:
        return DeltaTable(f"{str(lake).rstrip('/')}/{source}/{schema}/{name}", storage_options=storage_options)
    except TableNotFoundError:
        return None


def lake_rows(lake: Path | str, table: str, key: str = "id", *, source: str = "shop", metadata: bool = False,
              storage_options: dict[str, str] | None = None) -> list[dict] | None:
    dt = lake_table(lake, table, source, storage_options=storage_options)
    if dt is None:
        return None
    rows = dt.to_pyarrow_table().to_pylist()
    if not metadata:
        rows = [{k: v for k, v in r.items() if not k.startswith("_lakeward_")} for r in rows]
    return sorted(rows, key=lambda r: r[key])


def lake_equals_source(dsn: str, lake: Path | str, table: str, key: str = "id", *, dropped: tuple[str, ...] = (),
                       storage_options: dict[str, str] | None = None):
    """True when equal; else a short description of the first difference (for wait_until messages)."""
    return compare(table, lake_rows(lake, table, key, storage_options=storage_options), source_rows(dsn, table, key), dropped=dropped)


def compare(table: str, got: list[dict] | None, want: list[dict], *, dropped: tuple[str, ...] = ()) -> bool | str:
    """Lake rows (None: no table yet) against source rows, both sorted by key: True when equal, else
    a short description of the first difference (for wait_until messages). `dropped`: columns gone
    at the source that the lake keeps."""
    if got is None:
        return f"no lake table for {table} yet"
    got = [{k: v for k, v in r.items() if k not in dropped} for r in got]
    if len(got) != len(want):
        return f"{table}: lake has {len(got)} rows, source {len(want)}"
    for g, w in zip(got, want):
        if g != w:
            return f"{table}: first differing row: lake {g} != source {w}"
    return True
