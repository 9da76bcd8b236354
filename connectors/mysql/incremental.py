"""Incremental snapshots of a MySQL/MariaDB source: re-reading tables chunk by chunk while streaming.

No watermarks are needed: every chunk is read inside its own consistent-snapshot transaction whose
exact binlog position P the server tells (as snapshot.open_snapshot does: MariaDB's
Binlog_snapshot_file / Binlog_snapshot_position without any lock; MySQL 8 with a brief FLUSH TABLES
WITH READ LOCK per chunk, so writes wait for milliseconds once per chunk), on one connection kept
for all chunks and without the GTID lookup (BINLOG_GTID_POS reads the binlog file up to P: 0.1 s
per chunk at 100 MB; the rows' `source.gtid` is null). The chunk IS the table's key range as of P,
so the reader thread holds it (one chunk: bounded memory) until its stream reaches P, and publishes
it there: after every transaction before P, before the first one starting at or after P. Its `r`
events get positions (file, P, SNAPSHOT, INCREMENTAL_SEQUENCE_BASE + chunk_counter, row + 1), so
they sort exactly there; `chunk_counter` (kept in the state document) makes two chunks read at one
idle point differ, and gives a chunk re-read after a crash before its acknowledgement the same
positions.

Everything here runs in the reader thread (blocking PyMySQL) except `Jobs.add`.
"""

from __future__ import annotations

import logging
import queue
from dataclasses import dataclass, replace
from typing import Any

import pymysql

from lakeward.connectors.mysql import catalog, events, tables
from lakeward.connectors.mysql.catalog import Server, quote
from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.connectors.mysql.history import Ddl, HistoryEntry
from lakeward.connectors.mysql.snapshot import BinlogPoint
from lakeward.connectors.mysql.snapshot import key_from_json as decode_key
from lakeward.connectors.mysql.snapshot import key_to_json as encode_key
from lakeward.connectors.mysql.tables import TableInfo
from lakeward.connectors.mysql.types import ColumnDef, snapshot_expr
from lakeward.core.events import Position
from lakeward.core.snapshot import IncrementalJob

log = logging.getLogger(__name__)

INCREMENTAL_SEQUENCE_BASE = 1 << 62
"""Added to chunk_counter in the sequence field of incremental positions: above every initial
snapshot sequence (chunk_index << 32 | row), so a chunk read at the same idle point as an initial
snapshot of the table still sorts after it."""
SOURCE_SNAPSHOT = b"incremental"
"""`source.snapshot` of incremental rows (Debezium's value for them)."""
IDLE_READ_S = 1.0
"""How long the reader thread keeps reading chunk after chunk at one idle binlog point before it
goes back to the binlog (the next heartbeat resumes)."""

# Server errors that say "try again", and those that say the connection is gone (the source restarts).
RETRY_CODES = {1205, 1213, 1412}  # lock wait timeout, deadlock, table definition changed (a DDL after P)
CONNECTION_CODES = {1040, 1053, 1152, 1153, 1158, 1159, 1160, 1161, 1317, 1927}


# --- items for the asyncio side --------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkPublished:
    """A chunk's events were handed over: once the broker acknowledged them, store the job's progress."""

    job_id: str
    table: str
    after: list[Any] | None
    rows: int
    done: bool
    chunk_counter: int
    """The source's chunk counter after this chunk (what the state document keeps)."""
    until: list[Any] | None = None


@dataclass(frozen=True)
class JobStopped:
    """A job cannot go on (table gone or keyless, a failing `where`): log it and remove it."""

    job_id: str
    table: str
    reason: str


class JobError(Exception):
    """The job cannot go on; the capture can."""


# --- keys and queries (pure) -----------------------------------------------------------------------


def _key_compare(pk: tuple[str, ...], strict: str, last: str) -> str:
    """`(k1, k2) > (x, y)` (strict `>`, last `>`) or `<= (x, y)` (`<`, `<=`) spelled as (k1 >= x AND
    ((k1 > x) OR (k1 = x AND k2 > y))), so that the optimizer sees an index range; `%s` per value,
    as key_args gives them."""
    if len(pk) == 1:
        return f"{quote(pk[0])} {last} %s"
    ors = ["(" + " AND ".join([f"{quote(k)} = %s" for k in pk[:i]] + [f"{quote(pk[i])} {last if i == len(pk) - 1 else strict} %s"]) + ")"
           for i in range(len(pk))]
    return f"{quote(pk[0])} {strict}= %s AND ({' OR '.join(ors)})"


def chunk_query(db: str, table: str, defs: list[ColumnDef], pk: tuple[str, ...], after: bool, where: str | None,
                limit: int, until: bool = False) -> str:
    """The keyset query of one chunk: key > after (if any), key <= until (if any), AND (where), in key
    order; the arguments are chunk_args(after, until)."""
    select = ", ".join(snapshot_expr(d, quote(d.name)) for d in defs)
    conds = []
    if after:
        conds.append(_key_compare(pk, ">", ">"))
    if until:
        conds.append(_key_compare(pk, "<", "<="))
    if where:
        conds.append(where)
    sql = f"SELECT {select} FROM {quote(db)}.{quote(table)}"
    if conds:
        sql += " WHERE " + " AND ".join(f"({c})" for c in conds)
    return sql + f" ORDER BY {', '.join(quote(k) for k in pk)} LIMIT {int(limit)}"


