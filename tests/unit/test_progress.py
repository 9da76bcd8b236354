"""Snapshot progress as sources report it: the log reporter (rate limit, format, threads), the
gauges every source gets from the same calls, the bars, and the snapshot table of `lakeward status`."""

from __future__ import annotations

import io
import logging
import re
import threading
import time

from prometheus_client import REGISTRY
from rich.console import Console

from lakeward.app import cli
from lakeward.core import progress
from lakeward.core.snapshot import TableProgress
from lakeward.core.source import SourceStatus


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def reporter(interval_s: float = 5.0, clock: Clock | None = None) -> tuple[progress.SnapshotLog, Clock, Lines]:
    logger = logging.getLogger(f"test.progress.{id(object())}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    lines = Lines()
    logger.addHandler(lines)
    clock = clock or Clock()
    return progress.SnapshotLog(logger, interval_s, clock), clock, lines


def test_log_lines_are_rate_limited_and_say_rows_speed_and_eta():
    log, clock, out = reporter()
    log.start("shop", "public.items", 10_000_000)
    for _ in range(40):  # 40 chunks within 4 s: no line yet
        clock.now += 0.1
        log.advance("shop", "public.items", 30_000)
    assert out.lines == []
    clock.now += 1.0  # 5 s since the start, 1,200,000 rows
    log.advance("shop", "public.items", 0)
    assert out.lines == ["source shop: snapshotting public.items: 1,200,000/10,000,000 rows (12%), 240,000 rows/s, ETA 37s"]
    clock.now += 1.0
    log.advance("shop", "public.items", 100_000)
    assert len(out.lines) == 1, "the next line waits for the interval"
    clock.now += 4.0
    log.advance("shop", "public.items", 800_000)  # 900,000 rows in the last 5 s: the rate is that window's
    assert out.lines[-1] == "source shop: snapshotting public.items: 2,100,000/10,000,000 rows (21%), 180,000 rows/s, ETA 44s"
    clock.now += 2.0
    log.finish("shop", "public.items")
    assert out.lines[-1] == "source shop: snapshotted public.items: 2,100,000 rows in 12s, 175,000 rows/s"
    assert len(out.lines) == 3
    assert not any("snapshot of" in line for line in out.lines), "the sources' own per-table line reads `snapshot of T: N rows in S`"


def test_log_lines_without_or_beyond_the_estimate():
    log, clock, out = reporter()
    log.start("inv", "inventory.stock", None)
    clock.now += 5
    log.advance("inv", "inventory.stock", 5_000)
    assert out.lines[-1] == "source inv: snapshotting inventory.stock: 5,000 rows, 1,000 rows/s"
    log.start("inv", "inventory.moves", 1_000)  # table_rows can be far off
    clock.now += 600
    log.advance("inv", "inventory.moves", 3_000)
    assert out.lines[-1] == "source inv: snapshotting inventory.moves: 3,000 rows (estimate was 1,000), 5 rows/s"
    log.start("shop", "public.big", 10_000_000)
    clock.now += 5
    log.advance("shop", "public.big", 5)
    assert out.lines[-1].endswith(": 5/10,000,000 rows (0%), 1 rows/s, ETA 2777h46m")
    clock.now += 3600 + 65
    log.finish("inv", "inventory.stock")
    assert out.lines[-1] == "source inv: snapshotted inventory.stock: 5,000 rows in 1h11m, 1 rows/s"


def test_advance_without_start_and_finish_twice_do_no_harm():
    log, clock, out = reporter()
    log.advance("shop", "public.t", 10)
    clock.now += 5
    log.advance("shop", "public.t", 10)
    assert out.lines == ["source shop: snapshotting public.t: 20 rows, 4 rows/s"]
    log.finish("shop", "public.t")
    log.finish("shop", "public.t")
    assert len(out.lines) == 2


def test_reports_from_threads_count_every_row_once():
    log, clock, out = reporter(interval_s=0.0, clock=time.monotonic)  # a line whenever the clock moved: the most contention
    tables = [f"db.t{i}" for i in range(4)]
    for t in tables:
        log.start("inv", t, 40_000)

    def report(table: str) -> None:
        for _ in range(2_000):
            log.advance("inv", table, 5)
            log.advance("inv", tables[0], 1)  # every thread also reports into one shared table

    threads = [threading.Thread(target=report, args=(t,)) for t in tables]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out.lines) > 10, "progress lines were logged while the threads reported"
    for t in tables:
        log.finish("inv", t)
    finals = {m.group(1): int(m.group(2).replace(",", "")) for m in (re.match(r"source inv: snapshotted (\S+): ([\d,]+) rows", line)
                                                                    for line in out.lines) if m}
    assert finals == {"db.t0": 10_000 + 8_000, "db.t1": 10_000, "db.t2": 10_000, "db.t3": 10_000}


