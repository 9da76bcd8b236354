"""The source contract: capture one database into the broker's table topics.

A source publishes every change as an event (see lakeward.core.events) and tells its database a
position is done only after the broker acknowledged every event at or before it. After a crash it
may publish some events again; their positions let sinks drop the repeats.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any

from lakeward.core.config import BrokerConfig, PluginConfig


class Source(ABC):
    health_checks: tuple[str, ...] = ("database", "broker")
    """What /readyz waits for (core/metrics.py): the runner marks each pending when a run starts, and
    the source reports each as it connects — `database` (its connection works), `broker` (its
    producer is connected; re-checked in the background while running)."""

    def __init__(self, config: PluginConfig, *, broker: BrokerConfig):
        self.config = config
        self.broker = broker

    @abstractmethod
    async def run(self, stop: asyncio.Event) -> None:
        """Snapshot if needed, then stream until `stop` is set; return after draining in-flight work."""

    @abstractmethod
    async def check(self) -> None:
        """Verify the database is reachable and set up for CDC; raise a TerminalError saying what to fix."""

    @abstractmethod
    async def status(self) -> dict[str, Any]:
        """Lag and position facts for `lakeward status`."""
