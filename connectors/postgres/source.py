"""PostgreSQL source: snapshot consistent with a slot, then stream pgoutput into table topics.

Exactly-once chain, source side: events are published with an idempotent producer (acks=all); an
LSN is confirmed to PostgreSQL only after the broker acknowledged every event at or before it. After
a crash PostgreSQL re-sends everything after the confirmed LSN; the repeats carry the same positions
as before, and sinks drop them.

Snapshot bookkeeping lives in the compacted topic `<prefix>.<source>.__state` so a fresh worker on
another machine knows whether the slot's snapshot finished and which tables were snapshotted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg

from lakeward.connectors.postgres import catalog, incremental, pgoutput
from lakeward.connectors.postgres import snapshot as chunks
from lakeward.connectors.postgres.config import PostgresSourceConfig
from lakeward.connectors.postgres.pgoutput import PG_EPOCH_US
from lakeward.connectors.postgres.replication import (
    XLOG_PAYLOAD,
    ReplicationConnection,
    SlotInfo,
    get_slot,
    keepalive,
    xlog_start,
)
from lakeward.connectors.postgres.snapshot import ChunkProgress
from lakeward.connectors.postgres.types import Converter, PgType
from lakeward.core import broker as kafka
from lakeward.core import metrics, progress
from lakeward.core.config import BrokerConfig
from lakeward.core.errors import SchemaChangeError, SourceSetupError
from lakeward.core.events import (
    AFTER_ONLY,
    ENVELOPE,
    NEW_KEY_HEADER,
    NULL,
    OLD_KEY_HEADER,
    OP_CREATE,
    OP_DELETE,
    OP_READ,
    OP_TRUNCATE,
    OP_UPDATE,
    PG_POSITION,
    POSITION_HEADER,
    SCHEMA_HEADER,
    SOURCE_VERSION,
    Position,
    TableSchema,
    envelope_tail,
    lsn_to_str,
    source_head,
    str_to_lsn,
    table_topic,
)
from lakeward.core.snapshot import IncrementalJob, TableProgress, default_parallelism
from lakeward.core.source import Source, SourceStatus

log = logging.getLogger(__name__)

TRUNCATE_KEY = b"{}"
STATE_KEY = b"snapshot"
LINGER_S = 0.02
"""Streamed events wait at most about this long in a partly filled batch before it goes to the broker
(full batches go at once); without it they waited for a full batch or the next confirm."""

_C, _U, _D, _R, _T = (op.encode() for op in (OP_CREATE, OP_UPDATE, OP_DELETE, OP_READ, OP_TRUNCATE))
_STREAM = Position.STREAM
_INSERT, _UPDATE, _DELETE = pgoutput.INSERT, pgoutput.UPDATE, pgoutput.DELETE
_change_relid, _decode_insert, _decode_update, _decode_delete = (
    pgoutput.change_relid, pgoutput.decode_insert, pgoutput.decode_update, pgoutput.decode_delete)
_dumps = orjson.dumps
_SNAPSHOT = Position.SNAPSHOT
_PUBLISH_SLICE = 4096
"""Rows of a chunk published between two turns of the event loop (the readers' sockets are drained in between)."""
PROGRESS_INTERVAL_S = 0.2
"""A resumable snapshot waits for the broker's acknowledgement and writes its progress after a chunk
at most this often (tiny chunks would otherwise wait for an acknowledgement each)."""


@dataclass(slots=True)
class _Table:
    """What the hot path needs to turn one table's tuples into events."""

    schema: TableSchema
    topic: str
    schema_id: bytes
    names: list[str]
    converters: list[Converter]
    pk: list[str]
    source_base: dict[str, Any]
    columns: list[tuple[str, Converter]] = field(default_factory=list)
    """(name, converter) per column, for pgoutput's row decoders (decode_insert, ...)."""
    key: Callable[[dict[str, Any]], bytes] = orjson.dumps
    """The event key of a row: its primary key columns as JSON (the whole row without a key)."""
    schema_header: tuple[str, bytes] = ("", b"")
    counts: dict[bytes, int] = field(default_factory=dict)
    """Events emitted per op since the last PostgresSource._sync_counts (shared by the table's versions)."""
    muted: bool = False
    """A re-read of the table is pending (its schema changed): its changes until then are in the re-read,
    which sorts after them, so none is published and the first event of the new schema is the re-read's
    `t` (a mirror may then rebuild the table with changed column types)."""
    watch: Callable[[bytes, bytes], None] | None = None
    """Sees (op, key) of every event of the table while an incremental snapshot chunk of it is pending."""

    def __post_init__(self) -> None:
        self.columns = list(zip(self.names, self.converters, strict=False))
        self.schema_header = (SCHEMA_HEADER, self.schema_id)
        pk = list(self.pk)
        if len(pk) == 1:
            (k0,) = pk
            self.key = lambda row: _dumps({k0: row.get(k0)})
        elif pk:
            self.key = lambda row: _dumps({k: row.get(k) for k in pk})
        else:
            self.key = _dumps

    def source_head(self, ts_ms: int, snapshot: str, tx_id: int | None) -> bytes:
        """The envelope's `source` up to the value of `lsn`, its last field (see core.events.ENVELOPE)."""
        return source_head({**self.source_base, "ts_ms": ts_ms, "snapshot": snapshot, "txId": tx_id, "lsn": 0})


@dataclass
class _SnapshotState:
    slot: str
    consistent_lsn: int
    done: bool
    tables: list[str] = field(default_factory=list)
    shapes: dict[int, catalog.TableShape] = field(default_factory=dict)
    """Per relid, the table's shape when it was last snapshotted or changed without needing a re-read."""
    reread: list[str] = field(default_factory=list)
    """Tables (`schema.table`) a schema change requires to be read again: recorded before any LSN
    past the change is confirmed, cleared once the re-read is published."""
    progress: dict[str, ChunkProgress] = field(default_factory=dict)
    """While the initial snapshot runs: per table, the chunks the broker acknowledged (see _resume)."""
    jobs: list[IncrementalJob] = field(default_factory=list)
    """Incremental snapshots not finished yet (also the rest of a resumed initial snapshot), with their
    progress as the broker acknowledged it."""
    signals_offset: int = 0
    """Offset of the signal topic after the last request turned into jobs (see core.snapshot.SignalInbox)."""

    def to_json(self) -> bytes:
        return orjson.dumps({"slot": self.slot, "consistent_lsn": lsn_to_str(self.consistent_lsn), "done": self.done, "tables": self.tables,
                             "shapes": {str(relid): s.to_json() for relid, s in self.shapes.items()}, "reread": self.reread,
                             "progress": {t: p.to_dict() for t, p in self.progress.items()}, "jobs": [j.to_dict() for j in self.jobs],
                             "signals_offset": self.signals_offset})

    @classmethod
    def from_json(cls, value: bytes) -> _SnapshotState:
        d = orjson.loads(value)
        shapes = {int(relid): catalog.TableShape.from_json(s) for relid, s in d.get("shapes", {}).items()}
        progress = {t: ChunkProgress.from_dict(p) for t, p in d.get("progress", {}).items()}
        jobs = [IncrementalJob.from_dict(j) for j in d.get("jobs", [])]
        return cls(d["slot"], str_to_lsn(d["consistent_lsn"]), d["done"], d.get("tables", []), shapes, d.get("reread", []), progress, jobs,
                   int(d.get("signals_offset", 0)))


@dataclass
class _TableRead:
    """One table being snapshotted: what its chunks are read and published with."""

    t: _Table
    renamed: _Table | None
    """The table under the name it had at its last snapshot, when it was renamed since (gets a `t`)."""
    name: str
    rel: str
    lsn: int
    rows: chunks.RowSql
    plan: chunks.ChunkPlan
    estimate: int | None
    ts_ms: int
    """When the table's snapshot began: `source.ts_ms` of its events."""
    head: bytes
    """The envelope's `source` up to the value of `lsn` (see _Table.source_head)."""
    started: float = 0.0
    rows_published: int = 0


class _NewTables(Exception):
    """Raised inside the stream loop when tables matching the globs appeared."""


class _Reread(Exception):
    """Raised inside the stream loop, at a transaction boundary whose LSN is confirmed, when a schema
    change requires tables to be read again (`_SnapshotState.reread`)."""


class PostgresSource(Source):
    config: PostgresSourceConfig

    def __init__(self, config: PostgresSourceConfig, *, broker: BrokerConfig):
        super().__init__(config, broker=broker)
        self.prefix = broker.topic_prefix
        self.state = kafka.StateTopic(broker, config.name, STATE_KEY)
        self._builder = catalog.SchemaBuilder(config.name)
        self._relations: dict[int, _Table] = {}
        self._confirmed = 0
        self.events_published = 0
        self._db = ""
        self._now_ms = 0
        """Processing time (the envelope's ts_ms): read once per batch of messages, not per event."""
        self._metrics = metrics.SourceMetrics(config.name, broker.topic_prefix)
        self._counts: dict[str, dict[bytes, int]] = {}
        """Per table (`schema.table`): events per op not yet added to the Prometheus counters."""
        self._lag_conn: psycopg.AsyncConnection | None = None
        self._state = _SnapshotState("", 0, False)
        self._shapes: dict[int, catalog.TableShape] = {}
        """Per relid, the shape recorded in the state document (see _SnapshotState.shapes)."""
        self._reread: set[str] = set()
        """Tables to read again (see _SnapshotState.reread)."""
        self._incremental = incremental.IncrementalSnapshots(self)
        self._snapshot_types: dict[int, PgType] = {}

    # --- public contract ---------------------------------------------------------------------

    async def check(self) -> None:
        conn = await catalog.connect(self.config.dsn)
        try:
            await catalog.check_setup(conn, self.config.dsn)
            await catalog.resolve_tables(conn, self.config.tables, self.config.dsn)
        finally:
            await conn.close()

    async def status(self) -> SourceStatus:
        value = await self.state.read()
        state = _SnapshotState.from_json(value) if value is not None else None
        jobs = state.jobs if state is not None else []
        conn = await catalog.connect(self.config.dsn)
        try:
            row = await (await conn.execute(
                "SELECT confirmed_flush_lsn::text, (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, active "
                "FROM pg_replication_slots WHERE slot_name = %s", (self.config.slot_name,)
            )).fetchone()
            estimates: dict[str, int] = dict(await (await conn.execute(
                "SELECT t, (SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass("
                "quote_ident(split_part(t, '.', 1)) || '.' || quote_ident(substr(t, strpos(t, '.') + 1)))) FROM unnest(%s::text[]) t",
                ([j.table for j in jobs],))).fetchall()) if jobs else {}
            refused = incremental.unsupported_reason(conn.info.server_version)
        finally:
            await conn.close()
        # A running (or killed) initial snapshot's tables read in part, then the incremental jobs.
        snapshot = [TableProgress(t, "initial", p.rows, chunks_done=p.chunks_done, chunks=p.chunks)
                    for t, p in sorted(state.progress.items())] if state is not None else []
        snapshot += [j.progress(estimates.get(j.table), refused) for j in jobs]
        status = SourceStatus(self.config.name, self.config.type, f"slot {self.config.slot_name}", snapshot=snapshot)
        if row is not None:
            status.exists, status.confirmed, status.lag_bytes, status.active = True, row[0], row[1], row[2]
        return status

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        health = metrics.HEALTH.worker("source", cfg.name)
        self._meta = await catalog.connect(cfg.dsn)
        try:
            await catalog.check_setup(self._meta, cfg.dsn)
            health.ok("database")
            self._db = (await (await self._meta.execute("SELECT current_database()")).fetchone())[0]  # type: ignore[index]
            async with self.broker_session(compact_topics=[self.state.name], on_acked=self._metrics.published, database="PostgreSQL",
                                           poll_database=self._poll_lag) as session:
                self._producer, self._admin, self._publisher, self._schemas = session.producer, session.admin, session.publisher, session.schemas
                await self._run(stop)
        finally:
            await self._meta.close()
            if self._lag_conn is not None:
                await self._lag_conn.close()
                self._lag_conn = None

    async def _poll_lag(self) -> None:
        """lakeward_source_lag_bytes from the slot, on a connection of its own (the stream loop never waits for it)."""
        if self._lag_conn is None or self._lag_conn.closed:
            self._lag_conn = await catalog.connect(self.config.dsn)
        try:
            row = await (await self._lag_conn.execute(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = %s",
                (self.config.slot_name,))).fetchone()
        except BaseException:
            conn, self._lag_conn = self._lag_conn, None
            await conn.close()
            raise
        if row is not None and row[0] is not None:
            self._metrics.lag_bytes.set(row[0])

    def _sync_counts(self) -> None:
        """Add the events counted on the hot path to the Prometheus counters (every confirm, not every event)."""
        read = self._metrics.read
        for table, counts in self._counts.items():
            for op, n in counts.items():
                if n:
                    read(table, op.decode()).inc(n)
                    counts[op] = 0

    # --- orchestration -----------------------------------------------------------------------

    async def _run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        tables = await catalog.resolve_tables(self._meta, cfg.tables, cfg.dsn)
        await catalog.sync_publication(self._meta, cfg.publication_name, tables)
        read = await self._read_state()
        ours = read if read is not None and read.slot == cfg.slot_name else None
        slot = await get_slot(self._meta, cfg.slot_name)
        if slot is None:
            start_lsn, state = await self._initial(tables)
        elif ours is not None and ours.done:
            start_lsn, state = slot.confirmed_flush_lsn, ours
            log.info("source %s: resuming slot %s at %s", cfg.name, cfg.slot_name, lsn_to_str(start_lsn))
        elif ours is not None and slot.confirmed_flush_lsn == ours.consistent_lsn:
            start_lsn, state = await self._resume(ours, tables)
        else:
            # Not the slot this source created for a snapshot that did not finish (that one is still at
            # its consistent point): someone else's, with WAL it retained. Never drop it.
            start_lsn, state = await self._existing_slot(slot, tables)
        while not stop.is_set():
            pending = await self._tables_to_read(tables, state)
            if pending:
                await self._snapshot_new_tables(pending, state)
            try:
                await self._stream(start_lsn, stop)
                return
            except _NewTables:
                tables = await catalog.resolve_tables(self._meta, cfg.tables, cfg.dsn)
                added = await catalog.sync_publication(self._meta, cfg.publication_name, tables)
                log.info("source %s: new tables %s", cfg.name, ", ".join(f"{s}.{t}" for s, t in added))
                start_lsn = self._confirmed
            except _Reread:
                tables = await catalog.resolve_tables(self._meta, cfg.tables, cfg.dsn)
                start_lsn = self._confirmed

    async def _tables_to_read(self, tables: list[tuple[str, str]], state: _SnapshotState) -> list[tuple[str, str]]:
        """Tables to snapshot before streaming: new to the source, to be read again after a schema
        change (`_reread`, pending in the state document), or dropped and created again under the
        same name (a relid other than the one recorded)."""
        relids = await catalog.relids(self._meta, tables)
        recorded: dict[str, set[int]] = {}
        for relid, shape in self._shapes.items():
            recorded.setdefault(shape.table, set()).add(relid)
        # A pending re-read of a table that no longer matches `tables:` (dropped since) has nothing to read.
        self._reread &= {f"{s}.{t}" for s, t in tables}
        out = []
        for s, t in tables:
            name = f"{s}.{t}"
            if name not in state.tables or name in self._reread or (name in recorded and relids.get((s, t)) not in recorded[name]):
                out.append((s, t))
        return out

    async def _existing_slot(self, slot: SlotInfo, tables: list[tuple[str, str]]) -> tuple[int, _SnapshotState]:
        """A slot created before this source first ran (ahead of the first deploy, or by another CDC tool):
        stream from its confirmed position, so every change it retained reaches the lake."""
        cfg = self.config
        lsn = lsn_to_str(slot.confirmed_flush_lsn)
        if cfg.snapshot == "initial":
            raise SourceSetupError(
                f"source {cfg.name}: replication slot {slot.name} already exists and this source did not create it (its state "
                f"topic {self.state.name} does not name it), so it cannot be snapshotted: `snapshot: initial` copies the tables "
                f"at the exact point a slot starts, which only a slot created with the snapshot has. Either set `snapshot: never` "
                f"to stream every change the slot retained from its confirmed position {lsn} (without copying the rows that were "
                f"there before), or drop the slot (SELECT pg_drop_replication_slot('{slot.name}')) or set `slot:` to a new "
                f"name to have Lakeward create a slot together with a snapshot")
        log.info("source %s: using the existing slot %s from its confirmed position %s (snapshot: never)", cfg.name, slot.name, lsn)
        state = _SnapshotState(slot.name, slot.confirmed_flush_lsn, done=True, tables=[f"{s}.{t}" for s, t in tables])
        await self._write_state(state)
        self._confirmed = slot.confirmed_flush_lsn
        return slot.confirmed_flush_lsn, state

    async def _initial(self, tables: list[tuple[str, str]]) -> tuple[int, _SnapshotState]:
        """Create the slot and snapshot the tables at its consistent point, chunk by chunk, recording
        the acknowledged chunks in the state document so that a killed worker resumes (see _resume)."""
        cfg = self.config
        repl = ReplicationConnection(await catalog.connect(cfg.dsn, replication=True))
        try:
            created = await repl.create_slot(cfg.slot_name, export_snapshot=cfg.snapshot == "initial")
            state = _SnapshotState(cfg.slot_name, created.consistent_lsn, done=False)
            await self._write_state(state)
            if cfg.snapshot == "initial":
                assert created.snapshot_name
                await self._snapshot(created.snapshot_name, created.consistent_lsn, tables, resumable=state)
            else:
                await self._record_shapes_at_start(tables, created.consistent_lsn, only_missing=False)
        finally:
            await repl.close()
        await self._publisher.flush()
        state.done, state.tables, state.progress = True, [f"{s}.{t}" for s, t in tables], {}
        await self._write_state(state)
        self._confirmed = created.consistent_lsn
        return created.consistent_lsn, state

    async def _record_shapes_at_start(self, tables: list[tuple[str, str]], lsn: int, *, only_missing: bool) -> None:
        # No snapshot records the shapes: take them at the slot's start, so that a DDL streamed later
        # is compared with the shape before it, not with the catalog as it is by then.
        for relid in (await catalog.relids(self._meta, tables)).values():
            if not (only_missing and relid in self._shapes):
                await self._record_shape(self._meta, relid, lsn)

    async def _resume(self, state: _SnapshotState, tables: list[tuple[str, str]]) -> tuple[int, _SnapshotState]:
        """Our slot, still at its consistent point, whose initial snapshot did not finish: keep it (its
        exported snapshot is gone with the process that read it, its changes since are in the slot).

        Tables done stay done. A partly read table with a key continues with an incremental job from
        the key after the last acknowledged chunk, while streaming from the original point. The others
        (not started, or partly read without a key) are left out of `state.tables`, so `_run` reads them
        whole at a temporary slot's point before streaming, as new tables: their `t` and rows sort
        after what the first attempt published, and the sink drops their stream events from before it.
        """
        cfg = self.config
        names = {f"{s}.{t}" for s, t in tables}
        done = [name for name in state.tables if name in names]
        jobs: list[str] = []
        if cfg.snapshot == "never":
            await self._record_shapes_at_start(tables, state.consistent_lsn, only_missing=True)
            done = sorted(names)
        for name, p in state.progress.items():
            if name in names and name not in done and p.complete:
                done.append(name)
        finished = len(done)
        for name, p in state.progress.items():
            if name in names and name not in done and p.chunks_done and p.by == "key" and p.after is not None:
                state.jobs.append(IncrementalJob(id="resume", table=name, reason="resume", after=p.after))
                done.append(name)
                jobs.append(f"{name} after {p.after}")
        log.info("source %s: resuming the snapshot of slot %s at %s: %d tables done%s; the others are read again whole", cfg.name,
                 cfg.slot_name, lsn_to_str(state.consistent_lsn), finished, f"; continuing incrementally: {', '.join(jobs)}" if jobs else "")
        state.done, state.tables, state.progress = True, sorted(done), {}
        await self._write_state(state)
        self._confirmed = state.consistent_lsn
        return state.consistent_lsn, state

    async def _snapshot_new_tables(self, tables: list[tuple[str, str]], state: _SnapshotState) -> None:
        """Snapshot tables that joined the publication while running, at a temporary slot's point.

        Their snapshot events sort after every change the main slot streams from before that point,
        so streaming resumes from the confirmed LSN without losing or doubling rows.
        """
        cfg = self.config
        names = {f"{s}.{t}" for s, t in tables}
        # A table dropped and created again (or created) since the last table refresh is not in the
        # publication yet: added before the snapshot point, every change after it is streamed.
        added = await catalog.sync_publication(self._meta, cfg.publication_name, tables)
        if added:
            log.info("source %s: new tables %s", cfg.name, ", ".join(f"{s}.{t}" for s, t in added))
        # `snapshot: never` skips the first copy of a table, not a re-read: after a schema change that
        # rewrote every row without row events, reading the table again is the only way to stay equal.
        read = tables if cfg.snapshot == "initial" else [(s, t) for s, t in tables if f"{s}.{t}" in self._reread]
        if read:
            repl = ReplicationConnection(await catalog.connect(cfg.dsn, replication=True))
            try:
                temp = await repl.create_slot(f"{cfg.slot_name}_new_{int(time.time())}", temporary=True)
                assert temp.snapshot_name
                await self._snapshot(temp.snapshot_name, temp.consistent_lsn, read)
            finally:
                await repl.close()
            await self._publisher.flush()
        self._reread -= names
        state.tables = sorted(set(state.tables) | names)
        await self._write_state(state)

    # --- state topic -------------------------------------------------------------------------

    async def _write_state(self, state: _SnapshotState | None = None) -> None:
        """Write the state document (with the table shapes and pending re-reads kept on the source)."""
        if state is not None:
            self._state = state
        state = self._state
        state.shapes, state.reread = self._shapes, sorted(self._reread)
        await self.state.write(self._producer, state.to_json())

    async def _read_state(self) -> _SnapshotState | None:
        value = await self.state.read()
        if value is None:
            return None
        state = self._state = _SnapshotState.from_json(value)
        self._shapes, self._reread = dict(state.shapes), set(state.reread)
        return state

    # --- tables and events -------------------------------------------------------------------

    async def _table(self, conn: psycopg.AsyncConnection, relid: int, schema: str, table: str, columns: list[tuple[str, int, int]]) -> _Table:
        pk = await catalog.row_key(conn, relid)
        ts, converters = await self._builder.build(conn, schema, table, columns, pk)
        topic = table_topic(self.prefix, self.config.name, schema, table)
        if await catalog.is_partition(conn, relid):
            # pgoutput announces a partition next to its root, but its changes come as the root's: no
            # schema, topic or lake table for it (it would only ever be empty).
            return _Table(ts, topic, ts.id.encode(), [c[0] for c in columns], converters, list(pk), {}, counts=dict.fromkeys((_C, _U, _D, _R, _T), 0))
        sid = await self._schemas.publish(ts)
        await self._admin.ensure_topic(topic)
        self._metrics.schema(f"{schema}.{table}", sid)
        counts = self._counts.setdefault(f"{schema}.{table}", dict.fromkeys((_C, _U, _D, _R, _T), 0))
        base = {"version": SOURCE_VERSION, "connector": "postgresql", "name": self.config.name, "db": self._db, "schema": schema, "table": table}
        return _Table(ts, topic, sid.encode(), [c[0] for c in columns], converters, list(pk), base, counts=counts)

    def _emit(self, t: _Table, op: bytes, key: bytes, before: dict | None, after: dict | None, head: bytes, lsn: int, pos: bytes,
              link: tuple[str, bytes] | None = None) -> None:
        """Publish one event; `head` is `t.source_head(...)`, `lsn` the `source.lsn` of this event;
        `link` the extra header of a primary-key change's halves (__debezium.newkey / .oldkey)."""
        value = ENVELOPE % (NULL if before is None else _dumps(before), NULL if after is None else _dumps(after), head, lsn, op, self._now_ms)
        headers = [(POSITION_HEADER, pos), t.schema_header]
        if link is not None:
            headers.append(link)
        self._publisher.append(t.topic, key, value, headers)
        self.events_published += 1
        t.counts[op] += 1
        if t.watch is not None:
            t.watch(op, key)

    # --- snapshot ----------------------------------------------------------------------------

    async def _snapshot(self, snapshot_name: str, lsn: int, tables: list[tuple[str, str]], *, resumable: _SnapshotState | None = None) -> None:
        """Read `tables` at the exported snapshot `snapshot_name` (consistent point `lsn`) on
        `snapshot_parallelism` connections, chunk by chunk, publishing each table's chunks in order.
        `resumable`: the state document of the slot's initial snapshot, whose per-table progress is
        written as chunks are acknowledged."""
        cfg = self.config
        n = cfg.snapshot_parallelism or default_parallelism()
        book = chunks.ProgressBook(resumable.progress if resumable else None, resumable.tables if resumable else None, PROGRESS_INTERVAL_S)
        conns = await chunks.open_readers(cfg.dsn, snapshot_name, n)
        try:
            log.info("source %s: snapshot of %d tables at %s on %d connections", cfg.name, len(tables), lsn_to_str(lsn), n)
            reads: chunks.OrderedReads[None]
            async with chunks.OrderedReads(conns, ahead=n + 1) as reads:
                for schema, table in tables:
                    await self._snapshot_table(reads, book, lsn, schema, table)
                await reads.finish()
        finally:
            await chunks.close_readers(conns)
        if resumable is not None:
            await self._publisher.flush()
            book.commit()
            await self._write_state()
        self._sync_counts()

    async def _snapshot_table(self, reads: chunks.OrderedReads, book: chunks.ProgressBook, lsn: int, schema: str, table: str) -> None:
        """Plan the table's chunks on a reader connection, then queue them; they are published in order."""
        read = await (await reads.submit(lambda conn: self._plan_table(conn, lsn, schema, table), lambda r: self._start_table(r, book)))
        for chunk in read.plan.chunks:
            _ = await reads.submit(functools.partial(self._read_chunk, read, chunk), functools.partial(self._publish_chunk, read, chunk, book))

    async def _plan_table(self, conn: psycopg.AsyncConnection, lsn: int, schema: str, table: str) -> _TableRead:
        """The table's schema, shape and chunks, as the snapshot `conn` is in sees them."""
        relid, columns = await catalog.table_columns(conn, schema, table)
        t = await self._table(conn, relid, schema, table, columns)
        renamed_from = await self._record_shape(conn, relid, lsn)
        old = None
        if renamed_from is not None:
            old_schema, old_table = renamed_from.split(".", 1)
            old = await self._table(conn, relid, old_schema, old_table, columns)
        await catalog.type_infos(conn, {o for _, o, _ in columns}, self._snapshot_types)
        typed = [(name, self._snapshot_types[oid], typmod, conv) for (name, oid, typmod), conv in zip(columns, t.converters, strict=False)]
        rel = chunks.relation(schema, table)
        kind, estimate, version = (await (await conn.execute(
            "SELECT relkind, reltuples::bigint, current_setting('server_version_num')::int FROM pg_class WHERE oid = %s", (relid,))).fetchone())  # type: ignore[misc]
        chunk_rows = self.config.snapshot_chunk_rows
        if t.pk and (self.config.snapshot_chunking == "key" or kind == "p"):
            key = [(k, t.schema.column(k).source_type, t.converters[t.names.index(k)]) for k in t.pk]
            plan = await chunks.plan_key_chunks(conn, rel, key, chunk_rows)
        elif kind == "p" or version < chunks.TID_RANGE_SCAN_VERSION:
            plan = chunks.ChunkPlan("whole", [chunks.Chunk(0, "")])  # partitions have a CTID space each
        else:
            plan = await chunks.plan_ctid_chunks(conn, relid, rel, chunk_rows)
        ts_ms = int(time.time() * 1000)
        # The envelope's `source` is fixed here: chunks are read (and their envelopes built) while
        # earlier ones are still being published.
        return _TableRead(t, old, f"{schema}.{table}", rel, lsn, chunks.row_sql(typed, t.pk, t.key), plan, estimate, ts_ms,
                          t.source_head(ts_ms, "true", None))

    async def _start_table(self, read: _TableRead, book: chunks.ProgressBook) -> None:
        """Publish the table's reset: a `t` first, so a snapshot that restarts never leaves stale rows."""
        t, lsn, ts_ms = read.t, read.lsn, read.ts_ms
        self._now_ms = int(time.time() * 1000)
        if read.renamed is not None:
            # The table was renamed: the lake table under the old name has no source table any more.
            old = read.renamed
            self._emit(old, _T, TRUNCATE_KEY, None, None, old.source_head(ts_ms, "first", None), lsn, Position.postgres(lsn, Position.SNAPSHOT, 0))
        self._emit(t, _T, TRUNCATE_KEY, None, None, t.source_head(ts_ms, "first", None), lsn, Position.postgres(lsn, Position.SNAPSHOT, 0))
        read.started = time.monotonic()
        book.start(read.name, read.plan.by, len(read.plan.chunks))
        progress.snapshots.start(self.config.name, read.name, read.estimate)

    async def _read_chunk(self, read: _TableRead, chunk: chunks.Chunk, conn: psycopg.AsyncConnection) -> list[tuple[bytes, bytes]]:
        tail = envelope_tail(read.head, read.lsn, _R, int(time.time() * 1000))
        return await chunks.read_chunk(conn, read.rows, read.rel, chunk, AFTER_ONLY, tail)

    async def _publish_chunk(self, read: _TableRead, chunk: chunks.Chunk, book: chunks.ProgressBook, rows: list[tuple[bytes, bytes]]) -> None:
        """Append the chunk's rows at positions (lsn, SNAPSHOT, chunk << 32 | row + 1): increasing in
        publish order, and the same when the chunk is read again at the same point."""
        t, publisher = read.t, self._publisher
        topic, schema_header, pack, lsn = t.topic, t.schema_header, PG_POSITION.pack, read.lsn
        first = (chunk.index << 32) + 1
        ts_ms = int(time.time() * 1000)
        for start in range(0, len(rows), _PUBLISH_SLICE):
            publisher.extend(topic, ((key, value, [(POSITION_HEADER, pack(lsn, _SNAPSHOT, seq)), schema_header])
                                     for seq, (key, value) in enumerate(rows[start : start + _PUBLISH_SLICE], first + start)), ts_ms)
            if publisher.has_full:
                await publisher.send_full()
            await asyncio.sleep(0)  # the readers' results arrive meanwhile
        n = len(rows)
        self.events_published += n
        t.counts[_R] += n
        read.rows_published += n
        self._metrics.snapshot_rows(read.name).inc(n)
        progress.snapshots.advance(self.config.name, read.name, n)
        book.published(read.name, chunk, n)
        last = chunk.index + 1 == len(read.plan.chunks)
        if last:
            self._sync_counts()
            progress.snapshots.finish(self.config.name, read.name)
            log.info("source %s: snapshot of %s: %d rows in %d chunks in %.1fs", self.config.name, read.name, read.rows_published,
                     len(read.plan.chunks), time.monotonic() - read.started)
        # A table of several chunks is recorded as done as soon as it is (not re-read after a kill).
        if book.due(force=last and len(read.plan.chunks) > 1):
            await publisher.flush()
            book.commit()
            await self._write_state()

    # --- streaming ---------------------------------------------------------------------------

    async def _stream(self, start_lsn: int, stop: asyncio.Event) -> None:
        cfg = self.config
        repl = ReplicationConnection(await catalog.connect(cfg.dsn, replication=True))
        self._relations.clear()
        self._confirmed = max(self._confirmed, start_lsn)
        publisher = self._publisher
        incr = self._incremental
        try:
            await repl.start(cfg.slot_name, start_lsn, cfg.publication_name, messages=incr.unsupported is None)
            log.info("source %s: streaming from %s", cfg.name, lsn_to_str(start_lsn))
            safe_lsn = self._confirmed  # everything up to here was processed (not necessarily acked yet)
            in_txn = False
            now = time.monotonic()
            last_status = last_refresh = last_data = now
            txn = _Txn()
            waiting_since: float | None = None  # since when events wait in partly filled batches
            sent_mark = publisher.appended
            while not stop.is_set():
                wait_s = 0.2 if waiting_since is None else max(0.0, LINGER_S - (time.monotonic() - waiting_since))
                batch = await repl.read_batch(wait_s)
                if batch:
                    self._now_ms = int(time.time() * 1000)
                    data = False
                    for buf in batch:
                        if buf[0] == 107:  # 'k' keepalive
                            ka = keepalive(buf)
                            if not in_txn:
                                safe_lsn = max(safe_lsn, ka.wal_end)
                            if ka.reply_requested:
                                await repl.send_status(self._confirmed)
                            continue
                        data = True
                        tag = buf[XLOG_PAYLOAD]
                        if tag == _INSERT or tag == _UPDATE or tag == _DELETE:  # the hot path
                            self._change(buf, tag, txn)
                            continue
                        m = pgoutput.decode(buf[XLOG_PAYLOAD:])
                        if isinstance(m, pgoutput.Begin):
                            in_txn = True
                            txn.begin(m.final_lsn, m.xid, (m.commit_ts_us + PG_EPOCH_US) // 1000)
                            incr.begin(m.xid)
                        elif isinstance(m, pgoutput.Commit):
                            in_txn, safe_lsn = False, m.end_lsn
                            if self._reread:
                                # Leave at this transaction boundary: the re-read is in the state document, so
                                # confirming past the schema change loses nothing, even if the worker dies now.
                                await self._confirm(repl, safe_lsn)
                                raise _Reread()
                        elif isinstance(m, pgoutput.Relation):
                            cols = [(c.name, c.type_oid, c.typmod) for c in m.columns]
                            await self._relation(m.relid, f"{m.namespace}.{m.name}", cols, txn.lsn)
                            t = self._relations[m.relid] = await self._table(self._meta, m.relid, m.namespace, m.name, cols)
                            t.muted = f"{m.namespace}.{m.name}" in self._reread
                            incr.relation(t, f"{m.namespace}.{m.name}")
                            txn.heads.pop(m.relid, None)
                        elif isinstance(m, pgoutput.Truncate):
                            lsn = xlog_start(buf)
                            for relid in m.relids:
                                txn.seq += 1
                                t = self._relations[relid]
                                if t.muted:
                                    continue
                                self._emit(t, _T, TRUNCATE_KEY, None, None, txn.head(t, relid), lsn,
                                           PG_POSITION.pack(txn.lsn, _STREAM, txn.seq))
                        elif isinstance(m, pgoutput.Message):
                            await incr.message(m)  # a watermark publishes its chunk; heartbeats are ignored
                    if data:
                        last_data = time.monotonic()
                        if txn.commit_ms:
                            self._metrics.committed_at(txn.commit_ms / 1000)
                    elif not in_txn:
                        self._metrics.caught_up()  # only keepalives: the server has sent everything it has
                    if publisher.has_full:
                        await publisher.send_full()
                elif not in_txn:
                    self._metrics.caught_up()
                now = time.monotonic()
                if waiting_since is None:
                    if publisher.appended != sent_mark:
                        waiting_since = now
                elif now - waiting_since >= LINGER_S:
                    await publisher.send_open()
                    waiting_since, sent_mark = None, publisher.appended
                if now - last_status >= cfg.status_interval_s:
                    await self._confirm(repl, safe_lsn)
                    last_status = now
                    waiting_since, sent_mark = None, publisher.appended
                    await incr.tick()
                if cfg.heartbeat_interval_s and now - last_data >= cfg.heartbeat_interval_s:
                    await self._heartbeat()
                    last_data = now
                if now - last_refresh >= cfg.table_refresh_interval_s and not in_txn:
                    last_refresh = now
                    await incr.poll()  # snapshot requests
                    # Schema changes whose Relation message has not come (no write to the table since).
                    await self._check_shapes(list(self._shapes), None)
                    if self._reread:
                        await self._confirm(repl, safe_lsn)
                        raise _Reread()
                    current = await catalog.resolve_tables(self._meta, cfg.tables, cfg.dsn)
                    known = await catalog.published_tables(self._meta, cfg.publication_name) or set()
                    if any(t not in known for t in current):
                        await self._confirm(repl, safe_lsn)
                        raise _NewTables()
            # Stopping: publish what was read and confirm whole transactions only.
            await self._confirm(repl, safe_lsn)
        finally:
            await incr.stop()
            await repl.close()

    # --- schema changes ------------------------------------------------------------------------

    async def _record_shape(self, conn: psycopg.AsyncConnection, relid: int, lsn: int) -> str | None:
        """Record a table's shape as the snapshot `conn` is in sees it (written with the next state
        document); returns the table's previous name when it was renamed."""
        shape = (await catalog.table_shapes(conn, [relid]))[relid]
        shape.lsn = lsn
        old = self._shapes.get(relid)
        renamed_from = old.table if old is not None and old.table != shape.table else None
        if renamed_from in self._state.tables:
            self._state.tables.remove(renamed_from)  # a new table under the old name is a new table
        for other in [r for r, s in self._shapes.items() if s.table == shape.table and r != relid]:
            del self._shapes[other]  # dropped and created again under the same name
        self._shapes[relid] = shape
        return renamed_from

    async def _relation(self, relid: int, name: str, columns: list[tuple[str, int, int]], lsn: int) -> None:
        """A Relation message in the transaction committed at `lsn`: check the table's shape when it
        differs from the recorded one. Transactions before the recorded shape's LSN (re-sent after a
        re-read, which covers them) are not compared; neither is an unchanged Relation (the first after
        every (re)connect)."""
        old = self._shapes.get(relid)
        if old is not None and (lsn < old.lsn or (old.table == name and old.columns == columns)):
            return
        await self._check_shapes([relid], lsn)

    async def _check_shapes(self, relids: list[int], lsn: int | None) -> None:
        """Compare the recorded shapes of `relids` with the catalog; tables whose existing rows may have
        changed values are added to `_reread` and the state document is written before this returns.
        `lsn`: the commit LSN of the transaction whose Relation message asked (None for the periodic
        check), at which a change that needs no re-read is recorded."""
        if not relids:
            return
        current = await catalog.table_shapes(self._meta, relids)
        changed = False
        matching: set[str] | None = None
        for relid in relids:
            old, new = self._shapes.get(relid), current.get(relid)
            if new is None:
                continue  # dropped: its last changes are in the stream before the DROP
            if old is None or (reason := catalog.reread_reason(old, new)) is None:
                if lsn is not None and (old is None or dataclasses.replace(new, lsn=old.lsn) != old):
                    new.lsn = lsn
                    self._shapes[relid] = new
                    changed = True
                continue
            if new.table != old.table:
                if matching is None:
                    matching = {f"{s}.{t}" for s, t in await catalog.resolve_tables(self._meta, self.config.tables, self.config.dsn)}
                if new.table not in matching:
                    raise SchemaChangeError(
                        f"table {old.table} was renamed to {new.table}, which does not match `tables:` of source {self.config.name}; "
                        f"the lake table {old.table} stops at the rename. Add {new.table} to `tables:` to capture it under its new name, "
                        f"or stop capturing it: ALTER PUBLICATION {self.config.publication_name} DROP TABLE {new.table}")
            if new.table not in self._reread:
                log.warning("source %s: table %s: %s; its existing rows may have new values without row events: reading the table again",
                            self.config.name, new.table, reason)
                self._reread.add(new.table)
                changed = True
        if changed:
            await self._write_state()

    async def _confirm(self, repl: ReplicationConnection, safe_lsn: int) -> None:
        """Wait for the broker to acknowledge everything read so far, then confirm it to PostgreSQL."""
        await self._publisher.flush()
        if safe_lsn > self._confirmed:
            self._confirmed = safe_lsn
        await repl.send_status(self._confirmed)
        self._sync_counts()

    async def _heartbeat(self) -> None:
        try:
            await self._meta.execute("SELECT pg_logical_emit_message(false, 'lakeward_heartbeat', '')")
        except psycopg.Error as e:
            log.warning("source %s: heartbeat failed (%s); disabling heartbeats", self.config.name, str(e).strip())
            self.config = self.config.model_copy(update={"heartbeat_interval_s": 0})

    def _change(self, buf: bytes, tag: int, txn: _Txn) -> None:
        """One Insert, Update or Delete (pgoutput tag `tag`) of a raw XLogData buffer, as events."""
        lsn = xlog_start(buf)
        relid = _change_relid(buf, XLOG_PAYLOAD)
        t = self._relations[relid]
        if t.muted:
            return
        head = txn.heads.get(relid) or txn.head(t, relid)
        if tag == _INSERT:
            row = _decode_insert(buf, XLOG_PAYLOAD, t.columns)
            txn.seq += 1
            self._emit(t, _C, t.key(row), None, row, head, lsn, PG_POSITION.pack(txn.lsn, _STREAM, txn.seq))
        elif tag == _UPDATE:
            before, after = _decode_update(buf, XLOG_PAYLOAD, t.columns, t.pk)
            if before is not None and t.pk and any(before.get(k) != after.get(k) for k in t.pk if k in before):
                # A primary-key change is a delete of the old key and a create of the new one (as Debezium),
                # each naming the other key in a header. With REPLICA IDENTITY DEFAULT an unchanged TOASTed
                # value is absent from `after` (pgoutput sends `u`): the sink takes it from the old key's row.
                old_key, new_key = _dumps({k: before.get(k) for k in t.pk}), t.key(after)
                txn.seq += 1
                self._emit(t, _D, old_key, before, None, head, lsn, PG_POSITION.pack(txn.lsn, _STREAM, txn.seq), (NEW_KEY_HEADER, new_key))
                txn.seq += 1
                self._emit(t, _C, new_key, None, after, head, lsn, PG_POSITION.pack(txn.lsn, _STREAM, txn.seq), (OLD_KEY_HEADER, old_key))
            else:
                txn.seq += 1
                self._emit(t, _U, t.key(after), before, after, head, lsn, PG_POSITION.pack(txn.lsn, _STREAM, txn.seq))
        else:
            before = _decode_delete(buf, XLOG_PAYLOAD, t.columns, t.pk)
            txn.seq += 1
            self._emit(t, _D, t.key(before), before, None, head, lsn, PG_POSITION.pack(txn.lsn, _STREAM, txn.seq))


class _Txn:
    """The transaction being streamed: commit LSN, sequence of its events, and per table the
    envelope's `source` encoded once (see _Table.source_head)."""

    __slots__ = ("lsn", "seq", "xid", "commit_ms", "heads")

    def __init__(self) -> None:
        self.lsn = self.seq = self.xid = self.commit_ms = 0
        self.heads: dict[int, bytes] = {}

    def begin(self, final_lsn: int, xid: int, commit_ms: int) -> None:
        self.lsn, self.seq, self.xid, self.commit_ms = final_lsn, 0, xid, commit_ms
        self.heads.clear()

    def head(self, t: _Table, relid: int) -> bytes:
        head = self.heads[relid] = t.source_head(self.commit_ms, "false", self.xid)
        return head
