"""Incremental snapshots of the MySQL source while it streams (`lakeward snapshot`, through the signal
topic): exact under concurrent writes of the same keys, resumable after a kill, `--where`, refusals that
leave the capture running, an idle binlog, and the repair of a lake that lost rows.

Requests are sent with core.snapshot.send_request, as `lakeward snapshot` does.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from deltalake import DeltaTable

from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.connectors.mysql.source import MySQLSource, SourceState
from lakeward.core import broker
from lakeward.core.config import BrokerConfig
from lakeward.core.events import Position
from lakeward.core.snapshot import new_request, send_request

from .harness import (
    BROKER,
    MYSQL,
    AppendRows,
    MariaDB,
    RandomChanges,
    job_until,
    mquery,
    msql,
    wait_until,
    write_mysql_config,
)
from .lakecheck import lake_equals_mysql, mysql_lake_rows, mysql_lake_table, no_repeated_positions

pytestmark = pytest.mark.integration


def request(prefix: str, tables: list[str], where: str | None = None) -> None:
    asyncio.run(send_request(BrokerConfig(bootstrap_servers=BROKER, topic_prefix=prefix), "legacy", new_request(tables, where)))


def records(topic: str) -> list:
    return asyncio.run(broker.read_topic(BrokerConfig(bootstrap_servers=BROKER), topic))


def incremental_reads(topic: str) -> list[tuple[bytes, dict]]:
    """(position, envelope) of the topic's incremental `r` events, in topic order."""
    out = []
    for r in records(topic):
        if r.value is None:
            continue
        v = orjson.loads(r.value)
        if v["op"] == "r" and v["source"]["snapshot"] == "incremental":
            out.append((dict(r.headers)["lakeward.pos"], v))
    return out


def state(prefix: str) -> SourceState | None:
    value = asyncio.run(broker.StateTopic(BrokerConfig(bootstrap_servers=BROKER, topic_prefix=prefix), "legacy", b"state").read())
    return SourceState.from_json(value) if value is not None else None


def jobs_done(prefix: str, min_chunks: int = 1, *, requests: int = 0):
    """True once the state shows no job left, at least `min_chunks` chunks published and at least
    `requests` requests taken (a job's chunk count depends on the rows a load left in its range)."""
    s = state(prefix)
    if s is None:
        return "no state yet"
    return ((not s.jobs and s.chunk_counter >= min_chunks and s.signals_offset >= requests)
            or f"jobs {[j.to_dict() for j in s.jobs]}, chunk_counter {s.chunk_counter}, requests taken {s.signals_offset}")


def same_event(a: bytes | None, b: bytes | None) -> bool:
    """Equal but for the envelope's processing time."""
    if a is None or b is None:
        return a == b
    x, y = orjson.loads(a), orjson.loads(b)
    x.pop("ts_ms"), y.pop("ts_ms")
    return x == y


def positions_increase(topic: str) -> None:
    """Every event of the topic sorts after every earlier one, except exact repeats of earlier events and
    stream events before the point of a whole-table re-read published earlier (after a DDL: sinks drop
    them, the re-read contains them)."""
    seen: dict[bytes, bytes | None] = {}
    newest, reread_at = b"", b""
    for r in records(topic):
        pos = dict(r.headers)["lakeward.pos"]
        if pos <= newest:
            assert pos in seen and same_event(seen[pos], r.value) or pos < reread_at, (
                f"position {pos.hex()} ({r.value[:200]!r}) sorts before an earlier event's {newest.hex()} and repeats none")
            continue
        newest = pos
        seen[pos] = r.value
        if r.value is not None and orjson.loads(r.value)["op"] == "t" and Position.mysql_parts(pos)[2] == Position.SNAPSHOT:
            reread_at = pos


def start_items(db: str, prefix: str, tmp_path, workers, *, rows: int, chunk_rows: int):
    """`items` with `rows` rows, then the source and a mirror and a changelog sink following it:
    (mirror config, mirror lake, changelog lake, source, sinks)."""
    msql("CREATE TABLE items (id bigint PRIMARY KEY, v int, s char(32))",
         f"INSERT INTO items SELECT seq, seq % 100, md5(seq) FROM seq_1_to_{rows}", db=db)
    mirror_lake, changelog_lake = tmp_path / "mirror", tmp_path / "changelog"
    extra = f"    snapshot_chunk_rows: {chunk_rows}\n"
    cfg = write_mysql_config(tmp_path / "mirror.yaml", db=db, prefix=prefix, lake=mirror_lake, extra_source=extra)
    log_cfg = write_mysql_config(tmp_path / "changelog.yaml", db=db, prefix=prefix, lake=changelog_lake, mode="changelog",
                                 extra_source=extra, sink_name="log")
    sinks = [workers(cfg, "--sink", "lake").start(), workers(log_cfg, "--sink", "log").start()]
    return cfg, mirror_lake, changelog_lake, workers(cfg, "--source", "legacy").start(), sinks


