"""SIGKILL the workers at awkward moments; afterwards the lake must equal the source, nothing lost or doubled.

Two sinks read the same topics: a mirror (compared with the source row by row) and a changelog
(where a change applied twice would show up as a repeated source position).
"""

from __future__ import annotations

import asyncio
import random
import time

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from .conftest import BROKER, WriteLoad, sql, wait_until, write_config
from .lakecheck import lake_equals_source, lake_rows, lake_table

pytestmark = [pytest.mark.integration, pytest.mark.crash]


def topic_end(topic: str) -> int:
    async def end() -> int:
        c = AIOKafkaConsumer(bootstrap_servers=BROKER)
        await c.start()
        try:
            if topic not in await c.topics():
                return 0
            tp = TopicPartition(topic, 0)
            return (await c.end_offsets([tp]))[tp]
        finally:
            await c.stop()

    return asyncio.run(end())


class Load(WriteLoad):
    """Random inserts, updates and deletes in small transactions until stopped."""

    def __init__(self, dsn: str, table: str, first_id: int):
        super().__init__(dsn, seed=7)
        self.table, self.next_id = table, first_id

    def transaction(self, conn: psycopg.Connection, rnd: random.Random) -> None:
        for _ in range(rnd.randint(1, 20)):
            action = rnd.random()
            if action < 0.5:
                conn.execute(f"INSERT INTO {self.table} (id, v, s) VALUES (%s, %s, md5(random()::text))", (self.next_id, rnd.randint(0, 99)))
                self.next_id += 1
            elif action < 0.85:
                conn.execute(f"UPDATE {self.table} SET v = v + 1, s = md5(random()::text) WHERE id = %s", (rnd.randint(1, self.next_id),))
            else:
                conn.execute(f"DELETE FROM {self.table} WHERE id = %s", (rnd.randint(1, self.next_id),))


def wait_for_changelog(changelog_lake, topic: str, *, timeout: float) -> None:
    """Until the changelog of `items` holds as many events as the topic."""

    def changelog_complete():
        rows = lake_table(changelog_lake, "items")
        n = rows.to_pyarrow_dataset().count_rows() if rows else 0
        return n >= topic_end(topic) or f"changelog has {n} of {topic_end(topic)} events"

    wait_until(changelog_complete, timeout=timeout, what="changelog complete", interval=1)


def no_repeats_in_changelog(lake) -> None:
    rows = lake_rows(lake, "items", key="_lakeward_position", metadata=True)
    positions = [r["_lakeward_position"] for r in rows]
    assert len(positions) == len(set(positions)), f"{len(positions) - len(set(positions))} events applied twice"


@pytest.fixture
def crash_setup(database, prefix, tmp_path, workers):
    sql(database, "CREATE TABLE items (id bigint PRIMARY KEY, v int, s text)",
        "INSERT INTO items SELECT g, g % 100, md5(g::text) FROM generate_series(1, 300000) g")
    mirror_lake, changelog_lake = tmp_path / "mirror", tmp_path / "changelog"

    def configs(**source_opts):
        extra = "".join(f"    {k}: {v}\n" for k, v in source_opts.items())
        a = write_config(tmp_path / "mirror.yaml", dsn=database, prefix=prefix, lake=mirror_lake, extra_source=extra)
        b = write_config(tmp_path / "changelog.yaml", dsn=database, prefix=prefix, lake=changelog_lake, mode="changelog",
                         extra_source=extra, sink_name="log")
        return a, b

    return database, prefix, mirror_lake, changelog_lake, configs, workers


def test_kill_source_mid_snapshot_and_before_lsn_confirm(crash_setup):
    database, prefix, mirror_lake, changelog_lake, configs, workers = crash_setup
    topic = f"{prefix}.shop.public.items"
    # The source confirms nothing while this config is in force: every kill lands between the
    # broker's ack and the LSN confirm, so the restarted source re-publishes what the sinks have.
    no_confirm, log_cfg = configs(status_interval_s=3600, heartbeat_interval_s=0)
    mirror = workers(no_confirm, "--sink", "lake").start()
    changelog = workers(log_cfg, "--sink", "log").start()

    source = workers(no_confirm, "--source", "shop").start()
    wait_until(lambda: topic_end(topic) >= 20000, timeout=60, what="the snapshot to be under way", interval=0.05)
    source.kill()
    assert topic_end(topic) < 300001, "the kill was meant to land mid-snapshot"

    load = Load(database, "items", first_id=300001)
    load.start()
    for _ in range(3):
        source = workers(no_confirm, "--source", "shop").start()
        time.sleep(random.uniform(4, 7))
        source.kill()
    load.stop()
    assert load.transactions > 50

    normal, _ = configs()
    source = workers(normal, "--source", "shop").start()
    wait_until(lambda: lake_equals_source(database, mirror_lake, "items"), timeout=180, what="mirror == source", interval=1)
    wait_until(lambda: lake_table(changelog_lake, "items") is not None, timeout=30, what="changelog table")
    for w in (source, mirror, changelog):
        assert w.terminate() == 0, w.output()[-3000:]
    no_repeats_in_changelog(changelog_lake)


def test_kill_sinks_between_commits_under_load(crash_setup):
    database, prefix, mirror_lake, changelog_lake, configs, workers = crash_setup
    cfg, log_cfg = configs()
    source = workers(cfg, "--source", "shop").start()
    load = Load(database, "items", first_id=300001)
    load.start()
    rnd = random.Random(11)
    for _ in range(5):
        mirror = workers(cfg, "--sink", "lake").start()
        changelog = workers(log_cfg, "--sink", "log").start()
        time.sleep(rnd.uniform(2, 5))
        mirror.kill()
        time.sleep(rnd.uniform(0, 1))
        changelog.kill()
    load.stop()
    mirror = workers(cfg, "--sink", "lake").start()
    changelog = workers(log_cfg, "--sink", "log").start()
    wait_until(lambda: lake_equals_source(database, mirror_lake, "items"), timeout=180, what="mirror == source", interval=1)

    # Every event on the topic is in the changelog exactly once (compare with the topic's length).
    topic = f"{prefix}.shop.public.items"

    wait_for_changelog(changelog_lake, topic, timeout=120)
    for w in (source, mirror, changelog):
        assert w.terminate() == 0, w.output()[-3000:]
    no_repeats_in_changelog(changelog_lake)
    assert lake_table(changelog_lake, "items").to_pyarrow_dataset().count_rows() == topic_end(topic)
