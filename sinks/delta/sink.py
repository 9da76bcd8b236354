"""The Delta Lake sink: a consumer-group worker that writes table topics into Delta tables.

Workers of one sink share a consumer group and subscribe by pattern to the table topics of the
configured sources (new tables are picked up within a few seconds). The sink only consumes and
routes: each assigned partition gets a PartitionWriter (see table.py) that resumes from the offset its Delta table records, so progress is
exactly-once without trusting Kafka's committed offsets (those are committed too, after each Delta
commit, only so lag shows up in the usual Kafka tools).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import gc
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from lakeward.core import metrics
from lakeward.core.broker import Admin, SchemaReader, consumer, producer, start_client
from lakeward.core.config import BrokerConfig, LakeConfig
from lakeward.core.errors import TerminalError
from lakeward.core.events import parse_table_topic
from lakeward.core.retry import Backoff, is_retriable
from lakeward.core.sink import Sink, SinkStatus, TableStatus
from lakeward.sinks.delta.buffer import DeadLetter
from lakeward.sinks.delta.config import DeltaSinkConfig
from lakeward.sinks.delta.fetch import as_fetched
from lakeward.sinks.delta.lake import LakeTable
from lakeward.sinks.delta.store import check_lake, table_uri
from lakeward.sinks.delta.table import PartitionWriter, iso

log = logging.getLogger(__name__)

METADATA_MAX_AGE_MS = 3000
"""How often the consumer refreshes topic metadata: a new table topic is picked up within this."""
REVOKE_WAIT_S = 20.0
"""How long a revoked partition's commit in flight may take before the rebalance goes on without it."""
OPEN_BACKOFF_S = (0.5, 30.0)
"""First and longest wait between two attempts to read a table's Delta log on assignment."""
POLL_MAX_S = 0.5
POLL_BUSY_S = 0.02
METRICS_INTERVAL_S = 1.0
"""How often the loop updates the consumer lag and stopped-table metrics (and the `tables` readiness)."""


