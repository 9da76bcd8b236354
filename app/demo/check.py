"""lake == source? Every demo table read from both sides, row counts and checksums compared.

The two sides come from different engines (DuckDB over the lake; PostgreSQL or MySQL), so each
value is first brought to one canonical text form (`canonical`) and the checksum is a SHA-256 over
the sorted rows: order-independent, and equal only if every row and column is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table

from lakeward.app.demo.data import DemoSources, source_rows
from lakeward.core.config import LakewardConfig
from lakeward.sinks.delta import store as lakefs


def canonical(value: Any) -> str:
    """One text form per value whichever driver produced it (bool vs TINYINT(1), aware vs naive UTC)."""
    if value is None:
        return "∅"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat()
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)


@dataclass
class TableCheck:
    table: str
    source_query: str
    lake_query: str
    source_rows: int
    lake_rows: int
    source_checksum: str
    lake_checksum: str
    difference: str | None = None

    @property
    def equal(self) -> bool:
        return self.difference is None


def _digest(columns: list[str], rows: list[tuple[Any, ...]], keep: list[str]) -> tuple[str, set[str]]:
    """(checksum, the canonical rows) of `rows` restricted to the columns `keep`, in that order."""
    idx = [columns.index(c) for c in keep]
    lines = sorted("|".join(canonical(r[i]) for i in idx) for r in rows)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16], set(lines)


def check_table(con: Any, sources: DemoSources, source: str, schema: str, table: str,
                unreadable: dict[str, str] | None = None) -> TableCheck:
    name = f"{source}.{schema}.{table}"
    src_sql, src_cols, src = source_rows(sources, source, table)
    lake_sql = f"SELECT * FROM {name}"
    if unreadable and name in unreadable:
        return TableCheck(name, src_sql, lake_sql, len(src), 0, _digest(src_cols, src, src_cols)[0], "-",
                          f"lake table cannot be read: {unreadable[name]}")
    try:
        cur = con.execute(lake_sql)
        lake_cols = [d[0] for d in cur.description]
        lake = cur.fetchall()
    except Exception as e:  # noqa: BLE001 - e.g. the table is not in the lake yet: reported, not raised
        return TableCheck(name, src_sql, lake_sql, len(src), 0, _digest(src_cols, src, src_cols)[0], "-",
                          f"lake table missing ({e.__class__.__name__})")
    missing = [c for c in src_cols if c not in lake_cols]
    src_sum, src_lines = _digest(src_cols, src, src_cols)
    if missing:
        return TableCheck(name, src_sql, lake_sql, len(src), len(lake), src_sum, "-", f"lake lacks column(s) {', '.join(missing)}")
    lake_sum, lake_lines = _digest(lake_cols, lake, src_cols)  # the lake's extra columns: _lakeward_* metadata
    check = TableCheck(name, src_sql, lake_sql, len(src), len(lake), src_sum, lake_sum)
    if src_sum != lake_sum:
        only_src, only_lake = sorted(src_lines - lake_lines), sorted(lake_lines - src_lines)
        sample = only_src[0] if only_src else only_lake[0] if only_lake else "?"
        check.difference = (f"{len(only_src)} row(s) only in the source, {len(only_lake)} only in the lake; "
                            f"first: {sample[:120]} (columns {', '.join(src_cols)})")
    return check


def check_all(cfg: LakewardConfig, sources: DemoSources) -> list[TableCheck]:
    lake = lakefs.open_lake(cfg, prepare={".".join(t) for t in sources.tables})
    try:
        return [check_table(lake.con, sources, *t, unreadable=lake.unreadable) for t in sources.tables]
    finally:
        lake.close()


def report(checks: list[TableCheck], console: Console) -> bool:
    out = Table("lake table", "rows lake", "rows source", "checksum lake", "checksum source", "equal",
                title="lake == source?  checksum: SHA-256 of the sorted rows, values in one text form")
    for c in checks:
        out.add_row(c.table, str(c.lake_rows), str(c.source_rows), c.lake_checksum[:12], c.source_checksum[:12],
                    "[green]yes[/]" if c.equal else "[red]NO[/]")
    console.print(out)
    console.print("Both sides read in full: the lake with [cyan]SELECT * FROM <lake table>[/] (DuckDB over Delta, as `lakeward query` "
                  "does), the source with [cyan]SELECT * FROM <table>[/]; the lake's _lakeward_* metadata columns left out.")
    for c in checks:
        if c.difference:
            console.print(f"[red]{c.table}[/]: {c.difference}  (lake: {c.lake_query}; source: {c.source_query})", highlight=False)
    return all(c.equal for c in checks)
