"""SIGKILL the MySQL source mid-snapshot at several points, with writes going on: the restarted source keeps
finished tables, reads the rest at a new point (or, for a keyed table read in part, goes on from its last
acknowledged key), streams from the original point; the lake ends equal to the source, nothing applied twice,
and the finished tables' rows are not read again.
"""

from __future__ import annotations

import asyncio
import random
import time

import orjson
import pytest

from lakeward.core import broker
from lakeward.core.config import BrokerConfig

from .harness import BROKER, Execute, MariaDB, WriteLoad, msql, topic_end, wait_until
from .lakecheck import lake_equals_mysql, no_repeated_positions
from .test_mysql_snapshot import (
    changelog_equals_mysql,
    configs,
    snapshot_positions,
    topic_records,
)

pytestmark = [pytest.mark.integration, pytest.mark.crash]

ROWS = {"a_keyed": 200_000, "b_nokey": 60_000, "c_keyed": 20_000}
"""Read in this order (by name): a before b before c. a_keyed is large enough (200 chunks) that a poll of
the state topic sees it read in part: at 40,000 rows a quiet machine read it whole between two polls."""
SOURCE = {"snapshot_parallelism": 2, "snapshot_chunk_rows": 1000}


@pytest.fixture
def tables(mysql_db):
    db = mysql_db
    for name, n in ROWS.items():
        key = " PRIMARY KEY" if name.endswith("_keyed") else " NOT NULL"
        msql(f"CREATE TABLE {name} (id bigint{key}, v int, s char(32))",
             f"INSERT INTO {name} SELECT seq, seq % 100, md5(seq) FROM seq_1_to_{n}", db=db)
    return db


class Writes(WriteLoad):
    """Small transactions until stopped: inserts, updates and deletes of the keyed tables, inserts and
    deletes of the keyless one (its changelog is replayed: no updates there)."""

    def __init__(self, db: str, seed: int = 17):
        super().__init__(MariaDB(db), seed, first_id=10_000_000)

    def transaction(self, execute: Execute, rnd: random.Random) -> None:
        for _ in range(rnd.randint(1, 5)):
            table = rnd.choice(list(ROWS))
            self.next_id += 1
            execute(f"INSERT INTO {table} VALUES (%s, 1, md5(rand()))", (self.next_id,))
            victim = rnd.randint(1, ROWS[table])
            if table != "b_nokey":
                execute(f"UPDATE {table} SET v = v + 1, s = md5(rand()) WHERE id = %s", (rnd.randint(1, ROWS[table]),))
            execute(f"DELETE FROM {table} WHERE id = %s", (victim,))


def read_state(prefix: str) -> dict | None:
    value = asyncio.run(broker.StateTopic(BrokerConfig(bootstrap_servers=BROKER, topic_prefix=prefix), "legacy", b"state").read())
    return orjson.loads(value) if value else None


def lake_complete(db, mirror_lake, changelog_lake) -> bool | str:
    for table in ROWS:
        ok = changelog_equals_mysql(changelog_lake, db, table) if table == "b_nokey" else lake_equals_mysql(db, mirror_lake, table)
        if ok is not True:
            return ok
    return True


def points(prefix: str, db: str, table: str) -> list[tuple[int, int]]:
    """The binlog points (file index, position) the table's snapshot events were read at, in topic
    order, one per read (its `t` event)."""
    return [(f, pos) for f, pos, _ph, seq, _r in snapshot_positions(topic_records(prefix, db, table)) if seq == 0]


