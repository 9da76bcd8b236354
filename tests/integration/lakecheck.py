"""Comparing a lake table with its source table (PostgreSQL or MariaDB), row by row and column by column."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pymysql.cursors
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from .harness import connect, topic_end, wait_until


def source_rows(dsn: str, table: str, key: str = "id") -> list[dict]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(f"SELECT * FROM {table} ORDER BY {key}")
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def lake_table(lake: Path | str, table: str, source: str = "shop", *, storage_options: dict[str, str] | None = None) -> DeltaTable | None:
    """`lake` is a local path or an object-store URI (`s3://bucket/prefix`, with its storage options)."""
    schema, name = table.split(".") if "." in table else ("public", table)
    try:
        return DeltaTable(f"{str(lake).rstrip('/')}/{source}/{schema}/{name}", storage_options=storage_options)
    except TableNotFoundError:
        return None


def table_rows(dt: DeltaTable, key: str = "id", *, metadata: bool = False) -> list[dict]:
    """The rows of a lake table, sorted by `key`; without the _lakeward_ columns unless `metadata`."""
    rows = dt.to_pyarrow_table().to_pylist()
    if not metadata:
        rows = [{k: v for k, v in r.items() if not k.startswith("_lakeward_")} for r in rows]
    return sorted(rows, key=lambda r: r[key])


def lake_rows(lake: Path | str, table: str, key: str = "id", *, source: str = "shop", metadata: bool = False,
              storage_options: dict[str, str] | None = None) -> list[dict] | None:
    dt = lake_table(lake, table, source, storage_options=storage_options)
    return None if dt is None else table_rows(dt, key, metadata=metadata)


def _equal(table: str, dt: DeltaTable | None, source_count: int, source: Callable[[], list[dict]], key: str,
           dropped: tuple[str, ...]) -> bool | str:
    """compare() of the lake table and the source, the row counts first: polled until equal, a count
    that differs answers without reading every row of both sides."""
    if dt is None:
        return f"no lake table for {table} yet"
    lake_count = dt.to_pyarrow_dataset().count_rows()
    if lake_count != source_count:
        return f"{table}: lake has {lake_count} rows, source {source_count}"
    return compare(table, table_rows(dt, key), source(), dropped=dropped)


def lake_equals_source(dsn: str, lake: Path | str, table: str, key: str = "id", *, dropped: tuple[str, ...] = (),
                       storage_options: dict[str, str] | None = None):
    """True when equal; else a short description of the first difference (for wait_until messages)."""
    with psycopg.connect(dsn) as conn:
        count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return _equal(table, lake_table(lake, table, storage_options=storage_options), count, lambda: source_rows(dsn, table, key), key,
                  dropped)


def compare(table: str, got: list[dict] | None, want: list[dict], *, dropped: tuple[str, ...] = ()) -> bool | str:
    """Lake rows (None: no table yet) against source rows, both sorted by key: True when equal, else
    a short description of the first difference (for wait_until messages). `dropped`: columns gone
    at the source that the lake keeps."""
    if got is None:
        return f"no lake table for {table} yet"
    got = [{k: v for k, v in r.items() if k not in dropped} for r in got]
    if len(got) != len(want):
        return f"{table}: lake has {len(got)} rows, source {len(want)}"
    for g, w in zip(got, want, strict=True):
        if g != w:
            return f"{table}: first differing row: lake {g} != source {w}"
    return True


def no_repeated_positions(lake: Path | str, table: str, source: str = "shop") -> None:
    """A changelog holds every source position once: an event applied twice would repeat one."""
    rows = lake_rows(lake, table, key="_lakeward_position", source=source, metadata=True)
    assert rows is not None, f"no changelog table for {table}"
    positions = [r["_lakeward_position"] for r in rows]
    assert len(positions) == len(set(positions)), f"{table}: {len(positions) - len(set(positions))} events applied twice"


# --- MariaDB: tables are `db.table`, the source is `legacy` -----------------------------------------


def wait_for_changelog(lake: Path | str, table: str, topic: str, *, source: str = "shop", timeout: float) -> None:
    """Until the changelog of `table` holds as many events as `topic` has offsets (the changelog
    sink may still be behind when the source or a mirror is already caught up)."""

    def changelog_complete() -> bool | str:
        dt = lake_table(lake, table, source)
        n = dt.to_pyarrow_dataset().count_rows() if dt else 0
        return n >= topic_end(topic) or f"changelog of {table} has {n} of {topic_end(topic)} events"

    wait_until(changelog_complete, timeout=timeout, what=f"changelog of {table} complete", interval=1)


def mysql_rows(db: str, table: str, key: str = "id", booleans: tuple[str, ...] = ()) -> list[dict]:
    """The rows of a MariaDB table by key; `booleans`: tinyint(1) columns, as the lake stores them."""
    conn = connect(cursorclass=pymysql.cursors.DictCursor)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT * FROM `{db}`.`{table}` ORDER BY `{key}`")
            rows = list(cur.fetchall())
    finally:
        conn.close()
    for r in rows:
        for b in booleans:
            if r.get(b) is not None:
                r[b] = bool(r[b])
    return rows


def mysql_lake_table(lake: Path, db: str, table: str, source: str = "legacy") -> DeltaTable | None:
    return lake_table(lake, f"{db}.{table}", source)


def mysql_lake_rows(lake: Path, db: str, table: str, key: str = "id", *, metadata: bool = False) -> list[dict] | None:
    return lake_rows(lake, f"{db}.{table}", key, source="legacy", metadata=metadata)


def lake_equals_mysql(db: str, lake: Path, table: str, key: str = "id", *, dropped: tuple[str, ...] = (),
                      booleans: tuple[str, ...] = ()) -> bool | str:
    """True when equal; else a short description of the first difference (for wait_until messages)."""
    conn = connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM `{db}`.`{table}`")
            count = cur.fetchone()[0]
    finally:
        conn.close()
    return _equal(f"{db}.{table}", mysql_lake_table(lake, db, table), count, lambda: mysql_rows(db, table, key, booleans), key, dropped)
