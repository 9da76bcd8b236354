"""Talking to the Kafka-protocol broker (Redpanda, Apache Kafka) through aiokafka.

Small helpers shared by sources, sinks and the CLI: client settings from the config, topic
creation, and the schema topic that carries each table's exact column types.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from lakeward.core.config import BrokerConfig
from lakeward.core.errors import ConnectionFailed, TransientError
from lakeward.core.events import TableSchema, schema_topic
from lakeward.core.retry import Backoff, retry

log = logging.getLogger(__name__)


def client_kwargs(cfg: BrokerConfig) -> dict[str, Any]:
    kw: dict[str, Any] = {"bootstrap_servers": cfg.bootstrap_servers, "security_protocol": cfg.security_protocol}
    if cfg.sasl_mechanism:
        kw.update(sasl_mechanism=cfg.sasl_mechanism, sasl_plain_username=cfg.sasl_username, sasl_plain_password=cfg.sasl_password)
    return kw


def unreachable(cfg: BrokerConfig, exc: BaseException) -> ConnectionFailed:
    return ConnectionFailed(
        f"cannot reach the broker at {cfg.bootstrap_servers} ({exc.__class__.__name__}: {exc}); "
        "check broker.bootstrap_servers and that the broker is running"
    )


def producer(cfg: BrokerConfig, **overrides: Any) -> AIOKafkaProducer:
    """An idempotent producer that waits for every in-sync replica (acks=all) before a send counts."""
    kw: dict[str, Any] = {
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "max_batch_size": 1 << 20,
        "max_request_size": 16 << 20,
        # aiokafka compresses lz4 at level 9 (LZ4-HC): up to a fifth of a source's CPU. zstd (level 3)
        # costs less and makes batches ~1.7x smaller (docs/performance.md); Kafka clients read it
        # since 2.1, and Redpanda does.
        "compression_type": "zstd",
        "request_timeout_ms": 30000,
    }
    kw.update(overrides)
    return AIOKafkaProducer(**client_kwargs(cfg), **kw)


def consumer(cfg: BrokerConfig, **overrides: Any) -> AIOKafkaConsumer:
    # Small fetches: aiokafka decompresses and materialises a whole fetch response at once, and holds
    # one ahead. A sink replaying 1M events peaked at 829 MB RSS with 8 MiB per partition, 425 MB with
    # 256 KiB, at the same speed (benchmarks/sink_memory.py, docs/performance.md). A batch larger than
    # the limit still comes whole (Kafka returns at least one batch).
    kw: dict[str, Any] = {"enable_auto_commit": False, "auto_offset_reset": "earliest", "isolation_level": "read_committed",
                          "max_partition_fetch_bytes": 256 << 10, "fetch_max_bytes": 16 << 20}
    kw.update(overrides)
    return AIOKafkaConsumer(**client_kwargs(cfg), **kw)


async def start_client(client: Any, cfg: BrokerConfig) -> None:
    """Start an aiokafka client; one that cannot reach the broker is closed again (it holds tasks and
    sockets from the attempt) and the error says so."""
    try:
        await client.start()
    except (KafkaConnectionError, OSError) as e:
        await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())
        raise unreachable(cfg, e) from e


class Admin:
    """Creates topics once; remembers which exist so the hot path asks the broker only for new ones."""

    def __init__(self, cfg: BrokerConfig):
        self.cfg = cfg
        self._client = AIOKafkaAdminClient(**client_kwargs(cfg))
        self._known: set[str] = set()

    async def __aenter__(self) -> Admin:
        await start_client(self._client, self.cfg)
        self._known = set(await self._client.list_topics())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._client.close()

    async def ensure_topic(self, name: str, *, compact: bool | None = None) -> None:
        if name in self._known:
            return
        policy = "compact" if compact else self.cfg.cleanup_policy if compact is None else "delete"
        # One partition per table: a Delta table has a single writer and TRUNCATE must stay in order.
        topic = NewTopic(name, num_partitions=1, replication_factor=self.cfg.replication_factor,
                         topic_configs={"cleanup.policy": policy, "retention.ms": "-1", "max.message.bytes": str(16 << 20)})
        try:
            await self._client.create_topics([topic])
            log.info("created topic %s (cleanup.policy=%s)", name, policy)
        except TopicAlreadyExistsError:
            pass
        # Metadata for a new topic reaches every client a little later; wait until the producer sees it.
        self._known.add(name)

    async def topics(self) -> set[str]:
        return set(await self._client.list_topics())

    async def delete_topics(self, names: list[str]) -> None:
        if names:
            await self._client.delete_topics(names)
            self._known.difference_update(names)


class SchemaPublisher:
    """Publishes each table schema once to `<prefix>.<source>.__schemas` (compacted, key = schema id)."""

    def __init__(self, cfg: BrokerConfig, source: str, producer: AIOKafkaProducer, admin: Admin):
        self.topic = schema_topic(cfg.topic_prefix, source)
        self._producer = producer
        self._admin = admin
        self._published: set[str] = set()

    async def publish(self, schema: TableSchema) -> str:
        sid = schema.id
        if sid not in self._published:
            await self._admin.ensure_topic(self.topic, compact=True)
            await (await self._producer.send(self.topic, value=schema.to_json(), key=sid.encode()))
            self._published.add(sid)
        return sid


SCHEMA_READS = 20
"""Reads of the schema topic before a schema id an event names counts as unknown (0.25 s apart)."""


class _SchemaNotYet(TransientError):
    """The schema topic, read to its end, does not have the schema (yet)."""


class SchemaReader:
    """Reads schema topics into memory; reloads when an event names a schema it hasn't seen yet."""

    def __init__(self, cfg: BrokerConfig):
        self.cfg = cfg
        self._schemas: dict[str, TableSchema] = {}

    async def get(self, source: str, schema_id: str) -> TableSchema:
        """The schema with this id; KeyError only after the whole schema topic was read without it,
        TransientError when the topic could not be read."""
        if schema_id not in self._schemas:
            topic = schema_topic(self.cfg.topic_prefix, source)

            async def load() -> None:
                try:
                    records = await read_topic(self.cfg, topic)
                except KafkaError as e:
                    raise TransientError(f"cannot read schema topic {topic} at {self.cfg.bootstrap_servers}: {e}") from e
                for r in records:
                    self._schemas[r.key.decode()] = TableSchema.from_json(r.value)
                if schema_id not in self._schemas:
                    raise _SchemaNotYet(schema_id)

            # A source publishes a schema before the first event that names it; read again a few times
            # in case this reader's metadata lags behind.
            try:
                await retry(load, attempts=SCHEMA_READS, backoff=Backoff(initial=0.25, maximum=0.25))
            except _SchemaNotYet:
                raise KeyError(schema_id) from None
        return self._schemas[schema_id]


