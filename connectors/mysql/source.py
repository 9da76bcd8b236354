"""MySQL/MariaDB source: snapshot consistent with a binlog position, then stream the binlog into table topics.

Threading: every blocking call (PyMySQL queries, the snapshot, BinLogStreamReader's socket reads and
the row decoding) runs in one reader thread (binlog.Reader). It hands this asyncio side batches of
ready-made events through a bounded queue — the bound is the backpressure — and this side only
appends them to the producer's record batches, publishes schemas and history entries, and keeps the
state.

Exactly-once chain, source side: events go out through an idempotent producer (acks=all). The resume
position — binlog file/position and GTID state after the last whole transaction — is written to the
compacted state topic `<prefix>.<source>.__state` only after BatchPublisher.flush() saw the broker
acknowledge every event before it. After a crash the source resumes there (by GTID on MariaDB and on
MySQL with gtid_mode=ON, else by file/position) and re-publishes the transactions after it with the
same positions, which sinks drop. The state also says which tables are established in the lake, so a
fresh worker on another machine neither repeats a finished snapshot nor misses a table.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import pymysql

from lakeward.connectors.mysql import catalog
from lakeward.connectors.mysql.binlog import Plan, Reader, new_epoch
from lakeward.connectors.mysql.catalog import Server
from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.connectors.mysql.handover import (
    FINISHED,
    Announce,
    ChunkDone,
    Commit,
    Failed,
    History,
    SnapshotBegin,
    SnapshotDone,
    TableDone,
)
from lakeward.connectors.mysql.history import SchemaHistory
from lakeward.connectors.mysql.incremental import ChunkPublished, JobStopped
from lakeward.connectors.mysql.snapshot import BinlogPoint, ChunkProgress
from lakeward.core import broker as kafka
from lakeward.core import metrics, progress
from lakeward.core.config import BrokerConfig
from lakeward.core.errors import SourceSetupError
from lakeward.core.snapshot import (
    IncrementalJob,
    SignalInbox,
    SnapshotRequest,
    TableProgress,
)
from lakeward.core.source import Source, SourceStatus

log = logging.getLogger(__name__)

STATE_KEY = b"state"
IDLE_WAKE_S = 0.2


@dataclass
class SourceState:
    """The document in `<prefix>.<source>.__state` (key `state`)."""

    epoch: str
    server: str
    """The binlog's identity (MariaDB server_id / MySQL server_uuid): positions of another server's
    binlog don't continue these."""
    resume: BinlogPoint | None = None
    """Where streaming continues: after the last transaction whose events the broker acknowledged."""
    tables: dict[str, str] = field(default_factory=dict)
    """The tables established in the lake: `db.table` -> hex position of their last snapshot (or of
    their CREATE TABLE, when created while streaming; "" when never snapshotted)."""
    snapshot_done: bool = False
    progress: dict[str, ChunkProgress] = field(default_factory=dict)
    """Tables of the initial snapshot read in part: chunks done (acknowledged) so far. A restart goes
    on from them (docs/mysql.md, Snapshot); a table leaves it when it is done."""
    jobs: list[IncrementalJob] = field(default_factory=list)
    """Incremental snapshots not finished yet (also the rest of a resumed initial snapshot), with their
    progress acknowledged by the broker."""
    chunk_counter: int = 0
    """Incremental chunks published so far (acknowledged): part of their positions (see incremental.py)."""
    signals_offset: int = 0
    """Offset in the signal topic after the last request turned into jobs."""

    def to_json(self) -> bytes:
        return orjson.dumps({"epoch": self.epoch, "server": self.server, "resume": self.resume.to_dict() if self.resume else None,
                             "tables": dict(sorted(self.tables.items())), "snapshot_done": self.snapshot_done,
                             "progress": {t: p.to_dict() for t, p in sorted(self.progress.items())},
                             "jobs": [j.to_dict() for j in self.jobs], "chunk_counter": self.chunk_counter,
                             "signals_offset": self.signals_offset,
                             "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    @classmethod
    def from_json(cls, data: bytes) -> SourceState:
        d = orjson.loads(data)
        tables = d.get("tables") or {}
        if isinstance(tables, list):
            tables = dict.fromkeys(tables, "")
        return cls(d["epoch"], d["server"], BinlogPoint.from_dict(d["resume"]) if d.get("resume") else None, dict(tables),
                   bool(d.get("snapshot_done")), {t: ChunkProgress.from_dict(p) for t, p in (d.get("progress") or {}).items()},
                   [IncrementalJob.from_dict(j) for j in d.get("jobs") or []], int(d.get("chunk_counter") or 0),
                   int(d.get("signals_offset") or 0))


class MySQLSource(Source):
    config: MySQLSourceConfig

    def __init__(self, config: MySQLSourceConfig, *, broker: BrokerConfig):
        super().__init__(config, broker=broker)
        self.prefix = broker.topic_prefix
        self.state = kafka.StateTopic(broker, config.name, STATE_KEY)
        self.history_topic = f"{self.prefix}.{config.name}.__schema_history"
        self.events_published = 0
        self.reader: Reader | None = None
        self._chunks_done: dict[str, ChunkProgress] = {}
        """Chunk progress handed over, waiting for the broker's ack before it goes into the state."""
        self._progress_written = 0.0
        self._metrics = metrics.SourceMetrics(config.name, broker.topic_prefix)

    # --- public contract ---------------------------------------------------------------------

    async def check(self) -> None:
        # The database first, so that its problems show also when the broker (with the state) is down.
        await asyncio.to_thread(self._check_blocking, None)
        state = await self._read_state()
        if state is not None and state.resume is not None:
            await asyncio.to_thread(self._check_blocking, state)

    def _check_blocking(self, state: SourceState | None) -> tuple[Server, list[tuple[str, str]]]:
        cfg = self.config
        conn = catalog.connect(cfg)
        try:
            server = catalog.server_info(conn)
            catalog.check_setup(conn, cfg, server)
            tables = catalog.resolve_tables(conn, cfg)
            catalog.check_select(conn, cfg, tables)
            engines = catalog.table_engines(conn, tables)
            for (db, table), engine in engines.items():
                if engine.lower() not in ("innodb", "rocksdb", "tokudb", ""):
                    log.warning("source %s: %s.%s uses the %s engine, which has no consistent snapshots: its snapshot may "
                                "not match the binlog position exactly (use InnoDB)", cfg.name, db, table, engine)
            if state is not None and state.resume is not None:
                if state.server != server.identity:
                    raise SourceSetupError(
                        f"MySQL at {cfg.where} is not the server this source's positions come from (state: {state.server}, "
                        f"server: {server.identity}): after a failover, binlog positions don't continue the stored ones. "
                        f"Rebuild: delete the source's state topic {self.state.name} and its table topics, drop its lake "
                        "tables (or give the source a new name), then start it; see docs/mysql.md, Failover")
                catalog.check_position_available(conn, cfg, state.resume.file, state.resume.pos, self.state.name)
            return server, tables
        finally:
            conn.close()

    async def status(self) -> SourceStatus:
        cfg = self.config
        state = await self._read_state()
        jobs = state.jobs if state is not None else []

        def read_server() -> tuple[tuple[str, int, str | None], list[tuple], dict[str, int | None]]:
            conn = catalog.connect(cfg)
            try:
                end = catalog.master_status(conn, catalog.server_info(conn))
                return end, catalog.query(conn, "SHOW BINARY LOGS"), {j.table: catalog.row_estimate(conn, *j.table.split(".", 1)) for j in jobs}
            finally:
                conn.close()

        (file, pos, gtid), sizes, estimates = await asyncio.to_thread(read_server)
        status = SourceStatus(cfg.name, cfg.type, f"binlog, server_id {cfg.effective_server_id}", exists=state is not None)
        if state is not None:
            status.active = self.reader is not None and self.reader.is_alive()
            if state.resume is not None:
                status.confirmed = f"{state.resume.file}:{state.resume.pos}"
                status.lag_bytes = bytes_behind(sizes, state.resume.file, state.resume.pos)
            status.details.update(gtid=state.resume.gtid if state.resume else None, tables=sorted(state.tables),
                                  snapshot_done=state.snapshot_done)
            status.snapshot = [TableProgress(t, "initial", p.rows, chunks_done=p.chunks_done, chunks=p.chunks)
                               for t, p in sorted(state.progress.items())]
        if self.reader is not None and self.reader.is_alive():
            st = self.reader.stats
            status.details.update(reader_position=st.position, rows_decoded=st.rows_decoded, transactions=st.transactions,
                                  events_published=self.events_published)
        status.details.update(binlog_end=f"{file}:{pos}", gtid_end=gtid)
        status.snapshot += [j.progress(estimates.get(j.table)) for j in jobs]
        return status

    async def run(self, stop: asyncio.Event) -> None:
        async with self.broker_session(compact_topics=[self.state.name, self.history_topic], on_acked=self._metrics.published,
                                       database=f"MySQL at {self.config.where}", poll_database=self._poll_lag) as session:
            self._producer, self._admin, self._publisher, self._schemas = session.producer, session.admin, session.publisher, session.schemas
            await self._run(stop)

    async def _poll_lag(self) -> None:
        """lakeward_source_lag_bytes: binlog bytes after the stored resume position (SHOW BINARY LOGS, in a
        thread, on a short-lived connection: nothing shared with a thread that may outlive a cancel)."""

        def binary_logs() -> list[tuple]:
            conn = catalog.connect(self.config)
            try:
                return catalog.query(conn, "SHOW BINARY LOGS")
            finally:
                conn.close()

        logs = await asyncio.to_thread(binary_logs)
        state = getattr(self, "_state", None)
        if state is not None and state.resume is not None:
            self._metrics.lag_bytes.set(bytes_behind(logs, state.resume.file, state.resume.pos))

    # --- orchestration -----------------------------------------------------------------------

    async def _run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        self._chunks_done.clear()  # a previous run's, never acknowledged
        state = await self._read_state()
        server, tables = await asyncio.to_thread(self._check_blocking, state)
        metrics.HEALTH.worker("source", cfg.name).ok("database")
        names = {f"{d}.{t}" for d, t in tables}
        if state is None or state.resume is None:
            state = SourceState(new_epoch(), server.identity)
            log.info("source %s: no stored position; %s", cfg.name,
                     "taking the initial snapshot" if cfg.snapshot == "initial" else "streaming from the binlog's end (snapshot: never)")
            if cfg.snapshot == "initial":
                plan = Plan(tables, None, {}, initial=True)
            else:
                state.tables = dict.fromkeys(names, "")
                plan = Plan([], None, dict(state.tables))
        else:
            self._state = state
            if carry_on_snapshot(state, names):
                for job in state.jobs:
                    if job.reason == "resume":
                        log.info("source %s: %s was snapshotted in part; the rest (keys after %s) is read while streaming",
                                 cfg.name, job.table, job.after)
                await self._write_state()
            pending = [(d, t) for d, t in tables if f"{d}.{t}" not in state.tables]
            if pending and cfg.snapshot == "initial":
                log.info("source %s: snapshotting %d table(s) not in the lake yet: %s", cfg.name, len(pending),
                         ", ".join(f"{d}.{t}" for d, t in pending))
                # Streaming goes on from the original point; the sinks drop these tables' events before the new one.
                plan = Plan(pending, state.resume, dict(state.tables), initial=not state.snapshot_done)
            elif not state.snapshot_done:
                plan = Plan([], state.resume, dict(state.tables), initial=True)
            else:
                state.tables.update({f"{d}.{t}": "" for d, t in pending})
                plan = Plan([], state.resume, dict(state.tables))
            log.info("source %s: resuming at %s:%d%s", cfg.name, state.resume.file, state.resume.pos,
                     f" (GTID {state.resume.gtid})" if state.resume.gtid else "")
        self._state = state
        history = SchemaHistory(state.epoch)
        history.load(await kafka.read_topic(self.broker, self.history_topic))
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        def wake_loop() -> None:  # called from the reader thread
            loop.call_soon_threadsafe(wake.set)

        reader = self.reader = Reader(cfg, self.prefix, server, history, plan, wake_loop)
        self._inbox = SignalInbox(self.broker, cfg.name)
        await self._inbox.start(self._admin, state.signals_offset)
        reader.incremental.counter = state.chunk_counter
        for job in state.jobs:
            self._hand_over(job, None)
        reader.start()
        try:
            await self._consume(reader, wake, stop)
        finally:
            reader.stop_flag.set()
            reader.handover.close()  # after a failure here the reader must not wait for room in the queue
            await asyncio.to_thread(reader.join, 30)
            await self._inbox.stop()

    async def _consume(self, reader: Reader, wake: asyncio.Event, stop: asyncio.Event) -> None:
        cfg = self.config
        publisher = self._publisher
        append = publisher.append
        send_open = publisher.send_open
        out = reader.handover.queue
        pending: Commit | None = None
        last_checkpoint = last_signals = time.monotonic()
        stopping = False
        stats = reader.stats
        while True:
            if stop.is_set() and not stopping:
                stopping = True
                reader.stop_flag.set()
            try:
                batch = out.get_nowait()
            except queue.Empty:
                wake.clear()
                try:
                    batch = out.get_nowait()
                except queue.Empty:
                    try:
                        async with asyncio.timeout(IDLE_WAKE_S):
                            await wake.wait()
                    except TimeoutError:
                        pass
                    batch = None
            if batch is not None:
                n = 0
                for item in batch:
                    if type(item) is tuple:
                        append(*item)
                        n += 1
                        continue
                    if publisher.has_full:
                        await publisher.send_full()
                    if isinstance(item, Commit):
                        pending = item
                    elif isinstance(item, Announce):
                        await self._schemas.publish(item.info.schema)
                        self._metrics.schema(f"{item.info.db}.{item.info.table}", item.info.schema_id.decode())
                        await self._admin.ensure_topic(item.info.topic)
                    elif isinstance(item, History):
                        await (await self._producer.send(self.history_topic, key=item.entry.key, value=item.entry.to_json()))
                    elif isinstance(item, SnapshotBegin):
                        if self._state.resume is None:
                            # The stream starts at the first snapshot's point, also if it restarts.
                            self._state.resume = item.point
                            await self._write_state()
                    elif isinstance(item, ChunkDone):
                        self._chunks_done[item.table] = item.progress
                        if time.monotonic() - self._progress_written >= cfg.status_interval_s:
                            await self._write_progress()
                    elif isinstance(item, TableDone):
                        await self._write_progress(written=False)
                        self._state.progress.pop(item.table, None)
                        self._state.tables[item.table] = item.pos
                        await self._write_state()
                    elif isinstance(item, SnapshotDone):
                        await self._write_progress(written=False)
                        self._state.snapshot_done = True
                        self._state.tables.update(item.tables)
                        await self._write_state()
                    elif isinstance(item, ChunkPublished):
                        await self._chunk_published(item)
                    elif isinstance(item, JobStopped):
                        await self._job_stopped(item)
                    elif isinstance(item, Failed):
                        raise item.error
                    elif item is FINISHED:
                        await self._checkpoint(pending)
                        return
                self.events_published += n
                if publisher.has_full:
                    await publisher.send_full()
                if n and out.empty():
                    # Caught up: send partly filled batches now rather than at the next checkpoint.
                    await send_open()
            event_ts = stats.event_ts
            if event_ts is None:
                self._metrics.caught_up()
            elif event_ts:
                self._metrics.committed_at(event_ts)
            now = time.monotonic()
            if pending is not None and (now - last_checkpoint >= cfg.status_interval_s or stopping):
                if pending.resume != self._state.resume or pending.tables != self._state.tables:
                    await self._checkpoint(pending)
                last_checkpoint = now
            if now - last_signals >= cfg.status_interval_s and not stopping:
                last_signals = now
                await self._poll_signals(reader)

    async def _write_progress(self, *, written: bool = True) -> None:
        """Wait for the broker to acknowledge everything handed over, then take the chunk progress
        handed over before it into the state (and write it, unless the caller writes it next).
        Batched to one write per status_interval_s when chunks are small."""
        await self._publisher.flush()
        self._state.progress.update(self._chunks_done)
        self._chunks_done.clear()
        if written:
            await self._write_state()
        self._progress_written = time.monotonic()

    async def _checkpoint(self, commit: Commit | None) -> None:
        """Wait for the broker to acknowledge everything handed over, then store the resume position."""
        await self._publisher.flush()
        chunks_done = bool(self._chunks_done)
        self._state.progress.update(self._chunks_done)
        self._chunks_done.clear()
        if commit is not None:
            self._state.resume = commit.resume
            self._state.tables = dict(commit.tables)
        if commit is not None or chunks_done:
            await self._write_state()

    # --- incremental snapshots ---------------------------------------------------------------

    async def _poll_signals(self, reader: Reader) -> None:
        """Turn new requests on the signal topic into jobs: stored with the inbox offset, then handed to the reader."""
        records = await self._inbox.poll()
        if not records:
            return
        added: list[tuple[IncrementalJob, int | None]] = []
        for offset, request in records:
            if request is None:
                log.error("source %s: the record at offset %d of %s is not a snapshot request (see `lakeward snapshot`); ignored",
                          self.config.name, offset - 1, self._inbox.topic)
            else:
                added += await asyncio.to_thread(self._jobs_for, request)
            self._state.signals_offset = offset
        self._state.jobs.extend(job for job, _ in added)
        await self._write_state()
        for job, estimate in added:
            self._hand_over(job, estimate)

    def _hand_over(self, job: IncrementalJob, estimate: int | None) -> None:
        assert self.reader is not None
        self.reader.incremental.add(job)
        progress.snapshots.start(self.config.name, job.table, estimate)

    def _jobs_for(self, request: SnapshotRequest) -> list[tuple[IncrementalJob, int | None]]:
        """The request's tables this source can re-read, with their row estimates; logs why it refuses the others."""
        cfg = self.config
        conn = catalog.connect(cfg)
        try:
            out = []
            for name in dict.fromkeys(request.tables):
                why = refusal(conn, cfg, name, request.where)
                if why:
                    log.error("source %s: snapshot request %s: %s; skipping this table (the capture goes on)", cfg.name, request.id, why)
                    continue
                out.append((IncrementalJob(request.id, name, "request", request.where), catalog.row_estimate(conn, *name.split(".", 1))))
                log.info("source %s: snapshot request %s: re-reading %s%s while streaming", cfg.name, request.id, name,
                         f" where {request.where}" if request.where else "")
            return out
        finally:
            conn.close()

    def _job(self, job_id: str, table: str) -> IncrementalJob | None:
        return next((j for j in self._state.jobs if j.id == job_id and j.table == table), None)

    async def _chunk_published(self, item: ChunkPublished) -> None:
        """Store a job's progress once the broker acknowledged its chunk (and everything before it)."""
        await self._publisher.flush()
        job = self._job(item.job_id, item.table)
        if job is not None:
            job.after, job.rows, job.chunks, job.until = item.after, job.rows + item.rows, job.chunks + 1, item.until
            if item.done:
                self._state.jobs.remove(job)
        self._state.chunk_counter = item.chunk_counter
        await self._write_state()
        if item.rows:
            self._metrics.snapshot_rows(item.table).inc(item.rows)
            progress.snapshots.advance(self.config.name, item.table, item.rows)
        if item.done:
            progress.snapshots.finish(self.config.name, item.table)

    async def _job_stopped(self, item: JobStopped) -> None:
        log.error("source %s: incremental snapshot %s of %s stopped: %s; the job is removed (the capture goes on)",
                  self.config.name, item.job_id, item.table, item.reason)
        job = self._job(item.job_id, item.table)
        if job is not None:
            self._state.jobs.remove(job)
            await self._write_state()
        progress.snapshots.finish(self.config.name, item.table)

    # --- state topic -------------------------------------------------------------------------

    async def _write_state(self) -> None:
        await self.state.write(self._producer, self._state.to_json())

    async def _read_state(self) -> SourceState | None:
        value = await self.state.read()
        return SourceState.from_json(value) if value is not None else None


def carry_on_snapshot(state: SourceState, captured: set[str]) -> bool:
    """After a restart, turn the chunk progress of tables a snapshot read in part (its consistent point
    is gone) into what continues it: a table with a key goes on with an IncrementalJob(reason="resume")
    after its last acknowledged key, while streaming from the original point; a table without one
    leaves `tables` out and is read whole at a new point. Finished tables stay finished, done chunks are
    never read again. Returns whether the state changed."""
    if not state.progress:
        return False
    for name, p in sorted(state.progress.items()):
        if name not in captured:
            continue
        if p.chunks_done >= p.chunks:
            state.tables[name] = p.pos
        elif p.chunks_done and p.after is not None:
            state.tables[name] = p.pos
            if not any(j.table == name and j.reason == "resume" for j in state.jobs):
                state.jobs.append(IncrementalJob("resume", name, "resume", after=list(p.after)))
    state.progress = {}
    return True


def refusal(conn: Any, cfg: MySQLSourceConfig, name: str, where: str | None) -> str | None:
    """Why `name` cannot be re-read incrementally by this source (None: it can)."""
    db, _, table = name.partition(".")
    if not table:
        return f"{name!r} is not a `database.table` name"
    if not catalog.matches(cfg.tables, db, table):
        return f"table {name} is not captured by this source (tables: {', '.join(cfg.tables)})"
    found = catalog.table_defs(conn, db, table)
    if found is None:
        return f"table {name} does not exist on MySQL at {cfg.where}"
    if not found[1]:
        return (f"table {name} has no primary key: an incremental snapshot reads a table in key order. Add a primary key, or "
                "take a new initial snapshot (docs/mysql.md, Taking a new snapshot)")
    if where:
        try:
            catalog.query(conn, f"SELECT 1 FROM {catalog.quote(db)}.{catalog.quote(table)} WHERE ({where}) LIMIT 0")
        except pymysql.err.MySQLError as e:
            if isinstance(e, pymysql.err.InterfaceError) or (e.args and isinstance(e.args[0], int) and e.args[0] >= 2000):
                raise
            return f"the condition --where {where!r} fails on table {name}: {e.args[-1]}"
    return None


def bytes_behind(binary_logs: list[tuple], file: str, pos: int) -> int:
    """Binlog bytes after `file`:`pos`, from SHOW BINARY LOGS rows (name, size, ...)."""
    behind = 0
    for name, size, *_ in binary_logs:
        if name == file:
            behind += int(size) - pos
        elif name > file:
            behind += int(size)
    return max(0, behind)
