"""Incremental snapshots of PostgreSQL tables while streaming: watermarks in the WAL, DBLog style.

A job (core.snapshot.IncrementalJob, kept in the source's state document) reads its table in key
order, one chunk at a time, on a connection of its own, in a task: the stream loop never waits for
the read. For each chunk:

1. The chunk starts: from now on every streamed change of the table is noted (transaction id, key).
2. The task opens `REPEATABLE READ READ ONLY`, takes `pg_current_snapshot()` (xmin:xmax:xip), reads
   the chunk (keyset: `WHERE (k) > (after) [AND (where)] ORDER BY k LIMIT n`), commits, and writes a
   high watermark, `pg_logical_emit_message(false, 'lakeward.watermark', ...)`, into the WAL.
3. A noted change by a transaction the chunk's snapshot does not see (xid >= xmax, or in xip) removes
   its key from the chunk: the streamed event is newer than the row read.
4. When the stream delivers the watermark, the remaining rows are published as `r` events at
   Position.postgres(hw_lsn, SNAPSHOT, seq): every transaction the snapshot sees committed before the
   watermark (its events sort before the rows), every other one either removed its key or commits
   after the watermark (its events sort after the rows).
5. Once the broker acknowledged them, the job's progress (last key, rows, chunks) is written to the
   state document; a killed source re-reads at most the chunk in flight.

The chunk is read again when a transaction in the snapshot's xip was already delivered by the stream
before the chunk started (its changes were not noted, yet the rows do not hold them: the xid ring),
when the table is truncated or its columns change while the chunk is pending.

Needs pgoutput's `messages` option (PostgreSQL 14+). Rows deleted in the source before a request stay
in a mirror (an incremental snapshot upserts, it resets nothing); `--where` re-reads a subset.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from psycopg.types.string import TextLoader

from lakeward.connectors.postgres import catalog, pgoutput
from lakeward.core import progress
from lakeward.core.events import OP_READ, OP_TRUNCATE, Position
from lakeward.core.snapshot import IncrementalJob, SignalInbox, SnapshotRequest

if TYPE_CHECKING:
    from lakeward.connectors.postgres.source import PostgresSource, _Table

log = logging.getLogger(__name__)

WATERMARK_PREFIX = "lakeward.watermark"
MIN_SERVER_VERSION = 140000
"""pgoutput's `messages` option, which carries the watermarks, came with PostgreSQL 14."""
XID_RING_SIZE = 1 << 16
"""Transactions remembered as delivered by the stream. A transaction can be in a snapshot's xip after
its commit record was decoded only for the instant between writing that record and leaving the
process array, so the ring need only cover the transactions of a moment."""
_R, _T = OP_READ.encode(), OP_TRUNCATE.encode()
_EMIT_WATERMARK = ("SELECT set_config('synchronous_commit', 'on', true), pg_logical_emit_message(false, %s, %s), "
                   "pg_current_xact_id()")
"""A non-transactional message is not flushed to the WAL (before PostgreSQL 17's `flush` argument), so
the walsender would send it only after the WAL writer's next round (wal_writer_delay, 200 ms): the
xid makes the statement commit, and a commit with synchronous_commit on (whatever the server's
default) flushes the WAL up to itself. pgoutput sends nothing for that empty transaction."""
_U32_MASK = 0xFFFFFFFF
_JOB_SQLSTATE_CLASSES = ("42", "22", "0A", "25", "2B", "P0", "39", "38")
"""SQL errors that re-reading cannot fix (syntax, unknown column or table, bad data, a where that
writes): the job stops. Anything else (a lost connection, a cancelled query) is read again."""


def unsupported_reason(server_version: int) -> str | None:
    if server_version >= MIN_SERVER_VERSION:
        return None
    return (f"PostgreSQL {server_version // 10000} cannot carry the watermark messages incremental snapshots need in the "
            "replication stream (pgoutput's `messages` option needs PostgreSQL 14 or newer); streaming goes on")


