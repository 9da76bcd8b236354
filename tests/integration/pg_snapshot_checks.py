"""Helpers of the PostgreSQL snapshot tests: the source's state document, table topics, lake checks
for composite / uuid / text keys and for tables without a key (changelog), and killing the source
at a point of its snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
from aiokafka import TopicPartition

from lakeward.core import broker
from lakeward.core.config import BrokerConfig
from lakeward.core.events import POSITION_HEADER, Position

from .harness import BROKER, Worker
from .lakecheck import compare, lake_table

_BROKER = BrokerConfig(bootstrap_servers=BROKER)


def state_topic(prefix: str) -> str:
    return f"{prefix}.shop.__state"


def state_doc(prefix: str) -> dict[str, Any] | None:
    """The source's newest state document."""
    records = asyncio.run(broker.read_topic(_BROKER, state_topic(prefix)))
    docs = [orjson.loads(r.value) for r in records if r.key == b"snapshot" and r.value]
    return docs[-1] if docs else None


def kill_when(source: Worker, prefix: str, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 60) -> dict[str, Any]:
    """SIGKILL `source` once it wrote a state document for which `predicate` holds; returns the last
    document it wrote, the one a restarted source resumes from.

    Every document is looked at as it arrives. On a match the source is stopped (SIGSTOP) and the
    topic read to its end before the kill: documents written between the match and the kill would
    otherwise go unseen, and the test would assert on a state older than the one resumed from."""

    async def watch() -> dict[str, Any]:
        c = broker.consumer(_BROKER, isolation_level="read_uncommitted")
        await broker.start_client(c, _BROKER)
        tp = TopicPartition(state_topic(prefix), 0)
        deadline = time.monotonic() + timeout

        async def documents() -> list[dict[str, Any]]:
            records = (await c.getmany(tp, timeout_ms=10)).get(tp, [])
            return [orjson.loads(r.value) for r in records if r.key == b"snapshot" and r.value]

        try:
            while state_topic(prefix) not in await c.topics():
                assert time.monotonic() < deadline and source.alive(), source.output()[-3000:]
                await asyncio.sleep(0.05)
            c.assign([tp])
            c.seek(tp, 0)
            seen = None
            while time.monotonic() < deadline:
                for seen in await documents():
                    if predicate(seen):
                        source.pause()
                        await asyncio.sleep(0.3)  # what it sent before the stop reaches the broker
                        end = (await c.end_offsets([tp]))[tp]
                        last = seen
                        while await c.position(tp) < end:
                            last = ([last, *await documents()])[-1]
                        source.kill()
                        assert predicate(last), f"the source went past the kill point before it was stopped: {last}"
                        return last
                assert source.alive(), source.output()[-3000:]
            raise AssertionError(f"no state document matched within {timeout}s; the last: {seen}")
        finally:
            await c.stop()

    return asyncio.run(watch())


@contextlib.contextmanager
def started_with_reads_held(source: Worker, dsn: str, slot: str, held: tuple[str, ...]) -> Iterator[Worker]:
    """Start `source`; until the block ends, its snapshot cannot read the `held` tables (public
    schema), so a kill meant to land before their first chunk lands there on any machine.

    The reads wait on an ACCESS EXCLUSIVE lock. Such a lock gives its transaction an xid, and a slot
    being created waits for every xid running, so the lock is taken only once the slot is there:
    an open xid holds the creation, the source is stopped (SIGSTOP) while it waits for it, the xid
    ends, the slot gets to its consistent point, the lock is taken, the source goes on."""
    if not held:
        yield source.start()
        return
    with psycopg.connect(dsn, autocommit=True) as holder, psycopg.connect(dsn, autocommit=True) as probe:
        def slot_state() -> tuple[bool, bool]:
            row = probe.execute("SELECT confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = %s",
                                (slot,)).fetchone()
            return row is not None, bool(row and row[0])

        with holder.transaction():
            holder.execute("SELECT pg_current_xact_id()")
            source.start()
            deadline = time.monotonic() + 60
            while not slot_state()[0]:
                assert time.monotonic() < deadline and source.alive(), source.output()[-3000:]
                time.sleep(0.02)
            source.pause()
        while not slot_state()[1]:
            assert time.monotonic() < deadline, f"slot {slot} did not reach its consistent point"
            time.sleep(0.02)
        with holder.transaction():
            holder.execute(f"LOCK TABLE {', '.join(f'public.{t}' for t in held)} IN ACCESS EXCLUSIVE MODE")
            source.resume()
            yield source


