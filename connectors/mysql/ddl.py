"""DDL in the binlog: the schema history, and what a statement does to the lake's tables.

Every captured table's definition is recorded in the schema history at the position of each DDL that
changes it (information_schema right after the statement, checked against the binlog that follows).
TRUNCATE and DROP become `t` events (a dropped table's mirror is empty); a DDL that changes rows
without row events (a default of an added column, a type change) or brings rows the binlog never
showed under the table's name (a RENAME) makes the table be snapshotted again.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pymysql

from lakeward.connectors.mysql import catalog, errors, events, tables
from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.connectors.mysql.handover import Established, Handover
from lakeward.connectors.mysql.history import HistoryEntry, SchemaHistory, parse_ddl, rewrites_rows
from lakeward.connectors.mysql.tables import TableInfo

log = logging.getLogger(__name__)

_USE = re.compile(r"^use `((?:[^`]|``)*)`;\s*", re.I)  # SHOW BINLOG EVENTS' Info of a Query event


class DdlHandler:
    """Applies statements of the binlog to the schema history and the established tables."""

    def __init__(self, cfg: MySQLSourceConfig, prefix: str, history: SchemaHistory, out: Handover, established: Established, boolean: bool):
        self.cfg, self.prefix, self.history, self.out, self.tables, self.boolean = cfg, prefix, history, out, established, boolean
        self.meta: pymysql.Connection | None = None
        """The reader's connection for catalog queries (set once it is open)."""


    def info_for(self, db: str, table: str, pos: bytes) -> TableInfo | None:
        """The table as it was right before `pos` (for a `t` event: also when replaying its DROP)."""
        entry = self.history.at(db, table, pos)
        if entry is not None and not entry.columns:
            entry = self.history.before(db, table, entry.pos)
        if entry is None or not entry.columns:
            return None
        return tables.from_entry(self.cfg.name, self.prefix, entry, self.boolean)

    def truncate(self, db: str, table: str, pos: bytes, server_id: int, ts_ms: int, gtid_json: bytes, file_json: bytes, ev_start: int) -> None:
        info = self.info_for(db, table, pos)
        if info is None:
            return
        self.out.announce(info)
        self.out.batch.append(events.truncate(info, info.source_head(server_id, ts_ms, b"false", gtid_json, file_json, ev_start), pos))
        self.out.count(info, "t", 1)

    def _read_entry(self, db: str, table: str, pos: bytes, ddl: str, end: tuple[str, int] | None) -> None:
        """Record the table's definition (information_schema now) at the DDL's position, once. `end`:
        the binlog position right after the DDL; the entry is exact when the binlog still ends there
        after the read (no later statement can have changed the table)."""
        if self.history.has(db, table, pos):
            return
        assert self.meta is not None
        self.meta.ping(reconnect=True)
        found = catalog.table_defs(self.meta, db, table)
        exact = end is not None and not self._later_ddl(db, table, end)
        if found is None:
            self.out.record(HistoryEntry(db, table, pos, self.history.epoch, dropped=True, ddl=ddl, exact=exact))
        else:
            self.out.record(HistoryEntry(db, table, pos, self.history.epoch, tuple(found[0]), tuple(found[1]), ddl=ddl, exact=exact))

    LOOKAHEAD_EVENTS = 5000

    def _later_ddl(self, db: str, table: str, end: tuple[str, int]) -> bool:
        """Whether the binlog after `end` (file, position) may hold another DDL of the table, which
        information_schema (read just before) would already show. True when unsure: the binlog
        rotated meanwhile, or more than LOOKAHEAD_EVENTS events followed."""
        assert self.meta is not None
        now = catalog.binlog_end(self.meta)
        if now == end:
            return False
        if now[0] != end[0]:
            return True
        try:
            rows = catalog.query(self.meta, f"SHOW BINLOG EVENTS IN %s FROM %s LIMIT {self.LOOKAHEAD_EVENTS}", (end[0], end[1]))
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
        if name in self.tables:
            # The table is gone at the source: the lake's mirror becomes empty.
            self.truncate(db, table, pos, *args)
            self.tables.set(name, None)
        if catalog.matches(self.cfg.tables, db, table) and not self.history.has(db, table, pos):
            self.out.record(HistoryEntry(db, table, pos, self.history.epoch, dropped=True, ddl=ddl))

    def apply(self, ddl: Any, sql: str, pos: bytes, server_id: int, ts_ms: int, gtid_json: bytes, file_json: bytes,
             ev_start: int, end: tuple[str, int] | None = None) -> list[tuple[str, str]]:
        """Apply a statement to the history and the lake; returns tables that need a snapshot."""
        patterns = self.cfg.tables
        args = (server_id, ts_ms, gtid_json, file_json, ev_start)
        captured = [t for t in ddl.tables if catalog.matches(patterns, *t)]
        need: list[tuple[str, str]] = []
        if ddl.kind == "dml":
            if captured:
                raise errors.statement_based(self.cfg, f"{captured[0][0]}.{captured[0][1]}", sql)
            return need
        if ddl.kind in ("alter", "create"):
            for db, table in captured:
                self._read_entry(db, table, pos, sql, end)
                name = f"{db}.{table}"
                if ddl.kind == "create":
                    if name not in self.tables:
                        self.tables.set(name, pos)  # new and empty: its rows follow in the binlog
                elif not self.tables.snapshotted_since(name, pos):
                    why = rewrites_rows(self.history.before(db, table, pos), self.history.at(db, table, pos), sql)
                    if why:
                        # Also with `snapshot: never`, which skips the first copy of a table, not this repair.
                        log.info("source %s: %s.%s: %s without row events; reading the table again", self.cfg.name, db, table, why)
                        need.append((db, table))
        elif ddl.kind == "truncate":
            for db, table in captured:
                self.truncate(db, table, pos, *args)
        elif ddl.kind == "drop":
            for db, table in ddl.tables:
                self._drop(db, table, pos, sql, *args)
        elif ddl.kind == "drop_database":
            for name in self.tables.names():
                db, table = name.split(".", 1)
                if db == ddl.database:
                    self._drop(db, table, pos, sql, *args)
        elif ddl.kind == "rename":
            pairs = list(zip(ddl.tables[0::2], ddl.tables[1::2], strict=False))
            for old, new in pairs:
                self._drop(*old, pos, sql, *args)
                if catalog.matches(patterns, *new):
                    self._read_entry(new[0], new[1], pos, sql, end)
                    # The renamed table brings rows the binlog never showed under this name: snapshot it.
                    name = f"{new[0]}.{new[1]}"
                    if not self.tables.snapshotted_since(name, pos):
                        need.append(new)
        if need:
            # Rows of these tables between this statement and the snapshot's point are in the snapshot;
            # sinks drop their stream events (lower positions than the snapshot's).
            log.info("source %s: %s makes %s appear; snapshotting", self.cfg.name, ddl.kind, ", ".join(f"{d}.{t}" for d, t in need))
        return need
