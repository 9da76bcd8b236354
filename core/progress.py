"""Snapshot progress: sources report it here; on a terminal `lakeward run` shows it as rich bars.

Workers usually run under a supervisor with their logs collected, where bars are noise: the default
reporter does nothing (each source logs a line per finished table anyway). `lakeward run` on a
terminal with text logs installs `SnapshotBars`. Reporting is thread-safe: the MySQL snapshot runs
in a reader thread.
"""

from __future__ import annotations

import threading
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn


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


class SnapshotBars:
    """One bar per table being snapshotted (total: the database's row estimate); the display runs
    only while a snapshot does, so streaming logs are plain lines again afterwards."""

    def __init__(self, console: Console):
        self.console = console
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._tasks: dict[tuple[str, str], TaskID] = {}

    def start(self, source: str, table: str, estimate: int | None) -> None:
        with self._lock:
            if self._progress is None:
                self._progress = Progress(TextColumn("snapshot [bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                          TextColumn("rows"), TimeElapsedColumn(), TimeRemainingColumn(), console=self.console)
                self._progress.start()
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


snapshots: SnapshotProgress = _Silent()
"""Where sources report snapshot progress (see `install`)."""


def install(reporter: SnapshotProgress) -> None:
    global snapshots
    snapshots = reporter
