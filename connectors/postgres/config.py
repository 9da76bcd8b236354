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
    """Rows fetched per round trip while snapshotting."""
    snapshot_chunk_rows: int = Field(default=50_000, ge=100)
    """Rows per snapshot chunk."""
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