async def read_topic(cfg: BrokerConfig, topic: str) -> list[Any]:
    """Every record of partition 0 of a small topic (schemas, source state), up to its current end."""
    c = consumer(cfg, isolation_level="read_uncommitted")
    await start_client(c, cfg)
    try:
        if topic not in await c.topics():
            return []
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        # Explicit offsets: aiokafka's seek_to_beginning() after end_offsets() resolved to the end.
        start = (await c.beginning_offsets([tp]))[tp]
        end = (await c.end_offsets([tp]))[tp]
        c.seek(tp, start)
        records: list[Any] = []
        while await c.position(tp) < end:
            records.extend((await c.getmany(tp, timeout_ms=1000)).get(tp, []))
        return records
    finally:
        await c.stop()


class StateTopic:
    """A source's progress document in its compacted topic `<prefix>.<source>.__state`: one key, the
    newest value wins. In the broker, so a fresh worker on another machine finds it; a source writes
    it only once the broker acknowledged the events it vouches for."""

    def __init__(self, cfg: BrokerConfig, source: str, key: bytes):
        self.cfg = cfg
        self.name = f"{cfg.topic_prefix}.{source}.__state"
        self.key = key

    async def read(self) -> bytes | None:
        """The newest document, or None (never written, or cleared by a tombstone)."""
        value = None
        for r in await read_topic(self.cfg, self.name):
            if r.key == self.key:
                value = r.value
        return value

    async def write(self, producer: AIOKafkaProducer, value: bytes) -> None:
        """Returns once the broker acknowledged it (acks=all)."""
        await (await producer.send(self.name, key=self.key, value=value))


