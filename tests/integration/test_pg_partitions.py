"""Partitioned tables are captured through their root: one topic and one lake table, none per partition
(sub-partitions and partitions attached while running included); and what the lake holds for
generated columns, views and materialized views."""

from __future__ import annotations

import asyncio
import json

import pytest

from lakeward.core import broker
from lakeward.core.config import BrokerConfig

from .harness import BROKER, sql, wait_until, write_config
from .lakecheck import compare, lake_rows, lake_table, source_rows
from .test_cli import cli

pytestmark = pytest.mark.integration


def topics(prefix: str) -> set[str]:
    async def run() -> set[str]:
        async with broker.Admin(BrokerConfig(bootstrap_servers=BROKER)) as admin:
            return {t for t in await admin.topics() if t.startswith(prefix + ".")}

    return asyncio.run(run())


def test_partitioned_table_is_one_table(database, prefix, tmp_path, workers):
    sql(database,
        "CREATE TABLE m (id int, day date, v text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day)",
        "CREATE TABLE m_2024 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') PARTITION BY HASH (id)",
        "CREATE TABLE m_2024_h0 PARTITION OF m_2024 FOR VALUES WITH (MODULUS 2, REMAINDER 0)",
        "CREATE TABLE m_2024_h1 PARTITION OF m_2024 FOR VALUES WITH (MODULUS 2, REMAINDER 1)",
        "CREATE TABLE m_2025 PARTITION OF m FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
        "INSERT INTO m SELECT g, date '2024-01-01' + g * 3, 'snap' FROM generate_series(1, 200) g")  # 2024 and 2025
    lake = tmp_path / "lake"
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=lake)
    worker = workers(cfg).start()

    def equal():
        return compare("m", lake_rows(lake, "m"), source_rows(database, "m", key="id"))

    wait_until(equal, timeout=90, what="the snapshot of the root")
    sql(database,
        "INSERT INTO m SELECT g, date '2024-06-01' + (g - 1000), 'streamed' FROM generate_series(1000, 1040) g",  # both hash partitions
        "UPDATE m SET v = 'moved', day = day + 400 WHERE id BETWEEN 1 AND 20",                # rows move across partitions
        "DELETE FROM m WHERE id BETWEEN 100 AND 110",
        # partitions attached while running: created as one, and created then attached in one transaction
        "CREATE TABLE m_2026 PARTITION OF m FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
        "BEGIN; CREATE TABLE m_2027 (id int, day date, v text, PRIMARY KEY (id, day)); "
        "ALTER TABLE m ATTACH PARTITION m_2027 FOR VALUES FROM ('2027-01-01') TO ('2028-01-01'); COMMIT",
        "INSERT INTO m VALUES (5000, '2026-03-03', 'new partition'), (5001, '2027-03-03', 'attached partition')",
        "UPDATE m SET day = '2026-12-31' WHERE id = 1000")
    wait_until(equal, timeout=90, what="the streamed changes")
    import time
    time.sleep(3)  # a table refresh (every 1 s here) and the Relation messages of every partition have gone by
    assert topics(prefix) == {f"{prefix}.shop.public.m", f"{prefix}.shop.__schemas", f"{prefix}.shop.__state", f"{prefix}.shop.__signals"}
    for part in ("m_2024", "m_2024_h0", "m_2024_h1", "m_2025", "m_2026", "m_2027"):
        assert lake_table(lake, part) is None
    assert worker.terminate() == 0, worker.output()
    report = json.loads(cli(cfg, "status", "--json").stdout)
    assert [t["table"] for t in report["sinks"][0]["tables"]] == ["shop.public.m"]


def test_generated_columns_views_and_materialized_views(database, prefix, tmp_path, workers):
    """PostgreSQL 15 does not publish generated columns; views and materialized views have no changes to
    publish. What the lake holds for each (docs/type-mapping.md)."""
    sql(database,
        "CREATE TABLE g (id int PRIMARY KEY, price numeric(10,2), total numeric(10,2) GENERATED ALWAYS AS (price * 2) STORED)",
        "INSERT INTO g (id, price) VALUES (1, 1.50)",
        "CREATE VIEW g_view AS SELECT id FROM g",
        "CREATE MATERIALIZED VIEW g_mat AS SELECT id FROM g")
    lake = tmp_path / "lake"
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=lake)
    worker = workers(cfg).start()
    wait_until(lambda: lake_rows(lake, "g") or "no rows", timeout=90, what="the snapshot")
    snapshot = lake_rows(lake, "g")[0]
    sql(database, "INSERT INTO g (id, price) VALUES (2, 2.00)", "UPDATE g SET price = 3.00 WHERE id = 1")
    wait_until(lambda: len(lake_rows(lake, "g") or []) == 2 and lake_rows(lake, "g")[0]["price"] == 3 or str(lake_rows(lake, "g")),
               timeout=60, what="the streamed changes")
    rows = {r["id"]: r for r in lake_rows(lake, "g")}
    # pgoutput leaves generated columns out of Relation messages and tuples, and the snapshot reads the
    # columns the stream sends: the lake table has no column for them (compute them in the query).
    assert "total" not in snapshot and all("total" not in r for r in rows.values())
    assert rows[1]["price"] == 3 and str(rows[2]["price"]) == "2.00"
    assert lake_table(lake, "g_view") is None and lake_table(lake, "g_mat") is None
    assert not any(t.endswith((".g_view", ".g_mat")) for t in topics(prefix))
    assert worker.terminate() == 0, worker.output()

