"""plan_mirror and primary-key changes, against a real Delta table on disk: the `c` of a key change
takes its absent (unchanged TOASTed) columns from the old key's row — in the batch or in the lake —
and never writes NULL for them."""

from __future__ import annotations

import orjson
import pytest
from deltalake import DeltaTable

from lakeward.core.errors import TerminalError
from lakeward.core.events import Column, Position, TableSchema
from lakeward.sinks.delta.arrow import arrow_type
from lakeward.sinks.delta.batch import Catalog, SchemaInfo, plan_mirror
from lakeward.sinks.delta.lake import LakeTable

TOPIC = "t.shop.public.docs"


def schema(pk: tuple[str, ...] = ("id",)) -> SchemaInfo:
    cols = [Column("id", "integer", "integer", False), Column("k", "text", "string", "k" not in pk), Column("small", "text", "string"),
            Column("big", "text", "string"), Column("big2", "text", "string")]
    return SchemaInfo.of(TableSchema("shop", "public", "docs", tuple(cols), pk))


class Stream:
    """Events as TableWriter.ingest buffers them, with increasing offsets and positions."""

    def __init__(self, info: SchemaInfo):
        self.info = info
        self.off = 0

    def ev(self, op: str, before=None, after=None, link: dict | None = None) -> tuple:
        self.off += 1
        key = orjson.dumps({c: (before or after)[c] for c in self.info.pk}) if before or after else b"{}"
        return (self.off, Position.postgres(0x1000, 1, self.off), op, before, after, 1_700_000_000_000, 7, key, self.info,
                orjson.dumps(link) if link is not None else None)

    def move(self, old: dict, new_after: dict) -> list[tuple]:
        """A key change as the PostgreSQL source emits it: d(old) [newkey] + c(new) [oldkey]."""
        new = {c: new_after[c] for c in self.info.pk}
        return [self.ev("d", before=old, link=new), self.ev("c", after=new_after, link=old)]


def catalog(info: SchemaInfo) -> Catalog:
    return Catalog({c.name: arrow_type(c.lake_type) for c in info.schema.columns}, {c.name: c.lake_type for c in info.schema.columns})


class Lake:
    def __init__(self, path, info: SchemaInfo):
        self.table = LakeTable(str(path / "docs"), {}, TOPIC, 0, "shop.public.docs", "lake")
        self.table.load()
        self.info = info
        self.txn: int | None = None

    def apply(self, events: list[tuple], *, lookup: bool = True) -> None:
        plan = plan_mirror(events, catalog(self.info), TOPIC, 0, lookup=self.table.lookup if lookup else None)
        res = self.table.commit(plan, expected=self.txn, txn=events[-1][0], position=events[-1][1], first=0 if self.txn is None else self.txn + 1)
        assert res.ok
        self.txn = events[-1][0]

    def rows(self, key: str = "id") -> list[dict]:
        rows = DeltaTable(self.table.uri).to_pyarrow_table().to_pylist()
        return sorted(({k: v for k, v in r.items() if not k.startswith("_lakeward_")} for r in rows), key=lambda r: r[key])


def row(id: int, small: str, big: str | None, big2: str | None = None, k: str = "a") -> dict:
    return {"id": id, "k": k, "small": small, "big": big, "big2": big2}


@pytest.fixture
def lake(tmp_path):
    info = schema()
    lake = Lake(tmp_path, info)
    s = Stream(info)
    lake.apply([s.ev("r", after=row(i, f"s{i}", f"B{i}", f"C{i}")) for i in (1, 2, 3, 4)])
    return lake, s


def test_old_key_only_in_the_lake(lake):
    lake, s = lake
    lake.apply(s.move({"id": 1}, {"id": 100, "k": "a", "small": "s1"}))  # big and big2 unchanged (TOAST)
    assert lake.rows() == [row(2, "s2", "B2", "C2"), row(3, "s3", "B3", "C3"), row(4, "s4", "B4", "C4"), row(100, "s1", "B1", "C1")]


