"""`/metrics`, `/healthz` and `/readyz` of real `lakeward run` workers, scraped over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .harness import BROKER, free_port, http_get, msql, sql, wait_until, write_config, write_mysql_config
from .lakecheck import lake_equals_source

pytestmark = pytest.mark.integration

OPS = ("c", "u", "d", "r", "t")


class Scrape:
    """One scrape of /metrics: samples by name and labels."""

    def __init__(self, port: int):
        status, text = http_get(port, "/metrics")
        assert status == 200, text
        self.samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]

    def value(self, name: str, **labels: str) -> float | None:
        """The sum of the samples of `name` whose labels include `labels`; None when there is none."""
        hits = [s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items()]
        return sum(hits) if hits else None

    def by_op(self, name: str, **labels: str) -> dict[str, int]:
        return {op: int(v) for op in OPS if (v := self.value(name, op=op, **labels))}


def scrape(port: int) -> Scrape | None:
    try:
        return Scrape(port)
    except OSError:  # not listening yet
        return None


def equal_when_scraped(port: int, read, want):
    """wait_until predicate: True once read(scrape) == want, else what was read."""
    def check():
        s = scrape(port)
        got = read(s) if s else None
        return True if got == want else f"got {got}, want {want}"
    return check


def test_pipeline_metrics_count_every_change(database, prefix, tmp_path, workers):
    sql(database, "CREATE TABLE orders (id int PRIMARY KEY, v int)", "INSERT INTO orders SELECT g, g FROM generate_series(1, 100) g")
    lake = tmp_path / "lake"
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=lake)
    src_port, sink_port = free_port(), free_port()
    source = workers(cfg, "--source", "shop", "--metrics-port", str(src_port)).start()
    sink = workers(cfg, "--sink", "lake", "--metrics-port", str(sink_port)).start()
    wait_until(lambda: lake_equals_source(database, lake, "orders"), timeout=60, what="the snapshot to land")

    sql(database,
        "INSERT INTO orders SELECT g, g FROM generate_series(101, 130) g",  # 30 c
        "UPDATE orders SET v = -v WHERE id <= 20",                          # 20 u
        "DELETE FROM orders WHERE id > 120",                                # 10 d
        "ALTER TABLE orders ADD COLUMN note text",
        "INSERT INTO orders (id, v, note) VALUES (1000, 1, 'new column')")  # 1 c with a new schema
    wait_until(lambda: lake_equals_source(database, lake, "orders"), timeout=60, what="the changes to land")
    want = {"r": 100, "t": 1, "c": 31, "u": 20, "d": 10}
    table = {"table": "public.orders"}

    wait_until(equal_when_scraped(src_port, lambda s: s.by_op("lakeward_source_events_read_total", source="shop", **table), want),
               timeout=30, what="the source's events read per op")
    wait_until(equal_when_scraped(src_port, lambda s: s.value("lakeward_source_events_published_total", source="shop", **table),
                                  sum(want.values())), timeout=30, what="the events the broker acknowledged")
    s = Scrape(src_port)
    assert s.value("lakeward_source_snapshot_rows_total", source="shop", **table) == 100
    assert s.value("lakeward_source_schema_changes_total", source="shop", **table) == 1
    wait_until(lambda: (scrape(src_port) or s).value("lakeward_source_lag_bytes", source="shop") is not None, timeout=30,
               what="the slot's lag in bytes")
    assert 0 <= s.value("lakeward_source_lag_seconds", source="shop") < 60
    assert s.value("lakeward_source_last_commit_timestamp_seconds", source="shop") > 1.6e9
    assert s.value("lakeward_worker_ready", kind="source", worker="shop") == 1
    assert s.value("lakeward_errors_total") is None, "no run of the worker failed"

    wait_until(equal_when_scraped(sink_port, lambda s: s.by_op("lakeward_sink_rows_applied_total", sink="lake", table="shop.public.orders"),
                                  want), timeout=30, what="the sink's rows applied per op")
    wait_until(equal_when_scraped(sink_port, lambda s: s.value("lakeward_sink_consumer_lag_messages", sink="lake",
                                                               table="shop.public.orders", partition="0"), 0),
               timeout=30, what="the consumer lag to drop to 0")
    k = Scrape(sink_port)
    sink_table = {"sink": "lake", "table": "shop.public.orders"}
    assert k.by_op("lakeward_sink_events_consumed_total", **sink_table) == want
    assert k.value("lakeward_delta_commits_total", **sink_table) > 0
    assert k.value("lakeward_sink_batch_events_count", sink="lake") > 0
    assert k.value("lakeward_sink_batch_events_sum", sink="lake") == sum(want.values())
    assert k.value("lakeward_sink_flush_duration_seconds_count", sink="lake") > 0
    assert k.value("lakeward_delta_commit_duration_seconds_count", sink="lake") > 0
    assert k.value("lakeward_sink_duplicates_dropped_total", **sink_table) == 0
    assert k.value("lakeward_sink_schema_changes_total", **sink_table) == 1
    assert k.value("lakeward_delta_commit_conflicts_total", **sink_table) == 0
    assert k.value("lakeward_sink_stopped_tables", sink="lake") == 0
    assert k.value("lakeward_sink_assigned_tables", sink="lake") == 1
    assert k.value("lakeward_worker_ready", kind="sink", worker="lake") == 1
    assert not any(x.name.endswith("_created") for x in k.samples)

    for port in (src_port, sink_port):
        assert http_get(port, "/healthz") == (200, "ok\n")
        assert http_get(port, "/readyz") == (200, "ready\n")
        assert http_get(port, "/nope")[0] == 404
    assert source.terminate() == 0, source.output()
    assert sink.terminate() == 0, sink.output()


def test_readyz_says_what_is_not_ready(database, prefix, tmp_path, workers):
    """Broker unreachable: /readyz is 503 naming it for the source and the sink; /healthz stays 200.
    The port comes from the config's `metrics:` section this time."""
    dead = free_port()
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=tmp_path / "lake")
    port = free_port()
    cfg.write_text(cfg.read_text().replace(f"bootstrap_servers: {BROKER}", f"bootstrap_servers: 127.0.0.1:{dead}")
                   + f"metrics:\n  port: {port}\n")
    worker = workers(cfg).start()

    def not_ready() -> bool | str:
        try:
            status, body = http_get(port, "/readyz")
        except OSError as e:
            return str(e)
        return status == 503 and "source shop:" in body and "sink lake:" in body and f"127.0.0.1:{dead}" in body or body

    wait_until(not_ready, timeout=30, what="/readyz to report the unreachable broker")
    status, body = http_get(port, "/readyz")
    assert "cannot reach the broker" in body, body
    assert http_get(port, "/healthz") == (200, "ok\n")

    # The broker probe may make /readyz say so before a worker's own run has failed and been counted.
    def counted() -> bool | str:
        s = Scrape(port)
        errors = [s.value("lakeward_errors_total", kind=kind, worker=name, type="ConnectionFailed") for kind, name in
                  (("source", "shop"), ("sink", "lake"))]
        return all(e is not None and e >= 1 for e in errors) or f"lakeward_errors_total: {errors}"

    wait_until(counted, timeout=30, what="each worker's ConnectionFailed to be counted")
    s = Scrape(port)
    assert s.value("lakeward_worker_ready", kind="source", worker="shop") == 0
    assert worker.terminate() == 0, worker.output()


