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

SOURCE_VERSION = "0.1.0"
"""`source.version` of every envelope: the Lakeward release that wrote it (as Debezium writes its own)."""

POSITION_HEADER = "lakeward.pos"
SCHEMA_HEADER = "lakeward.schema"
OLD_KEY_HEADER = "__debezium.oldkey"
"""On the `c` of a primary-key change: the old key (JSON, as the message key of its `d`)."""
NEW_KEY_HEADER = "__debezium.newkey"
"""On the `d` of a primary-key change: the new key. The `c` is the next event of the topic."""
SCHEMA_TOPIC_SUFFIX = "__schemas"

OP_CREATE, OP_UPDATE, OP_DELETE, OP_READ, OP_TRUNCATE = "c", "u", "d", "r", "t"


# --- positions ---------------------------------------------------------------------------------

PG_POSITION = struct.Struct(">QBQ")
"""Position.postgres as a struct, for hot paths that pack positions themselves."""
MYSQL_EVENT_POSITION = struct.Struct(">IQBQ")
"""Position.mysql without its last field (the row's index in its rows event): the rows of one event
share it, and each appends `MYSQL_ROW.pack(row)`."""
MYSQL_ROW = struct.Struct(">I")
MYSQL_POSITION = struct.Struct(MYSQL_EVENT_POSITION.format + MYSQL_ROW.format.lstrip(">"))


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
        return PG_POSITION.pack(lsn, phase, seq)

    @staticmethod
    def postgres_parts(pos: bytes) -> tuple[int, int, int]:
        return PG_POSITION.unpack(pos)

    @staticmethod
    def mysql(file_index: int, txn_pos: int, phase: int, sub: int, row: int) -> bytes:
        """MySQL/MariaDB: binlog file index (4 bytes: 42 for `mysql-bin.000042`), position of the
        transaction's first event in that file (8), phase (1), then the rows event's position in the
        file (streaming) or the row's sequence number (snapshot) (8), and the row's index inside its
        rows event (4). A snapshot taken at binlog position P sorts before the transaction starting
        at P and after every transaction before it."""
        return MYSQL_POSITION.pack(file_index, txn_pos, phase, sub, row)

    @staticmethod
    def mysql_parts(pos: bytes) -> tuple[int, int, int, int, int]:
        return MYSQL_POSITION.unpack(pos)


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


# --- event values ------------------------------------------------------------------------------


def envelope(op: str, before: dict[str, Any] | None, after: dict[str, Any] | None, source: dict[str, Any], ts_ms: int) -> bytes:
    """The event value: what ENVELOPE builds from pre-encoded parts, spelled out."""
    return orjson.dumps({"before": before, "after": after, "source": source, "op": op, "ts_ms": ts_ms})


# The sources build every value from pre-encoded parts, at a third of the cost of `envelope()` and
# with the same bytes: orjson writes no whitespace, so a nested value's JSON is exactly its own dumps().
# `source` is encoded once per table (and transaction, or snapshot) up to the value of its last field,
# the only one that changes from event to event: PostgreSQL's `lsn`, MySQL's `row`.
_BEFORE_AFTER = b'{"before":%b,"after":%b'
_TAIL = b',"source":%b%d},"op":"%b","ts_ms":%d}'
ENVELOPE = _BEFORE_AFTER + _TAIL
"""`ENVELOPE % (before, after, head, last, op, ts_ms)` == `envelope(op, before, after, source, ts_ms)`
where `before`/`after` are the rows' JSON (NULL for none), `head` is `source_head(source)`, `last` the
value of the source's last field and `op` the op as bytes."""
NULL = b"null"
AFTER_ONLY = _BEFORE_AFTER % (NULL, b"")
"""ENVELOPE up to the `after` row of an event without `before` (c, r): `AFTER_ONLY + after + envelope_tail(...)`."""


def envelope_tail(head: bytes, last: int, op: bytes, ts_ms: int) -> bytes:
    """ENVELOPE after the `after` row (for values built as `AFTER_ONLY + after + tail`, one tail per chunk)."""
    return _TAIL % (head, last, op, ts_ms)


def source_head(source: dict[str, Any]) -> bytes:
    """`source` as JSON up to the value of its last field, which must be the integer 0 here: every event
    appends its own value of that field and the closing brace (ENVELOPE's `%b%d}`)."""
    head = orjson.dumps(source)
    if not head.endswith(b":0}"):
        raise ValueError(f"the last field of an event's source must be an integer placeholder 0: {head!r}")
    return head[:-2]
