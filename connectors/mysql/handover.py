"""What the reader thread hands the asyncio side (source.py), and how.

Batches go through a bounded queue (backpressure: when the broker is slower, the thread blocks and
stops reading the binlog). A batch is a list of items:

  (topic, key, value, headers)   an event, ready for BatchPublisher.append (see events.py)
  Announce(info)                 publish this table schema and create the topic before its events
  History(entry)                 write this schema history entry before the events that follow
  Commit(resume, tables)         a transaction boundary: once everything before it is acknowledged,
                                 `resume` may be written to the state topic
  SnapshotBegin / ChunkDone / TableDone / SnapshotDone   snapshot bookkeeping for the state topic
  incremental.ChunkPublished / JobStopped                incremental snapshot progress (see incremental.py)
  Failed(exc), Finished          the thread's end
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lakeward.connectors.mysql.history import HistoryEntry, SchemaHistory
from lakeward.connectors.mysql.snapshot import BinlogPoint, ChunkProgress
from lakeward.connectors.mysql.tables import TableInfo
from lakeward.core import metrics

BATCH_ITEMS = 1000
"""Events per batch handed to the asyncio side (a transaction end hands over what it has when the
asyncio side is idle, so latency stays low without per-event handoffs)."""
QUEUE_BATCHES = 32
"""Batches in flight between the thread and the asyncio side; the bound is the backpressure."""


@dataclass(frozen=True)
class Announce:
    info: TableInfo


@dataclass(frozen=True)
class History:
    entry: HistoryEntry


Tables = dict[str, str]
"""`db.table` -> hex position of the table's last snapshot (or of its CREATE TABLE when it was created
while streaming; "" when it was never snapshotted): the tables established in the lake."""


@dataclass(frozen=True)
class Commit:
    resume: BinlogPoint
    tables: Tables


@dataclass(frozen=True)
class SnapshotBegin:
    point: BinlogPoint
    initial: bool


@dataclass(frozen=True)
class TableDone:
    table: str
    pos: str
    """Hex position of the snapshot."""


@dataclass(frozen=True)
class ChunkDone:
    table: str
    progress: ChunkProgress
    """The table's progress once everything before this item is acknowledged."""


@dataclass(frozen=True)
class SnapshotDone:
    tables: Tables


@dataclass(frozen=True)
class Failed:
    error: BaseException


class Finished:
    pass


FINISHED = Finished()


@dataclass
class Stats:
    """What the reader did since it started (`lakeward status` of a running source)."""

    rows_decoded: int = 0
    transactions: int = 0
    position: str = ""
    event_ts: float | None = 0.0
    """Binlog timestamp (Unix seconds) of the last rows event read (0: none yet); None once a heartbeat
    showed the reader at the binlog's end (for lakeward_source_lag_seconds)."""


class Stopped(Exception):
    """The source is stopping while the thread waits for room in the queue."""


class Established:
    """The tables established in the lake (see Tables), as the thread changes them."""

    def __init__(self, tables: Tables):
        self._tables: Tables = dict(tables)
        self._copy: Tables | None = None

    def __contains__(self, name: str) -> bool:
        return name in self._tables

    def names(self) -> list[str]:
        return sorted(self._tables)

    def now(self) -> Tables:
        """The established tables, as an immutable-by-convention copy shared until they change."""
        if self._copy is None:
            self._copy = dict(self._tables)
        return self._copy

    def set(self, name: str, pos: bytes | None) -> None:
        if pos is None:
            self._tables.pop(name, None)
        else:
            self._tables[name] = pos.hex()
        self._copy = None

    def snapshotted_since(self, name: str, pos: bytes) -> bool:
        """Whether the table was read (or created) after `pos`: a replayed DDL needs no new snapshot."""
        at = self._tables.get(name)
        return at is not None and at != "" and bytes.fromhex(at) > pos


class Handover:
    """The batch being filled and the queue it goes through; also the schema and history items that
    must precede the events that need them, and the events-read counters."""

    def __init__(self, wake: Callable[[], None], stop: threading.Event, history: SchemaHistory, source_metrics: metrics.SourceMetrics):
        self.queue: queue.Queue = queue.Queue(QUEUE_BATCHES)
        self.batch: list[Any] = []
        """The batch being filled: append to it directly on hot paths, then `full_check()`."""
        self._wake = wake
        self._stop = stop
        self._history = history
        self._metrics = source_metrics
        self._last_push = time.monotonic()
        self._announced: set[bytes] = set()
        self._closed = False

    def push(self) -> None:
        """Hand the batch over (blocks while the queue is full; Stopped when the source stops meanwhile)."""
        if not self.batch:
            return
        batch, self.batch = self.batch, []
        while True:
            try:
                self.queue.put(batch, timeout=0.2)
                break
            except queue.Full:
                if self._stop.is_set():
                    raise Stopped() from None
        self._last_push = time.monotonic()
        self._wake()

    def emit(self, item: Any) -> None:
        self.batch.append(item)
        self.full_check()

    def full_check(self) -> None:
        if len(self.batch) >= BATCH_ITEMS:
            self.push()

    def hand_over(self, events: list) -> None:
        """Hand a chunk reader's piece over as a batch of its own (after what is batched before it)."""
        self.push()
        self.batch = events
        self.push()

    def commit(self, resume: BinlogPoint, tables: Tables) -> None:
        self.batch.append(Commit(resume, tables))
        # Hand over at once when the asyncio side is idle (low latency); otherwise keep filling.
        if len(self.batch) >= BATCH_ITEMS or self.queue.empty() or time.monotonic() - self._last_push > 0.1:
            self.push()

    def announce(self, info: TableInfo) -> None:
        if info.schema_id not in self._announced:
            self._announced.add(info.schema_id)
            self.batch.append(Announce(info))

    def record(self, entry: HistoryEntry) -> None:
        if self._history.add(entry):
            self.batch.append(History(entry))

    def count(self, info: TableInfo, op: str, n: int) -> None:
        """lakeward_source_events_read_total, per rows event or snapshot chunk (Prometheus counters are thread-safe)."""
        if n:
            self._metrics.read(f"{info.db}.{info.table}", op).inc(n)

    def fail(self, error: BaseException) -> None:
        self.batch.append(Failed(error))
        try:
            self.push()
        except Stopped:
            pass

    def finish(self) -> None:
        """The reader is done: FINISHED goes last. The asyncio side drains the queue until it sees it,
        however long its own sends take (a FINISHED dropped after a short wait left it waiting for
        ever), unless it closed the handover: then nobody reads it any more."""
        while not self._closed:
            try:
                self.queue.put([FINISHED], timeout=0.2)
                break
            except queue.Full:
                self._wake()
        self._wake()

    def close(self) -> None:
        """The asyncio side is done with the queue (it stopped or failed): what is queued is dropped,
        and FINISHED no longer waits for room."""
        self._closed = True
        with contextlib.suppress(queue.Empty):
            while True:
                self.queue.get_nowait()
