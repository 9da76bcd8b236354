"""pgoutput decoding from hand-built protocol messages (formats from the PostgreSQL 15 docs)."""

from __future__ import annotations

import struct

from lakeward.connectors.postgres import pgoutput
from lakeward.connectors.postgres.pgoutput import UNCHANGED


def tuple_data(*values) -> bytes:
    out = struct.pack(">h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED:
            out += b"u"
        else:
            b = v.encode()
            out += b"t" + struct.pack(">i", len(b)) + b
    return out


def test_begin_commit():
    b = pgoutput.decode(b"B" + struct.pack(">Qqi", 0x1_0000_0010, 777, 42))
    assert (b.final_lsn, b.commit_ts_us, b.xid) == (0x1_0000_0010, 777, 42)
    c = pgoutput.decode(b"C" + struct.pack(">bQQq", 0, 0x10, 0x20, 999))
    assert (c.commit_lsn, c.end_lsn, c.commit_ts_us) == (0x10, 0x20, 999)


def test_relation():
    cols = [(1, "id", 23, -1), (0, "price", 1700, (10 << 16 | 2) + 4)]
    body = struct.pack(">I", 16384) + b"public\0orders\0" + b"d" + struct.pack(">h", len(cols))
    for flags, name, oid, typmod in cols:
        body += struct.pack(">b", flags) + name.encode() + b"\0" + struct.pack(">Ii", oid, typmod)
    r = pgoutput.decode(b"R" + body)
    assert (r.relid, r.namespace, r.name, r.replica_identity) == (16384, "public", "orders", "d")
    assert [(c.name, c.type_oid, c.typmod, c.is_key) for c in r.columns] == [("id", 23, -1, True), ("price", 1700, 655366, False)]


def test_insert_update_delete_with_nulls_and_unchanged_toast():
    ins = pgoutput.decode(b"I" + struct.pack(">I", 5) + b"N" + tuple_data("1", None, "héllo"))
    assert ins.relid == 5 and ins.new == ["1", None, "héllo"]

    upd = pgoutput.decode(b"U" + struct.pack(">I", 5) + b"N" + tuple_data("1", UNCHANGED, "x"))
    assert upd.old is None and upd.new[1] is UNCHANGED and upd.new[2] == "x"

    upd_key = pgoutput.decode(b"U" + struct.pack(">I", 5) + b"K" + tuple_data("1", None, None) + b"N" + tuple_data("2", "a", "b"))
    assert upd_key.old == ["1", None, None] and not upd_key.old_full and upd_key.new == ["2", "a", "b"]

    upd_full = pgoutput.decode(b"U" + struct.pack(">I", 5) + b"O" + tuple_data("1", "big", "a") + b"N" + tuple_data("1", UNCHANGED, "b"))
    assert upd_full.old_full and upd_full.old == ["1", "big", "a"]

    dele = pgoutput.decode(b"D" + struct.pack(">I", 5) + b"K" + tuple_data("9", None, None))
    assert dele.old == ["9", None, None] and not dele.old_full


def test_truncate_and_message():
    t = pgoutput.decode(b"T" + struct.pack(">ib", 2, 1) + struct.pack(">II", 10, 11))
    assert t.relids == [10, 11] and t.cascade and not t.restart_identity
    m = pgoutput.decode(b"M" + struct.pack(">bQ", 1, 0x33) + b"lakeward\0" + struct.pack(">i", 3) + b"abc")
    assert (m.transactional, m.lsn, m.prefix, m.content) == (True, 0x33, "lakeward", b"abc")


COLUMNS = [("id", int), ("big", str), ("v", str)]


def test_row_changes_decode_straight_into_event_rows():
    """decode_insert/update/delete: what the source turns into events, from the XLogData buffer's offset."""
    at = 25  # the pgoutput message inside an XLogData buffer
    pad = b"w" + b"\0" * 24
    rel = struct.pack(">I", 5)
    ins = pad + b"I" + rel + b"N" + tuple_data("1", None, "a")
    assert pgoutput.change_relid(ins, at) == 5
    assert pgoutput.decode_insert(ins, at, COLUMNS) == {"id": 1, "big": None, "v": "a"}

    # No old tuple (key unchanged, REPLICA IDENTITY DEFAULT): no `before`; an unchanged TOASTed value is left out.
    upd = pad + b"U" + rel + b"N" + tuple_data("1", UNCHANGED, "b")
    assert pgoutput.decode_update(upd, at, COLUMNS, ["id"]) == (None, {"id": 1, "v": "b"})
    # 'K': `before` is the key only (the other columns are nulls PostgreSQL did not send).
    upd_key = pad + b"U" + rel + b"K" + tuple_data("1", None, None) + b"N" + tuple_data("2", UNCHANGED, "b")
    assert pgoutput.decode_update(upd_key, at, COLUMNS, ["id"]) == ({"id": 1}, {"id": 2, "v": "b"})
    # 'O' (REPLICA IDENTITY FULL): the whole old row, which also fills the unchanged TOASTed value.
    upd_full = pad + b"U" + rel + b"O" + tuple_data("1", "large", "a") + b"N" + tuple_data("1", UNCHANGED, "b")
    assert pgoutput.decode_update(upd_full, at, COLUMNS, ["id"]) == ({"id": 1, "big": "large", "v": "a"}, {"id": 1, "big": "large", "v": "b"})
    # Without a primary key (a replica identity index) 'K' gives the whole tuple as sent.
    assert pgoutput.decode_update(upd_key, at, COLUMNS, [])[0] == {"id": 1, "big": None, "v": None}

    dele = pad + b"D" + rel + b"K" + tuple_data("9", None, None)
    assert pgoutput.decode_delete(dele, at, COLUMNS, ["id"]) == {"id": 9}
    dele_full = pad + b"D" + rel + b"O" + tuple_data("9", "x", "y")
    assert pgoutput.decode_delete(dele_full, at, COLUMNS, ["id"]) == {"id": 9, "big": "x", "v": "y"}
