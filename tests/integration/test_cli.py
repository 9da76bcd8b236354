"""The `lakeward` CLI on a real lake: validate, config, query formats and time travel, status, errors."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from .harness import sql, wait_until, write_config
from .lakecheck import lake_equals_source

pytestmark = pytest.mark.integration


def cli(config, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "lakeward.app.cli", "-c", str(config), *args], capture_output=True, text=True, timeout=120)
    if ok:
        assert out.returncode == 0, out.stderr
    return out


@pytest.fixture
def lake_with_orders(database, prefix, tmp_path, workers):
    sql(database, "CREATE TABLE orders (id int PRIMARY KEY, status text, amount numeric(10,2))",
        "INSERT INTO orders SELECT g, CASE WHEN g % 3 = 0 THEN 'paid' ELSE 'new' END, g FROM generate_series(1, 30) g")
    lake = tmp_path / "lake"
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database.replace("user=postgres", "user=postgres password=hunter2"),
                       prefix=prefix, lake=lake)
    worker = workers(cfg).start()
    wait_until(lambda: lake_equals_source(database, lake, "orders"), timeout=60, what="the snapshot")
    sql(database, "DELETE FROM orders WHERE id > 20")
    wait_until(lambda: lake_equals_source(database, lake, "orders"), timeout=60, what="the deletes")
    yield cfg
    assert worker.terminate() == 0


def test_query_formats_and_time_travel(lake_with_orders):
    cfg = lake_with_orders
    q = "SELECT status, count(*) AS n FROM shop.public.orders GROUP BY 1 ORDER BY 1"
    rows = [json.loads(line) for line in cli(cfg, "query", "--format", "json", q).stdout.splitlines()]
    assert rows == [{"status": "new", "n": 14}, {"status": "paid", "n": 6}]
    parsed = list(csv.DictReader(io.StringIO(cli(cfg, "query", "--format", "csv", q).stdout)))
    assert parsed == [{"status": "new", "n": "14"}, {"status": "paid", "n": "6"}]
    assert "paid" in cli(cfg, "query", q).stdout
    first = cli(cfg, "query", "--format", "json", "--as-of", "0", "SELECT count(*) AS n FROM shop.public.orders").stdout
    assert json.loads(first) == {"n": 30}, "version 0 is the snapshot, before the deletes"
    bad = cli(cfg, "query", "SELECT * FROM shop.public.nope", ok=False)
    assert bad.returncode == 1 and "nope" in bad.stderr


def test_status_and_config(lake_with_orders):
    cfg = lake_with_orders
    report = json.loads(cli(cfg, "status", "--json").stdout)
    src = report["sources"][0]
    assert src["source"] == "shop" and src["exists"] and src["lag_bytes"] >= 0
    table = report["sinks"][0]["tables"][0]
    assert table["table"] == "shop.public.orders" and table["version"] >= 1 and table["lag"] == 0
    shown = cli(cfg, "config").stdout
    assert "hunter2" not in shown and "password=***" in shown
    assert "config ok: 1 source(s), 1 sink(s)" in cli(cfg, "validate").stdout


def test_validate_reports_file_line_and_hint(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("broker:\n  bootstrap_server: x:1\nsources: []\n")
    out = cli(bad, "validate", ok=False)
    assert out.returncode == 1
    assert f"{bad}:2: broker.bootstrap_server: unknown key 'bootstrap_server'; did you mean 'bootstrap_servers'?" in out.stderr.replace("\n", "")


def test_run_on_a_terminal_shows_snapshot_progress_bars(database, prefix, tmp_path):
    """On a terminal (a pty here) `lakeward run` draws a bar per table snapshot; logs stay readable."""
    sql(database, "CREATE TABLE items (id int PRIMARY KEY, v text)", "INSERT INTO items SELECT g, 'x' FROM generate_series(1, 20000) g",
        "ANALYZE items")
    lake = tmp_path / "lake"
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=lake)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "lakeward.app.cli", "-c", str(cfg), "run", "--metrics-port", "0"],
                            stdin=slave, stdout=slave, stderr=slave, env=dict(os.environ, COLUMNS="160", TERM="xterm"))
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (b"20000/20000" in out and b"snapshot of public.items" in out):
            if select.select([master], [], [], 0.5)[0]:
                out += os.read(master, 65536)
        wait_until(lambda: lake_equals_source(database, lake, "items"), timeout=60, what="the snapshot in the lake")
    finally:
        proc.terminate()
        proc.wait(30)
        os.close(master)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode(errors="replace"))  # colours and cursor moves
    assert "snapshot shop public.items" in text and "20000/20000" in text, text[-2000:]
    assert "source shop: snapshot of public.items: 20000 rows" in text  # the log line, above the bars
