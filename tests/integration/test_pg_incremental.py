"""Incremental snapshots of PostgreSQL tables while the source streams (watermarks).

Requests go through the signal topic as `lakeward snapshot` sends them (core.snapshot.send_request).
A mirror is compared with the source row by row; a changelog is folded in position order to check that
every incremental `r` row is exactly the row's state at the position it was published at.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time

import orjson
import pytest

from lakeward.connectors.postgres.source import STATE_KEY, _SnapshotState
from lakeward.core import broker
from lakeward.core.config import BrokerConfig
from lakeward.core.snapshot import new_request, send_request

from .harness import (
    BROKER,
    AppendRows,
    Execute,
    Postgres,
    RandomChanges,
    WriteLoad,
    job_until,
    read_topic,
    sql,
    topic_end,
    wait_until,
    write_config,
)
from .lakecheck import (
    compare,
    lake_equals_source,
    lake_rows,
    lake_table,
    no_repeated_positions,
    source_rows,
    wait_for_changelog,
)

pytestmark = pytest.mark.integration

SMALL_CHUNKS = "    snapshot_chunk_rows: 100\n"


def request(prefix: str, tables: list[str], where: str | None = None) -> None:
    asyncio.run(send_request(BrokerConfig(bootstrap_servers=BROKER, topic_prefix=prefix), "shop", new_request(tables, where)))


def state(prefix: str) -> _SnapshotState | None:
    value = asyncio.run(broker.StateTopic(BrokerConfig(bootstrap_servers=BROKER, topic_prefix=prefix), "shop", STATE_KEY).read())
    return _SnapshotState.from_json(value) if value is not None else None


def requests_done(prefix: str, n: int):
    """True once the source turned `n` requests into jobs and finished them all."""
    s = state(prefix)
    if s is None or s.signals_offset < n:
        return f"{s.signals_offset if s else 0} of {n} requests taken"
    return not s.jobs or f"jobs left: {[(j.table, j.chunks) for j in s.jobs]}"


def events(topic: str, *, since: int = 0) -> list[dict]:
    """Values of the topic's events from offset `since` on (tombstones left out)."""
    records = asyncio.run(read_topic(topic, min_count=0, timeout=5))
    return [orjson.loads(r.value) for r in records if r.offset >= since and r.value is not None]


def reads(topic: str, *, since: int = 0) -> list[dict]:
    return [e["after"] for e in events(topic, since=since) if e["op"] == "r"]


class HotLoad(WriteLoad):
    """Updates, deletes and re-inserts of the SAME keys (a hot set spread over the table) plus inserts
    of new keys and deletes of others, in small transactions, until stopped. Hot keys retire one by
    one, so a stale row published by a snapshot would not be overwritten by a later change."""

    def __init__(self, dsn: str, hot: list[int], first_new: int, seed: int, retire_after_s: float):
        super().__init__(Postgres(dsn), seed, pause_s=0.001)
        self.hot, self.next_new = list(hot), first_new
        self.retire_every = retire_after_s / max(1, len(hot))
        self.started = time.monotonic()

    def transaction(self, execute: Execute, rnd: random.Random) -> None:
        retired = int((time.monotonic() - self.started) / self.retire_every)
        live = self.hot[retired:] or self.hot[-1:]
        for _ in range(rnd.randint(1, 8)):
            k, action = rnd.choice(live), rnd.random()
            if action < 0.45:
                execute("UPDATE items SET v = v + 1, s = md5(random()::text) WHERE id = %s", (k,))
            elif action < 0.6:
                execute("DELETE FROM items WHERE id = %s", (k,))
            elif action < 0.8:
                execute("INSERT INTO items VALUES (%s, 0, 'back') ON CONFLICT (id) DO UPDATE SET v = items.v + 1, s = 'again'", (k,))
            elif action < 0.9:
                execute("INSERT INTO items VALUES (%s, 1, 'new')", (self.next_new,))
                self.next_new += 2
            else:
                execute("DELETE FROM items WHERE id = %s", (rnd.randint(1, 3000),))