# --- pure parts: snapshot visibility, the xid ring, a chunk's key removal, the chunk query ------------


def widen_xid(xid: int, ref: int) -> int:
    """A 32-bit xid (as pgoutput's Begin carries it) as the 64-bit xid8 nearest to `ref` (a 64-bit
    xid of the same moment, e.g. a snapshot's xmax): xids in use are within 2^31 of each other."""
    full = (ref & ~_U32_MASK) | (xid & _U32_MASK)
    if full - ref > 1 << 31:
        full -= 1 << 32
    elif ref - full > 1 << 31:
        full += 1 << 32
    return full


@dataclass(frozen=True)
class PgSnapshot:
    """`pg_current_snapshot()`: 64-bit xmin, xmax and the transactions in progress."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> PgSnapshot:
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x))

    def visible(self, xid: int) -> bool:
        """Whether the 32-bit xid's committed changes are in this snapshot."""
        full = widen_xid(xid, self.xmax)
        return full < self.xmin or (full < self.xmax and full not in self.xip)


class XidRing:
    """The xids of the latest transactions the stream delivered, each with its delivery number."""

    def __init__(self, size: int = XID_RING_SIZE):
        self.size = size
        self.count = 0
        """Transactions delivered so far: a chunk remembers it when it starts."""
        self._order: deque[tuple[int, int]] = deque()
        self._seen: dict[int, int] = {}

    def add(self, xid: int) -> None:
        self.count += 1
        self._seen[xid] = self.count
        self._order.append((xid, self.count))
        if len(self._order) > self.size:
            old, n = self._order.popleft()
            if self._seen.get(old) == n:
                del self._seen[old]

    def delivered(self, xid: int, mark: int) -> bool:
        """Whether the 32-bit xid was delivered as one of the first `mark` transactions."""
        n = self._seen.get(xid & _U32_MASK)
        return n is not None and n <= mark


@dataclass(eq=False)
class Chunk:
    """One chunk of a job, from its start to its publication at the high watermark."""

    job: IncrementalJob
    nonce: str
    mark: int
    """XidRing.count when the chunk started: transactions delivered up to it were not noted."""
    snapshot: PgSnapshot | None = None
    noted: list[tuple[int, bytes]] = field(default_factory=list)
    """(xid, key) of the table's changes streamed before the snapshot was known."""
    removed: set[bytes] = field(default_factory=set)
    """Keys a change the snapshot does not see touched: the streamed events are newer."""
    rows: list[tuple[bytes, dict]] | None = None
    """(key, row) in key order, once read; converted as the stream converts them."""
    last_key: list[Any] | None = None
    full: bool = False
    """The read returned a whole chunk: more rows may follow."""
    table: Any = None
    """The `_Table` the rows were converted with (schema id, key function)."""
    retry: str | None = None
    """Why the chunk must be read again (None: it is good)."""
    task: asyncio.Task | None = None

    def changed(self, xid: int, key: bytes) -> None:
        if self.snapshot is None:
            self.noted.append((xid, key))
        elif not self.snapshot.visible(xid):
            self.removed.add(key)

    def set_snapshot(self, snapshot: PgSnapshot, ring: XidRing) -> None:
        for xid in snapshot.xip:
            if ring.delivered(xid, self.mark):
                self.retry = f"transaction {xid} was in progress for the chunk's snapshot but already streamed"
                return
        self.snapshot = snapshot
        for xid, key in self.noted:
            if not snapshot.visible(xid):
                self.removed.add(key)
        self.noted.clear()

    def publishable(self) -> list[tuple[bytes, dict]]:
        return [(k, row) for k, row in self.rows or () if k not in self.removed]


def _ident(name: str) -> str:
    return psycopg.sql.Identifier(name).as_string(None)


