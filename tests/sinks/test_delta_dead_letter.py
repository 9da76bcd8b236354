"""Delta sink with a dead-letter topic: poison events go there with their reason; the table goes on."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from prometheus_client import REGISTRY

from lakeward.core.broker import read_topic
from tests.sinks.conftest import ins, upd

pytestmark = pytest.mark.integration

COLS = [("id", "long"), ("amount", "decimal(5,2)")]


async def test_poison_events_go_to_the_dead_letter_topic_and_the_table_goes_on(lab):
    t = await lab.table("shop", "public", "orders", COLS, ["id"])
    dlq = f"{lab.prefix}.dead-letters"
    await lab.publish(t, [
        ins({"id": 1, "amount": "1.00"}),
        {"op": "c", "before": None, "after": {"id": 9}, "raw": b'{"op": "c", "after": {"id": 9, '},  # undecodable
        ins({"id": 2, "amount": "not a number"}),  # Delta can't take it in decimal(5,2)
        ins({"id": 3, "amount": "3.00"}),
        upd({"id": 1, "amount": "1.50"}),
    ])
    async with lab.sink(dead_letter_topic=dlq) as sink:
        await lab.until_rows(t, [{"id": 1, "amount": Decimal("1.50")}, {"id": 3, "amount": Decimal("3.00")}])
        await lab.until_committed(sink, 4)
        (status,) = (await sink.status()).tables
    assert (status.error, status.dead_lettered, status.committed_offset) == (None, 2, 4)
    labels = {"sink": sink.config.name, "table": "shop.public.orders"}
    assert REGISTRY.get_sample_value("lakeward_sink_dead_letters_total", labels) == 2

    letters = await read_topic(lab.broker, dlq)
    assert len(letters) == 2
    by_offset = {int(dict(r.headers)["lakeward.dlq.offset"]): r for r in letters}
    assert sorted(by_offset) == [1, 2]
    undecodable, rejected = by_offset[1], by_offset[2]
    h = dict(undecodable.headers)
    assert undecodable.value == b'{"op": "c", "after": {"id": 9, '  # the original bytes
    assert h["lakeward.dlq.table"] == b"shop.public.orders" and h["lakeward.dlq.topic"].endswith(b".shop.public.orders")
    assert b"undecodable event" in h["lakeward.dlq.reason"] and h["lakeward.dlq.partition"] == b"0"
    assert "lakeward.schema" in h and "lakeward.pos" in h
    h = dict(rejected.headers)
    assert b"column 'amount' value 'not a number'" in h["lakeward.dlq.reason"]
    assert orjson.loads(rejected.value)["after"] == {"id": 2, "amount": "not a number"}

    # A restart resumes after the commit that covered the letters: none is sent twice, no row is doubled.
    await lab.publish(t, [ins({"id": 4, "amount": "4.00"})])
    async with lab.sink(dead_letter_topic=dlq) as sink:
        await lab.until_rows(t, [{"id": 1, "amount": Decimal("1.50")}, {"id": 3, "amount": Decimal("3.00")},
                                 {"id": 4, "amount": Decimal("4.00")}])
        await lab.until_committed(sink, 5)
        assert (await sink.status()).tables[0].dead_lettered == 0
    assert len(await read_topic(lab.broker, dlq)) == 2


async def test_without_a_dead_letter_topic_the_table_stops_at_the_poison_event(lab):
    t = await lab.table("shop", "public", "orders", COLS, ["id"])
    await lab.publish(t, [ins({"id": 1, "amount": "1.00"}),
                          {"op": "c", "before": None, "after": {"id": 9}, "raw": b"not json"},
                          ins({"id": 3, "amount": "3.00"})])
    async with lab.sink() as sink:
        await lab.until(lambda: any(w.error for w in sink._writers.values()), what="the table to stop")
        (status,) = (await sink.status()).tables
    assert "offset 1: undecodable event" in status.error and status.dead_lettered == 0
    assert lab.data(t) == [{"id": 1, "amount": Decimal("1.00")}]