@pytest.fixture
def items(mysql_db, prefix, tmp_path, workers):
    """20,000 rows in `items`, a mirror and a changelog sink following the source; snapshot done."""
    db = mysql_db
    cfg, mirror_lake, changelog_lake, source, sinks = start_items(db, prefix, tmp_path, workers, rows=20_000, chunk_rows=200)
    wait_until(lambda: lake_equals_mysql(db, mirror_lake, "items"), timeout=90, what="the initial snapshot in the mirror")
    return db, prefix, cfg, mirror_lake, changelog_lake, source, sinks



def wait_for_changelog(topic: str, changelog_lake, db: str) -> None:
    """Until the changelog holds an event for every distinct position on the topic."""
    expected = len({dict(r.headers)["lakeward.pos"] for r in records(topic)})

    def changelog_complete():
        dt = mysql_lake_table(changelog_lake, db, "items")
        n = dt.to_pyarrow_dataset().count_rows() if dt else 0
        return n >= expected or f"changelog has {n} of {expected} events"

    wait_until(changelog_complete, timeout=90, what="changelog complete", interval=1)


def test_incremental_snapshot_under_concurrent_writes_of_the_same_keys(items, workers):
    db, prefix, cfg, mirror_lake, changelog_lake, source, sinks = items
    topic = f"{prefix}.legacy.{db}.items"
    load = RandomChanges(MariaDB(db), "items", first_id=20001, seed=3, key_updates=True)
    load.start()
    time.sleep(1)
    request(prefix, [f"{db}.items"])
    wait_until(lambda: jobs_done(prefix, requests=1), timeout=180, what="the incremental snapshot to finish", interval=0.5)
    load.stop()
    assert load.transactions > 100
    wait_until(lambda: lake_equals_mysql(db, mirror_lake, "items"), timeout=120, what="mirror == source", interval=1)

    reads = incremental_reads(topic)
    # The load deletes rows and moves keys to new ids only: a row of the first 20,000 ids still there
    # was there all along, and the job (which ends at the last key it found) read it.
    kept = {i for (i,) in mquery("SELECT id FROM items WHERE id <= 20000", db=db)}
    missed = kept - {v["after"]["id"] for _, v in reads}
    assert len(kept) > 15_000 and not missed, f"{len(missed)} of the rows there all along not read, e.g. {sorted(missed)[:5]}"
    positions_increase(topic)
    wait_for_changelog(topic, changelog_lake, db)
    for w in (source, *sinks):
        assert w.terminate() == 0, w.output()[-3000:]
    no_repeated_positions(changelog_lake, f"{db}.items", "legacy")
    assert f"incremental snapshot of {db}.items done" in source.output()


