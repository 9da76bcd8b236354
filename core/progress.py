"""Snapshot progress: sources report it here; it is shown as log lines, rich bars and metrics.

Sources call `snapshots.start/advance/finish` per table (initial snapshots and incremental jobs
alike). What that feeds:

- always the Prometheus gauges (`metrics.SnapshotGauges`: the row estimate and whether a table's
  snapshot runs), so every source has them without code of its own;
- by default `SnapshotLog`: a log line per table every few seconds (rows, rows/s, ETA) and one when
  it ends — workers usually run under a supervisor with their logs collected, where bars are noise;
- `SnapshotBars` instead when `lakeward run` runs on a terminal with text logs.

Reporting is thread-safe: the MySQL snapshot runs in a reader thread. `advance` is called per
fetched batch or chunk, so it only adds and compares under a lock; a line is formatted only when
one is due.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from lakeward.core import metrics

LOG_INTERVAL_S = 5.0
"""How often `SnapshotLog` logs a running table's progress."""

log = logging.getLogger("lakeward.snapshot")


class SnapshotProgress(Protocol):
    def start(self, source: str, table: str, estimate: int | None) -> None: ...

    def advance(self, source: str, table: str, rows: int) -> None: ...

    def finish(self, source: str, table: str) -> None: ...


class _Silent:
    def start(self, source: str, table: str, estimate: int | None) -> None:
        pass

    def advance(self, source: str, table: str, rows: int) -> None:
        pass

    def finish(self, source: str, table: str) -> None:
        pass


# --- log lines ------------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """`49s`, `12m05s`, `3h20m`: short enough for a log line, exact enough for an ETA."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


# The sources log `snapshot of <table>: N rows in S` per finished table, and tests and operators count
# those lines: these lines read differently ("snapshotting", "snapshotted") so they are not counted with them.


def progress_line(table: str, rows: int, estimate: int | None, rows_per_s: float) -> str:
    """`snapshotting public.items: 1,200,000/10,000,000 rows (12%), 180,000 rows/s, ETA 49s`."""
    speed = f"{rows_per_s:,.0f} rows/s"
    if not estimate or estimate <= 0:
        return f"snapshotting {table}: {rows:,} rows, {speed}"
    if rows > estimate:  # the estimate (reltuples, table_rows) was low: no honest ETA
        return f"snapshotting {table}: {rows:,} rows (estimate was {estimate:,}), {speed}"
    eta = duration((estimate - rows) / rows_per_s) if rows_per_s > 0 else "unknown"
    return f"snapshotting {table}: {rows:,}/{estimate:,} rows ({rows * 100 // estimate}%), {speed}, ETA {eta}"


def finished_line(table: str, rows: int, seconds: float) -> str:
    speed = rows / seconds if seconds > 0 else 0.0
    return f"snapshotted {table}: {rows:,} rows in {duration(seconds)}, {speed:,.0f} rows/s"


@dataclass
class _Run:
    estimate: int | None
    started: float
    rows: int = 0
    logged_at: float = 0.0
    logged_rows: int = 0


class SnapshotLog:
    """The reporter for collected logs: per table a line every `interval_s` while its snapshot runs
    (its rate over that interval, and the ETA from it) and a final line; never a line per chunk."""

    def __init__(self, logger: logging.Logger = log, interval_s: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self._log = logger
        self._interval = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._runs: dict[tuple[str, str], _Run] = {}

    def start(self, source: str, table: str, estimate: int | None) -> None:
        now = self._clock()
        with self._lock:
            self._runs[(source, table)] = _Run(estimate, now, logged_at=now)

    def advance(self, source: str, table: str, rows: int) -> None:
        now = self._clock()
        with self._lock:
            run = self._runs.get((source, table))
            if run is None:  # advance without start: count from here rather than lose the table
                run = self._runs[(source, table)] = _Run(None, now, logged_at=now)
            run.rows += rows
            elapsed = now - run.logged_at
            if elapsed < self._interval or elapsed <= 0:
                return
            rate = (run.rows - run.logged_rows) / elapsed
            run.logged_at, run.logged_rows = now, run.rows
            line = progress_line(table, run.rows, run.estimate, rate)
        self._log.info("source %s: %s", source, line)  # outside the lock: a slow handler holds up no other thread

    def finish(self, source: str, table: str) -> None:
        now = self._clock()
        with self._lock:
            run = self._runs.pop((source, table), None)
        if run is not None:
            self._log.info("source %s: %s", source, finished_line(table, run.rows, now - run.started))


# --- bars ---------------------------------------------------------------------------------------


class RowsPerSecondColumn(ProgressColumn):
    """`180,000 rows/s` (rich's TransferSpeedColumn shows bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} rows/s", style="progress.data.speed")


class SnapshotBars:
    """One bar per table being snapshotted (total: the database's row estimate) with rows/s and
    ETA; the display runs only while a snapshot does, so streaming logs are plain lines again afterwards."""

    def __init__(self, console: Console):
        self.console = console
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._tasks: dict[tuple[str, str], TaskID] = {}

    def start(self, source: str, table: str, estimate: int | None) -> None:
        with self._lock:
            if self._progress is None:
                self._progress = Progress(TextColumn("snapshot [bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                          TextColumn("rows"), RowsPerSecondColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                                          TimeRemainingColumn(), console=self.console)
                self._progress.start()
            old = self._tasks.pop((source, table), None)
            if old is not None:  # started again (a retried run): one bar per table
                self._progress.remove_task(old)
            self._tasks[(source, table)] = self._progress.add_task(f"{source} {table}", total=estimate if estimate and estimate > 0 else None)

    def advance(self, source: str, table: str, rows: int) -> None:
        with self._lock:
            task = self._tasks.get((source, table))
            if task is not None and self._progress is not None:
                self._progress.advance(task, rows)

    def finish(self, source: str, table: str) -> None:
        with self._lock:
            task = self._tasks.pop((source, table), None)
            if task is None or self._progress is None:
                return
            done = next(t.completed for t in self._progress.tasks if t.id == task)
            self._progress.update(task, total=done)  # the estimate was only an estimate
            if not self._tasks:
                self._progress.stop()
                self._progress = None


# --- where sources report -----------------------------------------------------------------------


class _Both:
    """The metrics and one display, fed by the same calls."""

    def __init__(self, *reporters: SnapshotProgress):
        self.reporters = reporters

    def start(self, source: str, table: str, estimate: int | None) -> None:
        for r in self.reporters:
            r.start(source, table, estimate)

    def advance(self, source: str, table: str, rows: int) -> None:
        for r in self.reporters:
            r.advance(source, table, rows)

    def finish(self, source: str, table: str) -> None:
        for r in self.reporters:
            r.finish(source, table)


GAUGES = metrics.SnapshotGauges()

snapshots: SnapshotProgress = _Both(GAUGES, SnapshotLog())
"""Where sources report snapshot progress (see `install`). Sources look it up per table, so an
`install` before the workers start takes effect."""


def install(reporter: SnapshotProgress | None) -> None:
    """Show progress with `reporter` (e.g. SnapshotBars) instead of log lines; None: metrics only.
    The metrics are fed either way."""
    global snapshots
    snapshots = _Both(GAUGES, reporter if reporter is not None else _Silent())
