"""SIGKILL the workers at awkward moments; afterwards the lake must equal the source, nothing lost or doubled.

Two sinks read the same topics: a mirror (compared with the source row by row) and a changelog
(where a change applied twice would show up as a repeated source position).
"""

from __future__ import annotations

import random
import time

import pytest

from .harness import Postgres, RandomChanges, mirror_and_changelog, sql, topic_end, wait_until, write_config
from .lakecheck import lake_equals_source, lake_table, no_repeated_positions, wait_for_changelog

pytestmark = [pytest.mark.integration, pytest.mark.crash]


@pytest.fixture
def crash_setup(database, prefix, tmp_path, workers):
    sql(database, "CREATE TABLE items (id bigint PRIMARY KEY, v int, s text)",
        "INSERT INTO items SELECT g, g % 100, md5(g::text) FROM generate_series(1, 300000) g")
    mirror_lake, changelog_lake = tmp_path / "mirror", tmp_path / "changelog"

    def configs(**source_settings):
        return mirror_and_changelog(tmp_path, write_config, dsn=database, prefix=prefix, source_settings=source_settings)[:2]

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

    load = RandomChanges(Postgres(database), "items", first_id=300001)
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
    no_repeated_positions(changelog_lake, "items")


def test_kill_sinks_between_commits_under_load(crash_setup):
    database, prefix, mirror_lake, changelog_lake, configs, workers = crash_setup
    cfg, log_cfg = configs()
    source = workers(cfg, "--source", "shop").start()
    load = RandomChanges(Postgres(database), "items", first_id=300001)
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

    wait_for_changelog(changelog_lake, "items", topic, timeout=120)
    for w in (source, mirror, changelog):
        assert w.terminate() == 0, w.output()[-3000:]
    no_repeated_positions(changelog_lake, "items")
    assert lake_table(changelog_lake, "items").to_pyarrow_dataset().count_rows() == topic_end(topic)
