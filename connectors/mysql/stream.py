"""The binlog stream: events of BinLogStreamReader in, the source's items out (see handover.py).

One method per kind of binlog event. A rows event of a captured table becomes events (events.py) at
positions from the binlog itself (gtid.StreamPosition); a transaction's end hands a Commit over; a
statement goes to the DDL handler (ddl.py), which may ask for tables to be snapshotted (NeedSnapshot);
every transaction boundary is a point where a pending incremental snapshot chunk may be published.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

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
from pymysqlreplication.row_event import (
    DeleteRowsEvent,
    PartialUpdateRowsEvent,
    TableMapEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from lakeward.connectors.mysql import catalog, errors, events, incremental, tables
from lakeward.connectors.mysql.catalog import Server
from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.connectors.mysql.ddl import DdlHandler
from lakeward.connectors.mysql.gtid import StreamPosition
from lakeward.connectors.mysql.handover import Established, Handover, Stats
from lakeward.connectors.mysql.history import SchemaHistory, clean, parse_ddl
from lakeward.connectors.mysql.snapshot import BinlogPoint, file_index
from lakeward.connectors.mysql.tables import TableInfo
from lakeward.core.events import Position

log = logging.getLogger(__name__)

ANONYMOUS_GTID_EVENT = 0x22


class NeedSnapshot(Exception):
    """A statement made tables appear (or rewrote their rows): snapshot them, then stream from `resume`."""

    def __init__(self, tables: list[tuple[str, str]], resume: BinlogPoint):
        self.tables, self.resume = tables, resume


def decode_rows(image: Callable[[bytes, int], tuple[dict, int]], data: bytes, p: int, end: int) -> list[dict]:
    """The row images of a write or delete rows event's body, from `p` to `end`."""
    rows: list[dict] = []
    append = rows.append
    while p < end:
        row, p = image(data, p)
        append(row)
    return rows


def decode_row_pairs(before_image: Callable[[bytes, int], tuple[dict, int]], after_image: Callable[[bytes, int], tuple[dict, int]],
                     data: bytes, p: int, end: int) -> list[tuple[dict, dict]]:
    """(before, after) of each row of an update rows event's body."""
    pairs: list[tuple[dict, dict]] = []
    append = pairs.append
    while p < end:
        before, p = before_image(data, p)
        after, p = after_image(data, p)
        append((before, after))
    return pairs