def chunk_query(schema: str, table: str, columns: list[str], key: list[str], key_types: list[str], *, after: bool, where: str | None,
                limit: int, until: bool = False) -> str:
    """The keyset query of one chunk: `%s` placeholders for the key values of `after`, then of
    `until` (cast to the key columns' types, so they may be the text PostgreSQL writes); a `%` of
    `where` is escaped."""
    keys = ", ".join(_ident(k) for k in key)
    values = ", ".join(f"CAST(%s AS {t})" for t in key_types)
    conds = []
    if after:
        conds.append(f"({keys}) > ({values})" if len(key) > 1 else f"{keys} > {values}")
    if until:
        conds.append(f"({keys}) <= ({values})" if len(key) > 1 else f"{keys} <= {values}")
    if where:
        conds.append(_where(where))
    sql = f"SELECT {', '.join(_ident(c) for c in columns)} FROM {_ident(schema)}.{_ident(table)}"
    if conds:
        sql += " WHERE " + " AND ".join(conds)
    return f"{sql} ORDER BY {keys} LIMIT {int(limit)}"


def last_key_query(schema: str, table: str, key: list[str], *, where: str | None) -> str:
    """The key of the table's last row in key order (within `where`): a job's `until`, as the text
    the types' output functions write (what the chunks' `after` holds, and the state can store). The
    texts are named apart from the columns: ORDER BY a name prefers an output column to a table's."""
    texts = ", ".join(f"CAST({_ident(k)} AS text) AS key_{i}" for i, k in enumerate(key))
    sql = f"SELECT {texts} FROM {_ident(schema)}.{_ident(table)}"
    if where:
        sql += f" WHERE {_where(where)}"
    return f"{sql} ORDER BY {', '.join(_ident(k) + ' DESC' for k in key)} LIMIT 1"


def _where(where: str) -> str:
    # Parentheses and a newline: a trailing `-- comment` or an OR stays inside the condition.
    return f"({where.replace('%', '%%')}\n)"


def job_failed(exc: BaseException) -> bool:
    """Whether a chunk's read error stops its job (see _JOB_SQLSTATE_CLASSES)."""
    state = getattr(exc, "sqlstate", None)
    return isinstance(exc, psycopg.Error) and isinstance(state, str) and state[:2] in _JOB_SQLSTATE_CLASSES


# --- the engine ---------------------------------------------------------------------------------------