def last_key_query(db: str, table: str, defs: list[ColumnDef], pk: tuple[str, ...], where: str | None) -> str:
    """The key of the table's last row in key order (within `where`), read as the chunks read it: a job's `until`."""
    by_name = {d.name: d for d in defs}
    sql = f"SELECT {', '.join(snapshot_expr(by_name[k], quote(k)) for k in pk)} FROM {quote(db)}.{quote(table)}"
    if where:
        sql += f" WHERE ({where})"
    return sql + f" ORDER BY {', '.join(quote(k) + ' DESC' for k in pk)} LIMIT 1"


def key_args(key: list[Any]) -> list[Any]:
    """The arguments of one _key_compare for `key` (decoded)."""
    args: list[Any] = [key[0]] if len(key) > 1 else []
    for i in range(len(key)):
        args += key[:i] + [key[i]]
    return args


def chunk_args(after: list[Any] | None, until: list[Any] | None = None) -> list[Any]:
    """The arguments of chunk_query for the keys `after` and `until` (decoded)."""
    return (key_args(after) if after else []) + (key_args(until) if until else [])


def touches(ddl: Ddl, table: str) -> bool:
    """Whether a statement changes `db.table` (its definition or its rows without row events)."""
    db, name = table.split(".", 1)
    return (db, name) in ddl.tables or ddl.kind == "drop_database" and ddl.database == db


def _retry(e: pymysql.err.MySQLError) -> bool:
    return bool(e.args) and e.args[0] in RETRY_CODES


def _connection_lost(e: BaseException) -> bool:
    if isinstance(e, pymysql.err.InterfaceError) or not isinstance(e, pymysql.err.MySQLError):
        return True
    code = e.args[0] if e.args and isinstance(e.args[0], int) else 0
    return code >= 2000 or code in CONNECTION_CODES


# --- chunks ----------------------------------------------------------------------------------------


@dataclass
class Chunk:
    """A chunk read at `point`, ready to publish when the stream gets there."""

    job: IncrementalJob
    point: BinlogPoint
    info: TableInfo
    events: list[tuple]
    after: list[Any] | None
    """The job's `after` once this chunk is published (encoded)."""
    done: bool
    counter: int
    until: list[Any] | None = None
    """The job's `until` (encoded): found with its first chunk, kept from then on."""

    @property
    def at(self) -> tuple[int, int]:
        return self.point.file_index, self.point.pos