class BinlogStream:
    """Reads the binlog from a point until stopped, handing over events, commits and DDL effects."""

    at: StreamPosition
    """Where the stream is (set by `run`)."""

    def __init__(self, cfg: MySQLSourceConfig, prefix: str, server: Server, history: SchemaHistory, out: Handover, ddl: DdlHandler,
                 established: Established, stats: Stats, stop: threading.Event, jobs: incremental.Jobs,
                 at_boundary: Callable[[int, int], None]):
        self.cfg, self.prefix, self.server, self.history, self.out, self.ddl = cfg, prefix, server, history, out, ddl
        self.tables, self.stats, self.stop, self.jobs = established, stats, stop, jobs
        self._at_boundary = at_boundary
        """Called at each transaction boundary while incremental jobs run (the stream has everything before (file index, pos))."""
        self._infos: dict[tuple, TableInfo] = {}
        self._maps: dict[int, TableInfo | None] = {}
        self._matched: dict[tuple[str, str], bool] = {}
        self._handlers: dict[type, Callable[[Any], None]] = {
            WriteRowsEvent: self._rows, UpdateRowsEvent: self._rows, DeleteRowsEvent: self._rows, TableMapEvent: self._table_map,
            XidEvent: self._xid, GtidEvent: self._gtid, MariadbGtidEvent: self._gtid, QueryEvent: self._query, RotateEvent: self._rotate,
            HeartbeatLogEvent: self._heartbeat, NotImplementedEvent: self._not_implemented, XAPrepareEvent: self._xa_prepare,
            PartialUpdateRowsEvent: self._partial_update,
        }

    def run(self, start: BinlogPoint) -> None:
        """Stream from `start` until the stop flag is set; NeedSnapshot when a statement asks for one."""
        cfg = self.cfg
        stream = self._open(start)
        log.info("source %s: streaming from %s:%d%s", cfg.name, start.file, start.pos, f" (GTID {start.gtid})" if start.gtid else "")
        self.at = StreamPosition(start, self.server.is_mariadb)
        self._maps.clear()
        self._matched.clear()
        self.jobs.drop_pending("the stream starts again")  # its point may sort before a re-read that came in between
        handlers, stop = self._handlers, self.stop
        try:
            for ev in stream:
                if stop.is_set():
                    break
                handler = handlers.get(ev.__class__)
                if handler is not None:
                    handler(ev)
            if not stop.is_set():
                raise errors.stream_ended(cfg, self.at.file)
        finally:
            stream.close()
            self.jobs.close()

    def _open(self, start: BinlogPoint) -> BinLogStreamReader:
        cfg = self.cfg
        settings = {"host": cfg.host, "port": cfg.port, "user": cfg.user, "password": cfg.password or "", "charset": "utf8mb4",
                    "connect_timeout": cfg.connect_timeout_s, "read_timeout": max(30.0, cfg.heartbeat_interval_s * 5)}
        kw: dict[str, Any] = {}
        if start.gtid and self.server.gtid_mode:
            kw["auto_position"] = start.gtid
            kw["is_mariadb"] = self.server.is_mariadb
        else:
            kw.update(log_file=start.file, log_pos=start.pos, resume_stream=True)
        opened: list[bool] = []

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
            server_id=self.cfg.effective_server_id,
            blocking=True,
            only_events=[RotateEvent, QueryEvent, XidEvent, GtidEvent, MariadbGtidEvent, TableMapEvent, WriteRowsEvent,
                         UpdateRowsEvent, DeleteRowsEvent, PartialUpdateRowsEvent, HeartbeatLogEvent, XAPrepareEvent, NotImplementedEvent],
            filter_non_implemented_events=False,
            only_schemas=catalog.schema_filter(cfg.tables),
            slave_heartbeat=cfg.heartbeat_interval_s,
            enable_logging=False,
            **kw,
        )

    # --- transactions -------------------------------------------------------------------------------

    def _boundary(self, pos: int) -> None:
        if self.jobs.busy:
            self._at_boundary(self.at.file_index, pos)

    def _commit(self, resume: BinlogPoint) -> None:
        self.stats.position = f"{resume.file}:{resume.pos}"
        self.out.commit(resume, self.tables.now())

    def _xid(self, ev: XidEvent) -> None:
        end = ev.packet.log_pos
        resume = self.at.commit(end)
        self.stats.transactions += 1
        self._commit(resume)
        self._boundary(end)

    def _gtid(self, ev: GtidEvent | MariadbGtidEvent) -> None:
        start = ev.packet.log_pos - ev.packet.event_size
        self.at.gtid_event(start, ev.gtid, bool(ev.flags & 1) if ev.__class__ is MariadbGtidEvent else None)
        self._boundary(start)  # a transaction boundary: the stream has everything before it

    def _query(self, ev: QueryEvent) -> None:
        at, q = self.at, ev.query
        start = ev.packet.log_pos - ev.packet.event_size
        if at.txn_pos is None:
            at.txn_pos = start
            self._boundary(start)
        word = q.strip().upper()
        if word == "BEGIN":
            return
        if word == "COMMIT" or word == "ROLLBACK":
            # A non-transactional engine's statement ends with a COMMIT query, not an XID.
            self._commit(at.commit(ev.packet.log_pos))
            self._boundary(ev.packet.log_pos)
            return
        self._statement(ev, q, start)

    def _statement(self, ev: QueryEvent, q: str, start: int) -> None:
        """A statement other than BEGIN/COMMIT: DDL (its own transaction) or a statement inside one."""
        at = self.at
        default_db = ev.schema.decode() if isinstance(ev.schema, bytes) else (ev.schema or "")
        ddl = parse_ddl(q, default_db)
        if ddl is None:
            return  # SAVEPOINT, ROLLBACK TO, XA ...: inside a transaction
        assert at.txn_pos is not None
        pos = Position.mysql(at.file_index, at.txn_pos, Position.STREAM, start, 0)
        snap = self.ddl.apply(ddl, q, pos, ev.packet.server_id, ev.timestamp * 1000, at.gtid_json, at.file_json, start,
                              (at.file, ev.packet.log_pos))
        pending = self.jobs.pending
        if pending is not None and incremental.touches(ddl, pending.job.table):
            self.jobs.drop_pending(f"{ddl.kind} of the table before the chunk's point")
        if ddl.kind == "dml":
            return  # a statement-based change inside a transaction, on a table we don't capture
        if at.standalone is False or at.standalone is None and clean(q).upper().endswith("START TRANSACTION"):
            return  # CREATE TABLE ... SELECT: the rows and an XID follow in the same transaction
        # DDL commits implicitly: a transaction of its own.
        resume = at.commit(ev.packet.log_pos)
        if snap:
            self.out.push()
            raise NeedSnapshot(snap, resume)
        self._commit(resume)
        self._boundary(ev.packet.log_pos)

    def _xa_prepare(self, ev: XAPrepareEvent) -> None:
        if self.at.rows:
            raise errors.xa_transaction(self.cfg, f"{self.at.file}:{ev.packet.log_pos}")
        self.at.abandon()

    # --- rows -----------------------------------------------------------------------------------------

    def _table_map(self, ev: TableMapEvent) -> None:
        start = ev.packet.log_pos - ev.packet.event_size
        txn_pos = self.at.event(start)
        name = (ev.schema, ev.table)
        hit = self._matched.get(name)
        if hit is None:
            hit = self._matched[name] = catalog.matches(self.cfg.tables, ev.schema, ev.table)
        self._maps[ev.table_id] = self._table_from_map(ev, Position.mysql(self.at.file_index, txn_pos, Position.STREAM, start, 0)) \
            if hit else None

    def _table_from_map(self, ev: TableMapEvent, pos: bytes) -> TableInfo:
        entry = self.history.at(ev.schema, ev.table, pos)
        signature = (ev.schema, ev.table, id(entry), bytes(ev.null_bitmask), tuple(ev.optional_metadata.simple_primary_key_list),
                     tuple((c.name, c.type, c.unsigned, tables._meta(c), getattr(c, "character_set_name", None)) for c in ev.columns))
        info = self._infos.get(signature)
        if info is None:
            info = tables.from_table_map(self.cfg.name, self.prefix, ev.schema, ev.table, ev.columns, ev.null_bitmask,
                                         list(ev.optional_metadata.simple_primary_key_list), entry, self.cfg.tinyint1_as_boolean)
            self._infos[signature] = info
        self.out.announce(info)
        return info

    def _rows(self, ev: WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent) -> None:
        """A rows event of a captured table: its rows as events (decoded straight from the packet)."""
        info = self._maps.get(ev.table_id)
        if info is None:
            return
        at, out = self.at, self.out
        w = ev.packet
        start = w.log_pos - w.event_size
        raw = w.packet
        data, p = raw._data, raw._position
        end = p + ev.event_size - w.read_bytes
        rows = events.RowsEvent(info, out.batch, file_index=at.file_index, txn_pos=at.event(start), event_pos=start, server_id=w.server_id,
                                ts_ms=ev.timestamp * 1000, gtid_json=at.gtid_json, file_json=at.file_json)
        cls = ev.__class__
        if cls is UpdateRowsEvent:
            pairs = decode_row_pairs(info.image(ev.columns_present_bitmap), info.image(ev.columns_present_bitmap2), data, p, end)
            moved = rows.updated(pairs)
            n = len(pairs)
            out.count(info, "u", n - moved)
            out.count(info, "d", moved)
            out.count(info, "c", moved)
        else:
            decoded = decode_rows(info.image(ev.columns_present_bitmap), data, p, end)
            n = len(decoded)
            if cls is WriteRowsEvent:
                rows.created(decoded)
                out.count(info, "c", n)
            else:
                rows.deleted(decoded)
                out.count(info, "d", n)
        self.stats.rows_decoded += n
        self.stats.event_ts = ev.timestamp
        at.rows = True
        out.full_check()

    def _partial_update(self, ev: PartialUpdateRowsEvent) -> None:
        if self._maps.get(ev.table_id) is not None:
            raise errors.partial_json_update(self.cfg)

    # --- the rest ---------------------------------------------------------------------------------------

    def _rotate(self, ev: RotateEvent) -> None:
        if ev.timestamp:
            self._maps.clear()  # a real rotation may follow a server restart, which reuses table ids
        self.at.rotate(ev.next_binlog)
        self.stats.position = f"{ev.next_binlog}:{ev.position}"

    def _heartbeat(self, ev: HeartbeatLogEvent) -> None:
        if self.at.txn_pos is None:
            self.stats.event_ts = None  # the server sends heartbeats only when it has nothing else to send
            self.out.push()
            if self.jobs.busy:
                # The binlog's end: an idle server shows incremental chunks their point this way.
                self._at_boundary(file_index(ev.ident) if ev.ident else self.at.file_index, ev.packet.log_pos)

    def _not_implemented(self, ev: NotImplementedEvent) -> None:
        et = ev.event_type
        start = ev.packet.log_pos - ev.packet.event_size
        if et in errors.COMPRESSED_EVENTS:
            raise errors.compressed_event(self.cfg, et, f"{self.at.file}:{start}")
        if et == ANONYMOUS_GTID_EVENT:
            self.at.txn_pos = start
            self._boundary(start)
