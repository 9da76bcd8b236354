"""The event model: what a source publishes and a sink consumes.

One topic per source table, `<prefix>.<source>.<schema>.<table>`, with one partition: a Delta table
has a single writer anyway, and one partition keeps every change of a table (TRUNCATE included) in
commit order. Each message is

  key      the primary key as a JSON object, e.g. {"id": 7} (null for tables without a key)
  value    a Debezium-compatible envelope: {"before", "after", "source", "op", "ts_ms"}
  headers  lakeward.pos     the source position, bytes that sort in commit order (see Position)
           lakeward.schema  id of the table schema in the schema topic `<prefix>.<source>.__schemas`

Ops: c insert, u update, d delete, r snapshot read, t truncate. A snapshot of a table starts with a
`t` event ("the table is reset to what follows"), so a restarted snapshot never leaves stale rows.
In `after` (and `before`), a column that is absent (not null: absent) is an unchanged TOASTed value
the source did not send; the lake keeps the stored value. A primary-key change is a `d` of the old key
(header __debezium.newkey) directly followed by a `c` of the new one (header __debezium.oldkey), as
Debezium does; an absent column of that `c` holds the value stored under the old key.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

import orjson

POSITION_HEADER = "lakeward.pos"
SCHEMA_HEADER = "lakeward.schema"
OLD_KEY_HEADER = "__debezium.oldkey"
"""On the `c` of a primary-key change: the old key (JSON, as the message key of its `d`)."""
NEW_KEY_HEADER = "__debezium.newkey"
"""On the `d` of a primary-key change: the new key. The `c` is the next event of the topic."""
SCHEMA_TOPIC_SUFFIX = "__schemas"

OP_CREATE, OP_UPDATE, OP_DELETE, OP_READ, OP_TRUNCATE = "c", "u", "d", "r", "t"


# --- positions ---------------------------------------------------------------------------------

_PG_POSITION = struct.Struct(">QBQ")
_MYSQL_POSITION = struct.Struct(">IQBQI")


class Position:
    """Source positions as bytes whose byte order is commit order, so sinks compare them blindly.

    PostgreSQL: commit LSN (8 bytes), phase (1: 0 snapshot, 1 streaming), sequence in the
    transaction or snapshot (8). A snapshot taken at consistent point L sorts before every change
    committed at or after L, and a later snapshot sorts after everything before it.
    MySQL/MariaDB: see `Position.mysql`.
    """

    SNAPSHOT, STREAM = 0, 1

    @staticmethod
    def postgres(lsn: int, phase: int, seq: int) -> bytes:
        return _PG_POSITION.pack(lsn, phase, seq)

    @staticmethod
    def postgres_parts(pos: bytes) -> tuple[int, int, int]:
        return _PG_POSITION.unpack(pos)

    @staticmethod
    def mysql(file_index: int, txn_pos: int, phase: int, sub: int, row: int) -> bytes:
        """MySQL/MariaDB: binlog file index (4 bytes: 42 for `mysql-bin.000042`), position of the
        transaction's first event in that file (8), phase (1), then the rows event's position in the
        file (streaming) or the row's sequence number (snapshot) (8), and the row's index inside its
        rows event (4). A snapshot taken at binlog position P sorts before the transaction starting
        at P and after every transaction before it."""
        return _MYSQL_POSITION.pack(file_index, txn_pos, phase, sub, row)

    @staticmethod
    def mysql_parts(pos: bytes) -> tuple[int, int, int, int, int]:
        return _MYSQL_POSITION.unpack(pos)


def lsn_to_str(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def str_to_lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


# --- schemas -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    source_type: str
    """The type as the source database spells it, e.g. `numeric(10,2)`."""
    lake_type: str
    """The lake type (see lakeward.core.types) the value is encoded as and stored in."""
    nullable: bool = True


@dataclass(frozen=True, slots=True)
class TableSchema:
    source: str
    schema: str
    table: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    """Primary key column names in key order; empty when the table has none."""

    @property
    def qualified(self) -> str:
        return f"{self.source}.{self.schema}.{self.table}"

    @property
    def id(self) -> str:
        """Content hash: the same schema always gets the same id, on any worker."""
        return hashlib.sha256(self.to_json()).hexdigest()[:16]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "source": self.source,
                "schema": self.schema,
                "table": self.table,
                "columns": [[c.name, c.source_type, c.lake_type, c.nullable] for c in self.columns],
                "primary_key": list(self.primary_key),
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> TableSchema:
        d = orjson.loads(data)
        return cls(
            source=d["source"],
            schema=d["schema"],
            table=d["table"],
            columns=tuple(Column(*c) for c in d["columns"]),
            primary_key=tuple(d["primary_key"]),
        )


# --- topics ------------------------------------------------------------------------------------


def table_topic(prefix: str, source: str, schema: str, table: str) -> str:
    return f"{prefix}.{source}.{schema}.{table}"


def schema_topic(prefix: str, source: str) -> str:
    return f"{prefix}.{source}.{SCHEMA_TOPIC_SUFFIX}"


def parse_table_topic(prefix: str, topic: str) -> tuple[str, str, str] | None:
    """(source, schema, table) of a table topic, or None for other topics (schemas, state ...)."""
    if not topic.startswith(prefix + "."):
        return None
    parts = topic[len(prefix) + 1 :].split(".", 2)
    if len(parts) != 3 or parts[1].startswith("__"):
        return None
    return parts[0], parts[1], parts[2]


def envelope(op: str, before: dict[str, Any] | None, after: dict[str, Any] | None, source: dict[str, Any], ts_ms: int) -> bytes:
    return orjson.dumps({"before": before, "after": after, "source": source, "op": op, "ts_ms": ts_ms})
