"""The reader thread: every blocking MySQL call of a running source happens here.

It snapshots tables (snapshot.py), then follows the binlog through pymysqlreplication's
BinLogStreamReader, and hands the asyncio side an ordered stream of batches through a bounded
queue (backpressure: when the broker is slower, the thread blocks and stops reading the binlog).
A batch is a list of items:

  (topic, key, value, headers)   an event, ready for BatchPublisher.append
  Announce(info)                 publish this table schema and create the topic before its events
  History(entry)                 write this schema history entry before the events that follow
  Commit(resume, tables)         a transaction boundary: once everything before it is acknowledged,
                                 `resume` may be written to the state topic
  SnapshotBegin / ChunkDone / TableDone / SnapshotDone   snapshot bookkeeping for the state topic
  incremental.ChunkPublished / JobStopped                incremental snapshot progress (see incremental.py)
  Failed(exc), Finished          the thread's end

Positions (core.events.Position.mysql): binlog file index, position of the transaction's first event
(its GTID event, or BEGIN), phase (0 snapshot, 1 stream), then the rows event's position in the
file and 2 × the row's index in the event (+1 for the create half of a primary-key change). Every
field comes from the binlog itself, so a restarted source re-publishes a transaction with the same
positions and sinks drop the repeats; table filters don't change them either. A snapshot taken at
binlog position P has positions (file, P, 0, sequence, 0): after everything before P, before the
transaction starting at P; the sequence is 0 for the table's `t` event, then chunk << 32 | row in
chunk + 1 (chunks are read by several connections at P and published in order, see snapshot.py).
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import InitVar, dataclass, field
from typing import Any

import orjson
import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import (
    GtidEvent,
    HeartbeatLogEvent,
    MariadbGtidEvent,
    NotImplementedEvent,
    QueryEvent,
    RotateEvent,
    XAPrepareEvent,
    XidEvent,
)
from pymysqlreplication.gtid import Gtid, GtidSet
from pymysqlreplication.row_event import (
    DeleteRowsEvent,
    PartialUpdateRowsEvent,
    TableMapEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from lakeward.connectors.mysql import catalog, events, incremental, snapshot, tables
from lakeward.connectors.mysql.catalog import Server
from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.connectors.mysql.history import (
    HistoryEntry,
    SchemaHistory,
    clean,
    parse_ddl,
    rewrites_rows,
)
from lakeward.connectors.mysql.snapshot import BinlogPoint, ChunkProgress, file_index
from lakeward.connectors.mysql.tables import TableInfo
from lakeward.core import metrics, progress
from lakeward.core.errors import (
    ConnectionFailed,
    SourceSetupError,
    TerminalError,
    TransientError,
)
from lakeward.core.events import Position

log = logging.getLogger(__name__)

# pymysqlreplication 1.0.17 opens its control connection with PyMySQL's deprecated `db` argument.
warnings.filterwarnings("ignore", message="'db' is deprecated", category=DeprecationWarning)

BATCH_ITEMS = 1000
"""Events per batch handed to the asyncio side (a transaction end hands over what it has when the
asyncio side is idle, so latency stays low without per-event handoffs)."""
QUEUE_BATCHES = 32
"""Batches in flight between the thread and the asyncio side; the bound is the backpressure."""

# Event types python-mysql-replication cannot decode and would skip: refused, never skipped.
COMPRESSED_EVENTS = {
    0x28: "MySQL TRANSACTION_PAYLOAD_EVENT (binlog_transaction_compression=ON)",
    0xA5: "MariaDB QUERY_COMPRESSED_EVENT (log_bin_compress=ON)",
    0xA6: "MariaDB WRITE_ROWS_COMPRESSED_EVENT_V1 (log_bin_compress=ON)",
    0xA7: "MariaDB UPDATE_ROWS_COMPRESSED_EVENT_V1 (log_bin_compress=ON)",
    0xA8: "MariaDB DELETE_ROWS_COMPRESSED_EVENT_V1 (log_bin_compress=ON)",
    0xA9: "MariaDB WRITE_ROWS_COMPRESSED_EVENT (log_bin_compress=ON)",
    0xAA: "MariaDB UPDATE_ROWS_COMPRESSED_EVENT (log_bin_compress=ON)",
    0xAB: "MariaDB DELETE_ROWS_COMPRESSED_EVENT (log_bin_compress=ON)",
}
ANONYMOUS_GTID_EVENT = 0x22

_USE = re.compile(r"^use `((?:[^`]|``)*)`;\s*", re.I)  # SHOW BINLOG EVENTS' Info of a Query event


# --- items ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Announce:
    info: TableInfo


@dataclass(frozen=True)
class History:
    entry: HistoryEntry


Tables = dict[str, str]
"""`db.table` -> hex position of the table's last snapshot (or of its CREATE TABLE when it was created
while streaming; "" when it was never snapshotted): the tables established in the lake."""


@dataclass(frozen=True)
class Commit:
    resume: BinlogPoint
    tables: Tables


@dataclass(frozen=True)
class SnapshotBegin:
    point: BinlogPoint
    initial: bool


@dataclass(frozen=True)
class TableDone:
    table: str
    pos: str
    """Hex position of the snapshot."""


@dataclass(frozen=True)
class ChunkDone:
    table: str
    progress: ChunkProgress
    """The table's progress once everything before this item is acknowledged."""


