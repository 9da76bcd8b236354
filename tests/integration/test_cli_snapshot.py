"""`lakeward snapshot` on the real broker: a valid request lands on the source's signal topic as a
SnapshotRequest; bad requests fail with one clear line (exit 1) and write nothing."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import pytest

from lakeward.core import broker
from lakeward.core.config import BrokerConfig
from lakeward.core.snapshot import SnapshotRequest

from .harness import BROKER, free_port, sql, wait_until, write_config
from .lakecheck import lake_equals_source
from .test_metrics import Scrape

pytestmark = pytest.mark.integration

MYSQL_SOURCE = """\
  - name: legacy
    type: mysql
    user: lakeward
    tables: [inventory.*]
"""


def lakeward(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lakeward.app.cli", *args], capture_output=True, text=True, timeout=120)


def signals(prefix: str, source: str) -> list:
    return asyncio.run(broker.read_topic(BrokerConfig(bootstrap_servers=BROKER), f"{prefix}.{source}.__signals"))


@pytest.fixture
def config(tmp_path, prefix):
    # The CLI checks the config only (no database connection): the DSN need not reach a database.
    return write_config(tmp_path / "lakeward.yaml", dsn="postgresql://postgres@127.0.0.1:5432/postgres", prefix=prefix,
                        lake=tmp_path / "lake", tables="public.orders, public.item*", extra_source=MYSQL_SOURCE)


@pytest.mark.parametrize("args, message", [
    (["--source", "nope", "--table", "public.orders"], "error: no source named 'nope'; the config has: shop, legacy"),
    (["--table", "public.orders"], "error: name the source with --source; the config has: shop, legacy"),
    (["--source", "shop"], ("error: name the tables to snapshot with --table schema.table (repeatable); source shop captures "
                           "public.orders, public.item*")),
    (["--source", "shop", "--table", "public.orders", "--table", "public.customers"],
     "error: table public.customers is not captured by source shop: it matches none of its tables: public.orders, public.item*"),
    (["--source", "shop", "--table", "orders"], "error: --table orders: name the table as schema.table"),
    (["--source", "legacy", "--table", "inventory.*"], "error: --table inventory.*: name one table as database.table, not a pattern"),
])
def test_bad_requests_fail_clearly_and_write_nothing(config, prefix, args, message):
    out = lakeward("-c", str(config), "snapshot", *args)
    assert out.returncode == 1, out
    assert out.stderr.strip().replace("\n", "") == message
    assert out.stdout == ""
    assert signals(prefix, "shop") == [] and signals(prefix, "legacy") == []


def test_a_request_lands_on_the_sources_signal_topic(config, prefix):
    # Global options after the command work as for every other command.
    out = lakeward("snapshot", "--source", "shop", "--table", "public.items", "--table", "public.orders", "--table", "public.items",
                   "--where", " id > 1000 ", "-c", str(config), "--log-level", "WARNING")
    assert out.returncode == 0, out.stderr
    m = re.match(r"snapshot request ([0-9a-f]{12}) sent to source shop: public.items, public.orders where id > 1000\n"
                 r"follow it with `lakeward status`", out.stdout)
    assert m, out.stdout
    (record,) = signals(prefix, "shop")
    request = SnapshotRequest.from_json(record.value)
    assert record.key == m.group(1).encode()
    assert (request.id, request.tables, request.where) == (m.group(1), ("public.items", "public.orders"), "id > 1000")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", request.requested_at)

    out = lakeward("-c", str(config), "snapshot", "--source", "legacy", "--table", "inventory.stock")
    assert out.returncode == 0, out.stderr
    (record,) = signals(prefix, "legacy")
    assert SnapshotRequest.from_json(record.value).tables == ("inventory.stock",)
    assert SnapshotRequest.from_json(record.value).where is None
    assert len(signals(prefix, "shop")) == 1, "each source has its own signal topic"


def test_an_unreachable_broker_is_one_clear_error(tmp_path, prefix):
    cfg = write_config(tmp_path / "lakeward.yaml", dsn="postgresql://postgres@127.0.0.1:5432/postgres", prefix=prefix, lake=tmp_path / "lake")
    cfg.write_text(cfg.read_text().replace(BROKER, "127.0.0.1:1"))
    out = lakeward("-c", str(cfg), "snapshot", "--source", "shop", "--table", "public.orders")
    assert out.returncode == 1
    assert "error: cannot reach the broker at 127.0.0.1:1" in out.stderr and out.stdout == ""


def test_run_logs_snapshot_progress_and_serves_the_snapshot_gauges(database, prefix, tmp_path, workers):
    """Without a terminal `lakeward run` logs each table's snapshot (a final line; a progress line every
    few seconds of a long one), and every source feeds the snapshot gauges through the same calls."""
    sql(database, "CREATE TABLE items (id int PRIMARY KEY, v text)", "INSERT INTO items SELECT g, 'x' FROM generate_series(1, 20000) g",
        "ANALYZE items")
    lake = tmp_path / "lake"
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=lake)
    port = free_port()
    worker = workers(cfg, "--metrics-port", str(port)).start()
    wait_until(lambda: lake_equals_source(database, lake, "items"), timeout=90, what="the snapshot in the lake")
    assert re.search(r"source shop: snapshotted public\.items: 20,000 rows in \d+", worker.output()), worker.output()[-3000:]
    scrape = Scrape(port)
    assert scrape.value("lakeward_source_snapshot_running", source="shop", table="public.items") == 0.0
    assert scrape.value("lakeward_source_snapshot_rows_estimate", source="shop", table="public.items") == 20000.0
    assert worker.terminate() == 0
