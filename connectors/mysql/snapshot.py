"""Consistent snapshots: read views whose binlog position is known exactly, read in primary-key chunks
by several connections at once.

MariaDB (10.5+): `START TRANSACTION WITH CONSISTENT SNAPSHOT` and, in the same transaction, the
status variables Binlog_snapshot_file / Binlog_snapshot_position, which InnoDB and the binlog fix
together: no global lock at all. Each connection gets its own position, so N connections are
accepted when all N report the same one (retried a few times; under a steady write load they may
not); then, if the user has RELOAD, they are opened under a brief FLUSH TABLES WITH READ LOCK;
else the snapshot reads with one connection, with a warning that says what to grant.

MySQL 8: the consistent-snapshot transaction does not tell its binlog position, so the position is
pinned with a brief `FLUSH TABLES WITH READ LOCK` (needs RELOAD): lock, start the N transactions,
read SHOW BINARY LOG STATUS (gtid_executed with it), unlock — writes wait for milliseconds, not
for the snapshot. `LOCK INSTANCE FOR BACKUP` blocks DDL only, not commits, so it cannot pin a
position consistent with the read view and is not used.

A table with a usable primary key is split into chunks at every `chunk_rows`-th key (sampled with
`ORDER BY pk LIMIT 1 OFFSET chunk_rows - 1` steps over the key index, inside the snapshot, so any
key type works); each chunk is one index range scan. A table without one is a single chunk (an
unbuffered full scan). ChunkPool runs the reads on one thread per connection. All functions here
block: the reader thread and the pool's threads call them.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import pymysql
import pymysql.cursors

from lakeward.connectors.mysql import catalog
from lakeward.connectors.mysql.catalog import Server, quote
from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.connectors.mysql.types import ColumnDef, snapshot_expr
from lakeward.core.errors import SourceSetupError

log = logging.getLogger(__name__)

SAME_POINT_ATTEMPTS = 5
"""MariaDB: how often N lock-free consistent snapshots are opened, hoping for one binlog position."""
PIECE_ROWS = 1000
"""Rows a chunk reader converts and hands over at a time (one batch of the reader thread's queue)."""
KEYLESS_PIECES = 4
"""Pieces of a full scan read ahead of the publisher (the scan can be the whole table: bounded)."""
_POLL_S = 0.2


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


@dataclass
class ChunkProgress:
    """An initial snapshot's progress on one table, as the state document keeps it (key "progress")."""

    pos: str
    """Hex position of the table's snapshot (its `t` event): the value `tables` gets when it is done."""
    chunks: int
    """Chunks the table was split into."""
    chunks_done: int = 0
    """Chunks published in order and acknowledged by the broker."""
    after: list[Any] | None = None
    """Primary-key values of the last row of the last done chunk (key_to_json); None for a table
    without a usable key (one chunk) and before the first chunk."""
    rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"pos": self.pos, "chunks": self.chunks, "chunks_done": self.chunks_done, "after": self.after, "rows": self.rows}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChunkProgress:
        return cls(str(d["pos"]), int(d["chunks"]), int(d.get("chunks_done", 0)), d.get("after"), int(d.get("rows", 0)))


# --- opening the snapshot -----------------------------------------------------------------------


def open_snapshot(cfg: MySQLSourceConfig, server: Server) -> tuple[pymysql.Connection, BinlogPoint]:
    """A connection inside a consistent-snapshot transaction, and the binlog position it reflects."""
    conns, point = open_snapshots(cfg, server, 1)
    return conns[0], point


def open_snapshots(cfg: MySQLSourceConfig, server: Server, n: int) -> tuple[list[pymysql.Connection], BinlogPoint]:
    """Up to `n` connections inside consistent-snapshot transactions that all reflect one binlog
    position (MariaDB without RELOAD may give fewer: see the module doc), and that position."""
    conns = [_connect(cfg) for _ in range(n)]
    try:
        if not server.is_mariadb:
            return conns, _under_read_lock(cfg, conns[0], lambda: _mysql_start(conns, server))
        for attempt in range(SAME_POINT_ATTEMPTS if n > 1 else 1):
            point = _mariadb_start(conns)
            if point is not None:
                if attempt:
                    log.info("MariaDB at %s: %d snapshots agreed on a binlog position at attempt %d", cfg.where, n, attempt + 1)
                return conns, point
            for c in conns:
                c.rollback()
        try:
            point = _under_read_lock(cfg, conns[0], lambda: _mariadb_start(conns), missing_ok=True)
            log.info("MariaDB at %s: opened %d snapshots under a brief FLUSH TABLES WITH READ LOCK (without it they "
                     "disagreed on the binlog position %d times)", cfg.where, n, SAME_POINT_ATTEMPTS)
        except _NoReload:
            log.warning("MariaDB at %s: %d consistent snapshots opened at once never agreed on a binlog position (writes "
                        "kept coming) and user %r may not FLUSH TABLES WITH READ LOCK to open them together: the snapshot "
                        "reads with ONE connection. For snapshot_parallelism %d run `GRANT RELOAD ON *.* TO '%s'@'<host>'`",
                        cfg.where, n, cfg.user, n, cfg.user)
            for c in conns[1:]:
                c.close()
            conns = conns[:1]
            point = _mariadb_start(conns)
        if point is None:  # commits were locked out: cannot happen, but never read at two points
            raise SourceSetupError(f"MariaDB at {cfg.where}: snapshots opened under FLUSH TABLES WITH READ LOCK report "
                                   "different binlog positions")
        return conns, point
    except BaseException:
        for c in conns:
            c.close()
        raise


