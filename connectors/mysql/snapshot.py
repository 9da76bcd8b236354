"""Consistent snapshots: a read view whose binlog position is known exactly, read in key order chunks.

MariaDB (10.5+): `START TRANSACTION WITH CONSISTENT SNAPSHOT` and, in the same transaction, the
status variables Binlog_snapshot_file / Binlog_snapshot_position, which InnoDB and the binlog fix
together: no global lock at all.

MySQL 8: the consistent-snapshot transaction does not tell its binlog position, so the position is
pinned with a brief `FLUSH TABLES WITH READ LOCK` (needs RELOAD): lock, start the transaction,
read SHOW BINARY LOG STATUS (gtid_executed with it), unlock — writes wait for milliseconds, not
for the snapshot. `LOCK INSTANCE FOR BACKUP` blocks DDL only, not commits, so it cannot pin a
position consistent with the read view and is not used.

Tables are read by keyset pagination over the primary key (`WHERE pk > last ORDER BY pk LIMIT n`),
so each query is a short index range scan and memory is bounded by the chunk size; tables without
a primary key are read with one unbuffered full scan. All functions here block: the reader thread
calls them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pymysql
import pymysql.cursors

from lakeward.connectors.mysql import catalog
from lakeward.connectors.mysql.catalog import Server, quote
from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.connectors.mysql.types import ColumnDef, snapshot_expr
from lakeward.core.errors import SourceSetupError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BinlogPoint:
    """A binlog position between two transactions."""

    file: str
    pos: int
    gtid: str = ""
    """MariaDB: the GTID position (domain-server-seq per domain); MySQL: the gtid_executed set; "" without GTIDs."""

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "pos": self.pos, "gtid": self.gtid}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BinlogPoint:
        return cls(d["file"], int(d["pos"]), d.get("gtid") or "")

    @property
    def file_index(self) -> int:
        return file_index(self.file)


def file_index(name: str) -> int:
    """42 for `mysql-bin.000042`: binlog files are numbered in order."""
    return int(name.rsplit(".", 1)[1])


def open_snapshot(cfg: MySQLSourceConfig, server: Server) -> tuple[pymysql.Connection, BinlogPoint]:
    """A connection inside a consistent-snapshot transaction, and the binlog position it reflects."""
    conn = catalog.connect(cfg, snapshot=True)
    try:
        catalog.query(conn, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        if server.is_mariadb:
            catalog.query(conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT")
            status = dict(catalog.query(conn, "SHOW STATUS LIKE 'binlog_snapshot_%'"))
            file, pos = status.get("Binlog_snapshot_file"), status.get("Binlog_snapshot_position")
            if not file:
                raise SourceSetupError(f"MariaDB at {cfg.where} did not report Binlog_snapshot_file; is the binary log on?")
            gtid = catalog.query(conn, "SELECT BINLOG_GTID_POS(%s, %s)", (file, int(pos)))[0][0] or ""  # type: ignore[arg-type]
            point = BinlogPoint(file, int(pos), gtid)  # type: ignore[arg-type]
        else:
            catalog.query(conn, "SET SESSION lock_wait_timeout = 10")
            try:
                catalog.query(conn, "FLUSH TABLES WITH READ LOCK")
            except pymysql.err.OperationalError as e:
                if e.args and e.args[0] in (catalog.ER_SPECIFIC_ACCESS_DENIED, catalog.ER_ACCESS_DENIED):
                    raise SourceSetupError(f"user {cfg.user!r} on MySQL at {cfg.where} may not FLUSH TABLES WITH READ LOCK, "
                                           f"which pins the snapshot's binlog position: run `GRANT RELOAD ON *.* TO '{cfg.user}'@'<host>'`") from None
                raise
            try:
                catalog.query(conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT")
                file, pos, gtid = catalog.master_status(conn, server)
            finally:
                catalog.query(conn, "UNLOCK TABLES")
            point = BinlogPoint(file, pos, gtid)
    except BaseException:
        conn.close()
        raise
    return conn, point


def read_table(conn: pymysql.Connection, db: str, table: str, defs: list[ColumnDef], pk: tuple[str, ...],
               chunk_rows: int) -> Iterator[list[tuple]]:
    """The table's rows in chunks of at most `chunk_rows`, in primary-key order when it has one."""
    select = ", ".join(snapshot_expr(d, quote(d.name)) for d in defs)
    rel = f"{quote(db)}.{quote(table)}"
    if not pk:
        with conn.cursor(pymysql.cursors.SSCursor) as cur:
            cur.execute(f"SELECT {select} FROM {rel}")
            while rows := cur.fetchmany(chunk_rows):
                yield list(rows)
        return
    names = [d.name for d in defs]
    key_at = [names.index(k) for k in pk]
    order = ", ".join(quote(k) for k in pk)
    # (a > x) OR (a = x AND b > y) ..., led by a >= x so the optimizer sees an index range.
    ors = []
    for i in range(len(pk)):
        ors.append("(" + " AND ".join([f"{quote(k)} = %s" for k in pk[:i]] + [f"{quote(pk[i])} > %s"]) + ")")
    after = f"{quote(pk[0])} >= %s AND ({' OR '.join(ors)})" if len(pk) > 1 else f"{quote(pk[0])} > %s"
    first = f"SELECT {select} FROM {rel} ORDER BY {order} LIMIT {int(chunk_rows)}"
    nxt = f"SELECT {select} FROM {rel} WHERE {after} ORDER BY {order} LIMIT {int(chunk_rows)}"
    with conn.cursor() as cur:
        cur.execute(first)
        rows = cur.fetchall()
        while rows:
            yield list(rows)
            if len(rows) < chunk_rows:
                return
            last = [rows[-1][i] for i in key_at]
            args: list[Any] = [last[0]] if len(pk) > 1 else []
            for i in range(len(pk)):
                args += last[:i] + [last[i]]
            cur.execute(nxt, args)
            rows = cur.fetchall()
