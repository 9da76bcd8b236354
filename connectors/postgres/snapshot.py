"""The PostgreSQL snapshot's machinery: chunk planning, the SQL that reads a chunk, parallel readers
that hand their chunks over in order, and the progress a resumable snapshot keeps.

Every reader connection imports the same exported snapshot, so all chunks are read at one
consistent point. A table is split into chunks of about `snapshot_chunk_rows` rows: ranges of its
row key, with boundaries sampled from the key index inside the snapshot (every n-th key, so any key
type works: composite, uuid, text), or ranges of heap pages (CTID, a TID range scan on PostgreSQL
14+) for tables without a usable key or with `snapshot_chunking: ctid`.

The rows' JSON is built by PostgreSQL where SQL can produce exactly what the Python converters of
`types.py` produce (see `json_expression`); other columns are selected as text and converted in
Python, so both routes give the sink the same decoded values. Message keys are the same bytes as
`_Table.key(row)` (the incremental snapshot compares them): SQL writes them only for integer and
uuid key columns, whose JSON has nothing to escape.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson
import psycopg
from psycopg import sql
from psycopg.types.string import ByteaBinaryLoader

from lakeward.connectors.postgres import catalog
from lakeward.connectors.postgres.types import Converter, PgType, map_type

T = TypeVar("T")
_dumps = orjson.dumps

_INTEGERS = frozenset({"int2", "int4", "int8", "oid"})
_TEXT_AS_IS = frozenset({"text", "varchar", "uuid", "json", "jsonb", "interval", "time", "timetz", "citext", "macaddr",
                         "macaddr8", "bit", "varbit", "pg_lsn"})
"""Types whose Python converter keeps the text as it is and whose `::text` is their output function:
SQL writes them as JSON strings (to_json escapes as JSON requires)."""
_DATE_RANGE = {  # Delta's range; outside it the converters write ±infinity (types._date, types._timestamp)
    "date": ("'0001-01-01'::date", "'10000-01-01'::date"),
    "timestamp": ("'0001-01-01 00:00:00'::timestamp", "'10000-01-01 00:00:00'::timestamp"),
    "timestamptz": ("'0001-01-01 00:00:00+00'::timestamptz", "'10000-01-01 00:00:00+00'::timestamptz"),
}
_SQL_KEY_TYPES = _INTEGERS | {"uuid"}
"""Key columns whose JSON SQL writes byte for byte as orjson does (digits; a uuid's hex and dashes)."""

TID_RANGE_SCAN_VERSION = 140000
"""PostgreSQL 14 scans `ctid >= a AND ctid < b` as a TID range; before it, every chunk would scan the table."""
DENSITY_SAMPLE_PAGES = 64


# Every query built here is executed with a parameter tuple (possibly empty), so a `%` in a name
# must be doubled, as `%` in the SQL itself.
def ident(name: str) -> str:
    return sql.Identifier(name).as_string(None).replace("%", "%%")


def literal(text: str) -> str:
    return "'" + text.replace("'", "''").replace("%", "%%") + "'"


def relation(schema: str, table: str) -> str:
    return f"{ident(schema)}.{ident(table)}"


def json_expression(column: str, t: PgType, typmod: int) -> str | None:
    """SQL giving the column's JSON text (`null` for NULL), decoding to exactly what its Python converter
    (map_type) makes of its text, or None when only the converter can say (floats: -0 and NaN; arrays,
    inet, bpchar, money, ranges ... : the converter's rules)."""
    c = ident(column)
    if t.element is not None:
        return None
    if t.name in _INTEGERS:
        return f"coalesce({c}::text, 'null')"
    if t.name == "bool":
        return f"CASE WHEN {c} THEN 'true' WHEN NOT {c} THEN 'false' ELSE 'null' END"
    if t.name == "numeric":
        if map_type(t, typmod)[0] == "string":  # unconstrained: the digits (or NaN, ±Infinity) as text
            return f"coalesce('\"' || {c}::text || '\"', 'null')"
        return f"CASE WHEN {c} IS NULL OR {c} = 'NaN' THEN 'null' ELSE '\"' || {c}::text || '\"' END"
    if t.name in _DATE_RANGE:
        lo, hi = _DATE_RANGE[t.name]
        return (f"CASE WHEN {c} IS NULL THEN 'null' WHEN {c} < {lo} THEN '\"-infinity\"' WHEN {c} >= {hi} THEN '\"infinity\"' "
                f"ELSE '\"' || {c}::text || '\"' END")
    if t.name == "bytea":
        return f"coalesce('\"' || translate(encode({c}, 'base64'), E'\\n', '') || '\"', 'null')"
    if t.kind == "e" or t.name in _TEXT_AS_IS:
        return f"coalesce(to_json({c}::text)::text, 'null')"
    return None


@dataclass
class RowSql:
    """How one table's rows are selected and turned into (message key, envelope value) bytes."""

    select: str
    whole_in_sql: bool
    """SQL builds the key and the whole `after`: rows come as (key, after) bytes. (The envelope around
    `after` is the same for a whole chunk: joined here, it is not sent with every row.)"""
    key_in_sql: bool
    python_key: list[tuple[str, Converter]]
    """Key columns converted in Python (selected as text after the key/value columns) when not key_in_sql."""
    slow: list[tuple[bytes, Converter]]
    """Columns converted in Python: (`,"name":` as JSON, converter), selected as text after the key columns."""
    key: Callable[[dict[str, Any]], bytes]
    everything_in_python: bool = False
    """A table without a key: its message key is the whole row as orjson writes it, and so is `after`."""
    names: list[str] = field(default_factory=list)

    def finish(self, rows: list[tuple], prefix: bytes, suffix: bytes) -> list[tuple[bytes, bytes]]:
        """(key, value) per row; `prefix + after + suffix` is the envelope."""
        if self.whole_in_sql:
            return [(k, prefix + after + suffix) for k, after in rows]
        out: list[tuple[bytes, bytes]] = []
        append = out.append
        if self.everything_in_python:
            columns = [(name, conv) for name, (_, conv) in zip(self.names, self.slow, strict=False)]
            for values in rows:
                row = {name: None if v is None else conv(v) for (name, conv), v in zip(columns, values, strict=False)}
                after = _dumps(row)
                append((after, b"%b%b%b" % (prefix, after, suffix)))
            return out
        n_key = 0 if self.key_in_sql else len(self.python_key)
        first_slow = 2 if self.key_in_sql else 1 + n_key
        slow = self.slow
        python_key, key = self.python_key, self.key
        for values in rows:
            if self.key_in_sql:
                k = values[0]
                fast = values[1]
            else:
                k = key({name: conv(v) for (name, conv), v in zip(python_key, values[1 : 1 + n_key], strict=False)})
                fast = values[0]
            parts = [prefix, fast]
            for (name, conv), v in zip(slow, values[first_slow:], strict=False):
                parts.append(name)
                parts.append(b"null" if v is None else _dumps(conv(v)))
            parts.append(b"}")
            parts.append(suffix)
            append((k, b"".join(parts)))
        return out


def row_sql(columns: list[tuple[str, PgType, int, Converter]], pk: Sequence[str], key: Callable[[dict[str, Any]], bytes]) -> RowSql:
    """The SELECT list and row finisher for a table's columns (name, type, typmod, converter).

    JSON built by SQL comes as `text` (read as bytes, see read_chunk); values for the converters come
    as `varchar` (read as str): `::varchar` gives the same text as `::text`."""
    names = [c[0] for c in columns]
    if not pk:
        texts = ", ".join(f"{ident(name)}::varchar" for name in names)
        return RowSql(texts, False, False, [], [(b"", conv) for *_, conv in columns], key, everything_in_python=True, names=names)
    fast: list[str] = []
    slow: list[tuple[str, Converter]] = []
    for name, t, typmod, conv in columns:
        expr = json_expression(name, t, typmod)
        if expr is None:
            slow.append((name, conv))
        else:
            fast.append(f"{literal(_dumps(name).decode() + ':')} || {expr}")
    after = "'{' || " + " || ',' || ".join(fast) if fast else "'{'::text"
    by_name = {c[0]: c for c in columns}
    key_in_sql = all(by_name[k][1].name in _SQL_KEY_TYPES and by_name[k][1].element is None for k in pk)
    slow_names = [((b"," if fast or i else b"") + _dumps(name) + b":", conv) for i, (name, conv) in enumerate(slow)]
    if key_in_sql:
        pieces = []
        for i, k in enumerate(pk):
            quote = "" if by_name[k][1].name in _INTEGERS else '"'
            opening = ("{" if i == 0 else ",") + _dumps(k).decode() + ":" + quote
            pieces.append(f"{literal(opening)} || {ident(k)}::text || {literal(quote + ('}' if i == len(pk) - 1 else ''))}")
        key_expr = " || ".join(pieces)
        if not slow:
            return RowSql(f"{key_expr}, {after} || '}}'", True, True, [], [], key, names=names)
        select = f"{key_expr}, {after}"
        python_key: list[tuple[str, Converter]] = []
    else:
        select = f"{after}, " + ", ".join(f"{ident(k)}::varchar" for k in pk)
        python_key = [(k, by_name[k][3]) for k in pk]
    if slow:
        select += ", " + ", ".join(f"{ident(name)}::varchar" for name, _ in slow)
    return RowSql(select, False, key_in_sql, python_key, slow_names, key, names=names)


# --- chunks -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    index: int
    where: str
    """The SQL condition selecting the chunk's rows ("" for the whole table)."""
    params: tuple[str, ...] = ()
    after: list[Any] | None = None
    """Key chunks but the last: the key of the chunk's last row (its upper bound), as each key column's
    text (`::text`), what IncrementalJob.after holds and the incremental chunk query casts back."""


@dataclass
class ChunkPlan:
    by: str
    """`key`, `ctid` or `whole` (one chunk: a partitioned table without a key, or PostgreSQL < 14)."""
    chunks: list[Chunk]


async def plan_key_chunks(conn: psycopg.AsyncConnection, rel: str, key: list[tuple[str, str, Converter]], chunk_rows: int) -> ChunkPlan:
    """Key ranges (b[i-1], b[i]] with b every `chunk_rows`-th key in key order, read inside the snapshot.
    `key`: (column, SQL type, converter) per key column."""
    cols = ", ".join(ident(k) for k, _, _ in key)
    texts = ", ".join(f"{ident(k)}::text" for k, _, _ in key)
    rows = await (await conn.execute(
        f"SELECT {texts} FROM (SELECT {cols}, row_number() OVER (ORDER BY {cols}) AS lakeward_rn FROM {rel}) s "
        f"WHERE lakeward_rn %% {int(chunk_rows)} = 0 ORDER BY lakeward_rn", ()
    )).fetchall()
    row = "(" + cols + ")"
    bound = "(" + ", ".join(f"CAST(%s AS {typ.replace('%', '%%')})" for _, typ, _ in key) + ")"
    chunks: list[Chunk] = []
    previous: tuple[str, ...] | None = None
    for i, upper in enumerate([*rows, None]):
        conditions: list[str] = []
        params: tuple[str, ...] = ()
        if previous is not None:
            conditions.append(f"{row} > {bound}")
            params += tuple(previous)
        if upper is not None:
            conditions.append(f"{row} <= {bound}")
            params += tuple(upper)
        after = None if upper is None else list(upper)
        chunks.append(Chunk(i, " AND ".join(conditions), params, after))
        previous = upper
    return ChunkPlan("key", chunks)


async def plan_ctid_chunks(conn: psycopg.AsyncConnection, relid: int, rel: str, chunk_rows: int) -> ChunkPlan:
    """Heap page ranges of about `chunk_rows` rows (from the table's rows per page); the last range is
    open-ended, so rows on pages added since the size was read are still read."""
    pages, reltuples, relpages = (await (await conn.execute(
        "SELECT pg_relation_size(oid) / current_setting('block_size')::int, reltuples, relpages FROM pg_class WHERE oid = %s",
        (relid,))).fetchone())  # type: ignore[misc]
    if pages == 0:
        return ChunkPlan("ctid", [Chunk(0, "")])
    if reltuples > 0 and relpages > 0:
        density = reltuples / relpages
    else:  # never analyzed: count the rows of the first pages
        sample = min(pages, DENSITY_SAMPLE_PAGES)
        n = (await (await conn.execute(f"SELECT count(*) FROM {rel} WHERE ctid < '({sample},0)'::tid", ())).fetchone())[0]  # type: ignore[index]
        density = max(n / sample, 1.0)
    step = max(1, math.ceil(chunk_rows / max(density, 1e-9)))
    starts = list(range(0, pages, step))
    chunks = []
    for i, start in enumerate(starts):
        conditions = [f"ctid >= '({start},0)'::tid"] if start else []
        if i + 1 < len(starts):
            conditions.append(f"ctid < '({starts[i + 1]},0)'::tid")
        chunks.append(Chunk(i, " AND ".join(conditions)))
    return ChunkPlan("ctid", chunks)


async def read_chunk(conn: psycopg.AsyncConnection, rows: RowSql, rel: str, chunk: Chunk, prefix: bytes, suffix: bytes) -> list[tuple[bytes, bytes]]:
    """The chunk's rows as (key, value) bytes, read on `conn` (inside the snapshot)."""
    query = f"SELECT {rows.select} FROM {rel}" + (f" WHERE {chunk.where}" if chunk.where else "")
    params: tuple = chunk.params
    # Binary results: a text value's binary form is its UTF-8, which the JSON columns (`text`) keep as
    # bytes; `varchar` values (for the converters) are decoded to str as usual.
    async with conn.cursor(binary=True) as cur:
        cur.adapters.register_loader("text", ByteaBinaryLoader)
        await cur.execute(query, params)
        fetched = await cur.fetchall()
    return rows.finish(fetched, prefix, suffix)


async def open_readers(dsn: str, snapshot_name: str, n: int) -> list[psycopg.AsyncConnection]:
    """`n` connections, each in a REPEATABLE READ transaction on the exported snapshot."""
    conns: list[psycopg.AsyncConnection] = []
    try:
        for _ in range(n):
            conn = await catalog.connect(dsn)
            conns.append(conn)
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot_name}'")
    except BaseException:
        await close_readers(conns)
        raise
    return conns