@contextlib.contextmanager
def collections_paused() -> Iterator[None]:
    """No cyclic garbage collection while a fetch is materialised and buffered.

    aiokafka turns a fetch into one record object per message, all alive until the writers have
    buffered them; the collector would scan them again and again (a fifth of the sink's CPU,
    measured). They are freed by reference counting right after, and the collection that runs once
    the collector is enabled again finds the young generation nearly empty."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def topic_pattern(prefix: str, sources: list[str], tables: list[str]) -> str:
    """`^<prefix>\\.(<src>|...)\\.<schema>.<table>$` with the table globs folded in, so unselected
    tables are never even assigned (and schema/state topics `__*` never match)."""
    globs = "|".join(fnmatch.translate(g) for g in tables)  # each ends with \Z
    srcs = "|".join(re.escape(s) for s in sources)
    return rf"^{re.escape(prefix)}\.(?:{srcs})\.(?!__)(?=[^.]+\..+\Z)(?:{globs})"


class DeadLetters:
    """The dead-letter topic of a sink: poison events with why and where they came from.

    Headers: the event's own (position, schema id) plus lakeward.dlq.reason, .table, .topic,
    .partition, .offset and .sink. A letter is acknowledged before the Delta commit that moves past
    its offset, so none is lost; a crash between the two sends it again (same topic/partition/offset).
    """

    def __init__(self, broker: BrokerConfig, topic: str, sink: str):
        self.broker = broker
        self.topic = topic
        self.sink = sink
        self._producer: Any = None
        self._lock = asyncio.Lock()

    async def _start(self) -> Any:
        async with self._lock:
            if self._producer is None:
                p = producer(self.broker)
                await start_client(p, self.broker)
                try:
                    async with Admin(self.broker) as admin:
                        await admin.ensure_topic(self.topic, compact=False)
                except BaseException:
                    await p.stop()
                    raise
                self._producer = p
        return self._producer

    async def send(self, writer: PartitionWriter, letters: list[DeadLetter]) -> None:
        p = await self._start()
        futures = []
        for d in letters:
            headers = [*d.headers, ("lakeward.dlq.reason", d.reason.encode()), ("lakeward.dlq.table", writer.qualified.encode()),
                       ("lakeward.dlq.topic", writer.tp.topic.encode()), ("lakeward.dlq.partition", str(writer.tp.partition).encode()),
                       ("lakeward.dlq.offset", str(d.offset).encode()), ("lakeward.dlq.sink", self.sink.encode())]
            futures.append(await p.send(self.topic, key=d.key, value=d.value, headers=headers))
        await asyncio.gather(*futures)

    async def close(self) -> None:
        if self._producer is not None:
            p, self._producer = self._producer, None
            await p.stop()


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, sink: DeltaSink):
        self._sink = sink

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._sink._revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._sink._assigned(assigned)


class DeltaSink(Sink):
    config: DeltaSinkConfig

    def __init__(self, config: DeltaSinkConfig, *, broker: BrokerConfig, lake: LakeConfig):
        super().__init__(config, broker=broker, lake=lake)
        self.group_id = config.group_id or f"lakeward.{config.name}"
        self.pattern = topic_pattern(broker.topic_prefix, list(config.sources), list(config.tables))
        self._consumer: Any = None
        self._schemas = SchemaReader(broker)
        self._writers: dict[TopicPartition, PartitionWriter] = {}
        self._lakes: dict[TopicPartition, LakeTable] = {}
        self._paused: set[TopicPartition] = set()
        self._ignored: set[TopicPartition] = set()
        self._reopen: dict[TopicPartition, tuple[PartitionWriter, float, Backoff]] = {}
        """Assigned table partitions whose Delta table could not be read yet: (writer, when to retry, backoff)."""
        self._commits: set[asyncio.Task] = set()
        self._started_at: float | None = None
        self._lag_labels: set[tuple[str, str, str]] = set()
        self._counted_errors: dict[TopicPartition, Any] = {}
        """The error of each stopped table already counted in lakeward_sink_table_errors_total."""
        self._dead_letters = DeadLetters(broker, config.dead_letter_topic, config.name) if config.dead_letter_topic else None

    # --- selection ------------------------------------------------------------------------------

    def selects(self, topic: str) -> tuple[str, str, str] | None:
        parsed = parse_table_topic(self.broker.topic_prefix, topic)
        if parsed is None:
            return None
        source, schema, table = parsed
        if source not in self.config.sources:
            return None
        if not any(fnmatch.fnmatchcase(f"{schema}.{table}", g) for g in self.config.tables):
            return None
        return parsed

    # --- Feed (called by writers) ---------------------------------------------------------------

    def seek(self, tp: TopicPartition, offset: int | None) -> None:
        c = self._consumer
        if c is None or tp not in c.assignment():
            return
        # Synchronous on purpose (records fetched after this call come from the new position):
        # offset 0 before the log start is reset to the earliest offset (auto_offset_reset).
        c.seek(tp, 0 if offset is None else offset)

    def committed(self, tp: TopicPartition, next_offset: int) -> None:
        """After a Delta commit: commit the Kafka offset as well, for lag monitoring only."""
        c = self._consumer
        if c is None:
            return

        async def commit() -> None:
            try:
                await c.commit({tp: next_offset})
            except Exception as e:  # noqa: BLE001 — not assigned any more, rebalancing, stopped ...: harmless, monitoring only
                log.debug("Kafka offset commit for %s failed: %s", tp, e)

        task = asyncio.create_task(commit())
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)

    # --- rebalancing ----------------------------------------------------------------------------

    async def _revoked(self, revoked: list[TopicPartition]) -> None:
        writers = [w for tp in revoked if (w := self._writers.pop(tp, None)) is not None]
        await asyncio.gather(*(w.revoke(REVOKE_WAIT_S) for w in writers))
        for w in writers:
            if w.flush_task is not None:  # still writing: its LakeTable must not be shared
                self._lakes.pop(w.tp, None)
        for tp in revoked:
            self._paused.discard(tp)
            self._ignored.discard(tp)
            if self._reopen.pop(tp, None) is not None:
                self._lakes.pop(tp, None)  # a retry of its read may still run in a thread: never share that LakeTable
        if writers:
            log.info("revoked %d table partition(s)", len(writers))

    async def _assigned(self, assigned: list[TopicPartition]) -> None:
        """Open a writer per new table partition and set its read position: all or nothing.

        The assignment can change while the tables are read (a source creating topics makes the
        pattern subscription rejoin the group): a partition that is no longer assigned when its
        table has been read is left alone (the next assignment, which always follows, resumes it),
        and everything after the last await runs without yielding, so no writer is ever registered
        without its seek. A table that cannot be read yet waits paused, retried with backoff from
        the loop (`_retry_opens`); it never consumes before its position is set.
        """
        new = []
        for tp in assigned:
            if tp in self._writers or tp in self._reopen:
                continue
            parsed = self.selects(tp.topic)
            if parsed is None:
                self._ignored.add(tp)
                continue
            new.append(self._writer(tp, *parsed))
        results = await asyncio.gather(*(self._open(w) for w in new))
        ends = await self._end_offsets([w.tp for w, (ok, at) in zip(new, results, strict=True) if ok and at is not None])
        # No await from here on: the assignment checked below is the one the seeks go to.
        current = self._consumer.assignment()
        placed = []
        for w, (ok, resume_at) in zip(new, results, strict=True):
            if w.tp not in current:
                log.info("%s: partition %s was revoked while its Delta table was read; the next assignment resumes it",
                         w.qualified, w.tp)
                continue
            if ok is None:  # the table could not be read yet: paused, retried from the loop
                backoff = Backoff(initial=OPEN_BACKOFF_S[0], maximum=OPEN_BACKOFF_S[1])
                self._reopen[w.tp] = (w, time.monotonic() + backoff.next(), backoff)
                self._consumer.pause(w.tp)
                self._paused.add(w.tp)
                continue
            self._place(w, ok, resume_at, ends)
            placed.append(w)
        ignored = [tp for tp in assigned if tp in self._ignored and tp in current]
        if ignored:
            self._consumer.pause(*ignored)
        if placed:
            log.info("assigned %d table partition(s): %s", len(placed), ", ".join(sorted(w.qualified for w in placed)))

    def _writer(self, tp: TopicPartition, source: str, schema: str, table: str) -> PartitionWriter:
        lake = self._lakes.get(tp)
        if lake is None:
            lake = self._lakes[tp] = LakeTable(table_uri(self.lake, source, schema, table), self.lake.storage_options, tp.topic,
                                               tp.partition, f"{source}.{schema}.{table}", self.config.name,
                                               properties={"delta.checkpointInterval": str(self.config.checkpoint_interval)})
        w = PartitionWriter(tp, source=source, schema=schema, table=table, mode=self.config.mode, lake=lake, schemas=self._schemas,
                        feed=self, batch_rows=self.config.batch_rows, batch_bytes=self.config.batch_bytes,
                        batch_interval_s=self.config.batch_interval_s, dead_letters=self._dead_letters)
        return w

    def _place(self, w: PartitionWriter, ok: bool, resume_at: int | None, ends: dict[TopicPartition, int]) -> None:
        """Register an opened writer and seek its partition (synchronous: call it without awaiting
        in between the assignment check and this)."""
        self._writers[w.tp] = w
        if ok and resume_at is not None and w.tp in ends and resume_at > ends[w.tp]:
            # Seeking there would reset to the beginning and skip everything below the txn.
            w.stop(TerminalError(
                f"table {w.qualified}: the Delta table has applied offsets up to {resume_at - 1} of {w.tp.topic} partition "
                f"{w.tp.partition}, but the partition ends at {ends[w.tp]}: the topic was recreated. Drop the lake table to "
                "rebuild it from the topic; stopped this table"))
            ok = False
        if not ok:
            return  # stopped with an error: wants_pause pauses it
        # Offset 0 before the log start is reset to the earliest offset (auto_offset_reset="earliest").
        self._consumer.seek(w.tp, 0 if resume_at is None else resume_at)

    async def _end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        if not tps:
            return {}
        try:
            return await self._consumer.end_offsets(tps)
        except Exception as e:  # noqa: BLE001 — only a safety check (and the partitions may be gone meanwhile): go on without it
            log.warning("could not read the end offsets of %d partition(s): %s", len(tps), e)
            return {}

    async def _open(self, w: PartitionWriter, attempt: int = 1) -> tuple[bool | None, int | None]:
        """(True, offset to resume at) once read; (False, None) when retrying cannot help (the writer
        is stopped with the error); (None, None) when it failed but may work later."""
        try:
            return True, await w.open()
        except Exception as e:  # noqa: BLE001 — every error is classified right below (is_retriable)
            what = f"table {w.qualified}: cannot read the Delta table at {w.lake.uri} ({e.__class__.__name__}: {e})"
            if not is_retriable(e):
                w.stop(e if isinstance(e, TerminalError) else TerminalError(f"{what}; retrying cannot help: stopped this table"))
                return False, None
            w.retrying = f"opening the Delta table: {e.__class__.__name__}: {e}"
            log.warning("%s; retrying (attempt %d)", what, attempt)
            return None, None

    async def _retry_opens(self) -> None:
        """Open the tables whose first read failed, when their backoff is over (from the loop)."""
        now = time.monotonic()
        due = [(w, b) for w, at, b in list(self._reopen.values()) if at <= now]
        if not due:
            return
        results = await asyncio.gather(*(self._open(w, b.attempt + 1) for w, b in due))
        ends = await self._end_offsets([w.tp for (w, _), (ok, at) in zip(due, results, strict=True) if ok and at is not None])
        # No await from here on (see _assigned).
        current = self._consumer.assignment()
        for (w, backoff), (ok, resume_at) in zip(due, results, strict=True):
            entry = self._reopen.get(w.tp)
            if entry is None or entry[0] is not w or w.tp not in current:
                continue  # revoked meanwhile
            if ok is None:
                self._reopen[w.tp] = (w, time.monotonic() + backoff.next(), backoff)
                continue
            del self._reopen[w.tp]
            w.retrying = None
            self._place(w, ok, resume_at, ends)
            log.info("assigned table partition %s after %d failed read(s)", w.qualified, backoff.attempt)

    # --- the loop -------------------------------------------------------------------------------

    def _sync_pauses(self) -> None:
        c = self._consumer
        assigned = c.assignment()
        want = {tp for tp, w in self._writers.items() if w.wants_pause and tp in assigned}
        want |= {tp for tp in self._reopen if tp in assigned}  # not opened yet: no position to read from
        pause = want - self._paused
        resume = (self._paused - want) & assigned
        if pause:
            c.pause(*pause)
        if resume:
            c.resume(*resume)
        self._paused = want

    async def run(self, stop: asyncio.Event) -> None:
        # A missing bucket or rejected credentials stop the sink here with the fix, instead of every
        # table retrying its writes; an unreachable endpoint is retried by the runner.
        await asyncio.to_thread(check_lake, self.lake)
        self._consumer = consumer(
            self.broker,
            group_id=self.group_id,
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
            client_id=f"lakeward-{self.config.name}",
            value_deserializer=as_fetched,  # records as fetched, not ConsumerRecords (fetch.py)
        )
        await start_client(self._consumer, self.broker)
        health = metrics.HEALTH.worker("sink", self.config.name)
        health.ok("broker")
        health.ok("tables")
        self._started_at = time.time()
        log.info("sink %s: group %s, topics matching %s, lake %s, mode %s", self.config.name, self.group_id, self.pattern,
                 self.lake.uri, self.config.mode)
        try:
            self._consumer.subscribe(pattern=self.pattern, listener=_Rebalance(self))
            async with metrics.background(
                metrics.watch(health, "broker", self._consumer.topics, what=f"broker at {self.broker.bootstrap_servers}"),
            ):
                await self._loop(stop)
            # final flush of everything buffered
            await asyncio.gather(*(w.drain() for w in list(self._writers.values())))
            if self._commits:
                await asyncio.wait(list(self._commits), timeout=5)
        finally:
            await self._close_writers()
            c, self._consumer = self._consumer, None
            await c.stop()
            if self._dead_letters is not None:
                await self._dead_letters.close()
            self._update_metrics()  # no tables any more: drops their lag series
            log.info("sink %s stopped", self.config.name)

    async def _close_writers(self) -> None:
        """After the loop ended (normally or not): no writer may outlive run() or share its table."""
        writers = list(self._writers.values())
        await asyncio.gather(*(w.revoke(REVOKE_WAIT_S) for w in writers))
        for w in writers:
            if w.flush_task is not None:
                self._lakes.pop(w.tp, None)
        self._writers.clear()
        self._reopen.clear()
        self._paused.clear()

    async def _loop(self, stop: asyncio.Event) -> None:
        last_metrics = 0.0
        while not stop.is_set():
            if self._reopen:
                await self._retry_opens()
            for w in list(self._writers.values()):
                if w.backlog is not None and w.flush_task is None:
                    records, epoch = w.backlog
                    w.backlog = None
                    await w.ingest(records, epoch)
            now = time.monotonic()
            waits = [d for w in self._writers.values() if (d := w.next_due(now)) is not None]
            if any(w.flush_task is not None for w in self._writers.values()):
                waits.append(POLL_BUSY_S)  # pick up its backlog (or its next batch) soon after it is done
            timeout = min([POLL_MAX_S, *waits])
            # A partition paused for a flush that has ended since is resumed before the wait: else
            # the fetch waits out its whole timeout with nothing it may fetch (0.5 s per batch).
            self._sync_pauses()
            with collections_paused():
                await self._fetch(max(1, int(timeout * 1000)))
            now = time.monotonic()
            for w in list(self._writers.values()):
                if w.due(now):
                    w.start_flush()
            self._sync_pauses()
            if now - last_metrics >= METRICS_INTERVAL_S:
                last_metrics = now
                self._update_metrics()

    async def _fetch(self, wait_ms: int) -> None:
        """Fetch what the broker has (waiting up to `wait_ms`) and hand it to the writers."""
        fetched = await self._consumer.getmany(timeout_ms=wait_ms)
        # Bind the records to the writer (and its epoch) that owned the partition when they were
        # fetched: a rebalance or seek during an await below must void them, not feed a new writer.
        owned = [(w, w.epoch, records) for tp, records in fetched.items() if records and (w := self._writers.get(tp)) is not None]
        for w, epoch, records in owned:
            if w.backlog is not None:  # fetched before the pause took effect: queue behind the backlog
                if epoch == w.epoch and w.live:
                    w.backlog = (w.backlog[0] + records, w.backlog[1])
            else:
                await w.ingest(records, epoch)

    def _update_metrics(self) -> None:
        """Consumer lag per partition (the broker's high watermark from the last fetch - the writer's
        next offset: no request), stopped tables and their errors, and the `tables` readiness check."""
        name = self.config.name
        c = self._consumer
        assigned = c.assignment() if c is not None else set()
        lag_labels = set()
        stopped = []
        for tp, w in self._writers.items():
            if w.error is not None:
                stopped.append(w)
                if self._counted_errors.get(tp) is not w.error:
                    self._counted_errors[tp] = w.error
                    metrics.SINK_TABLE_ERRORS.labels(name, w.qualified, type(w.error).__name__).inc()
            hw = c.highwater(tp) if tp in assigned else None
            if hw is not None:
                labels = (name, w.qualified, str(tp.partition))
                metrics.SINK_CONSUMER_LAG.labels(*labels).set(max(0, hw - w.next_offset))
                lag_labels.add(labels)
        for labels in self._lag_labels - lag_labels:
            metrics.SINK_CONSUMER_LAG.remove(*labels)  # revoked: another worker reports it now
        self._lag_labels = lag_labels
        for tp in [tp for tp in self._counted_errors if tp not in self._writers]:
            del self._counted_errors[tp]
        metrics.SINK_ASSIGNED_TABLES.labels(name).set(len(self._writers))
        metrics.SINK_STOPPED_TABLES.labels(name).set(len(stopped))
        health = metrics.HEALTH.worker("sink", name)
        if stopped and len(stopped) == len(self._writers):
            health.problem("tables", f"all {len(stopped)} assigned table(s) stopped on errors; first: {stopped[0].error}")
        else:
            health.ok("tables")

    # --- status ---------------------------------------------------------------------------------

    async def status(self) -> SinkStatus:
        """Per table: Delta version, last commit, committed offset (the txn), lag, last position, errors.

        While `run` is going this is the live state of the tables this worker owns. Otherwise (e.g.
        `lakeward status` in another process) it is read from the lake and the broker.
        """
        c = self._consumer
        if c is None:
            tables = await self._offline_status()
        else:
            tables = []
            for tp, w in sorted([*self._writers.items(), *((tp, e[0]) for tp, e in self._reopen.items())], key=lambda x: x[0]):
                st = w.status()
                if tp in c.assignment():
                    try:
                        hw = c.highwater(tp)
                        if hw is not None:
                            async with asyncio.timeout(1.0):
                                position = await c.position(tp)
                            st.lag = max(0, hw - position)
                            st.lake_lag = max(0, hw - (0 if w.committed_offset is None else w.committed_offset + 1))
                    except (TimeoutError, KafkaError, AssertionError):
                        pass
                tables.append(st)
        return SinkStatus(sink=self.config.name, type="delta", group_id=self.group_id, mode=self.config.mode, lake=self.lake.uri,
                          running=c is not None, tables=tables)

    async def _selected_ends(self) -> dict[TopicPartition, int]:
        """End offset of every partition of the topics this sink selects, as of now."""
        c = consumer(self.broker, client_id=f"lakeward-{self.config.name}-status")
        await start_client(c, self.broker)
        try:
            pattern = re.compile(self.pattern)
            tps = []
            for topic in sorted(await c.topics()):
                if pattern.match(topic) and self.selects(topic):
                    tps += [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or {0})]
            return await c.end_offsets(tps) if tps else {}
        finally:
            await c.stop()

    async def wait_caught_up(self, stop: asyncio.Event, poll_s: float = 0.5,
                             progress: Callable[[int, int], None] | None = None) -> None:
        """Return once every selected table has written all its topic held when this was called
        (`lakeward replay`); raise the error of a table that stopped instead. `progress` is called
        with (events written, events to write) at every poll."""
        ends = await self._selected_ends()
        while not stop.is_set():
            pending = written = 0
            for tp, end in ends.items():
                w = self._writers.get(tp)
                if w is not None and w.stopped:
                    raise w.failure  # type: ignore[misc]
                if w is None or not w.caught_up(end):
                    pending += 1
                if w is not None and w.committed_offset is not None:
                    written += min(end, w.committed_offset + 1)
            if progress is not None:
                progress(written, sum(ends.values()))
            if not pending:
                return
            await asyncio.sleep(poll_s)

    async def _offline_status(self) -> list[TableStatus]:
        await asyncio.to_thread(check_lake, self.lake)  # one clear storage error rather than one per table
        ends = await self._selected_ends()
        tables = []
        for tp in ends:
            source, schema, table = self.selects(tp.topic)  # type: ignore[misc]
            lake = LakeTable(table_uri(self.lake, source, schema, table), self.lake.storage_options, tp.topic, tp.partition,
                             f"{source}.{schema}.{table}", self.config.name)
            try:
                state = await asyncio.to_thread(lake.load)
                error = None
            except Exception as e:  # noqa: BLE001 — unreadable table: report it, keep going
                state, error = None, f"cannot read the Delta table at {lake.uri}: {e}"
            committed = state.txn if state else None
            tables.append(TableStatus(
                table=lake.table,
                topic=tp.topic,
                partition=tp.partition,
                uri=lake.uri,
                mode=self.config.mode,
                state="not running" if state is None or state.exists else "no table yet",
                version=state.version if state else None,
                last_commit=iso(state.committed_at) if state else None,
                committed_offset=committed,
                last_position=state.position.hex() if state and state.position else None,
                lag=max(0, ends[tp] - (0 if committed is None else committed + 1)),
                error=error,
            ))
        return tables
