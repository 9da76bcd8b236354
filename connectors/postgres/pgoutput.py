"""Decoder for PostgreSQL's pgoutput logical replication protocol (version 1).

No maintained Python library decodes pgoutput for psycopg 3 (psycopg2's replication support has no
pgoutput decoder either), so this is written by hand from the protocol docs:
https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html

Decoding is kept to plain tuples and struct calls: it runs once per row change, so it is the hot path.
The source decodes row changes with `decode_insert`, `decode_update` and `decode_delete` (tuple data
straight into converted rows, from an offset into the received buffer) and everything else with `decode`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

# Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
PG_EPOCH_US = 946_684_800_000_000

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_BEGIN = struct.Struct(">QqI")  # xid: an unsigned 32-bit TransactionId
_COMMIT = struct.Struct(">bQQq")
_REL_HEAD = struct.Struct(">I")
_COL_TAIL = struct.Struct(">Ii")

INSERT, UPDATE, DELETE = 73, 85, 68
"""Tags ('I', 'U', 'D') of the row change messages: the first byte of a message."""
_KEY, _OLD = 75, 79  # 'K' (the old row's key columns), 'O' (the whole old row)

UNCHANGED = object()
"""Marks an unchanged TOASTed value: PostgreSQL did not send it; the lake must keep the stored one."""


@dataclass(slots=True)
class Begin:
    final_lsn: int
    commit_ts_us: int
    xid: int


@dataclass(slots=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_ts_us: int


@dataclass(slots=True)
class RelationColumn:
    name: str
    type_oid: int
    typmod: int
    is_key: bool


@dataclass(slots=True)
class Relation:
    relid: int
    namespace: str
    name: str
    replica_identity: str
    columns: list[RelationColumn]


@dataclass(slots=True)
class Insert:
    relid: int
    new: list


@dataclass(slots=True)
class Update:
    relid: int
    old: list | None
    """Old key columns (REPLICA IDENTITY DEFAULT, key changed) or the whole old row (FULL); else None."""
    new: list
    old_full: bool = False
    """True when `old` is the whole old row ('O'); False when it holds key columns only ('K')."""


@dataclass(slots=True)
class Delete:
    relid: int
    old: list
    old_full: bool = False


@dataclass(slots=True)
class Truncate:
    relids: list[int]
    cascade: bool
    restart_identity: bool


@dataclass(slots=True)
class Message:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(slots=True)
class Origin:
    lsn: int
    name: str


@dataclass(slots=True)
class TypeInfo:
    oid: int
    namespace: str
    name: str


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(b"\0", pos)
    return buf[pos:end].decode(), end + 1


def _tuple(buf: bytes, pos: int) -> tuple[list, int]:
    """TupleData: values as str (text format), None (null) or UNCHANGED (unchanged TOAST)."""
    (ncols,) = _I16.unpack_from(buf, pos)
    pos += 2
    values: list = [None] * ncols
    for i in range(ncols):
        kind = buf[pos]
        pos += 1
        if kind == 116:  # 't' text
            (n,) = _I32.unpack_from(buf, pos)
            pos += 4
            values[i] = buf[pos : pos + n].decode()
            pos += n
        elif kind == 110:  # 'n' null
            pass
        elif kind == 117:  # 'u' unchanged TOAST
            values[i] = UNCHANGED
        elif kind == 98:  # 'b' binary: not requested (we ask for text), so never expected
            raise ValueError("pgoutput sent a binary tuple value; Lakeward requests text format")
        else:
            raise ValueError(f"pgoutput: unknown tuple value kind {kind!r} at byte {pos - 1}")
    return values, pos


def decode_row(buf: bytes, pos: int, columns: list[tuple[str, Callable[[str], object]]], base: dict | None = None) -> tuple[dict, int]:
    """TupleData at `pos` straight into a row {column name: converted value}; returns it and the
    position after the tuple.

    The row is the same as zipping `columns` (name, converter) with the values `_tuple` decodes and
    converting each one: a null is None; an unchanged TOASTed value is left out (never a
    placeholder), unless `base` (the old row of an UPDATE) has the column: then its value is taken.
    One pass and no intermediate list, because this runs once per row change.
    """
    (ncols,) = _I16.unpack_from(buf, pos)
    if ncols != len(columns):  # not what the Relation message announced: the general (zip) path
        values, end = _tuple(buf, pos)
        return convert_row(values, columns, base), end
    pos += 2
    row: dict = {}
    i32 = _I32.unpack_from
    for name, conv in columns:
        kind = buf[pos]
        if kind == 116:  # 't' text
            (n,) = i32(buf, pos + 1)
            start = pos + 5
            pos = start + n
            row[name] = conv(buf[start:pos].decode())
        elif kind == 110:  # 'n' null
            row[name] = None
            pos += 1
        elif kind == 117:  # 'u' unchanged TOAST: not sent
            if base is not None and name in base:
                row[name] = base[name]
            pos += 1
        elif kind == 98:
            raise ValueError("pgoutput sent a binary tuple value; Lakeward requests text format")
        else:
            raise ValueError(f"pgoutput: unknown tuple value kind {kind!r} at byte {pos}")
    return row, pos


def change_relid(buf: bytes, pos: int) -> int:
    """The relation id of the Insert, Update or Delete message whose tag is at `pos`."""
    return _U32.unpack_from(buf, pos + 1)[0]


def _before(old: dict, kind: int, key: list[str]) -> dict:
    """The event's `before` from an old tuple: its key columns for 'K' (the rest are nulls PostgreSQL
    did not send), the whole row for 'O' or when the table has no primary key (a replica identity index)."""
    return old if kind == _OLD or not key else {k: old.get(k) for k in key}


def decode_insert(buf: bytes, pos: int, columns: list[tuple[str, Callable[[str], object]]]) -> dict:
    """The new row of the Insert message at `pos`: tag, relid (4), 'N', new tuple."""
    return decode_row(buf, pos + 6, columns)[0]


def decode_update(buf: bytes, pos: int, columns: list[tuple[str, Callable[[str], object]]], key: list[str]) -> tuple[dict | None, dict]:
    """(before, after) of the Update message at `pos`: tag, relid (4), ['K' | 'O', old tuple], 'N', new tuple.
    `before` is None when no old tuple came (REPLICA IDENTITY DEFAULT, key unchanged), else as `_before`;
    an unchanged TOASTed value of `after` is taken from `before` when that has the column."""
    pos += 5
    kind = buf[pos]
    before = None
    if kind == _KEY or kind == _OLD:
        old, pos = decode_row(buf, pos + 1, columns)
        before = _before(old, kind, key)
    after, _ = decode_row(buf, pos + 1, columns, before)
    return before, after


def decode_delete(buf: bytes, pos: int, columns: list[tuple[str, Callable[[str], object]]], key: list[str]) -> dict:
    """The event's `before` of the Delete message at `pos`: tag, relid (4), 'K' | 'O', old tuple (see `_before`)."""
    kind = buf[pos + 5]
    return _before(decode_row(buf, pos + 6, columns)[0], kind, key)


