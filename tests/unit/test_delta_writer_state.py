"""The partition writer's lifecycle as a state machine, without a broker or a lake.

The committer here is a stand-in for the state logic only (what the table's txn says, whether a
commit lands); the Delta I/O itself is tested on real Delta tables in tests/sinks/."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition

from lakeward.core.errors import TerminalError
from lakeward.core.events import POSITION_HEADER, SCHEMA_HEADER, Column, Position, TableSchema
from lakeward.sinks.delta.lake import Committed, LakeState
from lakeward.sinks.delta.table import TRANSITIONS, IllegalTransition, PartitionWriter, WriterState

SCHEMA = TableSchema("shop", "public", "t", (Column("id", "bigint", "long"), Column("v", "text", "string")), ("id",))
S = WriterState


class StandInCommitter:
    """What the table says and how commits go, scripted by the test."""

    def __init__(self, txn: int | None = None, results: list[Committed] | None = None):
        from lakeward.sinks.delta.batch import Catalog

        self.txn = txn
        self.results = results or []
        self.catalog = Catalog()
        self.committed_offset: int | None = None
        self.committed_position: bytes | None = None
        self.version = self.committed_at = self.retrying = None
        self.commits = self.rows_applied = self.dead_lettered = 0
        self.committed: list[tuple[int, int]] = []

    async def load(self) -> LakeState:
        self.committed_offset = self.txn
        return LakeState(exists=self.txn is not None, txn=self.txn)

    @property
    def next_offset(self) -> int:
        return 0 if self.committed_offset is None else self.committed_offset + 1

    def admit(self, schema, *, rebuild=False):
        from lakeward.sinks.delta.arrow import arrow_type

        for c in schema.columns:
            self.catalog.arrow.setdefault(c.name, arrow_type(c.lake_type))
            self.catalog.lake[c.name] = c.lake_type

    def catalog_snapshot(self):
        return self.catalog

    async def commit(self, plan, batch, live, closing):
        if not live():
            return None
        res = self.results.pop(0) if self.results else Committed(ok=True, version=1)
        if res.ok:
            self.committed.append((batch.first, batch.last))
            self.committed_offset = batch.last
        else:
            self.txn = res.txn
        return res


class Feed:
    def __init__(self) -> None:
        self.seeks: list[int | None] = []
        self.commits: list[int] = []

    def seek(self, tp, offset):
        self.seeks.append(offset)

    def committed(self, tp, next_offset):
        self.commits.append(next_offset)


class Schemas:
    async def get(self, source, schema_id):
        return SCHEMA


def writer(committer: StandInCommitter, feed: Feed | None = None) -> PartitionWriter:
    lake = SimpleNamespace(sink="lake", uri="memory://t", lookup=None)
    return PartitionWriter(TopicPartition("p.shop.public.t", 0), source="shop", schema="public", table="t", mode="changelog",
                           lake=lake, schemas=Schemas(), feed=feed or Feed(), batch_rows=100, batch_bytes=1 << 20,
                           batch_interval_s=3600, committer=committer)  # type: ignore[arg-type]


def records(first: int, n: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(offset=o, key=b'{"id":1}', value=b'{"op":"c","after":{"id":1,"v":"x"}}',
                            headers=[(POSITION_HEADER, Position.postgres(0x1000 + o, Position.STREAM, 0)), (SCHEMA_HEADER, SCHEMA.id.encode())])
            for o in range(first, first + n)]


async def until_flushed(w: PartitionWriter) -> None:
    if w.flush_task is not None:
        await asyncio.wait([w.flush_task])


def test_every_state_but_revoked_can_be_revoked_and_revoked_is_final():
    assert TRANSITIONS[S.REVOKED] == frozenset()
    for state, targets in TRANSITIONS.items():
        if state not in (S.REVOKING, S.REVOKED):
            assert S.REVOKING in targets, state
    assert TRANSITIONS[S.STOPPED] == {S.REVOKING}


async def test_open_resumes_at_the_txn_and_runs():
    w = writer(StandInCommitter(txn=9))
    assert w.state is S.ASSIGNED and w.wants_pause
    assert await w.open() == 10
    assert (w.state, w.next_offset, w.wants_pause) == (S.RUNNING, 10, False)
    with pytest.raises(IllegalTransition, match="from running to assigned"):
        w._to(S.ASSIGNED)
    await w.revoke(1.0)
    assert w.state is S.REVOKED and not w.live
    for target in S:
        with pytest.raises(IllegalTransition):
            w._to(target)


async def test_a_failed_open_stays_resuming_until_it_works_or_stops():
    c = StandInCommitter(txn=4)
    w = writer(c)

    async def broken() -> LakeState:
        raise OSError("storage down")

    c.load = broken  # type: ignore[method-assign]
    with pytest.raises(OSError):
        await w.open()
    assert w.state is S.RESUMING and w.wants_pause
    w.stop(TerminalError("table shop.public.t: cannot read the Delta table; stopped this table"))
    assert w.state is S.STOPPED and w.error is not None and w.wants_pause
    with pytest.raises(IllegalTransition, match="from stopped to running"):
        w._to(S.RUNNING)


async def test_a_poison_event_stops_after_the_events_before_it_are_written():
    c = StandInCommitter()
    w = writer(c)
    await w.open()
    good = records(0, 3)
    bare = SimpleNamespace(offset=3, key=None, value=b"{}", headers=[])
    await w.ingest([*good, bare, *records(4, 2)], w.epoch)
    assert w.state is S.STOPPING and w.error is None and w.failure is not None and w.wants_pause
    assert list(w.buffer.events.offsets) == [0, 1, 2]  # nothing after the poison event is taken
    assert w.due(0.0)
    w.start_flush()
    await until_flushed(w)
    assert c.committed == [(0, 2)]
    assert w.state is S.STOPPED and "offset 3" in str(w.error)


async def test_another_writers_txn_resumes_after_it():
    c = StandInCommitter(results=[Committed(ok=False, txn=7)])
    feed = Feed()
    w = writer(c, feed)
    await w.open()
    epoch = w.epoch
    await w.ingest(records(0, 3), epoch)
    w.start_flush()
    await until_flushed(w)
    assert (w.state, w.epoch, feed.seeks, w.next_offset, c.committed) == (S.RUNNING, epoch + 1, [8], 8, [])
    await w.ingest(records(3, 2), epoch)  # fetched before the seek: void
    assert len(w.buffer) == 0
    await w.ingest(records(8, 2), w.epoch)
    w.start_flush()
    await until_flushed(w)
    assert c.committed == [(8, 9)] and feed.commits == [10]


async def test_drain_flushes_the_backlog_then_revoke_lets_go():
    c = StandInCommitter()
    w = writer(c)
    await w.open()
    w.batch_rows = 2
    await w.ingest(records(0, 5), w.epoch)  # full at 2: one flush in flight, the rest waits
    assert w.flush_task is not None and w.backlog is not None and w.wants_pause
    await w.drain()
    assert w.state is S.FLUSHING and c.committed == [(0, 1), (2, 4)]  # 2-3 filled the buffer while 0-1 was written
    await w.ingest(records(5, 1), w.epoch)
    assert w.state is S.FLUSHING and len(w.buffer) == 1  # a flushing writer still takes what was fetched
    await w.revoke(1.0)
    assert w.state is S.REVOKED and len(w.buffer) == 0
    await w.ingest(records(6, 1), w.epoch)
    assert len(w.buffer) == 0


async def test_revoke_finishes_the_commit_in_flight_and_writes_nothing_after_it():
    c = StandInCommitter()
    w = writer(c)
    await w.open()
    await w.ingest(records(0, 2), w.epoch)
    w.start_flush()
    await w.ingest(records(2, 2), w.epoch)
    await w.revoke(1.0)
    assert w.state is S.REVOKED and c.committed == [(0, 1)] and not w.due(0.0) and len(w.buffer) == 0
    w2 = writer(StandInCommitter())
    await w2.open()
    await w2.ingest(records(0, 2), w2.epoch)
    await w2.revoke(1.0)
    w2.start_flush()  # a revoked writer's flush: nothing is committed
    await until_flushed(w2)
    assert w2.committer.committed == []  # type: ignore[attr-defined]