class Jobs:
    """The reader thread's incremental jobs: run one after another, one chunk pending at a time."""

    def __init__(self, cfg: MySQLSourceConfig, prefix: str, server: Server, epoch: str, boolean: bool):
        self.cfg, self.prefix, self.server, self.epoch, self.boolean = cfg, prefix, server, epoch, boolean
        self.inbox: queue.SimpleQueue[IncrementalJob] = queue.SimpleQueue()
        self.jobs: list[IncrementalJob] = []
        self.pending: Chunk | None = None
        self.counter = 0
        """The next chunk's counter (the state document's chunk_counter at start)."""
        self.busy = False
        """Anything to do: a cheap test for the stream's hot path (set from the asyncio side too)."""
        self._conn: pymysql.Connection | None = None
        self._defs: dict[str, tuple[list[ColumnDef], list[str]]] = {}
        """Per table: the definition the last chunk was read with (the next one selects those columns)."""

    def add(self, job: IncrementalJob) -> None:
        """Thread-safe: the asyncio side hands a job over (a copy: the thread changes its progress)."""
        self.inbox.put(replace(job))
        self.busy = True

    def next_job(self) -> IncrementalJob | None:
        while True:
            try:
                self.jobs.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        self._settle()
        return self.jobs[0] if self.jobs else None

    def _settle(self) -> None:
        self.busy = bool(self.jobs) or self.pending is not None
        # Checked after the flag is cleared: a job added meanwhile sets it again after this (Jobs.add).
        if not self.busy and not self.inbox.empty():
            self.busy = True

    def drop_pending(self, why: str) -> None:
        if self.pending is not None:
            log.info("source %s: incremental snapshot of %s: dropping the chunk read at %s:%d (%s); reading it again",
                     self.cfg.name, self.pending.job.table, self.pending.point.file, self.pending.point.pos, why)
            self.pending = None

    def published(self, chunk: Chunk) -> ChunkPublished:
        """Advance the job and the counter past a chunk handed over."""
        job = chunk.job
        job.after, job.rows, job.chunks, job.until = chunk.after, job.rows + len(chunk.events), job.chunks + 1, chunk.until
        self.counter = chunk.counter + 1
        self.pending = None
        if chunk.done:
            self.jobs.remove(job)
            log.info("source %s: incremental snapshot of %s done: %d rows in %d chunk(s)", self.cfg.name, job.table, job.rows,
                     job.chunks)
        self._settle()
        return ChunkPublished(job.id, job.table, job.after, len(chunk.events), chunk.done, self.counter, job.until)

    def stopped(self, job: IncrementalJob, reason: str) -> JobStopped:
        self.jobs.remove(job)
        self._settle()
        return JobStopped(job.id, job.table, reason)

    # --- reading ---------------------------------------------------------------------------------

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _begin(self) -> tuple[pymysql.Connection, BinlogPoint]:
        """Start a consistent-snapshot transaction on the kept connection; its exact binlog position."""
        cfg = self.cfg
        if self._conn is None:
            self._conn = catalog.connect(cfg, snapshot=True)
            catalog.query(self._conn, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            if not self.server.is_mariadb:
                catalog.query(self._conn, "SET SESSION lock_wait_timeout = 10")
        conn = self._conn
        if self.server.is_mariadb:
            catalog.query(conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT")
            status = dict(catalog.query(conn, "SHOW STATUS LIKE 'binlog_snapshot_%'"))
            return conn, BinlogPoint(str(status["Binlog_snapshot_file"]), int(status["Binlog_snapshot_position"]))
        catalog.query(conn, "FLUSH TABLES WITH READ LOCK")  # RELOAD was checked at start (snapshot.open_snapshot)
        try:
            catalog.query(conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT")
            file, pos = catalog.binlog_end(conn)
        finally:
            catalog.query(conn, "UNLOCK TABLES")
        return conn, BinlogPoint(file, pos)

    def read(self, job: IncrementalJob) -> Chunk | None:
        """The job's next chunk at a fresh consistent point; None to try again later (a DDL raced it).
        Raises JobError when the job cannot go on."""
        try:
            return self._read(job)
        except pymysql.err.MySQLError as e:
            self.close()
            if _retry(e) and not _connection_lost(e):
                log.info("source %s: incremental snapshot of %s: %s; reading the chunk again", self.cfg.name, job.table, e.args[-1])
                return None
            raise

    def _read(self, job: IncrementalJob) -> Chunk | None:
        cfg = self.cfg
        db, name = job.table.split(".", 1)
        found = self._defs.get(job.table)
        conn, point = self._begin()
        try:
            if found is None:
                found = catalog.table_defs(conn, db, name)
                if found is None:
                    raise JobError(f"table {job.table} does not exist (dropped or renamed)")
            defs, pk = found
            if not pk:
                raise JobError(f"table {job.table} has no primary key, which an incremental snapshot reads in order of")
            after = decode_key(job.after) if job.after else None
            until = decode_key(job.until) if job.until else None
            for stored, what in ((after, "progress"), (until, "end of the job")):
                if stored is not None and len(stored) != len(pk):
                    raise JobError(f"table {job.table}: the stored {what} has {len(stored)} key value(s), the primary key now "
                                   f"{len(pk)} column(s) ({', '.join(pk)})")
            rows, error, until_key = [], None, job.until
            try:
                if until is None:
                    last_row = catalog.query(conn, last_key_query(db, name, defs, tuple(pk), job.where), [])
                    until = list(last_row[0]) if last_row else None
                    until_key = encode_key(until) if until is not None else None
                if until is not None:
                    sql = chunk_query(db, name, defs, tuple(pk), after is not None, job.where, cfg.snapshot_chunk_rows, until=True)
                    rows = catalog.query(conn, sql, chunk_args(after, until))
            except pymysql.err.MySQLError as e:
                if _connection_lost(e) or _retry(e):
                    raise
                rows, error = [], e
            # The SELECT holds the table's metadata lock until the rollback: the definition read now
            # is the one the rows were read with. Another one (a DDL came after the last chunk): again.
            now = catalog.table_defs(conn, db, name)
            if now != found:
                if now is None:
                    raise JobError(f"table {job.table} does not exist (dropped or renamed)")
                self._defs[job.table] = now
                return None
            if error is not None:
                what = f"the condition --where {job.where!r}" if job.where else "the chunk query"
                raise JobError(f"table {job.table}: {what} fails: {error.args[-1]} (error {error.args[0]})")
            self._defs[job.table] = found
        finally:
            if self._conn is not None:
                conn.rollback()
        entry = HistoryEntry(db, name, Position.mysql(point.file_index, point.pos, Position.SNAPSHOT, 0, 0), self.epoch,
                             tuple(defs), tuple(pk))
        info = tables.from_entry(cfg.name, self.prefix, entry, self.boolean)
        key_at = [[d.name for d in defs].index(k) for k in pk]
        last = encode_key([rows[-1][i] for i in key_at]) if rows else job.after
        return Chunk(job, point, info, self._events(info, point, rows), last, len(rows) < cfg.snapshot_chunk_rows, self.counter,
                     until_key)

    def _events(self, info: TableInfo, point: BinlogPoint, rows: list[tuple]) -> list[tuple]:
        """The chunk's `r` events, converted like snapshot rows (same values as the stream's)."""
        convert = events.read_events(info, events.point_source(info, self.server.server_id, point, SOURCE_SNAPSHOT), self.boolean)
        return convert(rows, events.row_positions(point, INCREMENTAL_SEQUENCE_BASE + self.counter, len(rows)))
