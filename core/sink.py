"""The sink contract: consume table topics and write them to the lake, exactly once.

Like Quix Streams' sinks: buffer per topic-partition, flush, and only then count the offsets as
consumed. Lakeward's Delta sink stores the offsets in the same commit as the data, so a flush and
its offsets land together or not at all.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

from lakeward.core.config import BrokerConfig, LakeConfig, PluginConfig


@dataclass(slots=True)
class FlushReport:
    """What a table's last flush did."""

    events: int
    offsets: str
    """First-last offset it covered."""
    kind: str
    """merge, overwrite, append or none."""
    rows: int
    build_s: float
    """Seconds to decode and plan the batch."""
    commit_s: float
    """Seconds to write it (dead letters and the Delta commit)."""
    committed: bool


@dataclass(slots=True)
class TableStatus:
    """One lake table of a sink: its progress in the lake and the stream, and its error.

    A sink that is not running reports only what the lake and the broker tell (the other fields None).
    """

    table: str
    topic: str
    partition: int
    uri: str
    mode: str
    state: str
    """running, retrying, stopped (live); not running, no table yet (offline)."""
    version: int | None = None
    last_commit: str | None = None
    committed_offset: int | None = None
    """The txn: last offset the Delta table applied."""
    last_position: str | None = None
    lag: int | None = None
    """Events on the broker not consumed yet (offline: not in the lake yet)."""
    lake_lag: int | None = None
    """Events on the broker not in the lake yet (live)."""
    next_offset: int | None = None
    duplicates_dropped: int | None = None
    dead_lettered: int | None = None
    rows_applied: int | None = None
    commits: int | None = None
    buffered_events: int | None = None
    last_flush: FlushReport | None = None
    error: str | None = None
    error_type: str | None = None
    retrying: str | None = None


@dataclass(slots=True)
class SinkStatus:
    """A sink's tables for `lakeward status`."""

    sink: str
    type: str
    group_id: str
    mode: str
    lake: str
    running: bool
    tables: list[TableStatus] = field(default_factory=list)

    @property
    def stopped_tables(self) -> list[str]:
        return [t.table for t in self.tables if t.error]

    def to_dict(self) -> dict[str, Any]:
        """As `lakeward status --json` prints it."""
        return {**asdict(self), "stopped_tables": self.stopped_tables}


class Sink(ABC):
    health_checks: tuple[str, ...] = ("broker", "tables")
    """What /readyz waits for (core/metrics.py): `broker` (the consumer is connected; re-checked in
    the background while running) and `tables` (not every assigned table is stopped on an error)."""

    def __init__(self, config: PluginConfig, *, broker: BrokerConfig, lake: LakeConfig):
        self.config = config
        self.broker = broker
        self.lake = lake

    @abstractmethod
    async def run(self, stop: asyncio.Event) -> None:
        """Consume and write until `stop` is set; flush what is buffered, then return."""

    @abstractmethod
    async def status(self) -> SinkStatus:
        """Consumer lag and table versions for `lakeward status`."""
