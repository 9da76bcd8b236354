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

from .harness import (
    BROKER,
    MariaDB,
    RandomChanges,
    mirror_and_changelog,
    msql,
    server_id,
    topic_end,
    wait_until,
    write_mysql_config,
)
from .lakecheck import lake_equals_mysql, mysql_lake_table, no_repeated_positions

pytestmark = [pytest.mark.integration, pytest.mark.crash]

ROWS = 100_000
BIG_TXN_ROWS = 100_000


@pytest.fixture
def crash_setup(mysql_db, prefix, tmp_path, workers):
    db = mysql_db
    msql("CREATE TABLE items (id bigint PRIMARY KEY, v int, s char(32))",
         f"INSERT INTO items SELECT seq, seq % 100, md5(seq) FROM seq_1_to_{ROWS}", db=db)
    mirror_lake, changelog_lake = tmp_path / "mirror", tmp_path / "changelog"
    sid = server_id()

    def configs(**source_settings):
        return mirror_and_changelog(tmp_path, write_mysql_config, db=db, prefix=prefix, sid=sid, source_settings=source_settings)[:2]

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

    load = RandomChanges(MariaDB(db), "items", first_id=ROWS + 1, key_updates=True)
    load.start()
    for _ in range(3):
        source = workers(no_resume, "--source", "legacy").start()
        # Past the snapshot of the rest (the first kill left it unfinished), into the stream; then kill.
        wait_until(lambda w=source: "streaming from" in w.output(), timeout=60, what="the source to stream", interval=0.1)
        time.sleep(random.uniform(1, 3))
        source.kill()
    load.stop()
    assert load.transactions > 50

    normal, _ = configs()
    source = workers(normal, "--source", "legacy").start()
    wait_until(lambda: lake_equals_mysql(db, mirror_lake, "items"), timeout=120, what="mirror == source", interval=1)
    wait_until(lambda: mysql_lake_table(changelog_lake, db, "items") is not None, timeout=30, what="changelog table")
    for w in (source, mirror, changelog):
        assert w.terminate() == 0, w.output()[-3000:]
    no_repeated_positions(changelog_lake, f"{db}.items", "legacy")
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
    load = RandomChanges(MariaDB(db), "items", first_id=ROWS + 1, seed=11, key_updates=True)
    load.start()
    rnd = random.Random(5)
    for _ in range(3):
        time.sleep(rnd.uniform(1.5, 3.5))
        source.kill()
        time.sleep(rnd.uniform(0, 1))
        source = workers(cfg, "--source", "legacy").start()
    load.stop()
    # The last kill lands inside one big transaction, part of it on the topic: the source resumes
    # only after whole transactions, so the restarted one publishes that part again. The source is
    # stopped (SIGSTOP) at the first of its events seen, and killed once the topic shows it in part.
    for attempt in range(1, 4):
        before = topic_end(topic)
        msql(f"INSERT INTO items SELECT seq + {attempt * 10_000_000}, 1, 'big' FROM seq_1_to_{BIG_TXN_ROWS}", db=db)
        wait_until(lambda b=before: topic_end(topic) > b, timeout=60, what="the big transaction on the topic", interval=0.01)
        source.pause()
        time.sleep(0.3)  # what it sent before the stop reaches the broker
        if topic_end(topic) < before + BIG_TXN_ROWS:
            break
        source.resume()  # it got all of it out before the stop: another try
    else:
        raise AssertionError("the source published each big transaction whole before it could be stopped")
    source.kill()
    source = workers(cfg, "--source", "legacy").start()
    wait_until(lambda: lake_equals_mysql(db, mirror_lake, "items"), timeout=120, what="mirror == source", interval=1)

    assert source.terminate() == 0, source.output()[-3000:]
    # Every event on the topic is in the changelog exactly once: as many rows as distinct positions.
    records = asyncio.run(broker.read_topic(BrokerConfig(bootstrap_servers=BROKER), topic))
    expected = len({dict(r.headers)["lakeward.pos"] for r in records})
    assert len(records) > expected, "the kills were meant to make the source re-publish events"

    def changelog_complete():
        dt = mysql_lake_table(changelog_lake, db, "items")
        n = dt.to_pyarrow_dataset().count_rows() if dt else 0
        return n >= expected or f"changelog has {n} of {expected} events"

    wait_until(changelog_complete, timeout=60, what="changelog complete", interval=1)
    for w in (mirror, changelog):
        assert w.terminate() == 0, w.output()[-3000:]
    no_repeated_positions(changelog_lake, f"{db}.items", "legacy")
    assert mysql_lake_table(changelog_lake, db, "items").to_pyarrow_dataset().count_rows() == expected