async def close_readers(conns: list[psycopg.AsyncConnection]) -> None:
    for conn in conns:
        try:
            await conn.close()
        except psycopg.Error:
            pass


class OrderedReads(Generic[T]):
    """Runs reads on a pool of connections and hands their results to their `publish` in the order
    they were submitted; at most `ahead` results wait unpublished (memory: `ahead` chunks)."""

    def __init__(self, conns: list[psycopg.AsyncConnection], ahead: int):
        self._idle: asyncio.Queue[psycopg.AsyncConnection] = asyncio.Queue()
        for c in conns:
            self._idle.put_nowait(c)
        self._slots = asyncio.Semaphore(ahead)
        self._order: asyncio.Queue[tuple[asyncio.Task, Callable[[Any], Awaitable[None]]] | None] = asyncio.Queue()
        self._reads: set[asyncio.Task] = set()
        self._publisher: asyncio.Task | None = None

    async def __aenter__(self) -> OrderedReads[T]:
        self._publisher = asyncio.create_task(self._publish_loop())
        return self

    async def __aexit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            for task in [*self._reads, self._publisher]:
                if task is not None:
                    task.cancel()
            await asyncio.gather(*self._reads, *([self._publisher] if self._publisher else []), return_exceptions=True)

    async def submit(self, read: Callable[[psycopg.AsyncConnection], Awaitable[Any]], publish: Callable[[Any], Awaitable[None]]) -> asyncio.Task:
        """Start `read` on the next free connection once fewer than `ahead` results wait; returns its task."""
        assert self._publisher is not None
        slot = asyncio.ensure_future(self._slots.acquire())
        await asyncio.wait({slot, self._publisher}, return_when=asyncio.FIRST_COMPLETED)
        if not slot.done():
            slot.cancel()
        if self._publisher.done():
            self._publisher.result()  # raises what stopped publishing
            raise RuntimeError("the snapshot publisher stopped")
        task = asyncio.create_task(self._read(read))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)
        self._order.put_nowait((task, publish))
        return task

    async def _read(self, read: Callable[[psycopg.AsyncConnection], Awaitable[Any]]) -> Any:
        conn = await self._idle.get()
        try:
            return await read(conn)
        finally:
            self._idle.put_nowait(conn)

    async def _publish_loop(self) -> None:
        while (item := await self._order.get()) is not None:
            task, publish = item
            await publish(await task)
            self._slots.release()

    async def finish(self) -> None:
        """Wait until everything submitted is published."""
        assert self._publisher is not None
        self._order.put_nowait(None)
        await self._publisher