class BatchPublisher:
    """Appends events to per-topic record batches without a coroutine call per event.

    `append` is synchronous and cheap (the hot path of a source); full batches are handed to the
    producer by `send_full`, partly filled ones too by `send_open`, and `flush` sends the rest and
    waits until the broker acknowledged (acks=all) every event appended so far — only then may a
    source confirm its position.
    """

    MAX_UNACKED_BATCHES = 64

    def __init__(self, producer: AIOKafkaProducer, *, on_acked: Callable[[str, int], None] | None = None):
        self._producer = producer
        self._on_acked = on_acked
        """Called with (topic, number of events) per batch the broker acknowledged: metrics, per batch."""
        self._open: dict[str, Any] = {}
        self._full: list[tuple[str, Any]] = []
        self._unacked: list[asyncio.Future] = []
        self.appended = 0

    def append(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        """One event, stamped with the current time. Like `extend` it feeds aiokafka's record builder
        directly: the BatchBuilder.append wrapper (keyword call, serializer hook) was ~0.3 µs of a
        streamed event's ~7."""
        batch = self._open.get(topic)
        if batch is None:
            batch = self._open[topic] = self._producer.create_batch()
        if batch._builder.append(batch._relative_offset, None, key, value, headers) is None:
            batch.close()
            self._full.append((topic, batch))
            batch = self._open[topic] = self._producer.create_batch()
            if batch._builder.append(0, None, key, value, headers) is None:
                raise ValueError(f"event for topic {topic} is larger than the producer's max_batch_size")
        batch._relative_offset += 1
        self.appended += 1

    def extend(self, topic: str, events: Iterable[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]], timestamp_ms: int) -> None:
        """`append` for many events of one topic, all with the timestamp `timestamp_ms`: a snapshot's
        hot path. It feeds aiokafka's record builder directly (aiokafka 0.14: BatchBuilder._builder,
        ._relative_offset): its BatchBuilder.append wrapper and a clock read per event cost about a
        sixth of a snapshot's CPU."""
        batch = self._open.get(topic)
        if batch is None:
            batch = self._open[topic] = self._producer.create_batch()
        builder, offset, n = batch._builder, batch._relative_offset, 0
        try:
            for key, value, headers in events:
                if builder.append(offset, timestamp_ms, key, value, headers) is None:
                    batch._relative_offset = offset
                    batch.close()
                    self._full.append((topic, batch))
                    batch = self._open[topic] = self._producer.create_batch()
                    builder, offset = batch._builder, 0
                    if builder.append(offset, timestamp_ms, key, value, headers) is None:
                        raise ValueError(f"event for topic {topic} is larger than the producer's max_batch_size")
                offset += 1
                n += 1
        finally:
            batch._relative_offset = offset
            self.appended += n

    @property
    def has_full(self) -> bool:
        return bool(self._full)

    async def send_full(self) -> None:
        full, self._full = self._full, []
        for topic, batch in full:
            n = batch.record_count()
            fut = await self._producer.send_batch(batch, topic, partition=0)
            if self._on_acked is not None:
                fut.add_done_callback(functools.partial(self._acked, topic, n))
            self._unacked.append(fut)
        if len(self._unacked) > self.MAX_UNACKED_BATCHES:
            # Bound memory: wait for the older half before reading more changes.
            half = len(self._unacked) // 2
            await asyncio.gather(*self._unacked[:half])
            del self._unacked[:half]

    def _acked(self, topic: str, n: int, fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._on_acked(topic, n)  # type: ignore[misc]

    async def send_open(self) -> None:
        """Hand every batch to the producer now, full or not, without waiting for acknowledgements:
        what a source does when it caught up, so events don't wait for a full batch (latency)."""
        for topic, batch in self._open.items():
            if batch.record_count():
                self._full.append((topic, batch))
        self._open.clear()
        await self.send_full()

    async def flush(self) -> None:
        """Send everything appended and wait for the broker's acknowledgement of all of it."""
        await self.send_open()
        unacked, self._unacked = self._unacked, []
        await asyncio.gather(*unacked)
