"""Config of the MySQL/MariaDB source (`type: mysql`)."""

from __future__ import annotations

import zlib
from typing import Literal

from pydantic import Field

from lakeward.core.config import PluginConfig
from lakeward.core.snapshot import default_parallelism


class MySQLSourceConfig(PluginConfig):
    type: Literal["mysql"] = "mysql"
    """Always `mysql` (MySQL 8.0.14+ and MariaDB 10.5+, read through their binlog)."""
    host: str = "localhost"
    """Host name or address of the MySQL/MariaDB server."""
    port: int = Field(default=3306, ge=1, le=65535)
    """TCP port of the server."""
    user: str
    """User with REPLICATION SLAVE, REPLICATION CLIENT (MariaDB: BINLOG MONITOR) and SELECT on the
    captured tables; on MySQL also RELOAD (a brief FLUSH TABLES WITH READ LOCK pins the snapshot's
    binlog position)."""
    password: str | None = None
    """Password of `user` (masked when shown); use `${VAR}` or `${file:/path}`."""
    tables: list[str] = Field(min_length=1)
    """Tables to capture as `database.table` glob patterns, e.g. `inventory.*`. Tables that appear
    later (CREATE TABLE, RENAME TABLE) and match are captured too."""
    server_id: int | None = Field(default=None, ge=1, le=4294967295)
    """Replica server id this source registers with; must differ from every other replica (and
    source) reading the server. Default: 1000000 + crc32(`lakeward:<name>`) mod 1000000."""
    snapshot: Literal["initial", "never"] = "initial"
    """`initial`: copy the tables' current rows first, consistent with a binlog position, then
    stream from exactly there. `never`: changes only, from the binlog's current end (a table is
    still read again after DDL that rewrote its rows without row events, or renamed it)."""
    snapshot_chunk_rows: int = Field(default=10_000, ge=10)
    """Rows per snapshot chunk: chunk boundaries are every `snapshot_chunk_rows`-th primary key,
    sampled inside the consistent snapshot; a table without a primary key is one chunk (a full scan)."""
    snapshot_parallelism: int | None = Field(default=None, ge=1, le=64)
    """Connections reading the initial snapshot at once, all at one binlog position (chunks are
    published in order per table). Default: the machine's cores, at most 4. MariaDB may fall back to
    one connection (docs/mysql.md, Snapshot)."""
    status_interval_s: float = Field(default=1.0, gt=0)
    """How often (seconds) the resume position, once the broker acknowledged everything before it,
    is written to the state topic `<prefix>.<source>.__state`."""
    heartbeat_interval_s: float = Field(default=1.0, gt=0, le=3600)
    """Server heartbeat period (seconds) on an idle binlog: bounds the latency of the last events;
    a connection silent for max(30, 5 × this) seconds is considered dead and reopened."""
    tinyint1_as_boolean: bool = True
    """Map `TINYINT(1)` (and `BOOL`, which MySQL stores as it) to the lake type `boolean` (any
    non-zero value is true). False: `byte`, like any other TINYINT."""
    connect_timeout_s: float = Field(default=10.0, gt=0)
    """Timeout (seconds) for connecting to the server."""

    @property
    def effective_server_id(self) -> int:
        """`server_id`, or a stable number in 1000000..1999999 derived from the source name."""
        if self.server_id is not None:
            return self.server_id
        return 1_000_000 + zlib.crc32(f"lakeward:{self.name}".encode()) % 1_000_000

    @property
    def effective_snapshot_parallelism(self) -> int:
        """`snapshot_parallelism`, or core.snapshot.default_parallelism()."""
        return self.snapshot_parallelism or default_parallelism()

    @property
    def where(self) -> str:
        """`host:port`, for messages."""
        return f"{self.host}:{self.port}"