def check_reads_against_changelog(lake) -> int:
    """Fold the changelog in position order (t empties, d deletes, c/u/r upsert); every `r` of an
    incremental snapshot (not at the initial snapshot's LSN) must equal the folded row at its
    position: the row as the source had it there. Returns how many were checked."""
    rows = sorted(lake_rows(lake, "items", key="_lakeward_position", metadata=True), key=lambda r: r["_lakeward_position"])
    initial_lsn = rows[0]["_lakeward_position"][:16]
    assert rows[0]["_lakeward_op"] == "t"
    folded: dict[int, tuple] = {}
    checked = 0
    for r in rows:
        op, value = r["_lakeward_op"], (r["v"], r["s"])
        if op == "t":
            folded.clear()
        elif op == "d":
            folded.pop(r["id"], None)
        else:
            if op == "r" and r["_lakeward_position"][:16] != initial_lsn:
                assert r["id"] in folded, f"incremental r of id {r['id']} at {r['_lakeward_position']}: the row did not exist there"
                assert folded[r["id"]] == value, (f"incremental r of id {r['id']} at {r['_lakeward_position']}: {value}, "
                                                  f"but the row was {folded[r['id']]} there")
                checked += 1
            folded[r["id"]] = value
    return checked


@pytest.fixture
def items(database):
    sql(database, "CREATE TABLE items (id bigint PRIMARY KEY, v int, s text)",
        "INSERT INTO items SELECT g, g % 100, md5(g::text) FROM generate_series(1, 3000) g")
    return database


def mirror_of_items(database: str, prefix: str, tmp_path, workers):
    """The source (small chunks) and a mirror sink, once `items` is in the mirror: (lake, source, mirror)."""
    lake = tmp_path / "mirror"
    cfg = write_config(tmp_path / "m.yaml", dsn=database, prefix=prefix, lake=lake, extra_source=SMALL_CHUNKS)
    source = workers(cfg, "--source", "shop").start()
    mirror = workers(cfg, "--sink", "lake").start()
    wait_until(lambda: lake_equals_source(database, lake, "items"), timeout=90, what="initial snapshot in the mirror", interval=1)
    return lake, source, mirror


def test_incremental_snapshot_under_concurrent_changes_of_the_same_keys(items, prefix, tmp_path, workers):
    database = items
    mirror_lake, changelog_lake = tmp_path / "mirror", tmp_path / "changelog"
    cfg = write_config(tmp_path / "m.yaml", dsn=database, prefix=prefix, lake=mirror_lake, extra_source=SMALL_CHUNKS)
    log_cfg = write_config(tmp_path / "c.yaml", dsn=database, prefix=prefix, lake=changelog_lake, mode="changelog", sink_name="log",
                           extra_source=SMALL_CHUNKS)
    source = workers(cfg, "--source", "shop").start()
    mirror = workers(cfg, "--sink", "lake").start()
    changelog = workers(log_cfg, "--sink", "log").start()
    wait_until(lambda: lake_equals_source(database, mirror_lake, "items"), timeout=90, what="initial snapshot in the mirror", interval=1)

    hot = list(range(7, 3001, 15))  # 200 keys, in every chunk
    loads = [HotLoad(database, hot[i::2], 10_001 + i, seed=i, retire_after_s=25) for i in range(2)]
    for load in loads:
        load.start()
    time.sleep(1)
    topic = f"{prefix}.shop.public.items"
    before = topic_end(topic)
    request(prefix, ["public.items"])
    wait_until(lambda: requests_done(prefix, 1), timeout=120, what="the incremental snapshot to finish", interval=0.5)
    for load in loads:
        load.stop()
    assert all(load.transactions > 100 for load in loads), [load.transactions for load in loads]

    got = reads(topic, since=before)
    assert len(got) > 2000, f"only {len(got)} rows re-read"
    assert len({r["id"] for r in got}) == len(got), "a row was published twice by one snapshot"
    wait_until(lambda: lake_equals_source(database, mirror_lake, "items"), timeout=90, what="mirror == source", interval=1)

    wait_for_changelog(changelog_lake, "items", topic, timeout=90)
    for w in (source, mirror, changelog):
        assert w.terminate() == 0, w.output()[-3000:]
    no_repeated_positions(changelog_lake, "items")
    assert check_reads_against_changelog(changelog_lake) == len(got)