def progress(doc: dict[str, Any], table: str) -> dict[str, Any]:
    return doc.get("progress", {}).get(f"public.{table}", {"chunks_done": 0, "chunks": 1, "rows": 0})


def table_complete(doc: dict[str, Any], table: str) -> bool:
    p = doc.get("progress", {}).get(f"public.{table}")
    return p is not None and p["chunks_done"] >= p["chunks"]


def table_records(prefix: str, table: str, *, min_count: int = 1, timeout: float = 60) -> list[Any]:
    topic = f"{prefix}.shop.public.{table}"
    deadline = time.monotonic() + timeout
    while True:
        records = asyncio.run(broker.read_topic(_BROKER, topic))
        if len(records) >= min_count or time.monotonic() > deadline:
            return records
        time.sleep(0.3)


def op_of(record: Any) -> str:
    return orjson.loads(record.value)["op"]


def position(record: Any) -> bytes:
    return dict(record.headers)[POSITION_HEADER]


def read_events(records: list[Any]) -> list[Any]:
    return [r for r in records if op_of(r) == "r"]


def chunk_indexes(records: list[Any]) -> set[int]:
    return {Position.postgres_parts(position(r))[2] >> 32 for r in read_events(records)}


def _plain(v: Any) -> Any:
    return str(v) if isinstance(v, uuid.UUID) else v


def source_rows(dsn: str, table: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(f"SELECT * FROM {table}")
        names = [d.name for d in cur.description]
        return [{n: _plain(v) for n, v in zip(names, row, strict=True)} for row in cur.fetchall()]


def _sort_key(key: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple]:
    return lambda r: tuple(r[k] for k in key)


def mirror_equals(dsn: str, lake: Path, table: str, key: tuple[str, ...]) -> bool | str:
    """The mirror's rows equal the source's, for any key (sorted by the key's columns)."""
    dt = lake_table(lake, table)
    if dt is None:
        return f"no lake table for {table} yet"
    with psycopg.connect(dsn) as conn:
        count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    if dt.to_pyarrow_dataset().count_rows() != count:  # polled: the counts answer most polls cheaply
        return f"{table}: lake has {dt.to_pyarrow_dataset().count_rows()} rows, source {count}"
    got = [{k: v for k, v in r.items() if not k.startswith("_lakeward_")} for r in dt.to_pyarrow_table().to_pylist()]
    return compare(table, sorted(got, key=_sort_key(key)), sorted(source_rows(dsn, table), key=_sort_key(key)))


def changelog_state(lake: Path, table: str) -> Counter | None:
    """A changelog of an insert-only table replayed: the rows read or created after its last `t`."""
    dt = lake_table(lake, table)
    if dt is None:
        return None
    rows = sorted(dt.to_pyarrow_table().to_pylist(), key=lambda r: r["_lakeward_position"])
    last_reset = max((i for i, r in enumerate(rows) if r["_lakeward_op"] == "t"), default=-1)
    out: Counter = Counter()
    for r in rows[last_reset + 1 :]:
        assert r["_lakeward_op"] in ("r", "c"), f"{table}: unexpected {r['_lakeward_op']} in an insert-only table"
        out[tuple(sorted((k, v) for k, v in r.items() if not k.startswith("_lakeward_")))] += 1
    return out


def changelog_equals(dsn: str, lake: Path, table: str) -> bool | str:
    got = changelog_state(lake, table)
    if got is None:
        return f"no changelog table for {table} yet"
    want = Counter(tuple(sorted(r.items())) for r in source_rows(dsn, table))
    if got == want:
        return True
    return f"{table}: changelog holds {sum(got.values())} rows, source {sum(want.values())}; e.g. missing {list((want - got).keys())[:2]}, extra {list((got - want).keys())[:2]}"


def slot_row(dsn: str, slot: str) -> tuple | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT slot_name, temporary FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