def test_a_job_ends_at_the_last_key_it_found_while_rows_are_appended(items, workers):
    """A job reads up to the key of the table's last row as of its first chunk, kept in its state:
    rows appended later are streamed. A job that chased them would not end while the inserts outpace
    its chunks (it read 590,000 rows in 2 minutes of this load, and on)."""
    db, prefix, cfg, mirror_lake, changelog_lake, source, sinks = items
    topic = f"{prefix}.legacy.{db}.items"
    load = AppendRows(MariaDB(db), "INSERT INTO items SELECT seq, seq MOD 100, md5(seq) FROM seq_1_to_100000000 WHERE seq BETWEEN %s AND %s",
                      20001, block=1000, pause_s=0.05)
    load.start()
    try:
        wait_until(lambda: load.next_id > 25_001, timeout=60, what="the appends to be under way")
        request(prefix, [f"{db}.items"])
        (until,) = wait_until(lambda: job_until(state(prefix)), timeout=60, what="the job's first chunk", interval=0.05)
        wait_until(lambda: jobs_done(prefix, 20_000 // 200), timeout=180, what="the job to end", interval=0.5)
        appended_by_then = load.next_id
    finally:
        load.stop()
    assert 25_000 <= until < appended_by_then
    ids = sorted(v["after"]["id"] for _, v in incremental_reads(topic))
    assert ids == list(range(1, until + 1)), "every key up to the job's end read once, none after it"
    wait_until(lambda: lake_equals_mysql(db, mirror_lake, "items"), timeout=120, what="mirror == source", interval=1)
    positions_increase(topic)
    for w in (source, *sinks):
        assert w.terminate() == 0, w.output()[-3000:]


def test_a_job_over_composite_text_and_temporal_keys_with_where(mysql_db, prefix, tmp_path, workers):
    """The bounds of a job (after, until) over a key of text and datetime, with a `where`: exactly the
    matching rows are read, each once, in chunks that end inside a region."""
    db = mysql_db
    msql("CREATE TABLE ledger (region varchar(20), at datetime(3), amount decimal(12, 2), note varchar(40), PRIMARY KEY (region, at))",
         "INSERT INTO ledger SELECT r.region, TIMESTAMP '2024-01-01 00:00:00.250' + INTERVAL s.seq HOUR, (s.seq MOD 7) * 1.25, "
         "CONCAT(r.i, '-', LPAD(s.seq, 3, '0')) FROM (SELECT 1 AS i, 'eu' AS region UNION ALL SELECT 2, 'us' UNION ALL "
         "SELECT 3, 'Ünï' UNION ALL SELECT 4, 'a b' UNION ALL SELECT 5, 'it''s') r, seq_1_to_120 s", db=db)  # notes sort alike everywhere
    lake = tmp_path / "mirror"
    cfg = write_mysql_config(tmp_path / "m.yaml", db=db, prefix=prefix, lake=lake, extra_source="    snapshot_chunk_rows: 50\n")
    source, mirror = workers(cfg, "--source", "legacy").start(), workers(cfg, "--sink", "lake").start()
    wait_until(lambda: lake_equals_mysql(db, lake, "ledger", "note"), timeout=90, what="initial snapshot in the mirror", interval=1)
    request(prefix, [f"{db}.ledger"], "amount > 2")
    wait_until(lambda: jobs_done(prefix, requests=1), timeout=90, what="the job to end", interval=0.5)
    got = sorted(v["after"]["note"] for _, v in incremental_reads(f"{prefix}.legacy.{db}.ledger"))
    assert got == sorted(note for (note,) in mquery("SELECT note FROM ledger WHERE amount > 2", db=db))
    assert len(got) == 5 * 85, "per region the 85 of 120 hours whose amount ((hour mod 7) * 1.25) is above 2"
    for w in (source, mirror):
        assert w.terminate() == 0, w.output()[-3000:]


def test_where_and_refused_tables_leave_the_capture_running(items, workers):
    db, prefix, cfg, mirror_lake, changelog_lake, source, sinks = items
    topic = f"{prefix}.legacy.{db}.items"
    msql("CREATE TABLE keyless (a int, b int)", "INSERT INTO keyless VALUES (1, 1)", db=db)
    request(prefix, [f"{db}.keyless", f"{db}.missing", "other_db.items", f"{db}.items"], "v = 7")
    request(prefix, [f"{db}.items"], "no_such_column > 1")
    wait_until(lambda: jobs_done(prefix), timeout=60, what="the incremental snapshot to finish")
    out = source.output()
    assert f"table {db}.keyless has no primary key" in out
    assert f"table {db}.missing does not exist" in out
    assert "table other_db.items is not captured by this source" in out
    assert f"the condition --where 'no_such_column > 1' fails on table {db}.items: Unknown column 'no_such_column'" in out
    reads = incremental_reads(topic)
    assert len(reads) == 200 and all(v["after"]["v"] == 7 for _, v in reads), len(reads)
    # Capture goes on.
    msql("UPDATE items SET v = 1000 WHERE id = 5", "INSERT INTO items VALUES (99999, 1, 'after')", db=db)
    wait_until(lambda: lake_equals_mysql(db, mirror_lake, "items"), timeout=60, what="mirror == source after the requests")
    assert source.alive()


def test_idle_binlog_does_not_stall_a_job_and_repairs_a_lake(items, workers):
    db, prefix, cfg, mirror_lake, changelog_lake, source, sinks = items
    # The lake loses rows on purpose (the mirror sink stopped meanwhile, so no writer races the delete).
    assert sinks[0].terminate() == 0
    DeltaTable(str(mirror_lake / "legacy" / db / "items")).delete("id % 3 = 0")
    assert len(mysql_lake_rows(mirror_lake, db, "items")) < 20000
    sinks[0] = workers(cfg, "--sink", "lake").start()
    started = time.monotonic()
    request(prefix, [f"{db}.items"])
    wait_until(lambda: jobs_done(prefix, 100), timeout=60, what="the incremental snapshot on an idle binlog", interval=0.2)
    took = time.monotonic() - started
    wait_until(lambda: lake_equals_mysql(db, mirror_lake, "items"), timeout=60, what="the repaired mirror == source")
    assert took < 30, f"100 chunks on an idle binlog took {took:.1f}s"


def test_killed_source_resumes_the_job_from_its_progress(mysql_db, prefix, tmp_path, workers):
    db, rows = mysql_db, 100_000
    cfg, mirror_lake, changelog_lake, source, sinks = start_items(db, prefix, tmp_path, workers, rows=rows, chunk_rows=1000)
    wait_until(lambda: (s := state(prefix)) is not None and s.snapshot_done, timeout=90, what="the initial snapshot")
    topic = f"{prefix}.legacy.{db}.items"

    load = RandomChanges(MariaDB(db), "items", first_id=rows + 1, seed=5, key_updates=True)
    load.start()
    request(prefix, [f"{db}.items"])
    wait_until(lambda: (s := state(prefix)) is not None and s.jobs and s.jobs[0].rows >= 10_000, timeout=60,
               what="the job to be under way", interval=0.05)
    source.kill()
    load.stop()
    acked = state(prefix).jobs[0]
    assert 10_000 <= acked.rows < rows, "the kill was meant to land mid-job"

    # A stopped source shows the job's acknowledged progress.
    src = MySQLSource(MySQLSourceConfig(name="legacy", host=MYSQL["host"], port=MYSQL["port"], user=MYSQL["user"],
                                        password=MYSQL["password"], tables=[f"{db}.*"]),
                      broker=BrokerConfig(bootstrap_servers=BROKER, topic_prefix=prefix))
    shown = [p.to_dict() for p in asyncio.run(src.status()).snapshot]
    assert [(p["table"], p["kind"], p["rows"], p["chunks_done"], p["done"]) for p in shown] == \
        [(f"{db}.items", "incremental", acked.rows, acked.chunks, False)]

    before = len(incremental_reads(topic))
    source = workers(cfg, "--source", "legacy").start()
    wait_until(lambda: jobs_done(prefix), timeout=120, what="the resumed job to finish", interval=0.5)
    again = len(incremental_reads(topic)) - before
    # Only the rest is read again (plus, at most, the chunk in flight at the kill).
    print(f"acknowledged before the kill: {acked.rows} rows; read after the restart: {again}; inserted by the load: {load.next_id - rows - 1}")
    assert again < rows, "the restarted source read the whole table again"
    assert acked.until is not None, "the job's end is kept in its state"
    after, until = acked.after[0], acked.until[0]
    assert until >= rows, "the job ends at the last key it found"
    # The rows between the acknowledged chunks and the job's end, less those the load deleted since.
    left = mquery("SELECT count(*) FROM items WHERE id > %s AND id <= %s", (after, until), db=db)[0][0]
    assert left <= again <= until - after + 1000, (again, left, acked.rows)
    wait_until(lambda: lake_equals_mysql(db, mirror_lake, "items"), timeout=120, what="mirror == source", interval=1)
    positions_increase(topic)
    wait_for_changelog(topic, changelog_lake, db)
    for w in (source, *sinks):
        assert w.terminate() == 0, w.output()[-3000:]
    no_repeated_positions(changelog_lake, f"{db}.items", "legacy")


def test_schema_changes_during_a_job(items, workers):
    db, prefix, cfg, mirror_lake, changelog_lake, source, sinks = items
    load = RandomChanges(MariaDB(db), "items", first_id=20001, seed=9, key_updates=True)
    load.start()
    request(prefix, [f"{db}.items"])
    wait_until(lambda: (s := state(prefix)) is not None and s.jobs and s.jobs[0].rows >= 2000, timeout=60,
               what="the job to be under way", interval=0.05)
    # Without row events for the existing rows (no re-read), then with (a re-read of the whole table in the middle of the job).
    msql("ALTER TABLE items ADD COLUMN extra int", "UPDATE items SET extra = id WHERE id % 5 = 0", db=db)
    time.sleep(0.5)
    msql("ALTER TABLE items ADD COLUMN filled int NOT NULL DEFAULT 5", db=db)
    wait_until(lambda: jobs_done(prefix, requests=1), timeout=120, what="the job to finish", interval=0.5)
    assert load.is_alive()
    load.stop()
    wait_until(lambda: lake_equals_mysql(db, mirror_lake, "items"), timeout=120, what="mirror == source", interval=1)
    positions_increase(f"{prefix}.legacy.{db}.items")
    reads = incremental_reads(f"{prefix}.legacy.{db}.items")
    assert any("filled" in v["after"] for _, v in reads), "chunks after the ALTER carry the new column"
    assert source.terminate() == 0, source.output()[-3000:]
