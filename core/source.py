"""The source contract: capture one database into the broker's table topics.

A source publishes every change as an event (see lakeward.core.events) and tells its database a
position is done only after the broker acknowledged every event at or before it. After a crash it
may publish some events again; their positions let sinks drop the repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer

from lakeward.core import broker as kafka
from lakeward.core import metrics
from lakeward.core.config import BrokerConfig, PluginConfig
from lakeward.core.snapshot import TableProgress


@dataclass
class SourceStatus:
    """What `lakeward status` shows of a source (Source.status)."""

    source: str
    type: str
    """The source's `type:` (postgres, mysql)."""
    capture: str = ""
    """What holds the source's place in its database: `slot <name>` (PostgreSQL), `binlog, server_id <id>` (MySQL)."""
    exists: bool = False
    """Whether that place exists yet: the replication slot (PostgreSQL), a stored position (MySQL)."""
    confirmed: str | None = None
    """How far the capture is confirmed, after what the broker acknowledged: the slot's confirmed LSN
    (PostgreSQL), the binlog position `file:pos` streaming resumes at (MySQL)."""
    lag_bytes: int | None = None
    """WAL or binlog bytes written after `confirmed`."""
    active: bool | None = None
    """Whether a worker streams right now (PostgreSQL: the slot is in use; MySQL: in this process)."""
    snapshot: list[TableProgress] = field(default_factory=list)
    """Snapshots under way or left unfinished: the initial one's tables read in part, incremental jobs."""
    details: dict[str, Any] = field(default_factory=dict)
    """Facts only this type of source has (MySQL: GTID, binlog end, tables ...): `lakeward status --json`."""
    error: str | None = None
    """Why the status could not be read (nothing else is known then)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "type": self.type}
        if self.error is not None:
            out["error"] = self.error
            return out
        out.update(capture=self.capture, exists=self.exists, confirmed=self.confirmed, lag_bytes=self.lag_bytes, active=self.active,
                   snapshot=[t.to_dict() for t in self.snapshot])
        out.update(self.details)
        return out


@dataclass(frozen=True)
class BrokerSession:
    """A running source's broker clients (see Source.broker_session)."""

    producer: AIOKafkaProducer
    admin: kafka.Admin
    publisher: kafka.BatchPublisher
    """The events' way out: acknowledged batches are counted in the source's metrics."""
    schemas: kafka.SchemaPublisher


class Source(ABC):
    health_checks: tuple[str, ...] = ("database", "broker")
    """What /readyz waits for (core/metrics.py): the runner marks each pending when a run starts, and
    the source reports each as it connects — `database` (its connection works), `broker` (its
    producer is connected; re-checked in the background while running)."""

    def __init__(self, config: PluginConfig, *, broker: BrokerConfig):
        self.config = config
        self.broker = broker

    @abstractmethod
    async def run(self, stop: asyncio.Event) -> None:
        """Snapshot if needed, then stream until `stop` is set; return after draining in-flight work."""

    @abstractmethod
    async def check(self) -> None:
        """Verify the database is reachable and set up for CDC; raise a TerminalError saying what to fix."""

    @abstractmethod
    async def status(self) -> SourceStatus:
        """Position, lag and snapshot progress for `lakeward status`, read from the database and the state topic."""

    @contextlib.asynccontextmanager
    async def broker_session(self, *, compact_topics: Iterable[str], on_acked: Callable[[str, int], None],
                             database: str, poll_database: Callable[[], Awaitable[Any]]) -> AsyncIterator[BrokerSession]:
        """The producer (idempotent, acks=all), the admin client and the publishers of a running source,
        with the compacted topics it keeps its own records in (`compact_topics`) created. Meanwhile the
        `broker` health check follows the broker, and `database` (named `database` in problems) follows
        `poll_database` (which also feeds the lag gauge), every metrics.LAG_POLL_S."""
        health = metrics.HEALTH.worker("source", self.config.name)
        producer = kafka.producer(self.broker)
        await kafka.start_client(producer, self.broker)
        try:
            async with kafka.Admin(self.broker) as admin, metrics.background(
                metrics.watch(health, "broker", admin.topics, what=f"broker at {self.broker.bootstrap_servers}"),
                metrics.watch(health, "database", poll_database, what=database, interval_s=metrics.LAG_POLL_S),
            ):
                health.ok("broker")
                for topic in compact_topics:
                    await admin.ensure_topic(topic, compact=True)
                yield BrokerSession(producer, admin, kafka.BatchPublisher(producer, on_acked=on_acked),
                                    kafka.SchemaPublisher(self.broker, self.config.name, producer, admin))
        finally:
            await producer.stop()
