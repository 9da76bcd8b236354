"""Delta commits as the sink makes them (LakeTable, real Delta tables on disk): the physical types of
the Parquet files every commit kind writes, and the protocol upgrade a timestamp_ntz column needs."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from lakeward.sinks.delta.arrow import arrow_type, storage_type, to_arrow
from lakeward.sinks.delta.batch import DELETE_FLAG, META_OP, META_TYPES, Plan
from lakeward.sinks.delta.lake import LakeTable

# Every lake type whose Arrow type has more than one physical form (strings, binaries, lists), and
# a few that have one (to see that nothing else moves).
TYPES = {
    "s": "string", "b": "binary", "n": "long", "d": "decimal(10,2)", "ts": "timestamp",
    "tags": "array<string>", "blobs": "array<binary>", "nums": "array<long>", "nested": "array<array<string>>",
}
VALUES = {"s": "x", "b": "eA==", "n": 1, "d": "1.50", "ts": "2024-01-31 12:00:00+00", "tags": ["a", None],
          "blobs": ["eA=="], "nums": [1, None], "nested": [["a"], None]}


def table(ids: list[int], *, delete: list[bool] | None = None, extra: dict[str, str] | None = None, meta: bool = True) -> pa.Table:
    types = {**TYPES, **(extra or {})}
    cols: dict[str, pa.Array] = {"id": pa.array(ids, pa.int64())}
    for name, lake_type in types.items():
        cols[name] = to_arrow([VALUES.get(name) if i % 2 else None for i in ids], lake_type)
    if meta:
        cols[META_OP] = pa.array(["c"] * len(ids), META_TYPES[META_OP])
    if delete is not None:
        cols[DELETE_FLAG] = pa.array(delete, pa.bool_())
    return pa.table(cols)


def merge(ids: list[int], delete: list[bool] | None = None, **kw: Any) -> Plan:
    return Plan("merge", table(ids, delete=delete or [False] * len(ids), **kw), pk=("id",), events=len(ids))


def new_files(dt_: DeltaTable, seen: set[str]) -> list[str]:
    files = [f for f in dt_.file_uris() if f not in seen]
    seen.update(files)
    return files


def file_types(path: str) -> dict[str, pa.DataType]:
    return {f.name: f.type for f in pq.read_schema(path.removeprefix("file://"))}


@pytest.fixture
def lake(tmp_path: Any) -> LakeTable:
    return LakeTable(str(tmp_path / "t"), {}, "topic", 0, "shop.public.t", "s1")


def test_every_commit_kind_writes_the_same_physical_types(lake: LakeTable):
    expected = {"id": pa.int64(), **{n: storage_type(arrow_type(t)) for n, t in TYPES.items()}, META_OP: storage_type(META_TYPES[META_OP])}
    assert expected["s"] == pa.string_view() and expected["tags"] == pa.list_(pa.field("element", pa.string_view()))
    seen: set[str] = set()
    kinds = [
        ("create", merge([1, 2, 3])),
        ("append", Plan("append", table([4, 5]), events=2)),
        ("merge", merge([2, 3, 6], delete=[False, True, False])),
        ("overwrite", Plan("overwrite", table([7, 8, 9]), events=3)),
        ("merge into a rewritten file", merge([7, 10])),
    ]
    txn = -1
    for kind, plan in kinds:
        txn += 1
        assert lake.commit(plan, expected=lake.txn(), txn=txn, position=None, first=txn).ok
        files = new_files(lake.dt, seen)  # type: ignore[arg-type]
        assert files, kind
        for f in files:
            types = file_types(f)
            assert types == expected, f"{kind}: {os.path.basename(f)} has {types}"
    rows = DeltaTable(lake.uri).to_pyarrow_table().sort_by("id").to_pylist()
    assert [r["id"] for r in rows] == [7, 8, 9, 10]
    assert rows[0]["tags"] == ["a", None] and rows[0]["b"] == b"x" and rows[0]["nested"] == [["a"], None] and rows[3]["s"] is None
    # A filtered read: every file has the same types, so the physical schema of one is that of all.
    phys = pa.schema([pa.field(n, t) for n, t in expected.items()])
    ds = DeltaTable(lake.uri).to_pyarrow_dataset(schema=phys)
    con = duckdb.connect()
    con.register("t", ds)
    assert con.sql("SELECT id FROM t WHERE s = 'x' ORDER BY id").fetchall() == [(7,), (9,)]


NTZ = {"x": "timestamp_ntz", "xs": "array<timestamp_ntz>"}
VALUES.update({"x": "2024-01-31 12:00:00.5", "xs": ["2024-02-01 00:00:00", None]})


def ntz_features(uri: str) -> tuple[int, int, list[str], list[str]]:
    p = DeltaTable(uri).protocol()
    return p.min_reader_version, p.min_writer_version, sorted(p.reader_features or []), sorted(p.writer_features or [])


@pytest.mark.parametrize("kind", ["merge", "append", "overwrite"])
@pytest.mark.parametrize("column", ["x", "xs"])
def test_a_timestamp_ntz_column_added_to_an_existing_table_keeps_it_readable(lake: LakeTable, kind: str, column: str):
    extra = {column: NTZ[column]}
    assert lake.commit(merge([1, 2]), expected=None, txn=0, position=None, first=0).ok
    assert ntz_features(lake.uri)[:2] == (1, 2)
    plans = {"merge": lambda ids: merge(ids, extra=extra), "append": lambda ids: Plan("append", table(ids, extra=extra), events=len(ids)),
             "overwrite": lambda ids: Plan("overwrite", table(ids, extra=extra), events=len(ids))}
    for txn, ids in enumerate(([3, 4], [5, 6], [7]), start=1):  # the upgrade and then several commits after it
        res = lake.commit(plans[kind](ids), expected=txn - 1, txn=txn, position=None, first=txn)
        assert res.ok
        fresh = DeltaTable(lake.uri)
        assert fresh.transaction_version(lake.app_id) == txn
    assert ntz_features(lake.uri) == (3, 7, ["timestampNtz"], ["timestampNtz"])
    rows = DeltaTable(lake.uri).to_pyarrow_table().sort_by("id").to_pylist()
    want_ids = {"merge": [1, 2, 3, 4, 5, 6, 7], "append": [1, 2, 3, 4, 5, 6, 7], "overwrite": [7]}[kind]
    assert [r["id"] for r in rows] == want_ids
    value = to_arrow([VALUES[column]], NTZ[column]).to_pylist()[0]
    assert {r["id"]: r[column] for r in rows} == {i: (value if i % 2 and i > 2 else None) for i in want_ids}
    # DuckDB over the dataset reads the column back as a TIMESTAMP (no time zone). (No WHERE on the
    # new column: pyarrow's dataset scan lets `x IS NOT NULL` through for files without the column.)
    con = duckdb.connect()
    con.register("t", DeltaTable(lake.uri).to_pyarrow_dataset())
    got = con.sql(f"SELECT id, {column} FROM t ORDER BY id").fetchall()
    assert got == [(i, value if i % 2 and i > 2 else None) for i in want_ids]
    if column == "x":
        assert con.sql("SELECT DISTINCT typeof(x) FROM t").fetchall() == [("TIMESTAMP",)]


def test_a_new_table_with_a_timestamp_ntz_column_is_readable(lake: LakeTable):
    for txn, ids in enumerate(([1, 2], [3], [1])):
        assert lake.commit(merge(ids, extra=NTZ), expected=None if txn == 0 else txn - 1, txn=txn, position=None, first=txn).ok
    assert ntz_features(lake.uri) == (3, 7, ["timestampNtz"], ["timestampNtz"])
    rows = DeltaTable(lake.uri).to_pyarrow_table().sort_by("id").to_pylist()
    assert [(r["id"], r["x"]) for r in rows] == [(1, dt.datetime(2024, 1, 31, 12, 0, 0, 500000)), (2, None),
                                                 (3, dt.datetime(2024, 1, 31, 12, 0, 0, 500000))]


def test_the_protocol_upgrade_moves_no_offset_and_no_position(lake: LakeTable):
    assert lake.commit(merge([1]), expected=None, txn=5, position=b"\x01", first=0).ok
    assert lake.commit(merge([2], extra=NTZ), expected=5, txn=9, position=b"\x02", first=6).ok
    history = DeltaTable(lake.uri).history()
    ops = [h["operation"] for h in history]
    assert len(ops) == 3, ops  # create, upgrade, merge
    upgrade = history[1]
    assert upgrade.get("lakeward.protocol") == "timestampNtz" and "lakeward.position" not in upgrade
    state = LakeTable(lake.uri, {}, "topic", 0, "shop.public.t", "s1").load()
    assert state.txn == 9 and state.position == b"\x02"
