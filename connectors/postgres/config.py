"""Config of the PostgreSQL source (`type: postgres`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lakeward.core.config import PluginConfig


class PostgresSourceConfig(PluginConfig):
    type: Literal["postgres"] = "postgres"
    """Always `postgres`."""
    dsn: str
    """libpq connection string or URL, e.g. `postgresql://user:${PGPASSWORD}@host:5432/db`. The user
    needs the REPLICATION attribute (or superuser) and SELECT on the captured tables."""
    tables: list[str] = Field(min_length=1)
    """Tables to capture as `schema.table` glob patterns, e.g. `public.*`. Tables created later that
    match are picked up while running."""
    slot: str | None = None
    """Logical replication slot name; default `lakeward_<name>`."""
    publication: str | None = None
    """Publication name; default `lakeward_<name>`. Created and kept in sync with `tables`."""
    snapshot: Literal["initial", "never"] = "initial"
    """`initial`: copy the tables' current rows first, consistent with the slot. `never`: changes only
    (a table is still read again after a schema change that rewrote its rows without row events)."""
    snapshot_fetch_rows: int = Field(default=20_000, ge=100)
    """Rows fetched per round trip by an incremental snapshot's chunk query (the initial snapshot reads
    each chunk, `snapshot_chunk_rows`, in one round trip)."""
    snapshot_parallelism: int | None = Field(default=None, ge=1)
    """Connections reading a snapshot at once, all at the same consistent point; unset: the machine's
    cores, at most 4. Each holds up to `snapshot_chunk_rows` rows in memory."""
    snapshot_chunk_rows: int = Field(default=50_000, ge=1)
    """Rows per snapshot chunk: tables are read in chunks of about this many rows (primary-key ranges
    sampled from the key index, or CTID page ranges), the unit of parallel reading and of resuming
    after a restart."""
    snapshot_chunking: Literal["key", "ctid"] = "key"
    """How tables with a primary key are split into chunks: `key` (ranges of the primary key; a
    snapshot cut short continues from the last key read) or `ctid` (ranges of heap pages, TID range
    scans, no index needed; a snapshot cut short reads a partly read table again whole). Tables
    without a usable key are always split by CTID pages."""
    status_interval_s: float = Field(default=1.0, gt=0)
    """How often (seconds) to confirm the acknowledged LSN to PostgreSQL."""
    heartbeat_interval_s: float = Field(default=10.0, ge=0)
    """Idle heartbeat (seconds): write a tiny logical message so an idle database's slot keeps
    advancing when other databases on the cluster write WAL. 0 disables it."""
    table_refresh_interval_s: float = Field(default=10.0, gt=0)
    """How often (seconds) to look for new tables matching `tables`, and for snapshot requests (`lakeward snapshot`)."""

    @property
    def slot_name(self) -> str:
        return self.slot or f"lakeward_{self.name}".lower()

    @property
    def publication_name(self) -> str:
        return self.publication or f"lakeward_{self.name}".lower()