@dataclass(frozen=True)
class SnapshotDone:
    tables: Tables


@dataclass(frozen=True)
class Failed:
    error: BaseException


class Finished:
    pass


FINISHED = Finished()


class _Stopped(Exception):
    pass


class _NeedSnapshot(Exception):
    def __init__(self, tables: list[tuple[str, str]], resume: BinlogPoint):
        self.tables, self.resume = tables, resume


# --- the thread ---------------------------------------------------------------------------------


@dataclass
class Plan:
    """What the thread does: snapshot `snapshot_tables` (at a fresh consistent point, recording chunk
    progress), then stream from `start` (the snapshot's point when None and there is a snapshot, else
    the binlog's end). A resumed initial snapshot has `start` (its original point) and the tables
    that were not read yet."""

    snapshot_tables: list[tuple[str, str]]
    start: BinlogPoint | None
    tables: Tables
    """Tables established in the lake (see Tables)."""
    initial: bool = False
    """The initial snapshot (or what a restart has left of it): ends with SnapshotDone."""


@dataclass
class Stats:
    """What the reader did since it started (`lakeward status` of a running source)."""

    rows_decoded: int = 0
    transactions: int = 0
    position: str = ""
    event_ts: float | None = 0.0
    """Binlog timestamp (Unix seconds) of the last rows event read (0: none yet); None once a heartbeat
    showed the reader at the binlog's end (for lakeward_source_lag_seconds)."""


@dataclass(eq=False)
class _TableRead:
    """A table of a snapshot being read: planned on a pool thread, then submitted chunk by chunk."""

    db: str
    table: str
    pool: InitVar[snapshot.ChunkPool]
    future: Future = field(init=False)
    plan: snapshot.TablePlan | None = None
    entry: HistoryEntry = field(init=False)
    info: TableInfo = field(init=False)
    convert: snapshot.Convert = field(init=False)
    submitted: int = 0
    rows: int = 0
    after: list[Any] | None = None
    started: float = 0.0

    def __post_init__(self, pool: snapshot.ChunkPool) -> None:
        self.future = pool.plan(self.db, self.table)

    @property
    def name(self) -> str:
        return f"{self.db}.{self.table}"


