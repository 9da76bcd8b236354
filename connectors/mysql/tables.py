"""A captured table as the hot path sees it: schema, topic, row decoders, the envelope's fixed parts.

Built from a schema history entry (the snapshot, and a table without rows yet) or from a binlog
table map plus the entry in force at its position (the stream). Both give the same TableSchema —
and so the same schema id — when the entry describes the table map, which is the normal case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pymysqlreplication.constants import FIELD_TYPE as F

from lakeward.connectors.mysql.decode import (
    ColumnPlan,
    UnsupportedColumn,
    bitmap,
    compile_image,
    python_codec,
)
from lakeward.connectors.mysql.history import HistoryEntry
from lakeward.connectors.mysql.types import (
    ColumnDef,
    def_from_binlog,
    enum_members,
    lake_type,
    matches_binlog,
    schema_nullable,
    snapshot_converter,
    source_type,
)
from lakeward.core.errors import SourceSetupError
from lakeward.core.events import SOURCE_VERSION, Column, TableSchema, table_topic

_CHARACTER_CODES = (F.VARCHAR, F.VAR_STRING, F.STRING, F.BLOB)


@dataclass(eq=False)
class TableInfo:
    db: str
    table: str
    schema: TableSchema
    topic: str
    schema_id: bytes
    defs: list[ColumnDef]
    pk: tuple[str, ...]
    plans: list[ColumnPlan] | None = None
    """Binlog decoding plans (stream only)."""
    source_fixed: bytes = b""
    """The envelope's `source` object up to its per-event fields: `{"version":...,"table":"t"`."""
    _images: dict[bytes, Callable] = field(default_factory=dict)
    key: Callable[[dict], bytes] = field(init=False)
    """The message key of a row: its primary key as JSON (the whole row without one)."""

    def __post_init__(self) -> None:
        self.key = key_function(self.pk)

    def image(self, present: bytes) -> Callable[[bytes, int], tuple[dict, int]]:
        """The compiled row-image reader for a rows event's column bitmap."""
        fn = self._images.get(present)
        if fn is None:
            assert self.plans is not None
            fn = self._images[present] = compile_image(self.plans, bitmap(present, len(self.plans)))
        return fn

    def source_head(self, server_id: int, ts_ms: int, snapshot: bytes, gtid_json: bytes, file_json: bytes, pos: int) -> bytes:
        """The envelope's `source` up to the value of `row`, its last field (core.events.ENVELOPE appends
        it): the bytes core.events.source_head makes of the whole `source`, without building a dict per
        rows event. `gtid_json`, `file_json`: the GTID (or null) and the binlog file name as JSON."""
        return self.source_fixed + _SOURCE_EVENT_FIELDS % (server_id, ts_ms, snapshot, gtid_json, file_json, pos)

    def snapshot_converters(self, tinyint1_as_boolean: bool) -> list[tuple[int, Callable]]:
        return [(i, conv) for i, d in enumerate(self.defs) if (conv := snapshot_converter(d, tinyint1_as_boolean)) is not None]


def key_function(pk: tuple[str, ...]) -> Callable[[dict], bytes]:
    dumps = orjson.dumps
    if len(pk) == 1:
        k = pk[0]
        return lambda row: dumps({k: row.get(k)})
    if pk:
        return lambda row: dumps({k: row.get(k) for k in pk})
    return dumps


def _schema(source: str, db: str, table: str, defs: list[ColumnDef], pk: tuple[str, ...], boolean: bool) -> TableSchema:
    cols = tuple(Column(d.name, source_type(d), lake_type(d, boolean), schema_nullable(d) and d.name not in pk) for d in defs)
    return TableSchema(source, db, table, cols, pk)


def _source_fixed(source: str, db: str, table: str) -> bytes:
    head = orjson.dumps({"version": SOURCE_VERSION, "connector": "mysql", "name": source, "db": db, "table": table})
    return head[:-1]


_SOURCE_EVENT_FIELDS = b',"server_id":%d,"ts_ms":%d,"snapshot":"%b","gtid":%b,"file":%b,"pos":%d,"row":'


def from_entry(source: str, prefix: str, entry: HistoryEntry, boolean: bool) -> TableInfo:
    schema = _schema(source, entry.db, entry.table, list(entry.columns), entry.pk, boolean)
    return TableInfo(entry.db, entry.table, schema, table_topic(prefix, source, entry.db, entry.table), schema.id.encode(),
                     list(entry.columns), entry.pk, None, _source_fixed(source, entry.db, entry.table))


def _meta(c: Any) -> tuple:
    code = c.type
    if code in (F.VARCHAR, F.VAR_STRING, F.STRING):
        return (c.max_length,)
    if code in (F.BLOB, F.GEOMETRY, F.JSON):
        return (c.length_size,)
    if code == F.NEWDECIMAL:
        return (c.precision, c.decimals)
    if code in (F.DATETIME2, F.TIMESTAMP2, F.TIME2):
        return (c.fsp,)
    if code == F.BIT:
        return (c.bits,)
    if code == F.ENUM:
        return (c.size, tuple(c.enum_values[1:]) if c.enum_values else ())
    if code == F.SET:
        return (c.size, tuple(c.set_values or ()))
    return ()


def from_table_map(source: str, prefix: str, db: str, table: str, lib_columns: list[Any], null_bitmask: bytes,
                   pk_indexes: list[int], entry: HistoryEntry | None, boolean: bool) -> TableInfo:
    """The table as a binlog table map describes it, with the history entry's details where they fit."""
    hints = {c.name: c for c in entry.columns} if entry and not entry.dropped else {}
    defs: list[ColumnDef] = []
    plans: list[ColumnPlan] = []
    for i, c in enumerate(lib_columns):
        if c.name is None:
            raise SourceSetupError(f"{db}.{table}: the binlog's table map carries no column names; set binlog_row_metadata=FULL")
        hint = hints.get(c.name)
        if hint is not None and matches_binlog(hint, c):
            d = hint
        else:
            nullable = bool(null_bitmask[i >> 3] & (1 << (i & 7)))
            d = def_from_binlog(c, nullable, None)
        try:
            codec = python_codec(getattr(c, "character_set_name", None)) if c.type in _CHARACTER_CODES else None
        except LookupError:
            raise SourceSetupError(f"{db}.{table}: column {c.name!r} uses character set {c.character_set_name!r}, "
                                   "which Python cannot decode; convert the column to utf8mb4") from None
        meta = _meta(c)
        if hint is not None and d is hint and c.type in (F.ENUM, F.SET):
            meta = (meta[0], tuple(enum_members(d.column_type)))  # the members as information_schema spells them
        defs.append(d)
        plans.append(ColumnPlan(c.name, c.type, bool(c.unsigned), meta, codec, d, lake_type(d, boolean)))
    names = [c.name for c in lib_columns]
    pk = tuple(names[i] for i in pk_indexes if i < len(names))
    if entry and not entry.dropped and entry.pk and set(entry.pk) == set(pk):
        pk = entry.pk  # key order as declared
    elif not pk and entry and entry.pk and all(k in names for k in entry.pk):
        pk = entry.pk
    schema = _schema(source, db, table, defs, pk, boolean)
    info = TableInfo(db, table, schema, table_topic(prefix, source, db, table), schema.id.encode(), defs, pk, plans,
                     _source_fixed(source, db, table))
    # Fail now, naming the column, rather than on the first row.
    try:
        info.image(b"\xff" * ((len(plans) + 7) // 8))
    except UnsupportedColumn as e:
        raise SourceSetupError(f"{db}.{table}: {e}") from None
    return info