def _sample(name: str, source: str, table: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"source": source, "table": table})


def test_gauges_follow_the_calls_whatever_display_is_installed():
    try:
        for display in (None, progress.SnapshotBars(Console(file=io.StringIO())), progress.SnapshotLog()):
            progress.install(display)
            bars = progress.snapshots  # what a source looks up per table
            bars.start("gshop", "public.items", 1234)
            assert _sample("lakeward_source_snapshot_running", "gshop", "public.items") == 1.0
            assert _sample("lakeward_source_snapshot_rows_estimate", "gshop", "public.items") == 1234.0
            bars.advance("gshop", "public.items", 100)
            bars.finish("gshop", "public.items")
            assert _sample("lakeward_source_snapshot_running", "gshop", "public.items") == 0.0
        progress.snapshots.start("gshop", "public.never_analyzed", -1)  # reltuples -1: no estimate to show
        assert _sample("lakeward_source_snapshot_rows_estimate", "gshop", "public.never_analyzed") is None
        progress.snapshots.finish("gshop", "public.never_analyzed")
    finally:
        progress.install(progress.SnapshotLog())


def test_bars_show_rows_per_second_and_eta():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    bars = progress.SnapshotBars(console)
    bars.start("shop", "public.items", 20_000)
    for _ in range(20):
        bars.advance("shop", "public.items", 1_000)
    bars._progress.refresh()  # type: ignore[union-attr]
    bars.start("shop", "public.items", 20_000)  # started again (a retried run): still one bar
    assert len(bars._progress.tasks) == 1  # type: ignore[union-attr]
    bars.advance("shop", "public.items", 20_000)
    bars.finish("shop", "public.items")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "snapshot shop public.items" in text and "20000/20000 rows" in text, text
    assert re.search(r"[\d,]+ rows/s", text), text
    assert "ETA" in text
    assert bars._progress is None, "the display stops with the last table"


def test_status_prints_the_sources_snapshot_list():
    report = {"sources": [
        SourceStatus("shop", "postgres", "slot lakeward_shop", exists=True, confirmed="0/1", lag_bytes=0, active=True, snapshot=[
            TableProgress("public.items", "initial", 1_200_000, estimate=10_000_000, chunks_done=24, chunks=200),
            TableProgress("public.orders", "incremental", 30, estimate=-1, chunks_done=1, done=True, extra={"reason": "request"}),
        ]),
        SourceStatus("inv", "mysql", "binlog, server_id 5", exists=True),  # reports no snapshot list: nothing extra
    ], "sinks": []}
    out = io.StringIO()
    cli.print_status(report, Console(file=out, width=160, color_system=None))
    text = out.getvalue()
    assert "Snapshot of shop" in text and "Snapshot of inv" not in text
    items = next(line for line in text.splitlines() if "public.items" in line)
    assert re.search(r"public\.items\s+│\s+initial\s+│\s+1,200,000 \(12%\)\s+│\s+10,000,000\s+│\s+24/200\s+│\s+in progress", items), items
    orders = next(line for line in text.splitlines() if "public.orders" in line)
    assert re.search(r"public\.orders\s+│\s+incremental\s+│\s+30\s+│\s+│\s+1\s+│\s+done", orders), orders