class Reader(threading.Thread):
    def __init__(self, cfg: MySQLSourceConfig, prefix: str, server: Server, history: SchemaHistory, plan: Plan,
                 wake: Callable[[], None]):
        super().__init__(name=f"lakeward-mysql-{cfg.name}", daemon=True)
        self.cfg, self.prefix, self.server, self.history, self.plan = cfg, prefix, server, history, plan
        self.out: queue.Queue = queue.Queue(QUEUE_BATCHES)
        self.stop_flag = threading.Event()
        self.stats = Stats()
        self._wake = wake
        self._batch: list[Any] = []
        self._last_push = time.monotonic()
        self._announced: set[bytes] = set()
        self._tables: Tables = dict(plan.tables)
        self._tables_copy: Tables | None = None
        self._server_id = cfg.effective_server_id
        self._boolean = cfg.tinyint1_as_boolean
        self._meta: pymysql.Connection | None = None
        self._infos: dict[tuple, TableInfo] = {}
        self._maps: dict[int, TableInfo | None] = {}
        self._metrics = metrics.SourceMetrics(cfg.name, prefix)
        self.incremental = incremental.Jobs(cfg, prefix, server, history.epoch, self._boolean)
        """Incremental snapshot jobs; the asyncio side adds them (Jobs.add) and sets the chunk counter before start."""

    # --- handing items over ----------------------------------------------------------------------

    def _push(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        while True:
            try:
                self.out.put(batch, timeout=0.2)
                break
            except queue.Full:
                if self.stop_flag.is_set():
                    raise _Stopped() from None
        self._last_push = time.monotonic()
        self._wake()

    def _emit(self, item: Any) -> None:
        self._batch.append(item)
        if len(self._batch) >= BATCH_ITEMS:
            self._push()

    def _tables_now(self) -> Tables:
        """The established tables, as an immutable-by-convention copy shared until they change."""
        if self._tables_copy is None:
            self._tables_copy = dict(self._tables)
        return self._tables_copy

    def _set_table(self, name: str, pos: bytes | None) -> None:
        if pos is None:
            self._tables.pop(name, None)
        else:
            self._tables[name] = pos.hex()
        self._tables_copy = None

    def _snapshotted_since(self, name: str, pos: bytes) -> bool:
        """Whether the table was read (or created) after `pos`: a replayed DDL needs no new snapshot."""
        at = self._tables.get(name)
        return bool(at) and bytes.fromhex(at) > pos

    def _announce(self, info: TableInfo) -> None:
        if info.schema_id not in self._announced:
            self._announced.add(info.schema_id)
            self._batch.append(Announce(info))

    def _record(self, entry: HistoryEntry) -> None:
        if self.history.add(entry):
            self._batch.append(History(entry))

    def _count(self, info: TableInfo, op: str, n: int) -> None:
        """lakeward_source_events_read_total, per rows event or snapshot chunk (Prometheus counters are thread-safe)."""
        if n:
            self._metrics.read(f"{info.db}.{info.table}", op).inc(n)

    # --- run --------------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._meta = catalog.connect(self.cfg)
            start = self.plan.start
            if self.plan.snapshot_tables:
                point = self._snapshot(self.plan.snapshot_tables, initial=self.plan.initial, record_progress=True)
                start = start or point
            elif self.plan.initial and start is not None:
                self._emit(SnapshotDone(self._tables_now()))  # a resumed snapshot whose tables were all read
            if start is None:
                start = BinlogPoint(*catalog.master_status(self._meta, self.server))
                self._record_definitions(start)
                self._emit(SnapshotBegin(start, True))
                self._emit(SnapshotDone(self._tables_now()))
            self._emit(Commit(start, self._tables_now()))
            while not self.stop_flag.is_set():
                try:
                    self._stream(start)
                    break
                except _NeedSnapshot as n:
                    self._snapshot(n.tables, initial=False)
                    start = n.resume
                    self._emit(Commit(start, self._tables_now()))
            self._push()
        except _Stopped:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the asyncio side, which raises it
            self._batch.append(Failed(_classify(e, self.cfg)))
            try:
                self._push()
            except _Stopped:
                pass
        finally:
            if self._meta is not None:
                self._meta.close()
            try:
                self.out.put([FINISHED], timeout=5)
            except queue.Full:
                pass
            self._wake()

    def _record_definitions(self, point: BinlogPoint) -> None:
        """`snapshot: never`: record the captured tables' definitions at the stream's start (as a
        snapshot does), so that the first DDL of a table is compared with the definition it changed,
        not with information_schema as it is when the stream gets there."""
        assert self._meta is not None
        pos = Position.mysql(point.file_index, point.pos, Position.SNAPSHOT, 0, 0)
        for name in sorted(self._tables):
            db, table = name.split(".", 1)
            found = catalog.table_defs(self._meta, db, table)
            if found is not None:
                self._record(HistoryEntry(db, table, pos, self.history.epoch, tuple(found[0]), tuple(found[1])))

    # --- snapshot ---------------------------------------------------------------------------------

    def _snapshot(self, wanted: list[tuple[str, str]], *, initial: bool, record_progress: bool = False) -> BinlogPoint:
        """Read `wanted` in one consistent snapshot (several connections, one binlog point); returns the
        point. `record_progress`: hand over a ChunkDone after each chunk (the initial snapshot, which resumes
        from them; a re-read after a DDL starts over instead)."""
        cfg = self.cfg
        conns, point = snapshot.open_snapshots(cfg, self.server, cfg.effective_snapshot_parallelism)
        log.info("source %s: snapshot of %d table(s) at %s:%d%s with %d connection(s)", cfg.name, len(wanted), point.file, point.pos,
                 f" (GTID {point.gtid})" if point.gtid else "", len(conns))
        self._emit(SnapshotBegin(point, initial))
        try:
            with snapshot.ChunkPool(conns, cfg.snapshot_chunk_rows, self.stop_flag, self.name) as pool:
                self._read_tables(pool, wanted, point, record_progress)
        except snapshot.Abandoned:
            raise _Stopped() from None
        if initial:
            self._emit(SnapshotDone(self._tables_now()))
        self._push()
        return point

    def _read_tables(self, pool: snapshot.ChunkPool, wanted: list[tuple[str, str]], point: BinlogPoint, record_progress: bool) -> None:
        """Publish the tables' chunks in order while the pool reads up to `pool.size + 1` of them ahead
        (the reorder buffer: memory is bounded by chunk size x parallelism). The next table is planned
        while the current table's last chunks are read."""
        todo = deque(wanted)
        planned: deque[_TableRead] = deque()  # tables whose chunks are not all submitted yet, in order
        inflight: deque[snapshot.Chunk] = deque()
        window = pool.size + 1

        def submit() -> None:
            """Submit chunks in publish order, as far as the window allows; never waits."""
            while True:
                if not planned:
                    if not todo:
                        return
                    planned.append(_TableRead(*todo.popleft(), pool=pool))
                tr = planned[0]
                if tr.plan is None:
                    if not tr.future.done():
                        return
                    if not self._planned(tr, pool, point):
                        planned.popleft()  # dropped meanwhile; the stream will see the DROP
                        continue
                assert tr.plan is not None
                while tr.submitted < tr.plan.chunks and len(inflight) < window:
                    chunk = snapshot.Chunk(tr.plan, tr.submitted, tr.convert, tr)
                    pool.read(chunk)
                    inflight.append(chunk)
                    tr.submitted += 1
                if tr.submitted < tr.plan.chunks:
                    return
                planned.popleft()
                if todo:  # plan the next table behind this one's chunks
                    planned.append(_TableRead(*todo.popleft(), pool=pool))

        while True:
            submit()
            if inflight:
                self._publish_chunk(pool, inflight.popleft(), point, record_progress)
            elif planned:
                pool.result(planned[0].future)  # nothing to publish until the next table is planned
            else:
                return

    def _planned(self, tr: _TableRead, pool: snapshot.ChunkPool, point: BinlogPoint) -> bool:
        """Take the table's plan; False when it was dropped."""
        plan = pool.result(tr.future)
        if plan is None:
            return False
        tr.plan = plan
        tr.entry = HistoryEntry(plan.db, plan.table, Position.mysql(point.file_index, point.pos, Position.SNAPSHOT, 0, 0),
                                self.history.epoch, tuple(plan.defs), tuple(plan.pk))
        tr.info = tables.from_entry(self.cfg.name, self.prefix, tr.entry, self._boolean)
        tr.convert = self._row_events(tr.info, point)
        return True

    def _publish_chunk(self, pool: snapshot.ChunkPool, chunk: snapshot.Chunk, point: BinlogPoint, record_progress: bool) -> None:
        tr: _TableRead = chunk.owner
        info, name, cfg = tr.info, tr.name, self.cfg
        if chunk.index == 0:
            self._start_table(tr, point)
        snapshot_rows = self._metrics.snapshot_rows(name)
        for piece in pool.pieces(chunk):
            self._hand_over(piece)
            n = len(piece)
            self._count(info, "r", n)
            snapshot_rows.inc(n)
            progress.snapshots.advance(cfg.name, name, n)
        tr.rows += chunk.rows
        if chunk.last_key is not None and tr.plan.bounds is not None:
            tr.after = snapshot.key_to_json(chunk.last_key)
        if chunk.index == tr.plan.chunks - 1:
            self._set_table(name, tr.entry.pos)
            self._emit(TableDone(name, tr.entry.pos.hex()))
            self._push()
            progress.snapshots.finish(cfg.name, name)
            log.info("source %s: snapshot of %s: %d rows in %d chunk(s), %.1fs", cfg.name, name, tr.rows, tr.plan.chunks,
                     time.monotonic() - tr.started)
        elif record_progress:
            self._emit(ChunkDone(name, snapshot.ChunkProgress(tr.entry.pos.hex(), tr.plan.chunks, chunk.index + 1, tr.after, tr.rows)))

    def _hand_over(self, events: list) -> None:
        """Hand a chunk reader's piece over as a batch of its own (after what is batched before it)."""
        self._push()
        self._batch = events
        self._push()

    def _start_table(self, tr: _TableRead, point: BinlogPoint) -> None:
        """The table's schema, history entry and `t` event, before its first chunk."""
        info = tr.info
        tr.started = time.monotonic()
        self._record(tr.entry)
        self._announce(info)
        # The snapshot starts by resetting the table: a restarted snapshot must not leave stale rows.
        self._emit(events.truncate(info, events.point_source(info, self.server.server_id, point, b"first"),
                                   Position.mysql(point.file_index, point.pos, Position.SNAPSHOT, 0, 0)))
        self._count(info, "t", 1)
        progress.snapshots.start(self.cfg.name, tr.name, tr.plan.estimate)

    def _row_events(self, info: TableInfo, point: BinlogPoint) -> snapshot.Convert:
        """The chunk readers' conversion of snapshot rows into `r` events (runs on the pool's threads).
        Positions: (file, P, snapshot, chunk << 32 | row in chunk + 1, 0): increasing in publish order,
        the same when a chunk is read again at the same point."""
        convert = events.read_events(info, events.point_source(info, self.server.server_id, point, b"true"), self._boolean)
        return lambda index, first, rows: convert(rows, events.snapshot_positions(point, (index << 32) + first + 1, len(rows)))

    # --- stream -----------------------------------------------------------------------------------

    def _open_stream(self, start: BinlogPoint) -> BinLogStreamReader:
        cfg = self.cfg
        settings = dict(host=cfg.host, port=cfg.port, user=cfg.user, password=cfg.password or "", charset="utf8mb4",
                        connect_timeout=cfg.connect_timeout_s, read_timeout=max(30.0, cfg.heartbeat_interval_s * 5))
        kw: dict[str, Any] = {}
        if start.gtid and self.server.gtid_mode:
            kw["auto_position"] = start.gtid
            kw["is_mariadb"] = self.server.is_mariadb
        else:
            kw.update(log_file=start.file, log_pos=start.pos, resume_stream=True)
        opened = []

        def connect(**kw: Any) -> pymysql.Connection:
            # pymysqlreplication reconnects by itself after a lost connection, from its *initial*
            # GTID position; refuse, so the source restarts cleanly from its stored resume position.
            if "db" not in kw and "database" not in kw:
                if opened:
                    raise pymysql.err.OperationalError(2013, "lost the binlog connection")
                opened.append(True)
            return pymysql.connect(**kw)

        return BinLogStreamReader(
            connection_settings=settings,
            pymysql_wrapper=connect,
            server_id=self._server_id,
            blocking=True,
            only_events=[RotateEvent, QueryEvent, XidEvent, GtidEvent, MariadbGtidEvent, TableMapEvent, WriteRowsEvent,
                         UpdateRowsEvent, DeleteRowsEvent, PartialUpdateRowsEvent, HeartbeatLogEvent, XAPrepareEvent, NotImplementedEvent],
            filter_non_implemented_events=False,
            only_schemas=catalog.schema_filter(cfg.tables),
            slave_heartbeat=cfg.heartbeat_interval_s,
            enable_logging=False,
            **kw,
        )

    def _stream(self, start: BinlogPoint) -> None:
        cfg = self.cfg
        patterns = cfg.tables
        stream = self._open_stream(start)
        log.info("source %s: streaming from %s:%d%s", cfg.name, start.file, start.pos, f" (GTID {start.gtid})" if start.gtid else "")
        mariadb = self.server.is_mariadb
        gtid_state = _GtidState(start.gtid, mariadb)
        file, fi = start.file, start.file_index
        txn_pos: int | None = None  # position of the open transaction's first event
        txn_gtid: str | None = None
        txn_rows = False
        standalone: bool | None = None  # MariaDB's GTID flag: a DDL group that ends with its statement
        matched: dict[tuple[str, str], bool] = {}
        gtid_json = b"null"
        file_json = orjson.dumps(file)
        maps = self._maps
        maps.clear()
        dumps = orjson.dumps
        emit_batch = self._batch
        stats = self.stats
        stop = self.stop_flag
        inc = self.incremental
        inc.drop_pending("the stream starts again")  # its point may sort before a re-read that came in between
        try:
            for ev in stream:
                if stop.is_set():
                    break
                cls = ev.__class__
                if cls is WriteRowsEvent or cls is UpdateRowsEvent or cls is DeleteRowsEvent:
                    info = maps.get(ev.table_id)
                    if info is None:
                        continue
                    w = ev.packet
                    ev_start = w.log_pos - w.event_size
                    if txn_pos is None:
                        txn_pos = ev_start
                    raw = w.packet
                    data, p = raw._data, raw._position
                    end = p + ev.event_size - w.read_bytes
                    rows = events.RowsEvent(info, emit_batch, file_index=fi, txn_pos=txn_pos, event_pos=ev_start, server_id=w.server_id,
                                            ts_ms=ev.timestamp * 1000, gtid_json=gtid_json, file_json=file_json)
                    if cls is WriteRowsEvent:
                        image = info.image(ev.columns_present_bitmap)
                        created = []
                        while p < end:
                            row, p = image(data, p)
                            created.append(row)
                        rows.created(created)
                        n = len(created)
                        self._count(info, "c", n)
                    elif cls is DeleteRowsEvent:
                        image = info.image(ev.columns_present_bitmap)
                        deleted = []
                        while p < end:
                            row, p = image(data, p)
                            deleted.append(row)
                        rows.deleted(deleted)
                        n = len(deleted)
                        self._count(info, "d", n)
                    else:
                        before_image = info.image(ev.columns_present_bitmap)
                        after_image = info.image(ev.columns_present_bitmap2)
                        pairs = []
                        while p < end:
                            before, p = before_image(data, p)
                            after, p = after_image(data, p)
                            pairs.append((before, after))
                        moved = rows.updated(pairs)
                        n = len(pairs)
                        self._count(info, "u", n - moved)
                        self._count(info, "d", moved)
                        self._count(info, "c", moved)
                    stats.rows_decoded += n
                    stats.event_ts = ev.timestamp
                    txn_rows = True
                    if len(emit_batch) >= BATCH_ITEMS:
                        self._push()
                        emit_batch = self._batch
                elif cls is TableMapEvent:
                    if txn_pos is None:
                        txn_pos = ev.packet.log_pos - ev.packet.event_size
                    hit = matched.get((ev.schema, ev.table))
                    if hit is None:
                        hit = matched[(ev.schema, ev.table)] = catalog.matches(patterns, ev.schema, ev.table)
                    if hit:
                        pos = Position.mysql(fi, txn_pos, Position.STREAM, ev.packet.log_pos - ev.packet.event_size, 0)
                        maps[ev.table_id] = self._table_from_map(ev, pos)
                        emit_batch = self._batch
                    else:
                        maps[ev.table_id] = None
                elif cls is XidEvent:
                    txn_pos, txn_rows = None, False
                    gtid_state.commit(txn_gtid)
                    txn_gtid, gtid_json = None, b"null"
                    stats.transactions += 1
                    self._commit(BinlogPoint(file, ev.packet.log_pos, gtid_state.text))
                    if inc.busy:
                        self._incremental(fi, ev.packet.log_pos)
                    emit_batch = self._batch
                elif cls is MariadbGtidEvent or cls is GtidEvent:
                    txn_pos = ev.packet.log_pos - ev.packet.event_size
                    txn_gtid = ev.gtid
                    gtid_json = dumps(txn_gtid)
                    standalone = bool(ev.flags & 1) if cls is MariadbGtidEvent else None
                    if inc.busy:  # a transaction boundary: the stream has everything before txn_pos
                        self._incremental(fi, txn_pos)
                        emit_batch = self._batch
                elif cls is QueryEvent:
                    q = ev.query
                    ev_start = ev.packet.log_pos - ev.packet.event_size
                    if txn_pos is None:
                        txn_pos = ev_start
                        if inc.busy:
                            self._incremental(fi, txn_pos)
                            emit_batch = self._batch
                    word = q.strip().upper()
                    if word == "BEGIN":
                        continue
                    if word == "COMMIT" or word == "ROLLBACK":
                        # A non-transactional engine's statement ends with a COMMIT query, not an XID.
                        txn_pos, txn_rows = None, False
                        gtid_state.commit(txn_gtid)
                        txn_gtid, gtid_json = None, b"null"
                        self._commit(BinlogPoint(file, ev.packet.log_pos, gtid_state.text))
                        if inc.busy:
                            self._incremental(fi, ev.packet.log_pos)
                        emit_batch = self._batch
                        continue
                    default_db = ev.schema.decode() if isinstance(ev.schema, bytes) else (ev.schema or "")
                    ddl = parse_ddl(q, default_db)
                    if ddl is None:
                        continue  # SAVEPOINT, ROLLBACK TO, XA ...: inside a transaction
                    pos = Position.mysql(fi, txn_pos, Position.STREAM, ev_start, 0)
                    snap = self._ddl(ddl, q, pos, ev.packet.server_id, ev.timestamp * 1000, gtid_json, file_json, ev_start,
                                     (file, ev.packet.log_pos))
                    if inc.pending is not None and incremental.touches(ddl, inc.pending.job.table):
                        inc.drop_pending(f"{ddl.kind} of the table before the chunk's point")
                    if ddl.kind == "dml":
                        continue  # a statement-based change inside a transaction, on a table we don't capture
                    if standalone is False or standalone is None and clean(q).upper().endswith("START TRANSACTION"):
                        continue  # CREATE TABLE ... SELECT: the rows and an XID follow in the same transaction
                    # DDL commits implicitly: a transaction of its own.
                    txn_pos, txn_rows = None, False
                    gtid_state.commit(txn_gtid)
                    txn_gtid, gtid_json = None, b"null"
                    resume = BinlogPoint(file, ev.packet.log_pos, gtid_state.text)
                    if snap:
                        self._push()
                        raise _NeedSnapshot(snap, resume)
                    self._commit(resume)
                    if inc.busy:
                        self._incremental(fi, ev.packet.log_pos)
                    emit_batch = self._batch
                elif cls is RotateEvent:
                    if ev.timestamp:
                        maps.clear()  # a real rotation may follow a server restart, which reuses table ids
                    file = ev.next_binlog
                    fi = file_index(file)
                    file_json = dumps(file)
                    stats.position = f"{file}:{ev.position}"
                elif cls is HeartbeatLogEvent:
                    if txn_pos is None:
                        stats.event_ts = None  # the server sends heartbeats only when it has nothing else to send
                        self._push()
                        if inc.busy:
                            # The binlog's end: an idle server shows incremental chunks their point this way.
                            self._incremental(file_index(ev.ident) if ev.ident else fi, ev.packet.log_pos)
                        emit_batch = self._batch
                elif cls is NotImplementedEvent:
                    et = ev.event_type
                    if et in COMPRESSED_EVENTS:
                        raise TerminalError(
                            f"MySQL at {cfg.where}: the binlog holds a compressed event ({COMPRESSED_EVENTS[et]}) at "
                            f"{file}:{ev.packet.log_pos - ev.packet.event_size}, which cannot be decoded; refusing to skip it. "
                            "Turn compression off on the server, then take a new snapshot (docs/mysql.md: delete the state topic "
                            f"<prefix>.{cfg.name}.__state and restart the source)")
                    if et == ANONYMOUS_GTID_EVENT:
                        txn_pos = ev.packet.log_pos - ev.packet.event_size
                        if inc.busy:
                            self._incremental(fi, txn_pos)
                            emit_batch = self._batch
                elif cls is XAPrepareEvent:
                    if txn_rows:
                        raise TerminalError(f"MySQL at {cfg.where}: an XA transaction changed captured tables ({file}:{ev.packet.log_pos}); "
                                            "XA transactions are not supported (their rows are logged at XA PREPARE, before the outcome)")
                    txn_pos, txn_rows, txn_gtid, gtid_json = None, False, None, b"null"
                elif cls is PartialUpdateRowsEvent:
                    if maps.get(ev.table_id) is not None:
                        raise TerminalError(f"MySQL at {cfg.where}: partial JSON updates (binlog_row_value_options=PARTIAL_JSON) "
                                            "cannot be applied; set binlog_row_value_options=''")
            if not stop.is_set():
                raise ConnectionFailed(f"MySQL at {cfg.where} ended the binlog stream (server shutting down?) at {file}")
        finally:
            stream.close()
            inc.close()

    # --- incremental snapshots ---------------------------------------------------------------------

    def _incremental(self, fi: int, pos: int) -> None:
        """At a transaction boundary, the stream having everything before (fi, pos): publish the pending
        chunk once the stream reached its point, then read the next one. On an idle binlog (the chunk's
        point is where the stream is) chunk after chunk, for at most IDLE_READ_S."""
        inc = self.incremental
        started = time.monotonic()
        while not self.stop_flag.is_set():
            chunk = inc.pending
            if chunk is not None:
                if (fi, pos) < chunk.at:
                    return
                self._publish_incremental_chunk(chunk)
                if time.monotonic() - started > incremental.IDLE_READ_S:
                    return
            job = inc.next_job()
            if job is None:
                return
            try:
                chunk = inc.read(job)
            except incremental.JobError as e:
                self._batch.append(inc.stopped(job, str(e)))
                self._push()
                continue
            if chunk is None:
                return  # a DDL raced the read: again at the next boundary
            if chunk.at < (fi, pos):
                # Cannot happen (the server's binlog is never behind what it sent); never publish out of order.
                log.warning("source %s: incremental chunk of %s read at %s:%d, behind the stream at %d:%d; reading it again",
                            self.cfg.name, job.table, chunk.point.file, chunk.point.pos, fi, pos)
                return
            inc.pending = chunk

    def _publish_incremental_chunk(self, chunk: incremental.Chunk) -> None:
        """Hand a chunk's events over, then the item that records the job's progress once they are acknowledged."""
        self._announce(chunk.info)
        batch = self._batch
        for event in chunk.events:
            batch.append(event)
            if len(batch) >= BATCH_ITEMS:
                self._push()
                batch = self._batch
        self._count(chunk.info, "r", len(chunk.events))
        self._batch.append(self.incremental.published(chunk))
        self._push()

    def _commit(self, resume: BinlogPoint) -> None:
        self.stats.position = f"{resume.file}:{resume.pos}"
        self._batch.append(Commit(resume, self._tables_now()))
        # Hand over at once when the asyncio side is idle (low latency); otherwise keep filling.
        if len(self._batch) >= BATCH_ITEMS or self.out.empty() or time.monotonic() - self._last_push > 0.1:
            self._push()

    def _table_from_map(self, ev: TableMapEvent, pos: bytes) -> TableInfo:
        entry = self.history.at(ev.schema, ev.table, pos)
        signature = (ev.schema, ev.table, id(entry), bytes(ev.null_bitmask), tuple(ev.optional_metadata.simple_primary_key_list),
                     tuple((c.name, c.type, c.unsigned, tables._meta(c), getattr(c, "character_set_name", None)) for c in ev.columns))
        info = self._infos.get(signature)
        if info is None:
            info = tables.from_table_map(self.cfg.name, self.prefix, ev.schema, ev.table, ev.columns, ev.null_bitmask,
                                         list(ev.optional_metadata.simple_primary_key_list), entry, self._boolean)
            self._infos[signature] = info
        self._announce(info)
        return info

    # --- DDL --------------------------------------------------------------------------------------

    def _info_for(self, db: str, table: str, pos: bytes) -> TableInfo | None:
        """The table as it was right before `pos` (for a `t` event: also when replaying its DROP)."""
        entry = self.history.at(db, table, pos)
        if entry is not None and not entry.columns:
            entry = self.history.before(db, table, entry.pos)
        if entry is None or not entry.columns:
            return None
        return tables.from_entry(self.cfg.name, self.prefix, entry, self._boolean)

    def _truncate(self, db: str, table: str, pos: bytes, server_id: int, ts_ms: int, gtid_json: bytes, file_json: bytes, ev_start: int) -> None:
        info = self._info_for(db, table, pos)
        if info is None:
            return
        self._announce(info)
        self._batch.append(events.truncate(info, info.source_head(server_id, ts_ms, b"false", gtid_json, file_json, ev_start), pos))
        self._count(info, "t", 1)

    def _read_entry(self, db: str, table: str, pos: bytes, ddl: str, end: tuple[str, int] | None) -> None:
        """Record the table's definition (information_schema now) at the DDL's position, once. `end`:
        the binlog position right after the DDL; the entry is exact when the binlog still ends there
        after the read (no later statement can have changed the table)."""
        if self.history.has(db, table, pos):
            return
        assert self._meta is not None
        self._meta.ping(reconnect=True)
        found = catalog.table_defs(self._meta, db, table)
        exact = end is not None and not self._later_ddl(db, table, end)
        if found is None:
            self._record(HistoryEntry(db, table, pos, self.history.epoch, dropped=True, ddl=ddl, exact=exact))
        else:
            self._record(HistoryEntry(db, table, pos, self.history.epoch, tuple(found[0]), tuple(found[1]), ddl=ddl, exact=exact))

    LOOKAHEAD_EVENTS = 5000

    def _later_ddl(self, db: str, table: str, end: tuple[str, int]) -> bool:
        """Whether the binlog after `end` (file, position) may hold another DDL of the table, which
        information_schema (read just before) would already show. True when unsure: the binlog
        rotated meanwhile, or more than LOOKAHEAD_EVENTS events followed."""
        assert self._meta is not None
        now = catalog.binlog_end(self._meta)
        if now == end:
            return False
        if now[0] != end[0]:
            return True
        try:
            rows = catalog.query(self._meta, f"SHOW BINLOG EVENTS IN %s FROM %s LIMIT {self.LOOKAHEAD_EVENTS}", (end[0], end[1]))
        except pymysql.err.MySQLError as e:
            log.warning("source %s: cannot look at the binlog after a DDL of %s.%s (%s); judging the DDL by its statement",
                        self.cfg.name, db, table, e)
            return True
        last = end[1]
        for _log, _pos, kind, _sid, end_pos, info in rows:
            last = int(end_pos)
            if int(_pos) >= now[1]:
                return False
            if kind != "Query" or not info:
                continue
            text, default_db = str(info), ""
            if m := _USE.match(text):
                default_db, text = m.group(1).replace("``", "`"), text[m.end():]
            ddl = parse_ddl(text, default_db)
            if ddl is None or ddl.kind in ("dml", "other"):
                continue
            if (db, table) in ddl.tables or ddl.kind == "drop_database" and ddl.database == db:
                return True
        return last < now[1] and len(rows) >= self.LOOKAHEAD_EVENTS

    def _drop(self, db: str, table: str, pos: bytes, ddl: str, *args: Any) -> None:
        name = f"{db}.{table}"
        if name in self._tables:
            # The table is gone at the source: the lake's mirror becomes empty.
            self._truncate(db, table, pos, *args)
            self._set_table(name, None)
        if catalog.matches(self.cfg.tables, db, table) and not self.history.has(db, table, pos):
            self._record(HistoryEntry(db, table, pos, self.history.epoch, dropped=True, ddl=ddl))

    def _ddl(self, ddl: Any, sql: str, pos: bytes, server_id: int, ts_ms: int, gtid_json: bytes, file_json: bytes,
             ev_start: int, end: tuple[str, int] | None = None) -> list[tuple[str, str]]:
        """Apply a statement to the history and the lake; returns tables that need a snapshot."""
        patterns = self.cfg.tables
        args = (server_id, ts_ms, gtid_json, file_json, ev_start)
        captured = [t for t in ddl.tables if catalog.matches(patterns, *t)]
        need: list[tuple[str, str]] = []
        if ddl.kind == "dml":
            if captured:
                raise TerminalError(f"MySQL at {self.cfg.where}: a statement-based change to {captured[0][0]}.{captured[0][1]} is in the "
                                    f"binlog ({sql[:120]!r}); rows can only be captured from row-based events. Make sure every session "
                                    "uses binlog_format=ROW, then re-snapshot")
            return need
        if ddl.kind in ("alter", "create"):
            for db, table in captured:
                self._read_entry(db, table, pos, sql, end)
                name = f"{db}.{table}"
                if ddl.kind == "create":
                    if name not in self._tables:
                        self._set_table(name, pos)  # new and empty: its rows follow in the binlog
                elif not self._snapshotted_since(name, pos):
                    why = rewrites_rows(self.history.before(db, table, pos), self.history.at(db, table, pos), sql)
                    if why:
                        # Also with `snapshot: never`, which skips the first copy of a table, not this repair.
                        log.info("source %s: %s.%s: %s without row events; reading the table again", self.cfg.name, db, table, why)
                        need.append((db, table))
        elif ddl.kind == "truncate":
            for db, table in captured:
                self._truncate(db, table, pos, *args)
        elif ddl.kind == "drop":
            for db, table in ddl.tables:
                self._drop(db, table, pos, sql, *args)
        elif ddl.kind == "drop_database":
            for name in sorted(self._tables):
                db, table = name.split(".", 1)
                if db == ddl.database:
                    self._drop(db, table, pos, sql, *args)
        elif ddl.kind == "rename":
            pairs = list(zip(ddl.tables[0::2], ddl.tables[1::2]))
            for old, new in pairs:
                self._drop(*old, pos, sql, *args)
                if catalog.matches(patterns, *new):
                    self._read_entry(*new, pos, sql, end)
                    # The renamed table brings rows the binlog never showed under this name: snapshot it.
                    name = f"{new[0]}.{new[1]}"
                    if not self._snapshotted_since(name, pos):
                        need.append(new)
        if need:
            # Rows of these tables between this statement and the snapshot's point are in the snapshot;
            # sinks drop their stream events (lower positions than the snapshot's).
            log.info("source %s: %s makes %s appear; snapshotting", self.cfg.name, ddl.kind, ", ".join(f"{d}.{t}" for d, t in need))
        return need


class _GtidState:
    """The GTID position after the last committed transaction: MariaDB's `domain-server-seq` per
    domain, or MySQL's executed GTID set."""

    def __init__(self, text: str, mariadb: bool):
        self.mariadb = mariadb
        self.text = text
        self._domains: dict[int, str] = {}
        self._set: GtidSet | None = None
        if mariadb:
            for part in filter(None, (x.strip() for x in text.split(","))):
                self._domains[int(part.split("-", 1)[0])] = part
        elif text:
            self._set = GtidSet(text)

    def commit(self, gtid: str | None) -> None:
        if not gtid:
            return
        if self.mariadb:
            self._domains[int(gtid.split("-", 1)[0])] = gtid
            self.text = ",".join(self._domains[d] for d in sorted(self._domains))
        else:
            if self._set is None:
                self._set = GtidSet(None)
            self._set.merge_gtid(Gtid(gtid))
            self.text = str(self._set)


def _classify(e: BaseException, cfg: MySQLSourceConfig) -> BaseException:
    """Library and driver errors -> Lakeward's (terminal: a person must act; transient: retried)."""
    if isinstance(e, (TerminalError, TransientError)):
        return e
    if isinstance(e, pymysql.err.OperationalError) and e.args:
        code, msg = e.args[0], str(e.args[-1])
        if code == catalog.ER_MASTER_FATAL_READING_BINLOG:
            return SourceSetupError(
                f"MySQL at {cfg.where} cannot send the binlog from the source's resume position: {msg}. If the binlog "
                f"was purged, the changes in between are lost to Lakeward: stop the source, delete its state topic "
                f"(<prefix>.{cfg.name}.__state) and start it again to take a new snapshot (docs/mysql.md)")
        if code == 1412:  # ER_TABLE_DEF_CHANGED
            return TransientError(f"MySQL at {cfg.where}: a table changed while it was being snapshotted ({msg}); retrying the snapshot")
        return ConnectionFailed(f"MySQL at {cfg.where}: {msg} (error {code})")
    if isinstance(e, (pymysql.err.InterfaceError, ConnectionError, OSError)):
        return ConnectionFailed(f"MySQL at {cfg.where}: connection lost ({e.__class__.__name__}: {e})")
    return e


def new_epoch() -> str:
    return uuid.uuid4().hex[:12]