def test_chains_updates_and_rows_of_the_same_batch(lake):
    lake, s = lake
    lake.apply([
        *s.move({"id": 2}, {"id": 20, "k": "a", "small": "s2"}),                  # 2 -> 20 -> 30, then an update
        *s.move({"id": 20}, {"id": 30, "k": "a", "small": "s2"}),
        s.ev("u", after={"id": 30, "k": "a", "small": "u30"}),
        s.ev("u", after={"id": 3, "k": "a", "small": "u3", "big2": "new"}),        # updated (big kept), then moved
        *s.move({"id": 3}, {"id": 33, "k": "a", "small": "u3"}),
        s.ev("c", after=row(5, "s5", "B5", "C5")),                                # inserted in the batch, then moved
        *s.move({"id": 5}, {"id": 55, "k": "a", "small": "s5"}),
    ])
    assert lake.rows() == [row(1, "s1", "B1", "C1"), row(4, "s4", "B4", "C4"), row(30, "u30", "B2", "C2"), row(33, "u3", "B3", "new"),
                           row(55, "s5", "B5", "C5")]


def test_values_from_the_batch_need_no_lake(tmp_path):
    info = schema()
    s = Stream(info)
    plan = plan_mirror([s.ev("c", after=row(5, "s5", "B5")), *s.move({"id": 5}, {"id": 50, "k": "a", "small": "s5", "big2": None})],
                       catalog(info), TOPIC, 0, lookup=None)
    assert plan.plain().select(["id", "big"]).to_pylist() == [{"id": 50, "big": "B5"}]


def test_composite_key(tmp_path):
    info = schema(("id", "k"))
    lake, s = Lake(tmp_path, info), Stream(info)
    lake.apply([s.ev("r", after=row(1, "s1", "B1", "C1", k="x")), s.ev("r", after=row(1, "s1", "D1", "E1", k="y"))])
    lake.apply(s.move({"id": 1, "k": "x"}, {"id": 1, "k": "z", "small": "s1"}))  # one part of the key changes
    lake.apply(s.move({"id": 1, "k": "y"}, {"id": 2, "k": "w", "small": "s1", "big": "changed"}))  # both; big2 unchanged
    assert sorted(lake.rows(), key=lambda r: r["k"]) == [row(2, "s1", "changed", "E1", k="w"), row(1, "s1", "B1", "C1", k="z")]


def test_a_value_found_nowhere_stops_the_table(lake, tmp_path):
    lake, s = lake
    with pytest.raises(TerminalError, match=r"table shop.public.docs: the primary key changed from \{\"id\":9\} to \{\"id\":90\} "
                                            r"\(topic t.shop.public.docs partition 0 offset \d+\) and the unchanged out-of-line \(TOASTed\) "
                                            r"value of column\(s\) 'big', 'big2'.*not in the batch, nor in the lake under the old key"):
        lake.apply(s.move({"id": 9}, {"id": 90, "k": "a", "small": "s9"}))
    with pytest.raises(TerminalError, match=r"'big2'.*the old key was deleted before"):
        plan_mirror([s.ev("d", before={"id": 1}), *s.move({"id": 1}, {"id": 10, "k": "a", "small": "s", "big": "b"})],
                    catalog(lake.info), TOPIC, 0, lookup=lake.table.lookup)
    with pytest.raises(TerminalError, match=r"'big'.*the table was truncated before it"):
        plan_mirror([s.ev("t"), s.ev("c", after={"id": 11, "k": "a", "small": "s", "big2": None}, link={"id": 1})],
                    catalog(lake.info), TOPIC, 0, lookup=lake.table.lookup)
    empty = Lake(tmp_path / "none", lake.info)  # no lake table at all
    with pytest.raises(TerminalError, match=r"nor in the lake under the old key"):
        empty.apply(s.move({"id": 1}, {"id": 12, "k": "a", "small": "s"}))
    assert [r["id"] for r in lake.rows()] == [1, 2, 3, 4], "nothing was written"
