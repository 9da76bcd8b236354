"""SIGKILL the MySQL source mid-snapshot and mid-stream; afterwards the lake equals the source, nothing
lost or doubled.

Two sinks read the same topics: a mirror (compared with MariaDB row by row) and a changelog (where a
change applied twice would show up as a repeated source position).
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from lakeward.core import broker
from lakeward.core.config import BrokerConfig

from .conftest import BROKER, wait_until
from .mysql_fixtures import (  # noqa: F401
    WriteLoad,
    lake_equals_mysql,
    lake_rows,
    lake_table,
    msql,
    mysql_db,
    write_mysql_config,
)
from .test_crash import topic_end

pytestmark = [pytest.mark.integration, pytest.mark.crash]

ROWS = 100_000


class Load(WriteLoad):
    """Random inserts, updates (some of the key) and deletes in small transactions until stopped."""

    def __init__(self, db: str, first_id: int, seed: int = 7):
        super().__init__(db, first_id, seed)

    def transaction(self, cur, rnd: random.Random) -> None:
        for _ in range(rnd.randint(1, 20)):
            action = rnd.random()
            if action < 0.5:
                cur.execute("INSERT INTO items (id, v, s) VALUES (%s, %s, md5(rand()))", (self.next_id, rnd.randint(0, 99)))
                self.next_id += 1
            elif action < 0.8:
                cur.execute("UPDATE items SET v = v + 1, s = md5(rand()) WHERE id = %s", (rnd.randint(1, self.next_id),))
            elif action < 0.85:
                cur.execute("UPDATE IGNORE items SET id = %s WHERE id = %s", (self.next_id, rnd.randint(1, self.next_id)))
                self.next_id += 1
            else:
                cur.execute("DELETE FROM items WHERE id = %s", (rnd.randint(1, self.next_id),))


def no_repeats_in_changelog(lake, db) -> None:
    rows = lake_rows(lake, db, "items", key="_lakeward_position", metadata=True)
    positions = [r["_lakeward_position"] for r in rows]
    assert len(positions) == len(set(positions)), f"{len(positions) - len(set(positions))} events applied twice"


@pytest.fixture
def crash_setup(mysql_db, prefix, tmp_path, workers):
    db = mysql_db
    msql("CREATE TABLE items (id bigint PRIMARY KEY, v int, s char(32))",
         f"INSERT INTO items SELECT seq, seq % 100, md5(seq) FROM seq_1_to_{ROWS}", db=db)
    mirror_lake, changelog_lake = tmp_path / "mirror", tmp_path / "changelog"
    sid = random.randint(2_000_000, 3_000_000)

    def configs(**source_opts):
        extra = "".join(f"    {k}: {v}\n" for k, v in source_opts.items())
        a = write_mysql_config(tmp_path / "mirror.yaml", db=db, prefix=prefix, lake=mirror_lake, extra_source=extra, sid=sid)
        b = write_mysql_config(tmp_path / "changelog.yaml", db=db, prefix=prefix, lake=changelog_lake, mode="changelog",
                               extra_source=extra, sink_name="log", sid=sid)
        if "status_interval_s" in source_opts:
            for p in (a, b):
                p.write_text(p.read_text().replace("    status_interval_s: 0.2\n", "", 1))
        return a, b

    return db, prefix, mirror_lake, changelog_lake, configs, workers


def test_kill_source_mid_snapshot_and_before_the_resume_position_is_written(crash_setup):
    db, prefix, mirror_lake, changelog_lake, configs, workers = crash_setup
    topic = f"{prefix}.legacy.{db}.items"
    # Writes no resume position while this config is in force: every kill lands between the broker's
    # ack and the state write, so the restarted source re-publishes what the sinks already have.
    no_resume, log_cfg = configs(status_interval_s=3600, snapshot_chunk_rows=1000)
    mirror = workers(no_resume, "--sink", "lake").start()
    changelog = workers(log_cfg, "--sink", "log").start()

    source = workers(no_resume, "--source", "legacy").start()
    wait_until(lambda: topic_end(topic) >= 20000, timeout=60, what="the snapshot to be under way", interval=0.05)
    source.kill()
    assert topic_end(topic) < ROWS + 1, "the kill was meant to land mid-snapshot"

    load = Load(db, first_id=ROWS + 1)
    load.start()
    for _ in range(3):
        source = workers(no_resume, "--source", "legacy").start()
        # Past the snapshot of the rest (the first kill left it unfinished), into the stream; then kill.
        wait_until(lambda: "streaming from" in source.output(), timeout=60, what="the source to stream", interval=0.1)
        time.sleep(random.uniform(1, 3))
        source.kill()
    load.stop()
    assert load.transactions > 50

    normal, _ = configs()
    source = workers(normal, "--source", "legacy").start()
    wait_until(lambda: lake_equals_mysql(db, mirror_lake, "items"), timeout=120, what="mirror == source", interval=1)
    wait_until(lambda: lake_table(changelog_lake, db, "items") is not None, timeout=30, what="changelog table")
    for w in (source, mirror, changelog):
        assert w.terminate() == 0, w.output()[-3000:]
    no_repeats_in_changelog(changelog_lake, db)
    records = asyncio.run(broker.read_topic(BrokerConfig(bootstrap_servers=BROKER), topic))
    assert len(records) > len({dict(r.headers)["lakeward.pos"] for r in records}), "the restarts re-published events"


def test_kill_source_mid_stream_under_load(crash_setup):
    db, prefix, mirror_lake, changelog_lake, configs, workers = crash_setup
    cfg, log_cfg = configs()
    topic = f"{prefix}.legacy.{db}.items"
    mirror = workers(cfg, "--sink", "lake").start()
    changelog = workers(log_cfg, "--sink", "log").start()
    source = workers(cfg, "--source", "legacy").start()
    wait_until(lambda: topic_end(topic) > ROWS, timeout=60, what="the snapshot", interval=0.2)
    load = Load(db, first_id=ROWS + 1, seed=11)
    load.start()
    rnd = random.Random(5)
    for _ in range(3):
        time.sleep(rnd.uniform(1.5, 3.5))
        source.kill()
        time.sleep(rnd.uniform(0, 1))
        source = workers(cfg, "--source", "legacy").start()
    # One big transaction in flight when the last kill lands.
    msql("INSERT INTO items SELECT seq + 10000000, 1, 'big' FROM seq_1_to_100000", db=db)
    time.sleep(rnd.uniform(0.5, 1.5))
    source.kill()
    load.stop()
    source = workers(cfg, "--source", "legacy").start()
    wait_until(lambda: lake_equals_mysql(db, mirror_lake, "items"), timeout=120, what="mirror == source", interval=1)

    assert source.terminate() == 0, source.output()[-3000:]
    # Every event on the topic is in the changelog exactly once: as many rows as distinct positions.
    records = asyncio.run(broker.read_topic(BrokerConfig(bootstrap_servers=BROKER), topic))
    expected = len({dict(r.headers)["lakeward.pos"] for r in records})
    assert len(records) > expected, "the kills were meant to make the source re-publish events"

    def changelog_complete():
        dt = lake_table(changelog_lake, db, "items")
        n = dt.to_pyarrow_dataset().count_rows() if dt else 0
        return n >= expected or f"changelog has {n} of {expected} events"

    wait_until(changelog_complete, timeout=60, what="changelog complete", interval=1)
    for w in (mirror, changelog):
        assert w.terminate() == 0, w.output()[-3000:]
    no_repeats_in_changelog(changelog_lake, db)
    assert lake_table(changelog_lake, db, "items").to_pyarrow_dataset().count_rows() == expected
