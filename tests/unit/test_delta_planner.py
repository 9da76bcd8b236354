"""The Delta sink's planner without a broker or a lake: mirror and changelog plans, the Arrow way
and the per-event way giving the same tables, and the batches only the per-event way may plan."""

from __future__ import annotations

import math
from decimal import Decimal

import orjson
import pyarrow as pa
import pytest

from lakeward.core.errors import PoisonEventError
from lakeward.core.events import NEW_KEY_HEADER, OLD_KEY_HEADER, Column, Position, TableSchema
from lakeward.sinks.delta.arrow import arrow_type
from lakeward.sinks.delta.batch import (
    DELETE_FLAG,
    Catalog,
    SchemaInfo,
    decode,
    plan,
    plan_changelog,
    plan_changelog_arrow,
    plan_mirror,
    plan_mirror_arrow,
)
from lakeward.sinks.delta.buffer import Events

TOPIC = "t.shop.public.every"
COLUMNS = [("id", "long"), ("i", "integer"), ("s", "string"), ("d", "decimal(12,2)"), ("ts", "timestamp"), ("ntz", "timestamp_ntz"),
           ("day", "date"), ("f", "double"), ("r", "float"), ("ok", "boolean"), ("b", "binary"), ("tags", "array<string>"),
           ("days", "array<date>"), ("nested", "array<array<long>>")]
SCHEMA = TableSchema("shop", "public", "every", tuple(Column(n, t, t) for n, t in COLUMNS), ("id",))
INFO = SchemaInfo.of(SCHEMA)


def catalog(*extra: tuple[str, pa.DataType]) -> Catalog:
    cat = Catalog({n: arrow_type(t) for n, t in COLUMNS}, dict(COLUMNS))
    for name, typ in extra:  # columns only the Delta table still has
        cat.arrow[name] = typ
    return cat


def full(i: int, v: int = 0) -> dict:
    return {"id": i, "i": i * 10 + v, "s": f"s{i}-{v} é \"q\"", "d": f"{i}.{v:02d}", "ts": "2024-01-31 12:00:00.123456+00",
            "ntz": "infinity" if i % 3 == 0 else "2024-02-01 00:00:00.5", "day": "-infinity" if i % 4 == 0 else "2024-03-01",
            "f": i / 3, "r": i * 0.1, "ok": bool(i % 2), "b": "eA==" if i % 2 else None, "tags": ["a", None] if i % 2 else None,
            "days": ["2024-01-01", "infinity", None], "nested": [[1, None], None, []]}


class Stream:
    """Raw envelopes as the buffer holds them (buffer.Events), with increasing offsets and positions."""

    def __init__(self) -> None:
        self.events = Events()
        self.off = 0

    def add(self, op: str, before: dict | None = None, after: dict | None = None, *, raw: bytes | None = None, info: SchemaInfo = INFO,
            link: tuple[str, dict] | None = None) -> Stream:
        e = self.events
        if link is not None:
            e.links[len(e)] = (link[0], orjson.dumps(link[1]))
        e.offsets.append(self.off)
        e.positions.append(Position.postgres(0x1000 + self.off, Position.STREAM, 0))
        src = {"connector": "postgresql", "txId": 700 + self.off, "ts_ms": 1_700_000_000_000 + self.off, "lsn": 1}
        e.values.append(raw if raw is not None else orjson.dumps({"before": before, "after": after, "source": src, "op": op, "ts_ms": 1}))
        keysrc = after or before
        e.keys.append(orjson.dumps({"id": keysrc["id"]}) if keysrc else b"{}")
        e.infos.append(info)
        self.off += 1
        return self


def mixed() -> Events:
    s = Stream()
    for i in range(1, 9):
        s.add("r", after=full(i))
    s.add("u", before={"id": 2}, after=full(2, 1)).add("d", before={"id": 3}).add("c", after=full(9)).add("u", after=full(9, 2))
    s.add("d", before={"id": 9}).add("c", after=full(3, 5)).add("m", after=None)
    return s.events


def python_plan(events: Events, mode: str, cat: Catalog | None = None):
    decoded = decode(events, TOPIC, 0)
    if mode == "mirror":
        return plan_mirror(decoded, cat or catalog(), TOPIC, 0)
    return plan_changelog(decoded, cat or catalog(), TOPIC, 0)


@pytest.mark.parametrize("mode", ["mirror", "changelog"])
def test_arrow_and_per_event_plans_are_the_same(mode):
    events = mixed()
    arrow = (plan_mirror_arrow if mode == "mirror" else plan_changelog_arrow)(events, catalog(("gone", pa.int64())))
    assert arrow is not None, "this batch is one the Arrow way plans"
    planned, ops = arrow
    expected = python_plan(events, mode, catalog(("gone", pa.int64())))
    assert (planned.kind, planned.events, planned.pk, planned.keep) == (expected.kind, expected.events, expected.pk, expected.keep)
    assert planned.data.schema == expected.data.schema
    assert planned.data.to_pylist() == expected.data.to_pylist()
    assert ops == {"r": 8, "u": 2, "d": 2, "c": 2}  # the `m` writes nothing