def test_mysql_source_metrics(mysql_db, prefix, tmp_path: Path, workers):
    db = mysql_db
    msql("CREATE TABLE items (id int PRIMARY KEY, qty int)", "INSERT INTO items SELECT seq, seq FROM seq_1_to_10", db=db)
    cfg = write_mysql_config(tmp_path / "lakeward.yaml", db=db, prefix=prefix, lake=tmp_path / "lake")
    port = free_port()
    worker = workers(cfg, "--source", "legacy", "--metrics-port", str(port)).start()
    table = {"source": "legacy", "table": f"{db}.items"}
    wait_until(equal_when_scraped(port, lambda s: s.by_op("lakeward_source_events_read_total", **table), {"t": 1, "r": 10}),
               timeout=60, what="the snapshot's events")
    msql("INSERT INTO items VALUES (11, 11), (12, 12), (13, 13)", "UPDATE items SET qty = 0 WHERE id <= 2",
         "UPDATE items SET id = 100 WHERE id = 3", "DELETE FROM items WHERE id = 4", db=db)
    want = {"t": 1, "r": 10, "c": 4, "u": 2, "d": 2}  # the primary-key change is a d and a c
    wait_until(equal_when_scraped(port, lambda s: s.by_op("lakeward_source_events_read_total", **table), want),
               timeout=60, what="the streamed events per op")
    wait_until(equal_when_scraped(port, lambda s: s.value("lakeward_source_events_published_total", **table), sum(want.values())),
               timeout=30, what="the events the broker acknowledged")
    s = Scrape(port)
    assert s.value("lakeward_source_snapshot_rows_total", **table) == 10
    wait_until(lambda: (scrape(port) or s).value("lakeward_source_lag_bytes", source="legacy") is not None, timeout=30,
               what="the binlog lag in bytes")
    wait_until(lambda: (scrape(port) or s).value("lakeward_source_lag_seconds", source="legacy") == 0, timeout=30,
               what="the lag in seconds to read 0 once the source is idle (a heartbeat came)")
    assert http_get(port, "/readyz") == (200, "ready\n")
    assert worker.terminate() == 0, worker.output()
