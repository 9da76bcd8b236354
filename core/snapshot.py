"""What both sources share about snapshots: settings, on-demand requests and per-table progress.

Initial snapshots are read in chunks by several connections at one consistent point; their
progress (chunks done, acknowledged by the broker) is kept in the source's state document, so a
killed worker resumes from the first unfinished chunk. An *incremental* snapshot re-reads tables
while the source keeps streaming (watermarks, see docs/architecture.md, Snapshots): `lakeward
snapshot` asks for one through the source's signal topic `<prefix>.<source>.__signals`, and the
source keeps each table's progress as an `IncrementalJob` in its state document until it is done.

The signal topic is a Kafka topic rather than a table in the source database: the CLI needs no
write access to the database, and both sources read it the same way.
"""

from __future__ import annotations

import fnmatch
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiokafka import TopicPartition

from lakeward.core import broker as kafka
from lakeward.core.config import BrokerConfig
from lakeward.core.errors import ConfigError

SIGNALS_SUFFIX = "__signals"
MAX_DEFAULT_PARALLELISM = 4


def default_parallelism() -> int:
    """Connections a snapshot reads with when the config does not say: the machine's cores, at most 4
    (beyond that the source's own encoding, not the database, is the limit)."""
    return max(1, min(MAX_DEFAULT_PARALLELISM, os.cpu_count() or 1))


def signal_topic(prefix: str, source: str) -> str:
    return f"{prefix}.{source}.{SIGNALS_SUFFIX}"


@dataclass(frozen=True)
class SnapshotRequest:
    """`lakeward snapshot --source S --table T [--where SQL]`: re-read tables while streaming."""

    id: str
    tables: tuple[str, ...]
    """`schema.table` (PostgreSQL) or `database.table` (MySQL) names, as the source captures them."""
    where: str | None = None
    """A SQL condition on the table's columns: only matching rows are re-read (and nothing is reset)."""
    requested_at: str = ""

    def to_json(self) -> bytes:
        return orjson.dumps({"id": self.id, "tables": list(self.tables), "where": self.where, "requested_at": self.requested_at})

    @classmethod
    def from_json(cls, value: bytes) -> SnapshotRequest:
        d = orjson.loads(value)
        return cls(str(d["id"]), tuple(d["tables"]), d.get("where"), d.get("requested_at", ""))


JobReason = Literal["request", "resume", "new_table", "reread"]


@dataclass
class IncrementalJob:
    """One table's incremental snapshot, kept in the source's state document until it is done."""

    id: str
    """The request's id (several tables of one request share it)."""
    table: str
    reason: JobReason = "request"
    """`request` (lakeward snapshot), `resume` (the rest of an initial snapshot whose consistent point is
    gone), `new_table`, `reread` (a schema change rewrote the rows without row events)."""
    where: str | None = None
    after: list[Any] | None = None
    """Primary-key values of the last row of the last chunk published and acknowledged; None before the
    first chunk. The next chunk starts after it."""
    rows: int = 0
    """Rows published so far (after dropping those a streamed change superseded)."""
    chunks: int = 0
    """Chunks published so far."""
    until: list[Any] | None = None
    """Primary-key values of the table's last row (in key order, within `where`) when the job read its
    first chunk; None before it. The chunks stop there: a row inserted later is streamed anyway, and
    a job under a steady load of inserts at the end of the key range would otherwise chase them and
    not end (Debezium bounds its chunks the same way)."""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "table": self.table, "reason": self.reason, "where": self.where, "after": self.after,
                "rows": self.rows, "chunks": self.chunks, "until": self.until}

    def progress(self, estimate: int | None, error: str | None = None) -> TableProgress:
        """The job as `lakeward status` shows it (rows and chunks acknowledged so far)."""
        extra: dict[str, Any] = {"id": self.id, "reason": self.reason, "where": self.where}
        if error:
            extra["error"] = error
        return TableProgress(self.table, "incremental", rows=self.rows, estimate=estimate, chunks_done=self.chunks, extra=extra)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IncrementalJob:
        return cls(str(d["id"]), d["table"], d.get("reason", "request"), d.get("where"), d.get("after"), int(d.get("rows", 0)),
                   int(d.get("chunks", 0)), d.get("until"))


