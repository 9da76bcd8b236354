"""The reader thread: every blocking MySQL call of a running source happens here.

It snapshots tables (snapshot.py), then follows the binlog (stream.py, with ddl.py for statements and
gtid.py for where it is), and hands the asyncio side an ordered stream of batches (handover.py).
Between transactions it runs incremental snapshot chunks (incremental.py). Its errors reach the
asyncio side classified (errors.py).

Positions (core.events.Position.mysql) come from the binlog itself (events.py), so a restarted
source re-publishes a transaction with the same positions and sinks drop the repeats; table filters
don't change them either. A snapshot taken at binlog position P has positions (file, P, 0, sequence,
0): after everything before P, before the transaction starting at P; the sequence is 0 for the
table's `t` event, then chunk << 32 | row in chunk + 1 (chunks are read by several connections at P
and published in order, see snapshot.py).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import InitVar, dataclass, field
from typing import Any

import pymysql

from lakeward.connectors.mysql import catalog, errors, events, incremental, snapshot, tables
from lakeward.connectors.mysql.catalog import Server
from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.connectors.mysql.ddl import DdlHandler
from lakeward.connectors.mysql.handover import (
    ChunkDone,
    Commit,
    Established,
    Handover,
    SnapshotBegin,
    SnapshotDone,
    Stats,
    Stopped,
    TableDone,
    Tables,
)
from lakeward.connectors.mysql.history import HistoryEntry, SchemaHistory
from lakeward.connectors.mysql.snapshot import BinlogPoint
from lakeward.connectors.mysql.stream import BinlogStream, NeedSnapshot
from lakeward.connectors.mysql.tables import TableInfo
from lakeward.core import metrics, progress
from lakeward.core.events import Position

log = logging.getLogger(__name__)

# pymysqlreplication 1.0.17 opens its control connection with PyMySQL's deprecated `db` argument.
warnings.filterwarnings("ignore", message="'db' is deprecated", category=DeprecationWarning)


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
        self.stop_flag = threading.Event()
        self.stats = Stats()
        self._metrics = metrics.SourceMetrics(cfg.name, prefix)
        self.handover = Handover(wake, self.stop_flag, history, self._metrics)
        self.tables = Established(plan.tables)
        self._boolean = cfg.tinyint1_as_boolean
        self._meta: pymysql.Connection | None = None
        self.incremental = incremental.Jobs(cfg, prefix, server, history.epoch, self._boolean)
        """Incremental snapshot jobs; the asyncio side adds them (Jobs.add) and sets the chunk counter before start."""
        self._ddl = DdlHandler(cfg, prefix, history, self.handover, self.tables, self._boolean)
        self._stream = BinlogStream(cfg, prefix, server, history, self.handover, self._ddl, self.tables, self.stats, self.stop_flag,
                                    self.incremental, self._incremental)

    # --- run --------------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._meta = self._ddl.meta = catalog.connect(self.cfg)
            start = self.plan.start
            if self.plan.snapshot_tables:
                point = self._snapshot(self.plan.snapshot_tables, initial=self.plan.initial, record_progress=True)
                start = start or point
            elif self.plan.initial and start is not None:
                self.handover.emit(SnapshotDone(self.tables.now()))  # a resumed snapshot whose tables were all read
            if start is None:
                start = BinlogPoint(*catalog.master_status(self._meta, self.server))
                self._record_definitions(start)
                self.handover.emit(SnapshotBegin(start, True))
                self.handover.emit(SnapshotDone(self.tables.now()))
            self.handover.emit(Commit(start, self.tables.now()))
            while not self.stop_flag.is_set():
                try:
                    self._stream.run(start)
                    break
                except NeedSnapshot as n:
                    self._snapshot(n.tables, initial=False)
                    start = n.resume
                    self.handover.emit(Commit(start, self.tables.now()))
            self.handover.push()
        except Stopped:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the asyncio side, which raises it
            self.handover.fail(errors.classify(e, self.cfg))
        finally:
            if self._meta is not None:
                self._meta.close()
            self.handover.finish()

    def _record_definitions(self, point: BinlogPoint) -> None:
        """`snapshot: never`: record the captured tables' definitions at the stream's start (as a
        snapshot does), so that the first DDL of a table is compared with the definition it changed,
        not with information_schema as it is when the stream gets there."""
        assert self._meta is not None
        pos = Position.mysql(point.file_index, point.pos, Position.SNAPSHOT, 0, 0)
        for name in self.tables.names():
            db, table = name.split(".", 1)
            found = catalog.table_defs(self._meta, db, table)
            if found is not None:
                self.handover.record(HistoryEntry(db, table, pos, self.history.epoch, tuple(found[0]), tuple(found[1])))

    # --- snapshot ---------------------------------------------------------------------------------

    def _snapshot(self, wanted: list[tuple[str, str]], *, initial: bool, record_progress: bool = False) -> BinlogPoint:
        """Read `wanted` in one consistent snapshot (several connections, one binlog point); returns the
        point. `record_progress`: hand over a ChunkDone after each chunk (the initial snapshot, which resumes
        from them; a re-read after a DDL starts over instead)."""
        cfg = self.cfg
        conns, point = snapshot.open_snapshots(cfg, self.server, cfg.effective_snapshot_parallelism)
        log.info("source %s: snapshot of %d table(s) at %s:%d%s with %d connection(s)", cfg.name, len(wanted), point.file, point.pos,
                 f" (GTID {point.gtid})" if point.gtid else "", len(conns))
        self.handover.emit(SnapshotBegin(point, initial))
        try:
            with snapshot.ChunkPool(conns, cfg.snapshot_chunk_rows, self.stop_flag, self.name) as pool:
                self._read_tables(pool, wanted, point, record_progress)
        except snapshot.Abandoned:
            raise Stopped() from None
        if initial:
            self.handover.emit(SnapshotDone(self.tables.now()))
        self.handover.push()
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
        info, name, cfg, plan = tr.info, tr.name, self.cfg, tr.plan
        assert plan is not None
        if chunk.index == 0:
            self._start_table(tr, point)
        snapshot_rows = self._metrics.snapshot_rows(name)
        for piece in pool.pieces(chunk):
            self.handover.hand_over(piece)
            n = len(piece)
            self.handover.count(info, "r", n)
            snapshot_rows.inc(n)
            progress.snapshots.advance(cfg.name, name, n)
        tr.rows += chunk.rows
        if chunk.last_key is not None and plan.bounds is not None:
            tr.after = snapshot.key_to_json(chunk.last_key)
        if chunk.index == plan.chunks - 1:
            self.tables.set(name, tr.entry.pos)
            self.handover.emit(TableDone(name, tr.entry.pos.hex()))
            self.handover.push()
            progress.snapshots.finish(cfg.name, name)
            log.info("source %s: snapshot of %s: %d rows in %d chunk(s), %.1fs", cfg.name, name, tr.rows, plan.chunks,
                     time.monotonic() - tr.started)
        elif record_progress:
            self.handover.emit(ChunkDone(name, snapshot.ChunkProgress(tr.entry.pos.hex(), plan.chunks, chunk.index + 1, tr.after, tr.rows)))

    def _start_table(self, tr: _TableRead, point: BinlogPoint) -> None:
        """The table's schema, history entry and `t` event, before its first chunk."""
        info = tr.info
        tr.started = time.monotonic()
        self.handover.record(tr.entry)
        self.handover.announce(info)
        # The snapshot starts by resetting the table: a restarted snapshot must not leave stale rows.
        self.handover.emit(events.truncate(info, events.point_source(info, self.server.server_id, point, b"first"),
                                           Position.mysql(point.file_index, point.pos, Position.SNAPSHOT, 0, 0)))
        self.handover.count(info, "t", 1)
        assert tr.plan is not None
        progress.snapshots.start(self.cfg.name, tr.name, tr.plan.estimate)

    def _row_events(self, info: TableInfo, point: BinlogPoint) -> snapshot.Convert:
        """The chunk readers' conversion of snapshot rows into `r` events (runs on the pool's threads).
        Positions: (file, P, snapshot, chunk << 32 | row in chunk + 1, 0): increasing in publish order,
        the same when a chunk is read again at the same point."""
        convert = events.read_events(info, events.point_source(info, self.server.server_id, point, b"true"), self._boolean)
        return lambda index, first, rows: convert(rows, events.snapshot_positions(point, (index << 32) + first + 1, len(rows)))

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
                self.handover.batch.append(inc.stopped(job, str(e)))
                self.handover.push()
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
        out = self.handover
        out.announce(chunk.info)
        for event in chunk.events:
            out.batch.append(event)
            out.full_check()
        self.handover.count(chunk.info, "r", len(chunk.events))
        self.handover.batch.append(self.incremental.published(chunk))
        self.handover.push()


def new_epoch() -> str:
    return uuid.uuid4().hex[:12]