def test_mirror_keeps_the_last_event_per_key():
    planned, _ = plan_mirror_arrow(mixed(), catalog())
    rows = {r["id"]: r for r in planned.data.to_pylist()}
    assert sorted(rows) == list(range(1, 10))
    assert (rows[2]["i"], rows[2]["_lakeward_op"]) == (21, "u")
    assert (rows[3]["d"], rows[3]["_lakeward_op"], rows[3][DELETE_FLAG]) == (Decimal("3.05"), "c", False)
    assert rows[9][DELETE_FLAG] and rows[9]["s"] is None  # a delete carries only its key
    assert rows[4]["day"].isoformat() == "0001-01-01" and rows[3]["ntz"].isoformat() == "9999-12-31T23:59:59.999999"
    assert rows[1]["b"] == b"x" and rows[1]["nested"] == [[1, None], None, []]


def test_a_truncate_overwrites_with_what_follows_it():
    s = Stream()
    s.add("c", after=full(1)).add("t").add("r", after=full(2)).add("r", after=full(3)).add("d", before={"id": 3}).add("r", after=full(4))
    planned, ops = plan_mirror_arrow(s.events, catalog())
    expected = python_plan(s.events, "mirror")
    assert (planned.kind, planned.events, expected.kind, expected.events) == ("overwrite", 4, "overwrite", 4)
    key = lambda r: r["id"]  # noqa: E731
    assert sorted(planned.data.to_pylist(), key=key) == sorted(expected.data.select(planned.data.column_names).to_pylist(), key=key)
    assert [r["id"] for r in planned.data.to_pylist()] == [2, 4] and ops["c"] == 1
    s = Stream().add("c", after=full(1)).add("t")
    planned, _ = plan_mirror_arrow(s.events, catalog())
    assert planned.kind == "overwrite" and planned.data.num_rows == 0 and planned.data.schema == python_plan(s.events, "mirror").data.schema


@pytest.mark.parametrize("why", ["absent", "link", "nan", "undecodable", "no after", "number for a string"])
def test_batches_the_arrow_way_leaves_to_the_per_event_way(why):
    s = Stream().add("r", after=full(1))
    if why == "absent":  # an unchanged TOASTed value: absent, not null
        s.add("u", after={k: v for k, v in full(7, 1).items() if k != "s"})
    elif why == "link":
        s.add("d", before={"id": 1}, link=(NEW_KEY_HEADER, {"id": 5})).add("c", after=full(5), link=(OLD_KEY_HEADER, {"id": 1}))
    elif why == "nan":
        s.add("c", after={**full(2), "f": "NaN"})
    elif why == "undecodable":
        s.add("c", raw=b'{"op": "c", "after": {"id": 9, ')
    elif why == "no after":
        s.add("c", raw=b'{"op": "c", "after": null}')
    else:
        s.add("c", after={**full(2), "s": 5})
    assert plan_mirror_arrow(s.events, catalog()) is None and plan_changelog_arrow(s.events, catalog()) is None
    if why in ("undecodable", "no after", "number for a string"):
        with pytest.raises(PoisonEventError, match=r"offset 1: ") as e:
            plan(s.events, catalog(), "mirror", TOPIC, 0)
        assert e.value.offset == 1  # type: ignore[attr-defined]
        return
    planned, _ = plan(s.events, catalog(), "mirror", TOPIC, 0)
    rows = planned.data.to_pylist()
    if why == "nan":
        assert math.isnan(rows[1].pop("f"))
        rows[1]["f"] = None
    expected = python_plan(s.events, "mirror").data.to_pylist()
    if why == "nan":
        expected[1]["f"] = None
    assert rows == expected
    if why == "absent":
        assert planned.keep == ("s",)
        planned, _ = plan(s.events, catalog(), "changelog", TOPIC, 0)
        assert planned.data.column("_lakeward_unchanged").to_pylist() == [None, ["s"]]


def test_rows_of_an_older_schema_get_nulls_for_the_newer_columns():
    old = SchemaInfo.of(TableSchema("shop", "public", "every", SCHEMA.columns[:3], ("id",)))
    s = Stream().add("c", after={"id": 1, "i": 1, "s": "a"}, info=old).add("c", after=full(2))
    for mode in ("mirror", "changelog"):
        planned, _ = plan(s.events, catalog(), mode, TOPIC, 0)
        rows = planned.data.to_pylist()
        assert rows[0]["d"] is None and rows[1]["d"] is not None
        assert rows == python_plan(s.events, mode).data.select(planned.data.column_names).to_pylist()


def test_nothing_but_messages_is_a_plan_of_nothing():
    s = Stream().add("m", after=None)
    assert plan(s.events, catalog(), "mirror", TOPIC, 0)[0].kind == "none"
    assert plan(s.events, catalog(), "changelog", TOPIC, 0)[0].kind == "none"
    assert plan(Events(), catalog(), "mirror", TOPIC, 0)[0].kind == "none"