@dataclass
class TableProgress:
    """A table's snapshot as `lakeward status` and the metrics show it."""

    table: str
    kind: Literal["initial", "incremental"]
    rows: int = 0
    """Rows read and published so far."""
    estimate: int | None = None
    """The database's row estimate (pg_class.reltuples, information_schema.tables.table_rows)."""
    chunks_done: int = 0
    chunks: int | None = None
    """Chunks planned, when known up front."""
    done: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"table": self.table, "kind": self.kind, "rows": self.rows, "estimate": self.estimate,
               "chunks_done": self.chunks_done, "chunks": self.chunks, "done": self.done}
        out.update(self.extra)
        return out


def new_request(tables: list[str], where: str | None) -> SnapshotRequest:
    return SnapshotRequest(uuid.uuid4().hex[:12], tuple(tables), where or None, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def request_tables(source: Any, tables: list[str]) -> list[str]:
    """The tables of a `lakeward snapshot` request, checked against the source's config (`source`: its
    config entry): each names one table as `schema.table` (PostgreSQL) or `database.table` (MySQL)
    and matches the source's `tables:` globs. Duplicates are dropped; ConfigError says what is wrong.

    Whether the table exists and has a primary key only the running source can tell: it logs an
    error naming the table and skips it."""
    form = "database.table" if getattr(source, "type", "") == "mysql" else "schema.table"
    if not tables:
        raise ConfigError(f"name the tables to snapshot with --table {form} (repeatable); source {source.name} captures "
                          f"{', '.join(source.tables)}")
    out: list[str] = []
    for name in tables:
        if any(ch in name for ch in "*?["):
            raise ConfigError(f"--table {name}: name one table as {form}, not a pattern")
        first, _, second = name.partition(".")
        if not first or not second:
            raise ConfigError(f"--table {name}: name the table as {form}")
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in source.tables):
            raise ConfigError(f"table {name} is not captured by source {source.name}: it matches none of its tables: "
                              f"{', '.join(source.tables)}")
        if name not in out:
            out.append(name)
    return out


async def send_request(broker: BrokerConfig, source: str, request: SnapshotRequest) -> None:
    """Write a request to the source's signal topic (created if needed); returns once acknowledged."""
    topic = signal_topic(broker.topic_prefix, source)
    async with kafka.Admin(broker) as admin:
        await admin.ensure_topic(topic, compact=False)
    producer = kafka.producer(broker)
    await kafka.start_client(producer, broker)
    try:
        await (await producer.send(topic, key=request.id.encode(), value=request.to_json()))
    finally:
        await producer.stop()


class SignalInbox:
    """A running source's reader of its signal topic: requests from an offset on.

    The source stores the offset after the last request it turned into jobs in its state document,
    together with the jobs, so a request is neither lost nor started twice across restarts."""

    def __init__(self, broker: BrokerConfig, source: str):
        self.broker = broker
        self.topic = signal_topic(broker.topic_prefix, source)
        self._tp = TopicPartition(self.topic, 0)
        self._consumer: Any = None

    async def start(self, admin: kafka.Admin, offset: int) -> None:
        await admin.ensure_topic(self.topic, compact=False)
        self._consumer = kafka.consumer(self.broker, isolation_level="read_uncommitted")
        await kafka.start_client(self._consumer, self.broker)
        self._consumer.assign([self._tp])
        self._consumer.seek(self._tp, offset)

    async def poll(self) -> list[tuple[int, SnapshotRequest | None]]:
        """New requests as (offset after it, request); None for a record that is not a request (logged by
        the caller, never fatal: a bad signal must not stop the capture)."""
        if self._consumer is None:
            return []
        out: list[tuple[int, SnapshotRequest | None]] = []
        for r in (await self._consumer.getmany(self._tp, timeout_ms=0)).get(self._tp, []):
            try:
                out.append((r.offset + 1, SnapshotRequest.from_json(r.value)))
            except (ValueError, KeyError, TypeError):
                out.append((r.offset + 1, None))
        return out

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
