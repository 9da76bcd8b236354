"""One table topic-partition -> one Delta table: the partition writer and its lifecycle.

A PartitionWriter lives while its partition is assigned to this worker. It feeds fetched records
to its buffer (buffer.py), cuts batches, has each planned (batch.py) and committed (committer.py)
in a worker thread while it keeps consuming, and asks for its partition to be paused when the next
buffer is full, when it stopped on an error, or while it re-synchronises.

Its lifecycle is one explicit state (`WriterState`); every change goes through `_to`, which refuses
a transition the table below does not list:

    ASSIGNED -> RESUMING -> RUNNING -> FLUSHING (the sink stops: write what is buffered)
                   ^           |  \\-> STOPPING (a poison event: write what precedes it) -> STOPPED
                   +-----------+ (another writer moved the txn: re-read it, seek)
    any state -> STOPPED on an error; any state -> REVOKING (finish the commit in flight) -> REVOKED

The Delta table is the only record of progress: on (re)assignment the writer reads the txn
version and the position back from the table and resumes right after them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Protocol

import orjson
from aiokafka import TopicPartition

from lakeward.core import metrics
from lakeward.core.errors import LakewardError, PoisonEventError, TerminalError
from lakeward.core.events import NEW_KEY_HEADER, OP_TRUNCATE, POSITION_HEADER, SCHEMA_HEADER, TableSchema
from lakeward.core.retry import is_retriable
from lakeward.core.sink import FlushReport, TableStatus
from lakeward.sinks.delta.batch import Plan, SchemaInfo, plan
from lakeward.sinks.delta.buffer import Batch, Buffer, DeadLetter, Events, Stop
from lakeward.sinks.delta.committer import Committer, DeadLetterSink
from lakeward.sinks.delta.lake import LakeTable

log = logging.getLogger(__name__)


def _is_truncate(value: bytes) -> bool:
    """Whether an event (raw value) is a truncate; read once per new schema, not per event."""
    try:
        return orjson.loads(value).get("op") == OP_TRUNCATE
    except (orjson.JSONDecodeError, AttributeError):
        return False  # named as undecodable when its batch is planned


class Feed(Protocol):
    """What a writer needs from the consumer (the sink implements it)."""

    def seek(self, tp: TopicPartition, offset: int | None) -> None: ...

    def committed(self, tp: TopicPartition, next_offset: int) -> None: ...


class SchemaSource(Protocol):
    async def get(self, source: str, schema_id: str) -> TableSchema: ...


class WriterState(Enum):
    ASSIGNED = "assigned"
    """Created for an assigned partition; its Delta table not read yet."""
    RESUMING = "resuming"
    """Reading the table's txn (on assignment, or after another writer moved it); consumes nothing."""
    RUNNING = "running"
    """Consuming and flushing."""
    STOPPING = "stopping"
    """An event cannot be written: the events before it are flushed, then the writer stops."""
    FLUSHING = "flushing"
    """The sink stops: what was fetched is written (or stays in Kafka on error); nothing new is consumed."""
    STOPPED = "stopped"
    """Stopped on an error (`error`): consumes and writes nothing, its partition stays paused."""
    REVOKING = "revoking"
    """The partition goes to another worker: the commit in flight may finish, nothing else is written."""
    REVOKED = "revoked"
    """The partition is not this writer's any more."""


_S = WriterState
TRANSITIONS: dict[WriterState, frozenset[WriterState]] = {
    _S.ASSIGNED: frozenset({_S.RESUMING, _S.STOPPED, _S.REVOKING}),
    _S.RESUMING: frozenset({_S.RUNNING, _S.STOPPED, _S.REVOKING}),
    _S.RUNNING: frozenset({_S.RESUMING, _S.STOPPING, _S.FLUSHING, _S.STOPPED, _S.REVOKING}),
    _S.STOPPING: frozenset({_S.RESUMING, _S.FLUSHING, _S.STOPPED, _S.REVOKING}),
    _S.FLUSHING: frozenset({_S.STOPPED, _S.REVOKING}),
    _S.STOPPED: frozenset({_S.REVOKING}),
    _S.REVOKING: frozenset({_S.REVOKED}),
    _S.REVOKED: frozenset(),
}
_CONSUMING = frozenset({_S.RUNNING, _S.FLUSHING})
_WRITING = frozenset({_S.RUNNING, _S.STOPPING, _S.FLUSHING})
_CLOSING = frozenset({_S.FLUSHING, _S.REVOKING, _S.REVOKED})