def test_a_job_ends_at_the_last_key_it_found_while_rows_are_appended(items, prefix, tmp_path, workers):
    """A job reads up to the key of the table's last row as of its first chunk, kept in its state:
    rows appended later are streamed. A job that chased them would not end while the inserts outpace
    its chunks (it read 4,000 chunks in 2 minutes of this load, and on)."""
    database = items
    lake, source, mirror = mirror_of_items(database, prefix, tmp_path, workers)
    topic = f"{prefix}.shop.public.items"
    before = topic_end(topic)
    load = AppendRows(Postgres(database), "INSERT INTO items SELECT g, mod(g, 100), md5(g::text) FROM generate_series(%s::bigint, %s::bigint) g",
                      3001)
    load.start()
    try:
        wait_until(lambda: load.next_id > 8001, timeout=60, what="the appends to be under way")
        request(prefix, ["public.items"])
        (until,) = wait_until(lambda: job_until(state(prefix)), timeout=60, what="the job's first chunk", interval=0.05)
        wait_until(lambda: requests_done(prefix, 1), timeout=180, what="the job to end", interval=0.5)
        appended_by_then = load.next_id
    finally:
        load.stop()
    assert 8000 <= int(until) < appended_by_then
    ids = sorted(r["id"] for r in reads(topic, since=before))
    assert ids == list(range(1, int(until) + 1)), "every key up to the job's end read once, none after it"
    wait_until(lambda: lake_equals_source(database, lake, "items"), timeout=120, what="mirror == source", interval=1)
    for w in (source, mirror):
        assert w.terminate() == 0, w.output()[-3000:]


def test_killed_source_resumes_the_job_from_its_progress(database, prefix, tmp_path, workers):
    sql(database, "CREATE TABLE items (id bigint PRIMARY KEY, v int, s text)",
        "INSERT INTO items SELECT g, g % 100, md5(g::text) FROM generate_series(1, 100000) g")
    lake = tmp_path / "mirror"
    cfg = write_config(tmp_path / "m.yaml", dsn=database, prefix=prefix, lake=lake, extra_source="    snapshot_chunk_rows: 400\n")
    source = workers(cfg, "--source", "shop").start()
    mirror = workers(cfg, "--sink", "lake").start()
    wait_until(lambda: lake_equals_source(database, lake, "items"), timeout=120, what="initial snapshot in the mirror", interval=1)
    load = RandomChanges(Postgres(database), "items", first_id=100001)
    load.start()
    request(prefix, ["public.items"])

    def progressed():
        s = state(prefix)
        return bool(s and s.jobs and s.jobs[0].chunks >= 5) or f"jobs: {s and [(j.table, j.chunks) for j in s.jobs]}"

    wait_until(progressed, timeout=60, what="the job to make progress", interval=0.1)
    source.kill()
    load.stop()
    done = state(prefix).jobs[0]
    assert done.chunks < 250, "the kill was meant to land mid-snapshot"
    status = json.loads(subprocess.run([sys.executable, "-m", "lakeward.app.cli", "-c", str(cfg), "status", "--json"],
                                       capture_output=True, check=True, text=True).stdout)
    (snap,) = status["sources"][0]["snapshot"]
    assert (snap["table"], snap["kind"], snap["rows"], snap["chunks_done"]) == ("public.items", "incremental", done.rows, done.chunks)
    topic = f"{prefix}.shop.public.items"
    killed_at = topic_end(topic)

    source = workers(cfg, "--source", "shop").start()
    wait_until(lambda: requests_done(prefix, 1), timeout=120, what="the resumed job to finish", interval=0.5)
    after_restart = sorted(r["id"] for r in reads(topic, since=killed_at))
    rows_now = [r["id"] for r in source_rows(database, "items")]
    assert done.until is not None and int(done.until[0]) >= 100000, "the job ends at the last key it found, kept in its state"
    assert after_restart == [i for i in rows_now if int(done.after[0]) < i <= int(done.until[0])], \
        "the restart reads exactly the rows after the acknowledged chunks, up to the job's end"
    assert len(after_restart) < len(rows_now)
    wait_until(lambda: lake_equals_source(database, lake, "items"), timeout=120, what="mirror == source", interval=1)
    for w in (source, mirror):
        assert w.terminate() == 0, w.output()[-3000:]


def _delete_in_lake(lake, table: str, predicate: str) -> None:
    dt = lake_table(lake, table)
    assert dt is not None
    dt.delete(predicate)


