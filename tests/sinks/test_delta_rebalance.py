"""Delta sink: rebalances while a source creates table topics (the pattern subscription rejoins the
group every few hundred milliseconds). Every assignment is all or nothing: no ERROR, no traceback,
and every table ends with exactly the events produced (none twice, none skipped)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from lakeward.sinks.delta import sink as sink_module
from tests.sinks.conftest import ins, upd

pytestmark = pytest.mark.integration

TABLES = 24


@pytest.mark.parametrize("mode", ["changelog", "mirror"])
async def test_topics_created_while_the_sink_is_subscribed(lab, caplog, monkeypatch, mode):
    monkeypatch.setattr(sink_module, "METADATA_MAX_AGE_MS", 100)  # new topics seen (and rebalanced) every 100 ms
    caplog.set_level(logging.INFO)
    cols = [("id", "long"), ("v", "string")]
    first = await lab.table("shop", "public", "t00", cols, ["id"])
    await lab.publish(first, [ins({"id": 1, "v": "a"})])
    produced: dict[str, list[dict]] = {"t00": [{"id": 1, "v": "a", "op": "c"}]}
    schemas = {"t00": first}
    async with lab.sink(mode=mode, batch_interval_s=0.05) as sink:
        await lab.until(lambda: len(lab.rows(first)) == 1, within_s=30, what="the first table")
        for i in range(1, TABLES):
            name = f"t{i:02d}"
            ts = schemas[name] = await lab.table("shop", "public", name, cols, ["id"])
            await lab.publish(ts, [ins({"id": 1, "v": f"{name}-1"}), ins({"id": 2, "v": f"{name}-2"})])
            produced[name] = [{"id": 1, "v": f"{name}-1", "op": "c"}, {"id": 2, "v": f"{name}-2", "op": "c"}]
            # the tables that exist keep changing while the group rebalances
            old = f"t{i // 2:02d}"
            await lab.publish(schemas[old], [upd({"id": 1, "v": f"{old}-u{i}"})])
            produced[old].append({"id": 1, "v": f"{old}-u{i}", "op": "u"})
            await asyncio.sleep(0.05 * (i % 4))
        for name, ts in schemas.items():
            if mode == "changelog":
                want = [(e["id"], e["v"], e["op"]) for e in produced[name]]
                await lab.until(lambda ts=ts, want=want: sorted(want) == sorted((r["id"], r["v"], r["_lakeward_op"]) for r in lab.rows(ts)),
                                within_s=60, what=f"changelog of {name}")
            else:
                last: dict[int, str] = {}
                for e in produced[name]:
                    last[e["id"]] = e["v"]
                await lab.until_rows(ts, [{"id": k, "v": v} for k, v in sorted(last.items())], within_s=60)
        status = await sink.status()
    assert sorted(t.table for t in status.tables) == sorted(f"shop.public.{n}" for n in schemas)
    assert all(t.error is None for t in status.tables), status
    if mode == "changelog":  # exactly once: every event one row, every offset once
        for name, ts in schemas.items():
            offsets = [r["_lakeward_offset"] for r in lab.rows(ts)]
            assert sorted(offsets) == list(range(len(produced[name]))), name
    # aiokafka's own benign rebalance noise (a topic seen before its metadata, the monitoring-only
    # Kafka offset commit of a generation that just ended) is not an error of the sink's.
    benign = ("not found in cluster metadata", "OffsetCommit failed for group")
    bad = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records
           if r.exc_info or (r.levelno >= logging.ERROR and not (r.name.startswith("aiokafka") and any(b in r.getMessage() for b in benign)))]
    assert not bad, "\n".join(bad)
    rebalances = [r for r in caplog.records if r.getMessage().startswith("revoked")]
    assert len(rebalances) >= 3, "the test did not make the group rebalance while tables were created"


async def test_a_table_that_cannot_be_read_on_assignment_waits_and_resumes_exactly(lab, caplog, monkeypatch):
    """The Delta log cannot be read when the partition is assigned (storage down): the writer waits
    paused, the read is retried with backoff, and once it works the table resumes at its txn + 1."""
    from lakeward.sinks.delta.lake import LakeTable

    ts = await lab.table("shop", "public", "flaky", [("id", "long"), ("v", "string")], ["id"])
    await lab.publish(ts, [ins({"id": 1, "v": "a"}), ins({"id": 2, "v": "b"})])
    async with lab.sink(mode="changelog") as sink:
        await lab.until(lambda: len(lab.rows(ts)) == 2, what="first rows")
    await lab.publish(ts, [upd({"id": 1, "v": "a2"}), ins({"id": 3, "v": "c"})])

    real_load = LakeTable.load
    failures = {"left": 6}

    def load(self):
        if self.table == "shop.public.flaky" and failures["left"] > 0:
            failures["left"] -= 1
            raise OSError(f"storage unavailable (injected, {failures['left']} left)")
        return real_load(self)

    monkeypatch.setattr(LakeTable, "load", load)
    monkeypatch.setattr(sink_module, "OPEN_BACKOFF_S", (0.05, 0.2))
    caplog.set_level(logging.INFO)
    async with lab.sink(mode="changelog") as sink:
        await lab.until(lambda: failures["left"] == 0 and len(lab.rows(ts)) == 4, within_s=30, what="the rows after the retries")
        await lab.until_committed(sink, 3)
        status = await sink.status()
    rows = lab.rows(ts)
    assert sorted((r["_lakeward_offset"], r["id"], r["v"]) for r in rows) == [(0, 1, "a"), (1, 2, "b"), (2, 1, "a2"), (3, 3, "c")]
    assert [t.error for t in status.tables] == [None]
    retries = [r for r in caplog.records if "storage unavailable" in r.getMessage()]
    assert len(retries) == 6 and all(r.levelno == logging.WARNING for r in retries)
    bad = [r.getMessage() for r in caplog.records if r.exc_info or (r.levelno >= logging.ERROR and r.name.startswith("lakeward"))]
    assert not bad, bad