def convert_row(values: list, columns: list[tuple[str, Callable[[str], object]]], base: dict | None = None) -> dict:
    """Values as `_tuple` returns them -> a row, with the rules of `decode_row`."""
    row: dict = {}
    for (name, conv), v in zip(columns, values, strict=False):
        if v is None:
            row[name] = None
        elif v is UNCHANGED:
            if base is not None and name in base:
                row[name] = base[name]
        else:
            row[name] = conv(v)
    return row


# What `decode` returns: one message of the pgoutput protocol.
Decoded = Begin | Commit | Relation | Insert | Update | Delete | Truncate | Message | Origin | TypeInfo


def decode(buf: bytes) -> Decoded:
    """Decode one pgoutput message (the payload of an XLogData CopyData message)."""
    tag = buf[0]
    if tag == 73:  # 'I'
        (relid,) = _U32.unpack_from(buf, 1)
        new, _ = _tuple(buf, 6)  # byte 5 is 'N'
        return Insert(relid, new)
    if tag == 85:  # 'U'
        (relid,) = _U32.unpack_from(buf, 1)
        pos = 5
        old = None
        full = buf[pos] == 79
        if buf[pos] in (75, 79):  # 'K' key or 'O' old row
            old, pos = _tuple(buf, pos + 1)
        new, _ = _tuple(buf, pos + 1)  # 'N'
        return Update(relid, old, new, full)
    if tag == 68:  # 'D'
        (relid,) = _U32.unpack_from(buf, 1)
        old, _ = _tuple(buf, 6)
        return Delete(relid, old, buf[5] == 79)
    if tag == 66:  # 'B'
        final_lsn, ts, xid = _BEGIN.unpack_from(buf, 1)
        return Begin(final_lsn, ts, xid)
    if tag == 67:  # 'C'
        _flags, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(buf, 1)
        return Commit(commit_lsn, end_lsn, ts)
    if tag == 82:  # 'R'
        (relid,) = _REL_HEAD.unpack_from(buf, 1)
        namespace, pos = _cstring(buf, 5)
        name, pos = _cstring(buf, pos)
        identity = chr(buf[pos])
        (ncols,) = _I16.unpack_from(buf, pos + 1)
        pos += 3
        cols = []
        for _ in range(ncols):
            flags = buf[pos]
            cname, pos = _cstring(buf, pos + 1)
            oid, typmod = _COL_TAIL.unpack_from(buf, pos)
            pos += 8
            cols.append(RelationColumn(cname, oid, typmod, bool(flags & 1)))
        return Relation(relid, namespace, name, identity, cols)
    if tag == 84:  # 'T'
        (n,) = _I32.unpack_from(buf, 1)
        options = buf[5]
        relids = list(struct.unpack_from(f">{n}I", buf, 6))
        return Truncate(relids, bool(options & 1), bool(options & 2))
    if tag == 77:  # 'M'
        flags = buf[1]
        (lsn,) = struct.unpack_from(">Q", buf, 2)
        prefix, pos = _cstring(buf, 10)
        (n,) = _I32.unpack_from(buf, pos)
        return Message(bool(flags & 1), lsn, prefix, bytes(buf[pos + 4 : pos + 4 + n]))
    if tag == 79:  # 'O'
        (lsn,) = struct.unpack_from(">Q", buf, 1)
        name, _ = _cstring(buf, 9)
        return Origin(lsn, name)
    if tag == 89:  # 'Y'
        (oid,) = _U32.unpack_from(buf, 1)
        namespace, pos = _cstring(buf, 5)
        name, _ = _cstring(buf, pos)
        return TypeInfo(oid, namespace, name)
    raise ValueError(f"pgoutput: unknown message type {chr(tag)!r}")