def test_kill_mid_snapshot_keeps_finished_tables_and_rereads_the_rest(tables, prefix, tmp_path, workers):
    """Kills in the keyless table (after the first keyed table finished), again in its re-read at the new
    point, then mid-stream."""
    db = tables
    mirror_cfg, log_cfg, mirror_lake, changelog_lake = configs(tmp_path, db, prefix, **SOURCE)
    topic = {t: f"{prefix}.legacy.{db}.{t}" for t in ROWS}
    mirror = workers(mirror_cfg, "--sink", "lake").start()
    changelog = workers(log_cfg, "--sink", "log").start()

    source = workers(mirror_cfg, "--source", "legacy").start()
    wait_until(lambda: topic_end(topic["b_nokey"]) >= 3000, timeout=40, what="the keyless table's snapshot", interval=0.05)
    source.kill()
    first_b = topic_end(topic["b_nokey"])
    assert first_b < ROWS["b_nokey"] + 1, "the kill was meant to land in the keyless table"
    assert topic_end(topic["a_keyed"]) == ROWS["a_keyed"] + 1
    state = read_state(prefix)
    assert f"{db}.a_keyed" in state["tables"] and f"{db}.b_nokey" not in state["tables"], state

    writes = Writes(db)
    writes.start()
    source = workers(mirror_cfg, "--source", "legacy").start()
    wait_until(lambda: topic_end(topic["b_nokey"]) >= first_b + 3000, timeout=40, what="the keyless table's re-read", interval=0.05)
    source.kill()
    assert topic_end(topic["c_keyed"]) == 0, "the second kill was meant to land before the last table"
    assert topic_end(topic["b_nokey"]) < first_b + ROWS["b_nokey"], "the second kill was meant to land in the re-read"

    source = workers(mirror_cfg, "--source", "legacy").start()
    wait_until(lambda: "streaming from" in source.output(), timeout=40, what="the source to stream", interval=0.1)
    time.sleep(random.uniform(0.5, 1.5))
    source.kill()
    source = workers(mirror_cfg, "--source", "legacy").start()
    time.sleep(1)
    writes.stop()
    assert writes.transactions > 50

    wait_until(lambda: lake_complete(db, mirror_lake, changelog_lake), timeout=60, what="lake == source", interval=1)
    state = read_state(prefix)
    assert state["snapshot_done"] and not state["progress"] and not state["jobs"], state
    for w in (source, mirror, changelog):
        assert w.terminate() == 0, w.output()[-3000:]
    for table in ROWS:
        no_repeated_positions(changelog_lake, f"{db}.{table}", "legacy")
    # The finished table was read once; the keyless one at three points; the last one once, at the third.
    reads = {t: points(prefix, db, t) for t in ROWS}
    assert len(reads["a_keyed"]) == 1 and len(reads["b_nokey"]) == 3 and len(reads["c_keyed"]) == 1, reads
    assert reads["a_keyed"][0] < reads["b_nokey"][1] < reads["b_nokey"][2] == reads["c_keyed"][0]
    reread = sum(len(snapshot_positions(topic_records(prefix, db, t))) for t in ROWS) - sum(ROWS.values())
    assert reread < sum(ROWS.values()), f"{reread} rows read again"


def test_kill_mid_keyed_table_goes_on_after_its_last_acknowledged_key(tables, prefix, tmp_path, workers):
    db = tables
    mirror_cfg, log_cfg, mirror_lake, changelog_lake = configs(tmp_path, db, prefix, **SOURCE)
    name = f"{db}.a_keyed"
    mirror = workers(mirror_cfg, "--sink", "lake").start()
    changelog = workers(log_cfg, "--sink", "log").start()

    source = workers(mirror_cfg, "--source", "legacy").start()

    def some_chunks_done():
        state = read_state(prefix) or {}
        done = (state.get("progress") or {}).get(name, {}).get("chunks_done", 0)
        return done >= 3 or f"{done} chunks done"

    wait_until(some_chunks_done, timeout=40, what="chunks of the first table acknowledged", interval=0.05)
    source.kill()
    progress = read_state(prefix)["progress"][name]
    first_read = topic_end(f"{prefix}.legacy.{name}")
    assert progress["chunks_done"] < progress["chunks"] and first_read < ROWS["a_keyed"] + 1, "the kill was meant to land mid-table"

    writes = Writes(db, seed=5)
    writes.start()
    source = workers(mirror_cfg, "--source", "legacy").start()
    wait_until(lambda: "streaming from" in source.output(), timeout=40, what="the source to stream", interval=0.1)
    state = read_state(prefix)
    assert name in state["tables"], state
    jobs = [j for j in state["jobs"] if j["table"] == name]
    assert jobs and jobs[0]["reason"] == "resume" and jobs[0]["after"] is not None, state
    assert jobs[0]["after"][0] >= progress["after"][0]
    # The other tables were read whole at a new point, the partly read one not again.
    reads = {t: points(prefix, db, t) for t in ROWS}
    assert len(reads["a_keyed"]) == 1 and reads["b_nokey"] == reads["c_keyed"] and reads["b_nokey"][0] > reads["a_keyed"][0], reads
    time.sleep(1)
    writes.stop()

    wait_until(lambda: lake_complete(db, mirror_lake, changelog_lake), timeout=30, what="lake == source", interval=1)
    for w in (source, mirror, changelog):
        assert w.terminate() == 0, w.output()[-3000:]
    for table in ROWS:
        no_repeated_positions(changelog_lake, f"{db}.{table}", "legacy")
    at_first_point = [p for p in snapshot_positions(topic_records(prefix, db, "a_keyed")) if p[:2] == reads["a_keyed"][0]]
    assert len(at_first_point) <= first_read, "done chunks were read again at the first point"
    reread = sum(len(snapshot_positions(topic_records(prefix, db, t))) for t in ROWS) - sum(ROWS.values())
    assert reread < ROWS["a_keyed"] // 2, f"{reread} rows read again"
