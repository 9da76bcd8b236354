"""Binlog value decoding (connectors/mysql/decode.py) against MySQL's storage formats, without a server.

The encoders here follow MySQL's own code (decimal2bin, my_time_packed_to_binary,
my_datetime_packed_to_binary), so each decoder is checked against an independent writer.
"""

from __future__ import annotations

import random
import struct

import pytest
from pymysqlreplication.constants import FIELD_TYPE as F

from lakeward.connectors.mysql.decode import (
    ColumnPlan,
    _mysql_json_dump,
    compile_image,
    date3,
    datetime2,
    decimal_reader,
    decimal_size,
    inet6_text,
    mysql_json,
    time2,
    timestamp2,
    uuid_text,
)
from lakeward.connectors.mysql.types import ColumnDef, float32
from lakeward.core.events import Position

_DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)


def encode_decimal(text: str, precision: int, scale: int) -> bytes:
    """MySQL's decimal2bin."""
    negative = text.startswith("-")
    ip, _, fp = text.lstrip("-").partition(".")
    fp = fp.ljust(scale, "0")[:scale]
    intg = precision - scale
    ip = ip.rjust(intg, "0")
    out = b""
    lead = intg % 9
    groups = ([(ip[:lead], lead)] if lead else []) + [(ip[lead + 9 * i: lead + 9 * i + 9], 9) for i in range(intg // 9)]
    groups += [(fp[9 * i: 9 * i + 9], 9) for i in range(scale // 9)]
    if scale % 9:
        groups.append((fp[9 * (scale // 9):], scale % 9))
    for digits, n in groups:
        size = 4 if n == 9 else _DIG2BYTES[n]
        out += int(digits).to_bytes(size, "big")
    if negative:
        out = bytes(b ^ 0xFF for b in out)
    return bytes([out[0] ^ 0x80]) + out[1:]


@pytest.mark.parametrize(("text", "p", "s", "want"), [
    ("1234567890.1234", 14, 4, "1234567890.1234"),
    ("-1234567890.1234", 14, 4, "-1234567890.1234"),
    ("12.50", 10, 2, "12.50"), ("-12.50", 10, 2, "-12.50"), ("0.00", 10, 2, "0.00"), ("-0.01", 10, 2, "-0.01"),
    ("0.5", 5, 1, "0.5"), ("99999", 5, 0, "99999"), ("-1", 5, 0, "-1"), ("0", 5, 0, "0"),
    ("12345678901234567890123456789012345.123456789012345678901234567891", 65, 30,
     "12345678901234567890123456789012345.123456789012345678901234567891"),
    ("-1.000000000000000000000000000000", 65, 30, "-1.000000000000000000000000000000"),
    ("0.000000001", 38, 30, "0.000000001000000000000000000000"),
    ("18446744073709551615", 20, 0, "18446744073709551615"),
])
def test_decimal(text, p, s, want):
    raw = encode_decimal(text, p, s)
    assert len(raw) == decimal_size(p, s)
    assert decimal_reader(p, s)(b"xx" + raw, 2) == want


def test_decimal_random_round_trip():
    rnd = random.Random(3)
    for _ in range(2000):
        p = rnd.randint(1, 65)
        s = rnd.randint(0, min(p, 30))
        ip = str(rnd.randint(0, 10 ** (p - s) - 1)) if p > s else "0"
        fp = "".join(rnd.choice("0123456789") for _ in range(s))
        sign = rnd.choice(["", "-"])
        text = f"{sign}{ip}.{fp}" if s else f"{sign}{ip}"
        want = text if (ip.strip("0") or fp.strip("0")) else text.lstrip("-")
        assert decimal_reader(p, s)(encode_decimal(text, p, s), 0) == want, (text, p, s)


def _cdiv(a: int, b: int) -> int:
    """C's integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return -q if (a < 0) != (b < 0) else q


def encode_time2(negative: bool, h: int, m: int, sec: int, us: int, fsp: int) -> bytes:
    """MySQL's my_time_packed_to_binary(TIME_to_longlong_time_packed(...)), with C's >> and %."""
    packed = (((h << 12) | (m << 6) | sec) << 24) + us
    if negative:
        packed = -packed
    intpart = packed >> 24  # arithmetic shift: floors
    frac = packed - _cdiv(packed, 1 << 24) * (1 << 24)  # C's %: the sign of the dividend
    head = (intpart + 0x800000).to_bytes(3, "big")
    if fsp == 0:
        return head
    if fsp <= 2:
        return head + (_cdiv(frac, 10000) & 0xFF).to_bytes(1, "big")
    if fsp <= 4:
        return head + (_cdiv(frac, 100) & 0xFFFF).to_bytes(2, "big")
    return (packed + 0x800000000000).to_bytes(6, "big")


@pytest.mark.parametrize(("negative", "h", "m", "s", "us", "fsp", "want"), [
    (False, 12, 34, 56, 0, 0, "12:34:56"),
    (True, 838, 59, 59, 0, 0, "-838:59:59"),
    (True, 12, 34, 56, 789000, 3, "-12:34:56.789"),
    (True, 0, 0, 0, 500000, 3, "-00:00:00.500"),
    (True, 1, 0, 0, 100000, 1, "-01:00:00.1"),
    (False, 12, 0, 0, 900000, 1, "12:00:00.9"),
    (True, 838, 59, 58, 999999, 6, "-838:59:58.999999"),
    (True, 0, 0, 1, 500000, 6, "-00:00:01.500000"),
    (False, 0, 0, 0, 1, 6, "00:00:00.000001"),
    (True, 0, 0, 0, 10000, 2, "-00:00:00.01"),
    (True, 5, 6, 7, 123400, 4, "-05:06:07.1234"),
])
def test_time2(negative, h, m, s, us, fsp, want):
    assert time2(encode_time2(negative, h, m, s, us, fsp), 0, fsp) == want


def encode_datetime2(y: int, mo: int, d: int, h: int, mi: int, s: int, us: int, fsp: int) -> bytes:
    ymd = ((y * 13 + mo) << 5) | d
    hms = (h << 12) | (mi << 6) | s
    intpart = (ymd << 17) | hms
    out = (intpart + 0x8000000000).to_bytes(5, "big")
    if fsp:
        n = (fsp + 1) // 2
        out += (us // 10 ** (6 - 2 * n)).to_bytes(n, "big")
    return out


@pytest.mark.parametrize(("args", "fsp", "want"), [
    ((2024, 1, 31, 12, 34, 56, 0), 0, "2024-01-31 12:34:56"),
    ((2024, 1, 31, 12, 34, 56, 789000), 3, "2024-01-31 12:34:56.789000"),
    ((9999, 12, 31, 23, 59, 59, 999999), 6, "9999-12-31 23:59:59.999999"),
    ((1, 1, 1, 0, 0, 0, 1), 6, "0001-01-01 00:00:00.000001"),
    ((2024, 1, 31, 0, 0, 0, 500000), 1, "2024-01-31 00:00:00.500000"),
    ((0, 0, 0, 0, 0, 0, 0), 0, None),
    ((2024, 0, 15, 0, 0, 0, 0), 0, None),
])
def test_datetime2(args, fsp, want):
    assert datetime2(encode_datetime2(*args, fsp), 0, fsp) == want


def test_date_timestamp_and_mariadb_types():
    assert date3(((2024 << 9) | (2 << 5) | 29).to_bytes(3, "little"), 0) == "2024-02-29"
    assert date3(b"\0\0\0", 0) is None
    assert timestamp2(struct.pack(">I", 1706702400) + b"\x07\xa1\x20", 0, 6) == "2024-01-31 12:00:00.500000+00"
    assert timestamp2(b"\0\0\0\0", 0, 0) is None, "the zero TIMESTAMP"
    assert uuid_text(bytes.fromhex("123e4567e89b12d3a456426614174000")) == "123e4567-e89b-12d3-a456-426614174000"
    # The binlog leaves out trailing zero bytes of a fixed-length binary value.
    assert uuid_text(bytes.fromhex("12000000000000000000000000000000").rstrip(b"\0")) == "12000000-0000-0000-0000-000000000000"
    assert inet6_text(bytes.fromhex("00000000000000000000ffff01020304")) == "::ffff:1.2.3.4"


def test_float32_is_the_shortest_spelling():
    for x in (1.1, 0.1234567, 3.4028235e38, 1e-45, -2.5, 16777217.0):
        f = struct.unpack("<f", struct.pack("<f", x))[0]
        assert struct.unpack("<f", struct.pack("<f", float32(f)))[0] == f
        assert len(repr(float32(f))) <= len(repr(f))
    assert float32(struct.unpack("<f", struct.pack("<f", 1.1))[0]) == 1.1


def plan(name: str, code: int, data_type: str, meta: tuple = (), unsigned: bool = False, codec: str | None = None, lake: str = "") -> ColumnPlan:
    return ColumnPlan(name, code, unsigned, meta, codec, ColumnDef(name, data_type, data_type), lake or "string")


def test_compiled_row_image_with_nulls_and_absent_columns():
    plans = [
        plan("id", F.LONG, "int", lake="integer"),
        plan("flag", F.TINY, "tinyint", lake="boolean"),
        plan("name", F.VARCHAR, "varchar", (40,), codec="utf-8"),
        plan("big", F.LONGLONG, "bigint", unsigned=True, lake="decimal(20,0)"),
        plan("bin", F.STRING, "binary", (4,)),
        plan("e", F.ENUM, "enum", (1, ("a", "b"))),
        plan("st", F.SET, "set", (1, ("x", "y", "z"))),
        plan("b", F.BIT, "bit", (10,)),
        plan("y", F.YEAR, "year", lake="short"),
    ]
    image = compile_image(plans, [True] * len(plans))
    row = (b"\x00\x00"  # null bitmap (9 columns, none null)
           + struct.pack("<i", 7) + b"\x02" + b"\x03h\xc3\xa9" + struct.pack("<Q", 2**64 - 1) + b"\x02\x01\x02"
           + b"\x02" + b"\x05" + (0b1010000001).to_bytes(2, "big") + b"\x00")
    got, end = image(row + b"tail", 0)
    assert end == len(row)
    assert got == {"id": 7, "flag": True, "name": "hé", "big": "18446744073709551615", "bin": "AQIAAA==", "e": "b", "st": "x,z",
                   "b": "1010000001", "y": 0}
    nulls = image(b"\xfe\x01" + struct.pack("<i", 8), 0)[0]
    assert nulls == {"id": 8, **{p.name: None for p in plans[1:]}}
    partial = compile_image(plans[:3], [True, False, True])  # binlog_row_image=MINIMAL-like: `flag` not in the event
    assert partial(b"\x00" + struct.pack("<i", 1) + b"\x01x", 0)[0] == {"id": 1, "name": "x"}


def test_positions_sort_in_commit_order():
    snapshot_at_p = [Position.mysql(3, 1000, Position.SNAPSHOT, seq, 0) for seq in (0, 1, 2, 10**9)]
    before_p = Position.mysql(3, 900, Position.STREAM, 950, 10)
    at_p = [Position.mysql(3, 1000, Position.STREAM, 1100, 2 * i) for i in range(3)] + [Position.mysql(3, 1000, Position.STREAM, 1200, 0)]
    next_file = Position.mysql(4, 4, Position.STREAM, 4, 0)
    ordered = [before_p, *snapshot_at_p, *at_p, next_file]
    assert sorted(ordered) == ordered
    assert Position.mysql_parts(at_p[1]) == (3, 1000, 1, 1100, 2)


def test_mysql_binary_json_to_text():
    # {"a": 1} in MySQL's binary JSON: small object, 1 member, key "a", inline int16 value.
    doc = b"\x00" + b"\x01\x00\x0c\x00" + b"\x0b\x00\x01\x00" + b"\x05\x01\x00" + b"a"
    assert mysql_json(doc) == '{"a": 1}'
    assert mysql_json(b"") is None
    # MySQL prints documents with ", " and ": ", doubles without "e+".
    assert _mysql_json_dump({"k": [1, 2.5, 1e20, None, True, 'q"x']}) == '{"k": [1, 2.5, 1e20, null, true, "q\\"x"]}'