# --- progress -----------------------------------------------------------------------------------


@dataclass
class ChunkProgress:
    """A table's progress in a resumable (initial) snapshot, as the state document keeps it: counts only
    chunks whose events the broker acknowledged."""

    by: str
    chunks: int
    chunks_done: int = 0
    after: list[Any] | None = None
    """Key chunks: the key of the last row of the last chunk done (each key column's text, e.g. ["7"])."""
    rows: int = 0

    @property
    def complete(self) -> bool:
        return self.chunks_done >= self.chunks

    def to_dict(self) -> dict[str, Any]:
        return {"by": self.by, "chunks": self.chunks, "chunks_done": self.chunks_done, "after": self.after, "rows": self.rows}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChunkProgress:
        return cls(d["by"], int(d["chunks"]), int(d.get("chunks_done", 0)), d.get("after"), int(d.get("rows", 0)))


class ProgressBook:
    """Which chunks were published, per table, and which of them the broker acknowledged: `commit()`
    right after publisher.flush() moves the published ones into `progress` (the state document's),
    and adds completed tables to `done_tables`. Without `progress` (a snapshot at a temporary point,
    which cannot be resumed) it only counts."""

    def __init__(self, progress: dict[str, ChunkProgress] | None, done_tables: list[str] | None, interval_s: float):
        self.progress = progress
        self.done_tables = done_tables
        self.interval_s = interval_s
        self._pending: dict[str, tuple[int, list[Any] | None, int]] = {}
        self._last = time.monotonic()

    def start(self, table: str, by: str, chunks: int) -> None:
        if self.progress is not None:
            self.progress[table] = ChunkProgress(by, chunks)

    def published(self, table: str, chunk: Chunk, rows: int) -> None:
        """Chunk `chunk` (the next in order) of `table` with `rows` rows was handed to the publisher."""
        if self.progress is None:
            return
        done, after, total = self._pending.get(table, (0, None, 0))
        self._pending[table] = (chunk.index + 1, chunk.after if chunk.after is not None else after, total + rows)

    def due(self, *, force: bool = False) -> bool:
        """Whether to wait for the broker's acknowledgement and write the progress now."""
        return self.progress is not None and bool(self._pending) and (force or time.monotonic() - self._last >= self.interval_s)

    def commit(self) -> None:
        """Everything published so far was acknowledged."""
        self._last = time.monotonic()
        if self.progress is None:
            return
        for table, (done, after, rows) in self._pending.items():
            p = self.progress[table]
            p.chunks_done, p.after, p.rows = done, after, p.rows + rows
            if p.complete and self.done_tables is not None and table not in self.done_tables:
                self.done_tables.append(table)
        self._pending.clear()
