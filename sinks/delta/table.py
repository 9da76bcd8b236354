"""One table topic-partition -> one Delta table: buffering, dedup, flushes and offset bookkeeping.

A TableWriter lives while its partition is assigned to this worker. It

  * takes the records the consumer fetched (`ingest`), drops re-reads by Kafka offset and repeats
    by source position, decodes each value once and buffers it as a plain tuple;
  * flushes the buffer as ONE Delta commit (`flush`), built in a worker thread, that carries the
    last offset it covers as the app transaction and the newest position as commit metadata;
  * keeps consuming while a flush is in flight, and asks for its partition to be paused when the
    next buffer is full, when it stopped on an error, or while it re-synchronises.

The Delta table is the only record of progress: on (re)assignment the writer reads the txn
version and the position back from the table and resumes right after them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Protocol

import orjson
from aiokafka import TopicPartition

from lakeward.core import metrics
from lakeward.core.errors import (
    LakewardError,
    PoisonEventError,
    SchemaChangeError,
    TerminalError,
    TransientError,
)
from lakeward.core.events import (
    NEW_KEY_HEADER,
    OLD_KEY_HEADER,
    OP_CREATE,
    OP_DELETE,
    OP_READ,
    OP_TRUNCATE,
    OP_UPDATE,
    POSITION_HEADER,
    SCHEMA_HEADER,
    TableSchema,
)
from lakeward.core.retry import Backoff, is_retriable
from lakeward.sinks.delta.arrow import arrow_type, check_evolution, same_storage
from lakeward.sinks.delta.batch import (
    OFF,
    OP,
    POS,
    RESERVED_PREFIXES,
    Catalog,
    Plan,
    SchemaInfo,
    is_key_change_delete,
    plan_changelog,
    plan_mirror,
)
from lakeward.sinks.delta.lake import LakeTable

log = logging.getLogger(__name__)

_ROW_OPS = frozenset((OP_CREATE, OP_UPDATE, OP_READ))
_ALL_OPS = frozenset((OP_CREATE, OP_UPDATE, OP_READ, OP_DELETE, OP_TRUNCATE))
_op_of = itemgetter(OP)


def _is_truncate(value: bytes) -> bool:
    """Whether an event (raw value) is a truncate; read once per new schema, not per event."""
    try:
        return orjson.loads(value).get("op") == OP_TRUNCATE
    except (orjson.JSONDecodeError, AttributeError):
        return False  # decoded (and dead-lettered or refused) on the way in


class Feed(Protocol):
    """What a writer needs from the consumer (the sink implements it)."""

    def seek(self, tp: TopicPartition, offset: int | None) -> None: ...

    def committed(self, tp: TopicPartition, next_offset: int) -> None: ...


class SchemaSource(Protocol):
    async def get(self, source: str, schema_id: str) -> TableSchema: ...


@dataclass(slots=True)
class DeadLetter:
    """A poison event on its way to the dead-letter topic: where it came from and why it is there."""

    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    reason: str


class DeadLetterSink(Protocol):
    """Where poison events go when the sink has a `dead_letter_topic` (the sink implements it)."""

    async def send(self, writer: TableWriter, letters: list[DeadLetter]) -> None:
        """Return once the broker acknowledged every letter; raise on failure."""


@dataclass(slots=True)
class Batch:
    events: list[tuple]
    first: int
    """First offset the batch covers (the one after the previous commit)."""
    last: int
    """Last offset it covers: the txn version of its commit (duplicates and tombstones included)."""
    position: bytes | None
    """Newest position applied once it is committed."""
    dead: list[DeadLetter]
    """Poison events among its offsets: sent to the dead-letter topic before the commit."""
    catalog: Catalog
    """The columns as the batch was cut: events ingested after it may change a type (see `_admit`)."""


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds") if ts else None


class TableWriter:
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

        self.catalog = Catalog()
        self._infos: dict[bytes, SchemaInfo] = {}

        # progress in the lake
        self.committed_offset: int | None = None
        self.committed_position: bytes | None = None
        self.version: int | None = None
        self.committed_at: float | None = None

        # progress in the stream
        self.next_offset = 0
        self.last_position: bytes | None = None
        """Newest position accepted (buffered or committed): events at or before it are repeats."""
        self.epoch = 0
        """Bumped at every seek: records fetched before it are stale."""

        # the buffer
        self._events: list[tuple] = []
        self._dead: list[DeadLetter] = []
        self._bytes = 0
        self._buf_last: int | None = None
        self._buf_since = 0.0
        self._open_pair: int | None = None
        """Offset of the buffer's last event when it is the `d` of a primary-key change whose `c` is not
        buffered yet: no batch may end there (the `c` takes values stored under the old key)."""

        self.backlog: tuple[list[Any], int] | None = None
        """Fetched records not buffered yet (the buffer was full while a flush was in flight)."""
        self.flush_task: asyncio.Task | None = None
        self.error: LakewardError | None = None
        self._pending_error: LakewardError | None = None
        self._resyncing = False
        self.retrying: str | None = None
        self.active = True
        self.closing = False

        # counters
        self.last_flush: dict[str, Any] | None = None
        self.duplicates = 0
        self.tombstones = 0
        self.rows_applied = 0
        self.commits = 0
        self._metrics = metrics.TableMetrics(lake.sink, self.qualified)
        self.dead_lettered = 0

    # --- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> int | None:
        """Read the table's state; return the offset to resume at (None: from the beginning)."""
        state = await asyncio.to_thread(self.lake.load)
        self._adopt(state)
        log.info("%s: partition %s resumes at %s (txn %s, position %s, Delta version %s)", self.qualified, self.tp,
                 self.next_offset, self.committed_offset, self.committed_position.hex() if self.committed_position else None, self.version)
        return None if self.committed_offset is None else self.committed_offset + 1

    def _adopt(self, state: Any) -> None:
        self.committed_offset = state.txn
        self.committed_position = state.position
        self.last_position = state.position
        self.version = state.version
        self.committed_at = state.committed_at
        self.next_offset = 0 if state.txn is None else state.txn + 1
        if state.schema is not None:
            for f in state.schema:
                if not f.name.startswith(RESERVED_PREFIXES) and f.name not in self.catalog.arrow:
                    self.catalog.arrow[f.name] = f.type

    def _drop_buffer(self) -> None:
        """Forget everything consumed but not committed (revoke, resync, stop on error)."""
        self.backlog = None
        self._reset_buffer()

    def _reset_buffer(self) -> None:
        self._events = []
        self._dead = []
        self._bytes = 0
        self._buf_last = None
        self._open_pair = None

    async def revoke(self, timeout: float) -> None:
        """The partition goes to another worker: finish the commit in flight, drop what is buffered."""
        self.closing = True
        if self.flush_task is not None:
            await asyncio.wait([self.flush_task], timeout=timeout)
        self.active = False
        self._drop_buffer()

    async def drain(self) -> None:
        """Final flush before stopping: everything fetched is written (or stays in Kafka on error)."""
        self.closing = True
        while True:
            if self.flush_task is not None:
                await asyncio.wait([self.flush_task])
                continue
            if not self.active or self.error is not None:
                break
            if self.backlog is not None:
                records, epoch = self.backlog
                self.backlog = None
                await self.ingest(records, epoch)
                continue
            if self._buf_last is None or not self._flushable():
                break  # nothing, or only the `d` of a key change whose `c` was not fetched: it stays in Kafka
            self.start_flush()
        self.active = False

    # --- consuming ------------------------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        return self.error is not None or self._pending_error is not None

    def caught_up(self, end_offset: int) -> bool:
        """Everything before `end_offset` was consumed and nothing is buffered or being written."""
        return self.next_offset >= end_offset and not self._events and self.backlog is None and self.flush_task is None

    @property
    def full(self) -> bool:
        return len(self._events) >= self.batch_rows or self._bytes >= self.batch_bytes

    @property
    def wants_pause(self) -> bool:
        return self.stopped or self._resyncing or self.backlog is not None or (self.full and self.flush_task is not None)

    async def ingest(self, records: list[Any], epoch: int) -> None:
        """Buffer fetched records (all of one partition, in offset order).

        A full buffer is handed to a flush right away; when the previous flush is still being
        written, the remaining records wait in a backlog (the partition is paused meanwhile).
        """
        if epoch != self.epoch or not self.active or self.stopped or self._resyncing:
            return
        loads = orjson.loads
        events = self._events
        infos = self._infos
        nxt = self.next_offset
        last_pos = self.last_position
        nbytes = self._bytes
        buf_last = self._buf_last
        max_rows, max_bytes = self.batch_rows, self.batch_bytes
        if buf_last is None:
            self._buf_since = time.monotonic()
        stale = False
        duplicates = self.duplicates
        i, n = 0, len(records)
        try:
            while i < n:
                r = records[i]
                i += 1
                off = r.offset
                if off < nxt:
                    continue  # fetched again after a seek
                value = r.value
                if value is None:  # tombstone after a delete (compaction)
                    self.tombstones += 1
                    nxt = off + 1
                    buf_last = off
                    continue
                h = r.headers
                link = None
                if len(h) == 2 and h[0][0] == POSITION_HEADER and h[1][0] == SCHEMA_HEADER:
                    pos, sid = h[0][1], h[1][1]  # the order sources write them in
                else:
                    pos = sid = None
                    for k, v in h:
                        if k == POSITION_HEADER:
                            pos = v
                        elif k == SCHEMA_HEADER:
                            sid = v
                        elif k == OLD_KEY_HEADER or k == NEW_KEY_HEADER:
                            link = v  # a primary-key change (see batch.LINK)
                if pos is None or sid is None:
                    self._dead_letter(r, self._poison(off, f"the message lacks the {POSITION_HEADER} or {SCHEMA_HEADER} header"))
                    nxt = off + 1
                    buf_last = off
                    continue
                if last_pos is not None and pos <= last_pos:
                    self.duplicates += 1  # re-published by a restarted source: already applied
                    nxt = off + 1
                    buf_last = off
                    continue
                info = infos.get(sid)
                if info is None:
                    self.next_offset, self.last_position, self._bytes, self._buf_last = nxt, last_pos, nbytes, buf_last
                    try:
                        info = await self._resolve(sid, off, value)
                    except PoisonEventError as e:
                        if epoch == self.epoch and self.active and not self._resyncing and events is self._events:
                            self._dead_letter(r, e)
                            nxt = off + 1
                            buf_last = off
                            continue
                        raise
                    if epoch != self.epoch or not self.active or self._resyncing or events is not self._events:
                        stale = True  # a seek, revoke or resync happened meanwhile: these records are void
                        return
                try:
                    ev = loads(value)
                    op = ev["op"]
                    after = ev.get("after")
                    if op in _ROW_OPS:
                        if type(after) is not dict:
                            raise ValueError(f"op {op!r} without an `after` object")
                    elif op not in _ALL_OPS:
                        nxt = off + 1  # e.g. `m` (logical decoding message): nothing to write
                        buf_last = off
                        continue
                    src = ev.get("source")
                    if src:
                        events.append((off, pos, op, ev.get("before"), after, src.get("ts_ms"), src.get("txId"), r.key, info, link))
                    else:
                        events.append((off, pos, op, ev.get("before"), after, None, None, r.key, info, link))
                except (ValueError, KeyError, TypeError, AttributeError) as e:
                    self._dead_letter(r, self._poison(off, f"undecodable event ({e.__class__.__name__}: {e})"))
                    nxt = off + 1
                    buf_last = off
                    continue
                nbytes += len(value)
                last_pos = pos
                nxt = off + 1
                buf_last = off
                self._open_pair = off if link is not None and op == OP_DELETE else None
                if (len(events) >= max_rows or nbytes >= max_bytes) and self._open_pair is None:
                    self.next_offset, self.last_position, self._bytes, self._buf_last = nxt, last_pos, nbytes, buf_last
                    if self.flush_task is None:
                        self.start_flush()
                        events, nbytes, buf_last = self._events, self._bytes, self._buf_last
                    else:
                        if i < n:
                            self.backlog = (records[i:], epoch)
                        return
        except TerminalError as e:
            self._fail_after_flush(e)
        finally:
            if not stale:
                self.next_offset, self.last_position, self._bytes, self._buf_last = nxt, last_pos, nbytes, buf_last
            if self.duplicates != duplicates:
                self._metrics.duplicates.inc(self.duplicates - duplicates)  # per fetch, not per event

    def _poison(self, offset: int, what: str) -> PoisonEventError:
        e = PoisonEventError(f"table {self.qualified}: topic {self.tp.topic} partition {self.tp.partition} offset {offset}: {what}; "
                             "stopped this table")
        e.offset = offset  # type: ignore[attr-defined]
        return e

    def _dead_letter(self, record: Any, err: PoisonEventError) -> None:
        """Buffer a poison record for the dead-letter topic, or raise: without one the table stops at it."""
        if self.dead_letters is None:
            raise err
        reason = str(err).removesuffix("; stopped this table")
        log.warning("%s; sent to the dead-letter topic", reason)
        self._dead.append(DeadLetter(record.offset, record.key, record.value, list(record.headers), reason))

    async def _resolve(self, sid: bytes, offset: int, value: bytes) -> SchemaInfo:
        try:
            schema = await self._schemas.get(self.source, sid.decode())
        except KeyError:
            raise self._poison(offset, f"schema {sid.decode()!r} is not in the schema topic of source {self.source!r}") from None
        info = SchemaInfo.of(schema)
        self._admit(schema, rebuild=self.mode == "mirror" and _is_truncate(value))
        self._infos[sid] = info
        return info

    def _admit(self, schema: TableSchema, *, rebuild: bool = False) -> None:
        """Check a schema version against the lake table, then add its columns to the catalog.

        `rebuild`: the schema's first event is a truncate (a source re-reads the table after a schema
        change), so the mirror is rewritten from the rows that follow: a column may change to a type
        the table cannot merge (INT -> BIGINT); the overwrite replaces the table's schema.
        """
        if self.mode == "mirror" and not schema.primary_key:
            raise TerminalError(f"table {self.qualified} has no primary key; mirror mode needs one: add a primary key, or use mode: changelog")
        types = {}
        for col in schema.columns:
            if col.name.startswith(RESERVED_PREFIXES):
                raise SchemaChangeError(f"table {self.qualified}: column {col.name!r} uses a name reserved for Lakeward's metadata "
                                        f"columns ({', '.join(p + '*' for p in RESERVED_PREFIXES)}); stopped this table. Rename the column.")
            try:
                new = arrow_type(col.lake_type)
            except ValueError:
                raise SchemaChangeError(f"table {self.qualified}: column {col.name!r} has unknown lake type {col.lake_type!r}; stopped this table") from None
            old = self.catalog.arrow.get(col.name)
            if old is not None and not (rebuild and not same_storage(old, new)):
                check_evolution(self.qualified, col.name, old, new)
            elif old is not None:
                log.info("%s: column %r changes type from %s to %s: the table is rewritten from the re-read that follows",
                         self.qualified, col.name, old, new)
                self.catalog.arrow[col.name] = new
            types[col.name] = new
        if self.catalog.arrow and any(col.name not in self.catalog.arrow for col in schema.columns):
            self._metrics.schema_changes.inc()  # new columns for a table that had some: a schema merge ahead
        for col in schema.columns:
            self.catalog.arrow.setdefault(col.name, types[col.name])
            self.catalog.lake[col.name] = col.lake_type

    def _fail_after_flush(self, err: LakewardError) -> None:
        """Stop at the offending event: the events before it are still flushed, then the table stops."""
        log.error("%s", err)
        self._pending_error = err

    # --- flushing -------------------------------------------------------------------------------

    def _flushable(self) -> bool:
        """Whether the buffer holds something a batch may end with: not only a key change's dangling `d`."""
        return self._buf_last is not None and (self._open_pair is None or len(self._events) > 1)

    def due(self, now: float) -> bool:
        if self.flush_task is not None or self.error is not None or not self.active or self._resyncing:
            return False
        if not self._flushable():
            if self._pending_error is not None:
                self.error, self._pending_error = self._pending_error, None
            return False
        return (self._pending_error is not None or self.closing or self.full
                or now - self._buf_since >= self.batch_interval_s)

    def next_due(self, now: float) -> float | None:
        """Seconds until the time-based flush, None when nothing (that may be written yet) is buffered."""
        if not self._flushable() or self.flush_task is not None:
            return None
        return max(0.0, self._buf_since + self.batch_interval_s - now)

    def start_flush(self) -> None:
        """Hand the buffer to a flush. A batch never ends between the `d` of a primary-key change and
        its `c` (the `c` takes the values stored under the old key, which the `d` deletes): a dangling
        `d` stays buffered, and the batch ends right before it."""
        if not self._flushable() or self.flush_task is not None:
            return
        first = 0 if self.committed_offset is None else self.committed_offset + 1
        events, dead, tail = self._events, self._dead, None
        if self._open_pair is not None:
            d = events[-1]
            assert d[OFF] == self._open_pair and is_key_change_delete(d)
            events = events[:-1]
            tail = ([d], [x for x in dead if x.offset > d[OFF]], self._buf_last, self._open_pair)
            dead = [x for x in dead if x.offset < d[OFF]]
            batch = Batch(events, first, d[OFF] - 1, events[-1][POS], dead, self._catalog_snapshot())
        else:
            batch = Batch(events, first, self._buf_last, self.last_position, dead, self._catalog_snapshot())
        self._reset_buffer()
        if tail is not None:
            self._events, self._dead, self._buf_last, self._open_pair = tail
        self._buf_since = time.monotonic()
        self.flush_task = asyncio.create_task(self._flush(batch), name=f"flush {self.tp.topic}")

    async def _flush(self, batch: Batch) -> None:
        try:
            await self._flush_batch(batch)
        except LakewardError as e:
            if is_retriable(e):
                log.warning("%s: gave up writing offsets %d-%d (%s); they are re-read on restart", self.qualified, batch.first, batch.last, e)
            else:
                self._stop(e)
        except Exception as e:  # a bug or an unexpected library error: stop this table, keep the rest running
            log.exception("%s: flush failed", self.qualified)
            self._stop(TerminalError(f"table {self.qualified}: flush failed ({e.__class__.__name__}: {e}); stopped this table"))
        finally:
            self.flush_task = None
            self.retrying = None
        if self._pending_error is not None and self._buf_last is None:
            self.error, self._pending_error = self._pending_error, None

    def _stop(self, err: LakewardError) -> None:
        if self.error is None:
            log.error("%s", err)
            self.error = err
        self._pending_error = None
        self._drop_buffer()

    def _catalog_snapshot(self) -> Catalog:
        return Catalog(dict(self.catalog.arrow), dict(self.catalog.lake))

    def _plan(self, events: list[tuple], catalog: Catalog) -> Plan:
        if self.mode == "mirror":
            return plan_mirror(events, catalog, self.tp.topic, self.tp.partition, lookup=self.lake.lookup)
        return plan_changelog(events, catalog, self.tp.topic, self.tp.partition)

    def _plan_counted(self, events: list[tuple], catalog: Catalog) -> tuple[Plan, Counter[str]]:
        """The plan and the batch's events per op (for the metrics), both in the worker thread."""
        return self._plan(events, catalog), Counter(map(_op_of, events))

    async def _flush_batch(self, batch: Batch) -> None:
        catalog = batch.catalog
        poison: PoisonEventError | None = None
        t0 = time.perf_counter()
        while True:
            try:
                plan, ops = await asyncio.to_thread(self._plan_counted, batch.events, catalog)
                break
            except PoisonEventError as e:
                bad = getattr(e, "offset", None)
                if bad is None:
                    raise
                if self.dead_letters is not None:
                    # Take the bad event out of the batch (to the dead-letter topic) and plan the rest again.
                    ev = next(ev for ev in batch.events if ev[OFF] == bad)
                    batch.events = [x for x in batch.events if x is not ev]
                    batch.dead.append(self._rejected(ev, f"table {self.qualified}: {e}".removesuffix(
                        "; stopped this table (fix the event or the source, then replay the table)")))
                    continue
                # Write what comes before the bad event, then stop the table at it. (The cut batch
                # is planned again: it may hold another bad value, at an earlier offset.)
                poison = self._pending_error = PoisonEventError(f"table {self.qualified}: {e}")
                events = [ev for ev in batch.events if ev[OFF] < bad]
                if events and is_key_change_delete(events[-1]):
                    bad = events.pop()[OFF]  # the `d` of a key change goes with its `c`
                batch = Batch(events, batch.first, bad - 1, events[-1][POS] if events else self.committed_position, [], catalog)
        if batch.last < batch.first:
            if poison:
                raise poison
            return
        m = self._metrics
        for op, n in ops.items():
            m.consumed(op).inc(n)
        m.batch_events.observe(len(batch.events))
        t1 = time.perf_counter()
        if batch.dead and not await self._send_dead(batch):
            return
        done = await self._commit(plan, batch)
        t2 = time.perf_counter()
        m.commit_seconds.observe(t2 - t1)
        m.flush_seconds.observe(t2 - t0)
        if done:
            for op, n in ops.items():
                m.applied(op).inc(n)
        self.last_flush = {"events": len(batch.events), "offsets": f"{batch.first}-{batch.last}", "kind": plan.kind,
                           "rows": plan.data.num_rows if plan.data is not None else 0, "build_s": round(t1 - t0, 3),
                           "commit_s": round(t2 - t1, 3), "committed": done}
        log.debug("%s: flush %s", self.qualified, self.last_flush)
        if done and poison is not None:
            raise poison

    def _rejected(self, ev: tuple, reason: str) -> DeadLetter:
        """A decoded event whose value the Delta table rejects, as a dead letter. Its raw bytes were
        not kept (the hot path keeps decoded events only), so the value is the event as decoded."""
        off, pos, op, before, after, ts_ms, txid, key = ev[:8]
        value = orjson.dumps({"before": before, "after": after, "op": op, "source": {"ts_ms": ts_ms, "txId": txid}})
        log.warning("%s; sent to the dead-letter topic", reason)
        return DeadLetter(off, key, value, [(POSITION_HEADER, pos)], reason)

    async def _send_dead(self, batch: Batch) -> bool:
        """Dead letters are acknowledged before the commit that covers their offsets, so a crash
        between the two re-sends them (at least once) but never loses one."""
        assert self.dead_letters is not None
        backoff = Backoff()
        while self.active:
            try:
                await self.dead_letters.send(self, batch.dead)
                self.dead_lettered += len(batch.dead)
                self._metrics.dead_letters.inc(len(batch.dead))
                return True
            except Exception as e:  # the broker: retried like a commit, the table does not advance meanwhile
                what = f"table {self.qualified}: sending {len(batch.dead)} dead letter(s) failed ({e.__class__.__name__}: {e})"
                if not is_retriable(e):
                    if isinstance(e, LakewardError):
                        raise
                    raise TerminalError(f"{what}; retrying cannot help: stopped this table") from e
                delay = backoff.next()
                if self.closing and backoff.attempt >= 3:
                    raise TransientError(what) from e
                self.retrying = f"dead-letter topic: {e.__class__.__name__}: {e}"
                log.warning("%s: sending dead letters failed (attempt %d: %s); retrying in %.1fs", self.qualified, backoff.attempt, e, delay)
                await backoff.sleep(delay)
        return False

    async def _commit(self, plan: Plan, batch: Batch) -> bool:
        backoff = Backoff()
        while True:
            if not self.active:
                return False
            try:
                res = await asyncio.to_thread(self.lake.commit, plan, expected=self.committed_offset, txn=batch.last,
                                              position=batch.position, first=batch.first)
                break
            except Exception as e:
                if not is_retriable(e):
                    raise
                delay = backoff.next()
                attempt = backoff.attempt
                self._metrics.retries.inc()
                if self.closing and attempt >= 3:
                    raise TransientError(f"table {self.qualified}: {e}") from e
                self.retrying = f"{e.__class__.__name__}: {e}"
                (log.error if attempt >= 5 else log.warning)("%s: writing offsets %d-%d failed (attempt %d: %s); retrying in %.1fs",
                                                             self.qualified, batch.first, batch.last, attempt, self.retrying, delay)
                await backoff.sleep(delay)
        self.retrying = None
        if not res.ok:
            await self._resync(res.txn)
            return False
        self.committed_offset = batch.last
        if batch.position is not None:
            self.committed_position = batch.position
        if res.version is not None:
            self.version = res.version
            self.committed_at = res.committed_at
            self.commits += 1
            self._metrics.commits.inc()
        self.rows_applied += plan.events
        if self.active:
            self._feed.committed(self.tp, batch.last + 1)
        return True

    async def _resync(self, txn: int | None) -> None:
        """Another writer moved the table's txn: forget everything buffered and resume after it."""
        self._resyncing = True
        try:
            self._drop_buffer()
            self._pending_error = None  # it is met again when its event is re-read
            state = await asyncio.to_thread(self.lake.load)
            self._adopt(state)
            self.epoch += 1
            if self.active:
                log.warning("%s: the Delta table's txn for partition %s is %s (another writer); resuming at offset %s",
                            self.qualified, self.tp, state.txn, self.next_offset)
                self._feed.seek(self.tp, None if state.txn is None else state.txn + 1)
        finally:
            self._resyncing = False

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        state = "stopped" if self.error else "retrying" if self.retrying else "running"
        return {
            "table": self.qualified,
            "topic": self.tp.topic,
            "partition": self.tp.partition,
            "uri": self.lake.uri,
            "mode": self.mode,
            "state": state,
            "version": self.version,
            "last_commit": iso(self.committed_at),
            "committed_offset": self.committed_offset,
            "next_offset": self.next_offset,
            "last_position": self.committed_position.hex() if self.committed_position else None,
            "duplicates_dropped": self.duplicates,
            "dead_lettered": self.dead_lettered,
            "rows_applied": self.rows_applied,
            "commits": self.commits,
            "buffered_events": len(self._events),
            "last_flush": self.last_flush,
            "error": str(self.error) if self.error else None,
            "error_type": type(self.error).__name__ if self.error else None,
            "retrying": self.retrying,
        }

