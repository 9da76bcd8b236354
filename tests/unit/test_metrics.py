"""The metric names follow Prometheus conventions, docs/operations.md lists each one, and the
readiness rules of core/metrics.py say what they promise."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from lakeward.core import metrics
from lakeward.core.config import parse_config
from lakeward.core.errors import ConfigError

from .cancelling import ends_on_cancel

OURS = [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]
LABELS = {"source", "sink", "table", "op", "partition", "kind", "worker", "type"}
UNITS = ("_seconds", "_bytes", "_messages", "_events", "_tables", "_ready", "_rows_estimate", "_running")


def _families(metric: MetricWrapperBase) -> list:
    return list(metric.describe())


def test_every_metric_is_ours_and_conventional():
    assert len(OURS) >= 20
    for m in OURS:
        (family,) = _families(m)
        assert family.name.startswith("lakeward_"), family.name
        assert family.documentation, f"{family.name} has no help text"
        assert set(m._labelnames) <= LABELS, f"{family.name}: labels {m._labelnames} (keep them low-cardinality)"
        if isinstance(m, Counter):
            assert family.type == "counter"
        elif isinstance(m, Histogram):
            assert family.name.endswith(("_seconds", "_events")), family.name
        elif isinstance(m, Gauge):
            assert family.name.endswith(UNITS), f"{family.name}: a gauge names its unit"


def test_counters_are_exposed_with_total():
    for m in OURS:
        if not isinstance(m, Counter):
            continue
        values = ["x"] * len(m._labelnames)
        m.labels(*values)
        try:
            samples = [s.name for fam in m.collect() for s in fam.samples]
        finally:
            m.remove(*values)
        assert samples and all(n.endswith("_total") for n in samples), samples


def test_operations_doc_lists_every_metric():
    doc = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    for m in OURS:
        (family,) = _families(m)
        name = f"{family.name}_total" if isinstance(m, Counter) else family.name
        assert f"`{name}`" in doc, f"docs/operations.md does not list {name}"


def test_readiness_names_what_is_not_ready():
    health = metrics.Health()
    w = health.worker("source", "shop")
    assert health.readiness() == (False, "source shop: not running")
    w.starting(("database", "broker"))
    w.ok("database")
    ok, text = health.readiness()
    assert not ok and text == "source shop: broker: starting"
    w.stopped("cannot reach the broker at 127.0.0.1:1 (KafkaConnectionError: refused)")
    ok, text = health.readiness()
    assert not ok and "not running; last error: cannot reach the broker at 127.0.0.1:1" in text
    w.starting(("database", "broker"))
    w.ok("database")
    assert "last error: cannot reach the broker" in health.readiness()[1], "the last error stays until every check passes"
    w.ok("broker")
    assert health.readiness() == (True, "ready")
    w.problem("broker", "broker at x:9092: KafkaError: postgresql://u:secret@h/db")
    assert "secret" not in health.readiness()[1], "reasons are masked like log lines"


def test_liveness_fails_when_the_loop_stalls():
    health = metrics.Health()
    assert health.liveness()[0]
    health.loop_tick = 0.0  # time.monotonic() is far past LOOP_STALL_S
    ok, text = health.liveness()
    assert not ok and "event loop has not run" in text
    assert not health.readiness()[0]


def test_metrics_config_defaults_and_validation():
    cfg = parse_config("metrics:\n  port: 9999\n")
    assert (cfg.metrics.enabled, cfg.metrics.host, cfg.metrics.port) == (True, "127.0.0.1", 9999)
    assert parse_config("").metrics.port == 9464
    with pytest.raises(ConfigError, match="did you mean 'port'"):
        parse_config("metrics:\n  prot: 1\n")


async def test_a_probe_watch_ends_when_cancelled_as_its_probe_completes():
    """A probe that answers at once is often done just as the worker stops and cancels its watch:
    the watch must still end. (With Python 3.11's asyncio.wait_for the cancel was lost and the watch
    looped on, so a sink's stop hung in `metrics.background`.)"""
    async def probe() -> None:
        await asyncio.sleep(0)

    health = metrics.HEALTH.worker("sink", "cancel-race")
    for yields in range(12):  # cancel at every point of the first probe cycles
        task = asyncio.create_task(metrics.watch(health, "broker", probe, what="test", interval_s=0))
        for _ in range(yields):
            await asyncio.sleep(0)
        assert await ends_on_cancel(task), f"the watch went on after a cancel {yields} loop cycles in"
