"""The sink contract: consume table topics and write them to the lake, exactly once.

Like Quix Streams' sinks: buffer per topic-partition, flush, and only then count the offsets as
consumed. Lakeward's Delta sink stores the offsets in the same commit as the data, so a flush and
its offsets land together or not at all.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any

from lakeward.core.config import BrokerConfig, LakeConfig, PluginConfig


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
    async def status(self) -> dict[str, Any]:
        """Consumer lag and table versions for `lakeward status`."""