class IllegalTransition(RuntimeError):
    """A writer was asked to change to a state its current one does not lead to (a bug)."""


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds") if ts else None


class PartitionWriter:
    def __init__(
        self,
        tp: TopicPartition,
        *,
        source: str,
        schema: str,
        table: str,
        mode: str,
        lake: LakeTable,
        schemas: SchemaSource,
        feed: Feed,
        batch_rows: int,
        batch_bytes: int,
        batch_interval_s: float,
        dead_letters: DeadLetterSink | None = None,
        committer: Committer | None = None,
    ):
        self.tp = tp
        self.source = source
        self.qualified = f"{source}.{schema}.{table}"
        self.mode = mode
        self.lake = lake
        self._schemas = schemas
        self._feed = feed
        self.batch_rows = batch_rows
        self.batch_bytes = batch_bytes
        self.batch_interval_s = batch_interval_s
        self.dead_letters = dead_letters
        """None: a poison event stops the table; else it goes to the dead-letter topic."""
        self._metrics = metrics.TableMetrics(lake.sink, self.qualified)
        self.committer = committer or Committer(lake, self.qualified, mode, self._metrics)
        self.buffer = Buffer()
        self._infos: dict[bytes, SchemaInfo] = {}

        self.state = WriterState.ASSIGNED
        self._error: LakewardError | None = None
        """Why the writer stops: the error of STOPPED, or the one STOPPING (or FLUSHING) stops at."""
        self.epoch = 0
        """Bumped at every seek: records fetched before it are stale."""
        self.backlog: tuple[list[Any], int] | None = None
        """Fetched records not buffered yet (the buffer was full while a flush was in flight)."""
        self.flush_task: asyncio.Task | None = None
        self.last_flush: FlushReport | None = None

    # --- the state ------------------------------------------------------------------------------

    def _to(self, state: WriterState) -> None:
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.qualified}: writer cannot go from {self.state.value} to {state.value}")
        log.debug("%s: writer %s -> %s", self.qualified, self.state.value, state.value)
        self.state = state

    @property
    def live(self) -> bool:
        """Still the owner of its partition (not revoked)."""
        return self.state is not WriterState.REVOKED

    @property
    def closing(self) -> bool:
        """Shutting down or revoked: retries give up sooner."""
        return self.state in _CLOSING

    @property
    def error(self) -> LakewardError | None:
        """The error the writer stopped on (STOPPED), else None."""
        return self._error if self.state is WriterState.STOPPED else None

    @property
    def failure(self) -> LakewardError | None:
        """The error the writer stopped or is stopping on."""
        return self._error

    @property
    def stopped(self) -> bool:
        return self._error is not None

    def stop(self, err: LakewardError) -> None:
        """Stop on an error now: nothing buffered is written."""
        if self.state is WriterState.STOPPED:
            return
        if self._error is None or self.state is not WriterState.STOPPING:
            log.error("%s", err)
        self._error = err
        self.backlog = None
        self.buffer.restart(self.buffer.next_offset, self.buffer.last_position)
        if self.state not in (WriterState.REVOKING, WriterState.REVOKED):
            self._to(WriterState.STOPPED)

    def _stop_after_flush(self, err: LakewardError) -> None:
        """Stop at the offending event: the events before it are still flushed, then the table stops."""
        log.error("%s", err)
        self._error = err
        if self.state is WriterState.RUNNING:
            self._to(WriterState.STOPPING)

    def _stop_if_flushed(self) -> None:
        """A writer stopping at an error stops once nothing before the error is left to write."""
        if self._error is not None and self.state in (WriterState.STOPPING, WriterState.FLUSHING) and not self.buffer.flushable:
            self._to(WriterState.STOPPED)

    # --- the progress (the committer's, for the sink and the tests) -------------------------------

    @property
    def committed_offset(self) -> int | None:
        return self.committer.committed_offset

    @property
    def next_offset(self) -> int:
        return self.buffer.next_offset

    @property
    def retrying(self) -> str | None:
        return self.committer.retrying

    @retrying.setter
    def retrying(self, what: str | None) -> None:
        self.committer.retrying = what

    # --- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> int | None:
        """Read the table's state; return the offset to resume at (None: from the beginning)."""
        if self.state is WriterState.ASSIGNED:
            self._to(WriterState.RESUMING)
        await self.committer.load()
        self._resume()
        c = self.committer
        log.info("%s: partition %s resumes at %s (txn %s, position %s, Delta version %s)", self.qualified, self.tp,
                 self.next_offset, c.committed_offset, c.committed_position.hex() if c.committed_position else None, c.version)
        if self.state is WriterState.RESUMING:
            self._to(WriterState.RUNNING)
        return None if c.committed_offset is None else c.committed_offset + 1

    def _resume(self) -> None:
        self.backlog = None
        self.buffer.restart(self.committer.next_offset, self.committer.committed_position)

    async def revoke(self, wait_s: float) -> None:
        """The partition goes to another worker: finish the commit in flight, drop what is buffered."""
        if self.state is WriterState.REVOKED:
            return
        if self.state is not WriterState.REVOKING:
            self._to(WriterState.REVOKING)
        if self.flush_task is not None:
            await asyncio.wait([self.flush_task], timeout=wait_s)
        self._to(WriterState.REVOKED)
        self.backlog = None
        self.buffer.restart(self.buffer.next_offset, self.buffer.last_position)

    async def drain(self) -> None:
        """Final flush before stopping: everything fetched is written (or stays in Kafka on error)."""
        if self.state in (WriterState.RUNNING, WriterState.STOPPING):
            self._to(WriterState.FLUSHING)
        while True:
            if self.flush_task is not None:
                await asyncio.wait([self.flush_task])
                continue
            if self.state is not WriterState.FLUSHING:
                break
            if self.backlog is not None and self._error is None:
                records, epoch = self.backlog
                self.backlog = None
                await self.ingest(records, epoch)
                continue
            if not self.buffer.flushable:
                break  # nothing, or only the `d` of a key change whose `c` was not fetched: it stays in Kafka
            self.start_flush()
        self._stop_if_flushed()

    # --- consuming ------------------------------------------------------------------------------

    def caught_up(self, end_offset: int) -> bool:
        """Everything before `end_offset` was consumed and nothing is buffered or being written."""
        return self.next_offset >= end_offset and not len(self.buffer) and self.backlog is None and self.flush_task is None

    @property
    def full(self) -> bool:
        return self.buffer.full(self.batch_rows, self.batch_bytes)

    @property
    def wants_pause(self) -> bool:
        return (self.state is not WriterState.RUNNING or self.backlog is not None
                or (self.flush_task is not None and self.full))

    def _takes(self, epoch: int, events: Events) -> bool:
        """Whether records fetched at `epoch` still go into the buffer holding `events`."""
        return epoch == self.epoch and self.state in _CONSUMING and self._error is None and self.buffer.events is events

    async def ingest(self, records: list[Any], epoch: int) -> None:
        """Buffer fetched records (all of one partition, in offset order).

        A full buffer is handed to a flush right away; when the previous flush is still being
        written, the remaining records wait in a backlog (the partition is paused meanwhile).
        """
        buf = self.buffer
        if not self._takes(epoch, buf.events):
            return
        duplicates = buf.duplicates
        i = 0
        try:
            while True:
                i, stop, arg = buf.accept(records, i, self._infos, self.batch_rows, self.batch_bytes, time.monotonic())
                if stop is Stop.DONE:
                    return
                if stop is Stop.POISON:
                    self._reject(arg, f"the message lacks the {POSITION_HEADER} or {SCHEMA_HEADER} header")
                    i += 1
                    continue
                if stop is Stop.SCHEMA:
                    events = buf.events
                    r = records[i]
                    try:
                        await self._resolve(arg, r.offset, r.value)
                    except PoisonEventError as e:
                        if not self._takes(epoch, events):
                            return  # a seek, revoke or resync happened meanwhile: these records are void
                        self._reject(r, str(e), err=e)
                        i += 1
                        continue
                    if not self._takes(epoch, events):
                        return  # a seek, revoke or resync happened meanwhile: these records are void
                    continue
                # full
                if self.flush_task is None:
                    self.start_flush()
                    continue
                if i < len(records):
                    self.backlog = (records[i:], epoch)
                return
        except TerminalError as e:
            self._stop_after_flush(e)
        finally:
            if buf.duplicates != duplicates:
                self._metrics.duplicates.inc(buf.duplicates - duplicates)  # per fetch, not per event

    def _reject(self, record: Any, what: str, err: PoisonEventError | None = None) -> None:
        """A poison record: to the dead-letter topic, or (without one) the table stops at it."""
        if err is None:
            err = self._poison(record.offset, what)
        if self.dead_letters is None:
            raise err
        reason = str(err).removesuffix("; stopped this table")
        log.warning("%s; sent to the dead-letter topic", reason)
        self.buffer.reject(record, reason)

    def _poison(self, offset: int, what: str) -> PoisonEventError:
        return PoisonEventError(f"table {self.qualified}: topic {self.tp.topic} partition {self.tp.partition} offset {offset}: {what}; "
                                "stopped this table")

    async def _resolve(self, sid: bytes, offset: int, value: bytes) -> SchemaInfo:
        try:
            schema = await self._schemas.get(self.source, sid.decode())
        except KeyError:
            raise self._poison(offset, f"schema {sid.decode()!r} is not in the schema topic of source {self.source!r}") from None
        info = SchemaInfo.of(schema)
        self.committer.admit(schema, rebuild=self.mode == "mirror" and _is_truncate(value))
        self._infos[sid] = info
        return info

    # --- flushing -------------------------------------------------------------------------------

    def due(self, now: float) -> bool:
        if self.flush_task is not None or self.state not in _WRITING:
            return False
        if not self.buffer.flushable:
            self._stop_if_flushed()
            return False
        return (self.state is not WriterState.RUNNING or self.full
                or now - self.buffer.since >= self.batch_interval_s)

    def next_due(self, now: float) -> float | None:
        """Seconds until the time-based flush, None when nothing (that may be written yet) is buffered."""
        if not self.buffer.flushable or self.flush_task is not None:
            return None
        return max(0.0, self.buffer.since + self.batch_interval_s - now)

    def start_flush(self) -> None:
        """Hand the buffer to a flush (a key change's dangling `d` stays buffered, see buffer.py)."""
        if self.flush_task is not None:
            return
        batch = self.buffer.take(self.committer.next_offset, time.monotonic())
        if batch is None:
            return
        self.flush_task = asyncio.create_task(self._flush(batch), name=f"flush {self.tp.topic}")

    async def _flush(self, batch: Batch) -> None:
        try:
            await self._flush_batch(batch)
        except LakewardError as e:
            if is_retriable(e):
                log.warning("%s: gave up writing offsets %d-%d (%s); they are re-read on restart", self.qualified, batch.first, batch.last, e)
            else:
                self.stop(e)
        except Exception as e:  # a bug or an unexpected library error: stop this table, keep the rest running
            log.exception("%s: flush failed", self.qualified)
            self.stop(TerminalError(f"table {self.qualified}: flush failed ({e.__class__.__name__}: {e}); stopped this table"))
        finally:
            self.flush_task = None
            self.committer.retrying = None
        self._stop_if_flushed()

    def _plan(self, events: Events, catalog: Any) -> tuple[Plan, Any]:
        lookup = self.lake.lookup if self.mode == "mirror" else None
        return plan(events, catalog, self.mode, self.tp.topic, self.tp.partition, lookup=lookup)

    async def _flush_batch(self, batch: Batch) -> None:
        catalog = self.committer.catalog_snapshot()
        stop_at: PoisonEventError | None = None
        t0 = time.perf_counter()
        planned_ops: tuple[Plan, Any] | None = None
        while planned_ops is None:  # planned again after each bad event taken out or cut at
            try:
                planned_ops = await asyncio.to_thread(self._plan, batch.events, catalog)
            except PoisonEventError as e:
                bad = getattr(e, "offset", None)
                if bad is None:
                    raise
                events = batch.events
                if self.dead_letters is not None:
                    # Take the bad event out of the batch (to the dead-letter topic) and plan the rest again.
                    i = events.index(bad)
                    reason = f"table {self.qualified}: {e}".removesuffix("; stopped this table (fix the event or the source, then replay the table)")
                    log.warning("%s; sent to the dead-letter topic", reason)
                    batch.dead.append(DeadLetter(bad, events.keys[i], events.values[i], events.headers(i), reason))
                    batch.events = events.without(bad)
                    continue
                # Write what comes before the bad event, then stop the table at it. (The cut batch
                # is planned again: it may hold another bad value, at an earlier offset.)
                stop_at = PoisonEventError(f"table {self.qualified}: {e}")
                self._stop_after_flush(stop_at)
                kept = events.before(bad)
                if len(kept) and kept.links.get(len(kept) - 1, ("",))[0] == NEW_KEY_HEADER:
                    bad = kept.offsets[-1]  # the `d` of a key change goes with its `c`
                    kept = kept.before(bad)
                batch = Batch(kept, batch.first, bad - 1, kept.positions[-1] if len(kept) else self.committer.committed_position, [])
        batch.events.drop_values()
        if batch.last < batch.first:
            if stop_at is not None:
                raise stop_at
            return
        planned, ops = planned_ops
        m = self._metrics
        for op, n in ops.items():
            m.consumed(op).inc(n)
        m.batch_events.observe(len(batch.events))
        t1 = time.perf_counter()
        if batch.dead and self.dead_letters is not None:
            if not await self.committer.send_dead(self.dead_letters, self, batch.dead, lambda: self.live, lambda: self.closing):
                return
        done = await self._commit(planned, batch)
        t2 = time.perf_counter()
        m.commit_seconds.observe(t2 - t1)
        m.flush_seconds.observe(t2 - t0)
        if done:
            for op, n in ops.items():
                m.applied(op).inc(n)
        self.last_flush = FlushReport(events=len(batch.events), offsets=f"{batch.first}-{batch.last}", kind=planned.kind,
                                      rows=planned.data.num_rows if planned.data is not None else 0, build_s=round(t1 - t0, 3),
                                      commit_s=round(t2 - t1, 3), committed=done)
        log.debug("%s: flush %s", self.qualified, self.last_flush)
        if done and stop_at is not None:
            raise stop_at  # stops the writer and drops what was buffered after the batch

    async def _commit(self, planned: Plan, batch: Batch) -> bool:
        res = await self.committer.commit(planned, batch, lambda: self.live, lambda: self.closing)
        if res is None:
            return False
        if not res.ok:
            await self._resync(res.txn)
            return False
        if self.live:
            self._feed.committed(self.tp, batch.last + 1)
        return True

    async def _resync(self, txn: int | None) -> None:
        """Another writer moved the table's txn: forget everything buffered and resume after it."""
        seek = self.state in (WriterState.RUNNING, WriterState.STOPPING)
        if seek:
            self._to(WriterState.RESUMING)
        self._error = None  # an error the writer was stopping at is met again when its event is re-read
        self.backlog = None
        self.buffer.restart(self.buffer.next_offset, self.buffer.last_position)
        state = await self.committer.load()
        self._resume()
        self.epoch += 1
        if seek and self.state is WriterState.RESUMING:
            self._to(WriterState.RUNNING)
            log.warning("%s: the Delta table's txn for partition %s is %s (another writer); resuming at offset %s",
                        self.qualified, self.tp, state.txn, self.next_offset)
            self._feed.seek(self.tp, None if state.txn is None else state.txn + 1)

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> TableStatus:
        c = self.committer
        err = self.error
        return TableStatus(
            table=self.qualified,
            topic=self.tp.topic,
            partition=self.tp.partition,
            uri=self.lake.uri,
            mode=self.mode,
            state="stopped" if err else "retrying" if c.retrying else "running",
            version=c.version,
            last_commit=iso(c.committed_at),
            committed_offset=c.committed_offset,
            next_offset=self.next_offset,
            last_position=c.committed_position.hex() if c.committed_position else None,
            duplicates_dropped=self.buffer.duplicates,
            dead_lettered=c.dead_lettered,
            rows_applied=c.rows_applied,
            commits=c.commits,
            buffered_events=len(self.buffer),
            last_flush=self.last_flush,
            error=str(err) if err else None,
            error_type=type(err).__name__ if err else None,
            retrying=c.retrying,
        )