class IncrementalSnapshots:
    """Runs a PostgreSQL source's incremental jobs next to its stream loop (see the module docstring).

    The stream loop calls: `begin` per transaction, `relation` per Relation message, `message` per
    logical decoding message, `tick` every status interval, `poll` every table refresh, `stop` when it
    ends; `_Table.watch` (set here) sees every event of the table of the pending chunk."""

    def __init__(self, source: PostgresSource):
        self.source = source
        self.ring = XidRing()
        self._xid = 0
        self._chunk: Chunk | None = None
        self._conn: psycopg.AsyncConnection | None = None
        self._inbox: SignalInbox | None = None
        self._running: set[tuple[str, str]] = set()
        """(job id, table) whose progress bar was started by this process."""
        self._key_types: dict[tuple[int, int], str] = {}
        self._refusal_logged = False

    @property
    def name(self) -> str:
        return self.source.config.name

    @property
    def jobs(self) -> list[IncrementalJob]:
        return self.source._state.jobs

    @property
    def unsupported(self) -> str | None:
        return unsupported_reason(self.source._meta.info.server_version)

    # --- hooks of the stream loop ---

    def begin(self, xid: int) -> None:
        self._xid = xid
        self.ring.add(xid)

    def relation(self, t: _Table, name: str) -> None:
        """A Relation message made a new `_Table`: note its changes too while its chunk is pending."""
        c = self._chunk
        if c is not None and c.job.table == name:
            t.watch = self._watch

    def _watch(self, op: bytes, key: bytes) -> None:
        c = self._chunk
        if c is None or op == _R:
            return
        if op == _T:
            c.retry = "the table was truncated"
        else:
            c.changed(self._xid, key)

    async def message(self, m: pgoutput.Message) -> None:
        """A logical decoding message: the pending chunk's watermark publishes it; heartbeats, other
        sources' watermarks and stale ones (of a chunk read again, or before a restart) are ignored."""
        c = self._chunk
        if c is None or m.prefix != WATERMARK_PREFIX:
            return
        try:
            nonce = orjson.loads(m.content).get("nonce")
        except (orjson.JSONDecodeError, AttributeError):
            return
        if nonce != c.nonce:
            return
        self._end_chunk()
        if c.retry is None:
            c.retry = self._stale(c)
        if c.retry is not None or c.rows is None:
            log.info("source %s: incremental snapshot of %s: reading chunk %d again: %s", self.name, c.job.table, c.job.chunks + 1,
                     c.retry or "not read")
        else:
            await self._publish(c, m.lsn)
        await self.tick()

    async def tick(self) -> None:
        """Start the next chunk, or handle the end of a read that sends no watermark."""
        c = self._chunk
        if c is not None:
            task = c.task
            assert task is not None
            if c.retry is not None:
                log.debug("source %s: incremental snapshot of %s: reading chunk %d again: %s", self.name, c.job.table, c.job.chunks + 1, c.retry)
                self._cancel()  # read it again at once: its watermark, if any, will be ignored
            elif not task.done():
                return  # reading
            elif task.cancelled():
                self._end_chunk()
            elif (exc := task.exception()) is not None:
                self._end_chunk()
                await self._read_failed(c, exc)
            elif c.rows == []:
                self._end_chunk()
                await self._finish(c.job)
            else:
                return  # read: its watermark is on its way
        if self._chunk is None and self.jobs:
            reason = self.unsupported
            if reason is not None:
                if not self._refusal_logged:
                    log.error("source %s: incremental snapshot jobs (%s) cannot run: %s", self.name,
                              ", ".join(j.table for j in self.jobs), reason)
                    self._refusal_logged = True
                return
            self._start(self.jobs[0])

    async def poll(self) -> None:
        """Turn new requests of the signal topic into jobs; the jobs and the offset after the last
        request are written to the state document together."""
        src = self.source
        if self._inbox is None:
            inbox = SignalInbox(src.broker, self.name)
            await inbox.start(src._admin, src._state.signals_offset)
            self._inbox = inbox
        got = await self._inbox.poll()
        if not got:
            return
        for offset, request in got:
            if request is None:
                log.error("source %s: record at offset %d of %s is not a snapshot request; ignored", self.name, offset - 1, self._inbox.topic)
            elif (reason := self.unsupported) is not None:
                log.error("source %s: snapshot request %s (%s) refused: %s", self.name, request.id, ", ".join(request.tables), reason)
            else:
                await self._add_jobs(request)
            src._state.signals_offset = offset
        await src._write_state()
        await self.tick()

    async def stop(self) -> None:
        """The stream ends: drop the chunk in flight (its progress was never written), close up."""
        task = self._chunk.task if self._chunk is not None else None
        self._cancel()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        if self._inbox is not None:
            inbox, self._inbox = self._inbox, None
            await inbox.stop()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    # --- requests ---

    async def _add_jobs(self, request: SnapshotRequest) -> None:
        src = self.source
        meta = src._meta
        captured = {f"{s}.{t}": (s, t) for s, t in await catalog.resolve_tables(meta, src.config.tables, src.config.dsn)}
        for asked in request.tables:
            name = asked if asked in captured or "." in asked else next((n for n in captured if n.split(".", 1)[1] == asked), asked)
            why = None
            if name not in captured:
                why = f"it is not captured by this source (tables: {', '.join(src.config.tables)})"
            else:
                relid = (await catalog.relids(meta, [captured[name]])).get(captured[name])
                if relid is None:
                    why = "it does not exist any more"
                elif not await catalog.row_key(meta, relid):
                    why = ("it has no primary key, and an incremental snapshot reads a table in key order: add a primary key "
                           "(or REPLICA IDENTITY USING INDEX on a unique index)")
            if why is not None:
                log.error("source %s: snapshot request %s: table %s skipped: %s", self.name, request.id, asked, why)
                continue
            self.jobs.append(IncrementalJob(request.id, name, "request", request.where))
            log.info("source %s: snapshot request %s: incremental snapshot of %s%s queued", self.name, request.id, name,
                     f" where {request.where}" if request.where else "")

    # --- chunks ---

    def _start(self, job: IncrementalJob) -> None:
        src = self.source
        if (job.id, job.table) not in self._running:
            self._running.add((job.id, job.table))
            progress.snapshots.start(self.name, job.table, None)
            log.info("source %s: incremental snapshot of %s (%s %s%s) %s", self.name, job.table, job.reason, job.id,
                     f", where {job.where}" if job.where else "", f"continues after chunk {job.chunks}" if job.chunks else "starts")
        c = self._chunk = Chunk(job, uuid.uuid4().hex, self.ring.count)
        for t in src._relations.values():
            if f"{t.schema.schema}.{t.schema.table}" == job.table:
                t.watch = self._watch
        c.task = asyncio.create_task(self._read(c), name=f"lakeward incremental {job.table}")
        log.debug("source %s: incremental snapshot of %s: chunk %d starts after %s", self.name, job.table, job.chunks + 1, job.after)

    def _end_chunk(self) -> None:
        """The pending chunk is over: stop noting its table's changes."""
        self._chunk = None
        for t in self.source._relations.values():
            t.watch = None

    def _cancel(self) -> None:
        c = self._chunk
        self._end_chunk()
        if c is not None and c.task is not None:
            if not c.task.done():
                c.task.cancel()
            elif not c.task.cancelled():
                c.task.exception()  # retrieved: a read dropped anyway needs no report

    def _stale(self, c: Chunk) -> str | None:
        """Why rows read correctly can still not be published at the watermark: the table's columns
        changed since (a Relation message with others), or a re-read of the whole table is pending."""
        name = c.job.table
        if name in self.source._reread:
            return "the table is being read again after a schema change"
        for t in self.source._relations.values():
            if f"{t.schema.schema}.{t.schema.table}" == name and c.table is not None and t.names != c.table.names:
                return "the table's columns changed"
        return None

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            self._conn = await catalog.connect(self.source.config.dsn)
        return self._conn

    async def _read(self, c: Chunk) -> None:
        """The task of a chunk: snapshot, rows, then the high watermark (none for an empty chunk)."""
        src, job = self.source, c.job
        schema, table = job.table.split(".", 1)
        limit = src.config.snapshot_chunk_rows
        conn = await self._connection()
        try:
            async with conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                text = (await (await conn.execute("SELECT pg_current_snapshot()::text")).fetchone())[0]  # type: ignore[index]
                c.set_snapshot(PgSnapshot.parse(text), self.ring)
                if c.retry is not None:
                    return
                relid, columns = await catalog.table_columns(conn, schema, table)
                t = await src._table(conn, relid, schema, table, columns)
                if not t.pk:
                    raise psycopg.errors.FeatureNotSupported(f"table {job.table} has no primary key any more")
                types = {n: (o, m) for n, o, m in columns}
                await catalog.format_types(conn, [types[k] for k in t.pk], self._key_types)
                key_types = [self._key_types[types[k]] for k in t.pk]
                if job.until is None:
                    job.until = await self._last_key(conn, last_key_query(schema, table, t.pk, where=job.where))
                if job.until is None:  # nothing to read
                    c.rows, c.last_key, c.table, c.full = [], job.after, t, False
                else:
                    sql = chunk_query(schema, table, [n for n, _, _ in columns], t.pk, key_types,
                                      after=job.after is not None, until=True, where=job.where, limit=limit)
                    c.rows, c.last_key, c.table = await self._rows(conn, sql, [*(job.after or []), *job.until], t,
                                                                   [t.names.index(k) for k in t.pk])
                    c.full = len(c.rows) >= limit
        except BaseException:
            if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await conn.close()  # a cancel mid-read: never reuse a connection in an unknown state
            raise
        if c.rows:
            content = orjson.dumps({"source": self.name, "job": job.id, "table": job.table, "chunk": job.chunks + 1, "nonce": c.nonce})
            await conn.execute(_EMIT_WATERMARK, (WATERMARK_PREFIX, content.decode()))

    async def _last_key(self, conn: psycopg.AsyncConnection, sql: str) -> list[Any] | None:
        """The key `last_key_query` finds, or None for no rows."""
        async with conn.cursor() as cur:
            await cur.execute(sql, ())  # with arguments, so that the `%%` of an escaped `where` reads `%`
            row = await cur.fetchone()
        return None if row is None else list(row)

    async def _rows(self, conn: psycopg.AsyncConnection, sql: str, after: list[Any], t: _Table,
                    key_at: list[int]) -> tuple[list[tuple[bytes, dict]], list[Any] | None, _Table]:
        rows: list[tuple[bytes, dict]] = []
        last = None
        key, columns, convert = t.key, t.columns, pgoutput.convert_row
        async with conn.cursor(name="lakeward_incremental") as cur:
            await cur.execute(sql, after)
            # Values as the type's output function writes them, as pgoutput sends them (see _snapshot_table).
            for d in cur.description or ():
                cur.adapters.register_loader(d.type_code, TextLoader)
            while batch := await cur.fetchmany(self.source.config.snapshot_fetch_rows):
                for values in batch:
                    row = convert(list(values), columns)
                    rows.append((key(row), row))
                last = [batch[-1][i] for i in key_at]
        return rows, last, t

    async def _publish(self, c: Chunk, hw_lsn: int) -> None:
        """The chunk's rows at its watermark; its progress once the broker acknowledged them."""
        src, job, t = self.source, c.job, c.table
        publisher = src._publisher
        src._now_ms = int(time.time() * 1000)
        head = t.source_head(src._now_ms, "incremental", None)
        rows = c.publishable()
        log.debug("source %s: incremental snapshot of %s: chunk %d at %s: %d of %d rows (snapshot %s)", self.name, job.table, job.chunks + 1,
                  hw_lsn, len(rows), len(c.rows or ()), c.snapshot)
        for seq, (key, row) in enumerate(rows, 1):
            src._emit(t, _R, key, None, row, head, hw_lsn, Position.postgres(hw_lsn, Position.SNAPSHOT, seq))
            if publisher.has_full:
                await publisher.send_full()
        await publisher.flush()
        job.after, job.rows, job.chunks = c.last_key, job.rows + len(rows), job.chunks + 1
        src._metrics.snapshot_rows(job.table).inc(len(rows))
        progress.snapshots.advance(self.name, job.table, len(rows))
        if c.full:
            await src._write_state()
        else:
            await self._finish(job)

    async def _finish(self, job: IncrementalJob) -> None:
        self._remove(job)
        await self.source._write_state()
        log.info("source %s: incremental snapshot of %s done (%s %s): %d rows in %d chunks", self.name, job.table, job.reason, job.id,
                 job.rows, job.chunks)

    def _remove(self, job: IncrementalJob) -> None:
        if job in self.jobs:
            self.jobs.remove(job)
        if (job.id, job.table) in self._running:
            self._running.discard((job.id, job.table))
            progress.snapshots.finish(self.name, job.table)

    async def _read_failed(self, c: Chunk, exc: BaseException) -> None:
        job = c.job
        if job_failed(exc):
            log.error("source %s: incremental snapshot of %s (%s %s) stopped: reading chunk %d failed: %s%s; the job is removed, "
                      "capture goes on", self.name, job.table, job.reason, job.id, job.chunks + 1, str(exc).strip().splitlines()[0],
                      f" (where: {job.where})" if job.where else "")
            self._remove(job)
            await self.source._write_state()
        else:
            log.warning("source %s: incremental snapshot of %s: reading chunk %d failed (%s: %s); reading it again", self.name, job.table,
                        job.chunks + 1, exc.__class__.__name__, str(exc).strip())
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await conn.close()