def test_snapshot_repairs_a_diverged_lake_with_composite_and_text_keys_and_where(database, prefix, tmp_path, workers):
    sql(database,
        "CREATE TABLE items (id bigint PRIMARY KEY, v int, s text)",
        "INSERT INTO items SELECT g, g % 100, md5(g::text) FROM generate_series(1, 1000) g",
        "CREATE TABLE regions (region text, n int, x text, PRIMARY KEY (region, n))",
        "INSERT INTO regions SELECT r, g, md5(r || g) FROM unnest(ARRAY['eu', 'us', 'Ünïcode', 'a b', 'it''s']) r, generate_series(1, 120) g",
        "CREATE TABLE words (w text PRIMARY KEY, c int)",
        "INSERT INTO words SELECT 'w' || g || repeat('ä', g % 4) || CASE WHEN g % 7 = 0 THEN ' \"q\"' ELSE '' END, g FROM generate_series(1, 450) g",
        # keys whose Python values are not JSON (Decimal) or whose text is not ISO (timestamptz): kept as PostgreSQL writes them
        "CREATE TABLE ledger (at timestamptz, amount numeric(12, 2), note text, PRIMARY KEY (at, amount))",
        "INSERT INTO ledger SELECT timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour', (g % 7) * 1.25, 'n' || g "
        "FROM generate_series(1, 300) g")
    lake = tmp_path / "mirror"
    cfg = write_config(tmp_path / "m.yaml", dsn=database, prefix=prefix, lake=lake, extra_source=SMALL_CHUNKS)
    source = workers(cfg, "--source", "shop").start()
    mirror = workers(cfg, "--sink", "lake").start()
    tables = {"items": "id", "regions": "region", "words": "w", "ledger": "at"}

    def all_equal():
        for t, key in tables.items():
            got, want = lake_rows(lake, t, key), source_rows(database, t, key)
            if got is not None:
                got, want = (sorted(rows, key=lambda r: sorted(r.items())) for rows in (got, want))
            diff = compare(t, got, want)
            if diff is not True:
                return diff
        return True

    wait_until(all_equal, timeout=90, what="initial snapshot in the mirror", interval=1)
    assert mirror.terminate() == 0
    _delete_in_lake(lake, "items", "id % 10 = 0")
    _delete_in_lake(lake, "regions", "n % 3 = 0")
    _delete_in_lake(lake, "words", "c > 0")
    _delete_in_lake(lake, "ledger", "note <> 'n1'")
    assert all_equal() is not True
    mirror = workers(cfg, "--sink", "lake").start()

    topic = f"{prefix}.shop.public.items"
    before = topic_end(topic)
    request(prefix, ["public.items"], "id % 10 = 0")
    request(prefix, ["public.regions", "words", "ledger"])  # an unqualified name that only one captured table has
    wait_until(lambda: requests_done(prefix, 2), timeout=90, what="the snapshots to finish", interval=0.5)
    got = reads(topic, since=before)
    assert sorted(r["id"] for r in got) == list(range(10, 1001, 10)), "the where re-reads exactly the matching rows"
    assert len(reads(f"{prefix}.shop.public.regions")) == 2 * 600 and len(reads(f"{prefix}.shop.public.words")) == 2 * 450
    assert len(reads(f"{prefix}.shop.public.ledger")) == 2 * 300
    wait_until(all_equal, timeout=90, what="the lake repaired", interval=1)
    for w in (source, mirror):
        assert w.terminate() == 0, w.output()[-3000:]


def test_requests_for_keyless_unknown_tables_and_bad_where_are_refused_and_capture_goes_on(items, prefix, tmp_path, workers):
    database = items
    sql(database, "CREATE TABLE nokey (a int, b text)", "INSERT INTO nokey VALUES (1, 'x')")
    lake, source, mirror = mirror_of_items(database, prefix, tmp_path, workers)
    topic = f"{prefix}.shop.public.items"
    before = topic_end(topic)
    request(prefix, ["public.nokey", "public.nope", "public.items"])
    request(prefix, ["public.items"], "nosuchcol = 1")
    request(prefix, ["public.items"], "id >")
    wait_until(lambda: requests_done(prefix, 3), timeout=90, what="the requests to be handled", interval=0.5)
    out = source.output()
    assert "table public.nokey skipped: it has no primary key" in out
    assert "table public.nope skipped: it is not captured by this source" in out
    assert 'incremental snapshot of public.items (request ' in out and 'column "nosuchcol" does not exist' in out
    assert "syntax error" in out and "where: id >" in out
    assert sorted(r["id"] for r in reads(topic, since=before)) == list(range(1, 3001)), "the valid request ran whole"
    sql(database, "INSERT INTO items VALUES (5000, 1, 'after')")
    wait_until(lambda: lake_equals_source(database, lake, "items"), timeout=60, what="capture to go on", interval=0.5)
    assert source.alive()
    for w in (source, mirror):
        assert w.terminate() == 0, w.output()[-3000:]
