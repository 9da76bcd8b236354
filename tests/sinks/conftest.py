"""Fixtures for the Delta sink tests: a real local Kafka broker (`make services`) and real Delta
tables under tmp_path. Every test gets its own topic prefix, so tests never see each other's topics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from lakeward.core.broker import (
    Admin,
    BatchPublisher,
    SchemaPublisher,
    producer,
    start_client,
)
from lakeward.core.config import BrokerConfig, LakeConfig
from lakeward.core.events import (
    POSITION_HEADER,
    SCHEMA_HEADER,
    Column,
    Position,
    TableSchema,
    envelope,
    table_topic,
)
from lakeward.sinks.delta.config import DeltaSinkConfig
from lakeward.sinks.delta.sink import DeltaSink
from lakeward.sinks.delta.store import table_uri

BOOTSTRAP = os.environ.get("LAKEWARD_TEST_BROKER", "127.0.0.1:9092")


def _broker_up() -> bool:
    host, port = BOOTSTRAP.split(":")
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
        return True
    return False


def ins(row: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"op": "c", "before": None, "after": row, **kw}


def read(row: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"op": "r", "before": None, "after": row, **kw}


def upd(row: dict[str, Any], before: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return {"op": "u", "before": before, "after": row, **kw}


def dele(before: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"op": "d", "before": before, "after": None, **kw}


def trunc(**kw: Any) -> dict[str, Any]:
    return {"op": "t", "before": None, "after": None, **kw}


class Lab:
    """Publishes schemas and envelopes like a source does, runs DeltaSinks in-process, reads the lake."""

    def __init__(self, tmp_path: Any):
        self.prefix = f"t{uuid.uuid4().hex[:12]}"
        self.broker = BrokerConfig(bootstrap_servers=BOOTSTRAP, topic_prefix=self.prefix, cleanup_policy="delete")
        self.lake = LakeConfig(uri=str(tmp_path / "lake"))
        self.lsn = 0x1000000
        self.xid = 500
        self._producer: Any = None
        self._admin: Admin | None = None
        self._schemas: dict[str, SchemaPublisher] = {}

    async def __aenter__(self) -> Lab:
        self._admin = Admin(self.broker)
        await self._admin.__aenter__()
        self._producer = producer(self.broker)
        await start_client(self._producer, self.broker)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._producer.stop()
        topics = [t for t in await self._admin.topics() if t.startswith(self.prefix + ".")]
        with contextlib.suppress(Exception):
            await self._admin.delete_topics(topics)
        await self._admin.__aexit__(*exc)

    # --- publishing ---------------------------------------------------------------------------

    async def table(self, source: str, schema: str, table: str, columns: list[tuple[str, str]], pk: list[str]) -> TableSchema:
        """Publish a (new version of a) table schema and make sure its topic exists."""
        ts = TableSchema(source, schema, table, tuple(Column(n, lt, lt) for n, lt in columns), tuple(pk))
        pub = self._schemas.get(source)
        if pub is None:
            pub = self._schemas[source] = SchemaPublisher(self.broker, source, self._producer, self._admin)
        await pub.publish(ts)
        await self._admin.ensure_topic(table_topic(self.prefix, source, schema, table))
        return ts

    def next_pos(self, phase: int = Position.STREAM) -> bytes:
        self.lsn += 0x100
        return Position.postgres(self.lsn, phase, 0)

    async def publish(self, ts: TableSchema, events: list[dict[str, Any]], *, raw: bytes | None = None) -> list[bytes]:
        """Publish events (dicts from ins/upd/dele/trunc; a `pos` key reuses a position) in order."""
        topic = table_topic(self.prefix, ts.source, ts.schema, ts.table)
        out = BatchPublisher(self._producer)
        positions = []
        for ev in events:
            pos = ev.get("pos") or self.next_pos(Position.SNAPSHOT if ev["op"] in ("r", "t") else Position.STREAM)
            positions.append(pos)
            self.xid += 1
            src = {"connector": "postgresql", "name": ts.source, "schema": ts.schema, "table": ts.table,
                   "txId": None if ev["op"] in ("r", "t") else self.xid, "ts_ms": ev.get("ts_ms", 1_700_000_000_000), "lsn": self.lsn}
            value = ev["raw"] if "raw" in ev else envelope(ev["op"], ev["before"], ev["after"], src, int(time.time() * 1000))
            keysrc = ev["after"] or ev["before"]
            key = orjson.dumps({c: keysrc[c] for c in ts.primary_key}) if keysrc and ts.primary_key else b"{}"
            out.append(topic, key, value, [(POSITION_HEADER, pos), (SCHEMA_HEADER, ts.id.encode())])
        await out.flush()
        return positions

    # --- the sink -----------------------------------------------------------------------------

    def config(self, **kw: Any) -> DeltaSinkConfig:
        kw.setdefault("name", f"s{uuid.uuid4().hex[:8]}")
        kw.setdefault("sources", ["shop"])
        kw.setdefault("batch_interval_s", 0.2)
        return DeltaSinkConfig(**kw)

    @contextlib.asynccontextmanager
    async def sink(self, **kw: Any) -> AsyncIterator[DeltaSink]:
        """Run a DeltaSink in a task for the body of the `async with`; stop (final flush) at the end."""
        sink = DeltaSink(self.config(**kw), broker=self.broker, lake=self.lake)
        stop = asyncio.Event()
        task = asyncio.create_task(sink.run(stop))
        try:
            yield sink
        finally:
            stop.set()
            async with asyncio.timeout(30):
                await task

    # --- the lake -----------------------------------------------------------------------------

    def uri(self, ts: TableSchema) -> str:
        return table_uri(self.lake, ts.source, ts.schema, ts.table)

    def rows(self, ts: TableSchema, sort: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        try:
            dt = DeltaTable(self.uri(ts))
        except TableNotFoundError:
            return []
        rows = dt.to_pyarrow_table().to_pylist()
        keys = sort or ts.primary_key or ("_lakeward_offset",)
        return sorted(rows, key=lambda r: tuple((r[k] is None, r[k]) for k in keys))

    def data(self, ts: TableSchema, cols: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """Rows without the metadata columns (or only `cols`)."""
        return [{k: v for k, v in r.items() if (k in cols if cols else not k.startswith("_lakeward_"))} for r in self.rows(ts)]

    async def until(self, check: Callable[[], Any], within_s: float = 20.0, what: str = "") -> Any:
        """Poll `check` (in a thread: it reads Delta tables) until it returns something truthy."""
        deadline = time.monotonic() + within_s
        last: Any = None
        while time.monotonic() < deadline:
            last = await asyncio.to_thread(check)
            if last:
                return last
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out after {within_s}s waiting for {what or check}; last result {last!r}")

    async def until_committed(self, sink: Any, offset: int, within_s: float = 20.0) -> None:
        """Wait until every writer of `sink` has recorded its commit through `offset`.

        Rows are visible in the Delta table a moment before the writer notes the commit in memory,
        so a test that reads `status()` right after the rows appear must wait for this too.
        """
        await self.until(lambda: [w.committed_offset for w in sink._writers.values()] == [offset] * len(sink._writers)
                         and bool(sink._writers), within_s, what=f"writers committed through offset {offset}")

    async def until_rows(self, ts: TableSchema, expected: list[dict[str, Any]], within_s: float = 20.0,
                         cols: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        try:
            await self.until(lambda: self.data(ts, cols) == expected, within_s, what=f"rows of {ts.qualified}")
        except AssertionError:
            assert self.data(ts, cols) == expected  # shows the difference
        return self.rows(ts)


@pytest.fixture
async def lab(tmp_path: Any) -> AsyncIterator[Lab]:
    if not _broker_up():
        pytest.fail(f"no Kafka broker at {BOOTSTRAP}: run `make services` (or deselect with -m 'not integration')")
    async with Lab(tmp_path) as lab:
        yield lab
