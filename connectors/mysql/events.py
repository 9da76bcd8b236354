"""MySQL/MariaDB rows as events: keys, envelopes (core.events.ENVELOPE) and positions.

An event is the tuple BatchPublisher.append takes: (topic, key, value, headers). Stream positions
(core.events.Position.mysql): binlog file index, position of the transaction's first event, phase 1,
the rows event's position in the file and 2 × the row's index in the event (+1 for the create half of
a primary-key change); snapshot positions: (file, P, phase 0, sequence, 0).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from lakeward.connectors.mysql.snapshot import BinlogPoint
from lakeward.connectors.mysql.tables import TableInfo
from lakeward.core.events import (
    AFTER_ONLY,
    ENVELOPE,
    MYSQL_EVENT_POSITION,
    MYSQL_POSITION,
    MYSQL_ROW,
    NULL,
    OP_CREATE,
    OP_DELETE,
    OP_READ,
    OP_TRUNCATE,
    OP_UPDATE,
    POSITION_HEADER,
    SCHEMA_HEADER,
    Position,
    envelope_tail,
)

Event = tuple[str, bytes, bytes, list[tuple[str, bytes]]]

TRUNCATE_KEY = b"{}"
_C, _U, _D, _R, _T = (op.encode() for op in (OP_CREATE, OP_UPDATE, OP_DELETE, OP_READ, OP_TRUNCATE))
_pack_event = MYSQL_EVENT_POSITION.pack
_pack_row = MYSQL_ROW.pack
_dumps = orjson.dumps


def now_ms() -> int:
    return int(time.time() * 1000)


def point_source(info: TableInfo, server_id: int, point: BinlogPoint, snapshot: bytes) -> bytes:
    """The `source` head of events read at a consistent point `point` (snapshot: "first", "true" or "incremental")."""
    return info.source_head(server_id, now_ms(), snapshot, _dumps(point.gtid or None), _dumps(point.file), point.pos)


def truncate(info: TableInfo, head: bytes, pos: bytes) -> Event:
    """A `t` event: `head` from TableInfo.source_head, `pos` its position."""
    return (info.topic, TRUNCATE_KEY, ENVELOPE % (NULL, NULL, head, 0, _T, now_ms()), [(POSITION_HEADER, pos), (SCHEMA_HEADER, info.schema_id)])


class RowsEvent:
    """The events of one binlog rows event: its rows share the `source` head and the position up to the
    row's index. `out` collects them; each method returns the number of events it added."""

    __slots__ = ("topic", "key", "pk", "src", "head", "now", "sid_header", "out")

    def __init__(self, info: TableInfo, out: list[Any], *, file_index: int, txn_pos: int, event_pos: int, server_id: int,
                 ts_ms: int, gtid_json: bytes, file_json: bytes):
        self.topic, self.key, self.pk, self.out = info.topic, info.key, info.pk, out
        self.src = info.source_head(server_id, ts_ms, b"false", gtid_json, file_json, event_pos)
        self.head = _pack_event(file_index, txn_pos, Position.STREAM, event_pos)
        self.now = now_ms()
        self.sid_header = (SCHEMA_HEADER, info.schema_id)

    def created(self, rows: list[dict]) -> None:
        topic, key, src, head, now, sid, append = self.topic, self.key, self.src, self.head, self.now, self.sid_header, self.out.append
        for n, row in enumerate(rows):
            append((topic, key(row), ENVELOPE % (NULL, _dumps(row), src, n, _C, now), [(POSITION_HEADER, head + _pack_row(2 * n)), sid]))

    def deleted(self, rows: list[dict]) -> None:
        topic, key, src, head, now, sid, append = self.topic, self.key, self.src, self.head, self.now, self.sid_header, self.out.append
        for n, row in enumerate(rows):
            append((topic, key(row), ENVELOPE % (_dumps(row), NULL, src, n, _D, now), [(POSITION_HEADER, head + _pack_row(2 * n)), sid]))

    def updated(self, pairs: list[tuple[dict, dict]]) -> int:
        """`u` events, or a `d` and a `c` for a row whose primary key changed; returns how many changed their key."""
        topic, key, src, head, now, sid, append = self.topic, self.key, self.src, self.head, self.now, self.sid_header, self.out.append
        pk = self.pk
        moved = 0
        for n, (before, after) in enumerate(pairs):
            old_key, new_key = key(before), key(after)
            if pk and old_key != new_key:
                # A primary-key change is a delete of the old key and a create of the new one.
                append((topic, old_key, ENVELOPE % (_dumps(before), NULL, src, n, _D, now), [(POSITION_HEADER, head + _pack_row(2 * n)), sid]))
                append((topic, new_key, ENVELOPE % (NULL, _dumps(after), src, n, _C, now), [(POSITION_HEADER, head + _pack_row(2 * n + 1)), sid]))
                moved += 1
            else:
                append((topic, new_key, ENVELOPE % (_dumps(before), _dumps(after), src, n, _U, now),
                        [(POSITION_HEADER, head + _pack_row(2 * n)), sid]))
        return moved


def snapshot_positions(point: BinlogPoint, first_sequence: int, n: int) -> list[bytes]:
    """Positions of `n` rows read at `point` with sequences from `first_sequence` on (snapshot chunks)."""
    fi, pos, snapshot, pack = point.file_index, point.pos, Position.SNAPSHOT, MYSQL_POSITION.pack
    return [pack(fi, pos, snapshot, seq, 0) for seq in range(first_sequence, first_sequence + n)]


def row_positions(point: BinlogPoint, sequence: int, n: int) -> list[bytes]:
    """Positions of `n` rows read at `point` under one sequence, rows 1 to n (incremental chunks)."""
    fi, pos, snapshot, pack = point.file_index, point.pos, Position.SNAPSHOT, MYSQL_POSITION.pack
    return [pack(fi, pos, snapshot, sequence, row) for row in range(1, n + 1)]


def read_events(info: TableInfo, head: bytes, tinyint1_as_boolean: bool) -> Callable[[Sequence[tuple], list[bytes]], list[Event]]:
    """The conversion of rows read at a consistent point into `r` events, `convert(rows, positions)`
    (`head`: from point_source). Values are converted as snapshot rows are, so they are the stream's.
    Runs on reader threads."""
    names = [d.name for d in info.defs]
    convs = info.snapshot_converters(tinyint1_as_boolean)
    topic, sid_header, key, keyed = info.topic, (SCHEMA_HEADER, info.schema_id), info.key, bool(info.pk)

    def convert(rows: Sequence[tuple], positions: list[bytes]) -> list[Event]:
        tail = envelope_tail(head, 0, _R, now_ms())
        out: list[Event] = []
        append = out.append
        for read, pos in zip(rows, positions, strict=True):
            values: tuple | list = read
            if convs:
                values = list(read)
                for i, conv in convs:
                    v = values[i]
                    if v is not None:
                        values[i] = conv(v)
            row = dict(zip(names, values, strict=False))
            after = _dumps(row)
            # Without a primary key the message key is the whole row: `after` itself.
            append((topic, key(row) if keyed else after, AFTER_ONLY + after + tail, [(POSITION_HEADER, pos), sid_header]))
        return out

    return convert
