"""Config of the Delta Lake sink (`type: delta`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lakeward.core.config import PluginConfig


class DeltaSinkConfig(PluginConfig):
    type: Literal["delta"] = "delta"
    """Always `delta`."""
    sources: list[str] = Field(min_length=1)
    """Names of the sources whose tables this sink writes."""
    mode: Literal["mirror", "changelog"] = "mirror"
    """`mirror`: each lake table equals its source table (MERGE by primary key) plus metadata
    columns. `changelog`: every event is appended with its op, source position and commit time."""
    tables: list[str] = Field(default_factory=lambda: ["*.*"])
    """Glob patterns over `<schema>.<table>` selecting which tables of the sources to write."""
    batch_rows: int = Field(default=200_000, ge=1)
    """Flush a table once this many events are buffered for it."""
    batch_bytes: int = Field(default=16 << 20, ge=1024)
    """Flush a table once its buffered events take this many bytes. The next batch buffers while one
    is written, so a worker holds about twice this per busy table (plus the write itself)."""
    batch_interval_s: float = Field(default=1.0, gt=0)
    """Flush whatever is buffered at least this often (seconds): the lake lags the broker by about this much."""
    group_id: str | None = None
    """Consumer group id; default `lakeward.<name>`. Workers with the same group share the tables."""
    checkpoint_interval: int = Field(default=100, ge=1)
    """Write a Delta checkpoint every this many commits (table property `delta.checkpointInterval`,
    set when the sink creates a table), so readers and restarts need not replay a long log. delta-rs
    writes it right after the commit; `lakeward lake checkpoint` writes one on demand."""
    dead_letter_topic: str | None = None
    """Topic for poison events: an event that cannot be decoded, or whose value the Delta table
    rejects, goes there (with the reason and its original topic, partition and offset in headers)
    and the table goes on. Unset: the table stops at the first poison event, with an error naming
    it; nothing is ever skipped silently. Schema changes Delta cannot represent stop the table either way."""