def _connect(cfg: MySQLSourceConfig) -> pymysql.Connection:
    conn = catalog.connect(cfg, snapshot=True)
    try:
        catalog.query(conn, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    except BaseException:
        conn.close()
        raise
    return conn


def _mariadb_start(conns: list[pymysql.Connection]) -> BinlogPoint | None:
    """Start every connection's snapshot back to back (close together, so that they likely agree);
    their common binlog position, or None when they differ."""
    for c in conns:
        catalog.query(c, "START TRANSACTION WITH CONSISTENT SNAPSHOT")
    points = {_binlog_snapshot_position(c) for c in conns}
    if len(points) != 1:
        return None
    file, pos = points.pop()
    gtid = catalog.query(conns[0], "SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))[0][0] or ""
    return BinlogPoint(file, pos, gtid)


def _binlog_snapshot_position(conn: pymysql.Connection) -> tuple[str, int]:
    status = dict(catalog.query(conn, "SHOW STATUS LIKE 'binlog_snapshot_%'"))
    file, pos = status.get("Binlog_snapshot_file"), status.get("Binlog_snapshot_position")
    if not file:
        raise SourceSetupError(f"MariaDB at {conn.host}:{conn.port} did not report Binlog_snapshot_file; is the binary log on?")
    return str(file), int(pos)  # type: ignore[arg-type]


def _mysql_start(conns: list[pymysql.Connection], server: Server) -> BinlogPoint:
    for c in conns:
        catalog.query(c, "START TRANSACTION WITH CONSISTENT SNAPSHOT")
    file, pos, gtid = catalog.master_status(conns[0], server)
    return BinlogPoint(file, pos, gtid)


class _NoReload(Exception):
    pass


def _under_read_lock(cfg: MySQLSourceConfig, lock: pymysql.Connection, start: Callable[[], Any], missing_ok: bool = False) -> Any:
    """Run `start` (which opens the snapshots) while FLUSH TABLES WITH READ LOCK, taken on `lock`,
    holds commits back."""
    catalog.query(lock, "SET SESSION lock_wait_timeout = 10")
    try:
        catalog.query(lock, "FLUSH TABLES WITH READ LOCK")
    except pymysql.err.OperationalError as e:
        if e.args and e.args[0] in (catalog.ER_SPECIFIC_ACCESS_DENIED, catalog.ER_ACCESS_DENIED):
            if missing_ok:
                raise _NoReload() from None
            raise SourceSetupError(f"user {cfg.user!r} on MySQL at {cfg.where} may not FLUSH TABLES WITH READ LOCK, "
                                   f"which pins the snapshot's binlog position: run `GRANT RELOAD ON *.* TO '{cfg.user}'@'<host>'`") from None
        raise
    try:
        return start()
    finally:
        catalog.query(lock, "UNLOCK TABLES")


# --- keys and chunks ----------------------------------------------------------------------------

CHUNKABLE_KEY_TYPES_NOT = {"enum", "set"}
"""Key types whose SQL comparison with a value disagrees with their ORDER BY (ENUM and SET sort by
member index but compare as strings): such tables are read as one chunk."""


def chunkable(defs: list[ColumnDef], pk: tuple[str, ...]) -> bool:
    """Whether the table can be split into key ranges (and resumed from a key)."""
    by_name = {d.name: d for d in defs}
    return bool(pk) and all(by_name[k].data_type not in CHUNKABLE_KEY_TYPES_NOT for k in pk)


def key_to_json(values: tuple | list) -> list[Any]:
    """Key values as a snapshot connection returns them -> JSON values for the state document: bytes
    as {"hex": ...}, the rest as PyMySQL read them through SNAPSHOT_CONV (numbers; temporal and decimal
    values as the server's text). Initial-snapshot progress and incremental jobs both keep keys so."""
    return [{"hex": bytes(v).hex()} if isinstance(v, (bytes, bytearray)) else v for v in values]


def key_from_json(values: list[Any]) -> list[Any]:
    """The inverse of key_to_json, for query parameters."""
    return [bytes.fromhex(v["hex"]) if isinstance(v, dict) and "hex" in v else v for v in values]


def key_condition(pk: tuple[str, ...], op: str) -> tuple[str, Callable[[list[Any]], list[Any]]]:
    """`(pk) > x` (op ">") or `(pk) <= x` (op "<=") as SQL the optimizer turns into an index range —
    led by `k1 >= x1` / `k1 <= x1`, then the lexicographic OR — and how to lay out its arguments."""
    strict = op[0]
    cols = [quote(k) for k in pk]
    if len(pk) == 1:
        return f"{cols[0]} {op} %s", list
    ors = []
    for i in range(len(pk)):
        last = op if i == len(pk) - 1 else strict
        ors.append("(" + " AND ".join([f"{c} = %s" for c in cols[:i]] + [f"{cols[i]} {last} %s"]) + ")")
    lead = f"{cols[0]} {strict}= %s"

    def args(values: list[Any]) -> list[Any]:
        out = [values[0]]
        for i in range(len(pk)):
            out += values[: i + 1]
        return out

    return f"{lead} AND ({' OR '.join(ors)})", args


def chunk_bounds(conn: pymysql.Connection, db: str, table: str, defs: list[ColumnDef], pk: tuple[str, ...],
                 chunk_rows: int, stopped: Callable[[], bool] = lambda: False) -> list[tuple]:
    """The key of every `chunk_rows`-th row in key order (chunk i ends at bound i, inclusive; the last
    chunk runs to the end): one step per chunk, each skipping `chunk_rows` index entries."""
    by_name = {d.name: d for d in defs}
    select = ", ".join(snapshot_expr(by_name[k], quote(k)) for k in pk)
    order = ", ".join(quote(k) for k in pk)
    rel = f"{quote(db)}.{quote(table)}"
    cond, args = key_condition(pk, ">")
    tail = f"ORDER BY {order} LIMIT 1 OFFSET {int(chunk_rows) - 1}"
    bounds: list[tuple] = []
    with conn.cursor() as cur:
        cur.execute(f"SELECT {select} FROM {rel} {tail}")
        while (row := cur.fetchone()) is not None:
            bounds.append(tuple(row))
            if stopped():
                break
            cur.execute(f"SELECT {select} FROM {rel} WHERE {cond} {tail}", args(list(row)))
    return bounds


def chunk_query(db: str, table: str, defs: list[ColumnDef], pk: tuple[str, ...], lo: tuple | None,
                hi: tuple | None) -> tuple[str, list[Any]]:
    """SELECT of the rows with lo < key <= hi (None: unbounded), in key order; a full scan without pk."""
    select = ", ".join(snapshot_expr(d, quote(d.name)) for d in defs)
    sql = f"SELECT {select} FROM {quote(db)}.{quote(table)}"
    if not pk:
        return sql, []
    where, args = [], []
    for bound, op in ((lo, ">"), (hi, "<=")):
        if bound is not None:
            cond, lay_out = key_condition(pk, op)
            where.append(f"({cond})")
            args += lay_out(list(bound))
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql + " ORDER BY " + ", ".join(quote(k) for k in pk), args


# --- reading chunks in parallel -----------------------------------------------------------------


@dataclass
class TablePlan:
    """A table as read at the snapshot: its definition, row estimate and chunk boundaries."""

    db: str
    table: str
    defs: list[ColumnDef]
    pk: tuple[str, ...]
    estimate: int | None
    bounds: list[tuple] | None
    """Chunk boundaries (chunk_bounds); None: one chunk without key ranges."""

    @property
    def chunks(self) -> int:
        return len(self.bounds) + 1 if self.bounds is not None else 1

    def chunk_range(self, index: int) -> tuple[tuple | None, tuple | None]:
        if self.bounds is None:
            return None, None
        return (self.bounds[index - 1] if index else None), (self.bounds[index] if index < len(self.bounds) else None)


Convert = Callable[[int, int, Sequence[tuple]], Any]
"""(chunk index, index of the first row in the chunk, rows) -> what the pool hands over for them."""


@dataclass(eq=False)
class Chunk:
    """One chunk read: its pieces arrive on `pieces`, then the chunk's last key (or an exception)."""

    plan: TablePlan
    index: int
    convert: Convert
    owner: Any = None
    """The caller's object for the table."""
    pieces: queue.Queue = field(default_factory=queue.Queue)
    rows: int = 0
    last_key: tuple | None = None
    """Key of the chunk's last row (None: no rows, or no key)."""


_END = object()


class ChunkPool:
    """One thread per snapshot connection; tasks (plans and chunk reads) run in the order submitted,
    so the earliest unfinished chunk is always being read and the publisher never waits on a later one."""

    def __init__(self, conns: list[pymysql.Connection], chunk_rows: int, stop: threading.Event, name: str):
        self.size = len(conns)
        self.chunk_rows = chunk_rows
        self._tasks: queue.Queue = queue.Queue()
        self._stop = stop
        self._abort = threading.Event()
        self._conns = conns
        self._threads = [threading.Thread(target=self._work, args=(c,), name=f"{name}-snapshot-{i}", daemon=True)
                         for i, c in enumerate(conns)]
        for t in self._threads:
            t.start()

    def __enter__(self) -> ChunkPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the threads (a read in progress is abandoned) and close the connections, which ends
        the snapshot transactions."""
        self._abort.set()
        for _ in self._threads:
            self._tasks.put(None)
        for t in self._threads:
            t.join(30)
        for c in self._conns:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - an abandoned unbuffered read leaves the connection unusable
                pass

    def _aborted(self) -> bool:
        return self._abort.is_set() or self._stop.is_set()

    def _work(self, conn: pymysql.Connection) -> None:
        while (task := self._tasks.get()) is not None:
            if self._aborted():
                task(None)  # tell the waiting side
                continue
            task(conn)

    # --- tasks ---------------------------------------------------------------------------------

    def plan(self, db: str, table: str) -> Future:
        """A Future of the table's TablePlan (None: the table is gone), computed on a pool thread."""
        fut: Future = Future()

        def run(conn: pymysql.Connection | None) -> None:
            if conn is None:
                fut.set_exception(Abandoned())
                return
            try:
                fut.set_result(self._plan(conn, db, table))
            except BaseException as e:  # noqa: BLE001 - handed to the waiting side
                fut.set_exception(e)

        self._tasks.put(run)
        return fut

    def _plan(self, conn: pymysql.Connection, db: str, table: str) -> TablePlan | None:
        found = catalog.table_defs(conn, db, table)
        if found is None:
            return None
        defs, pk = found
        bounds = chunk_bounds(conn, db, table, defs, tuple(pk), self.chunk_rows, self._aborted) if chunkable(defs, tuple(pk)) else None
        return TablePlan(db, table, defs, tuple(pk), catalog.row_estimate(conn, db, table) or 0, bounds)

    def read(self, chunk: Chunk) -> None:
        """Read the chunk on a pool thread; its pieces go to chunk.pieces (see pieces())."""
        if chunk.plan.bounds is None:
            chunk.pieces = queue.Queue(KEYLESS_PIECES)
        self._tasks.put(lambda conn: self._read(conn, chunk))

    def _read(self, conn: pymysql.Connection | None, chunk: Chunk) -> None:
        if conn is None:
            self._put(chunk, Abandoned())
            return
        plan = chunk.plan
        try:
            sql, args = chunk_query(plan.db, plan.table, plan.defs, plan.pk, *plan.chunk_range(chunk.index))
            names = [d.name for d in plan.defs]
            key_at = [names.index(k) for k in plan.pk]
            cur = conn.cursor(pymysql.cursors.SSCursor)
            cur.execute(sql, args)
            n = 0
            while rows := cur.fetchmany(PIECE_ROWS):
                if self._aborted():
                    return  # the connection is closed with the read unfinished: the server ends it
                if not self._put(chunk, chunk.convert(chunk.index, n, rows)):
                    return
                n += len(rows)
                if key_at:
                    chunk.last_key = tuple(rows[-1][i] for i in key_at)
            cur.close()
            chunk.rows = n
            self._put(chunk, _END)
        except BaseException as e:  # noqa: BLE001 - handed to the publisher, which raises it
            self._put(chunk, e)

    def _put(self, chunk: Chunk, item: Any) -> bool:
        while True:
            try:
                chunk.pieces.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                if self._aborted():
                    return False

    # --- the publisher's side ------------------------------------------------------------------

    def pieces(self, chunk: Chunk) -> Iterator[Any]:
        """The chunk's converted pieces in order, as they are read; raises what the read raised."""
        while True:
            try:
                item = chunk.pieces.get(timeout=_POLL_S)
            except queue.Empty:
                if self._aborted():
                    raise Abandoned() from None
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def result(self, fut: Future) -> Any:
        """A plan's result, waiting as long as it takes (or until stopped)."""
        while True:
            try:
                return fut.result(timeout=_POLL_S)
            except FutureTimeout:
                if self._aborted():
                    raise Abandoned() from None


class Abandoned(Exception):
    """The pool was stopped before this task ran or finished."""
