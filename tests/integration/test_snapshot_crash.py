"""SIGKILL a source in the middle of its initial snapshot; the restarted source resumes it.

PostgreSQL: the slot is kept (same slot, same consistent LSN), tables done are not read again, tables
not started and partly read tables without a key are read whole at a temporary slot's point, a partly
read table with a key continues with an incremental job from the last acknowledged key; streaming
starts at the original consistent point. Every kill waits for the source's own state document to
reach the point it is meant for, so it lands there however fast the machine is.
"""

from __future__ import annotations

import pytest

from lakeward.core.events import Position, str_to_lsn

from .harness import mirror_and_changelog, sql, wait_until, write_config
from .lakecheck import no_repeated_positions
from .pg_snapshot_checks import (
    changelog_equals,
    kill_when,
    mirror_equals,
    position,
    progress,
    read_events,
    slot_row,
    source_rows,
    started_with_reads_held,
    state_doc,
    table_complete,
    table_records,
)

pytestmark = [pytest.mark.integration, pytest.mark.crash]

PG_ROWS = {"a_first": 20_000, "b_middle": 150_000, "c_last": 20_000}
PG_SOURCE = "    snapshot_parallelism: 2\n    snapshot_chunk_rows: 2000\n    heartbeat_interval_s: 0\n"


@pytest.fixture
def pg_snapshot_kill(database, prefix, tmp_path, workers):
    """Three tables read in order (a, b, c; b large); b has a key or not. Yields a runner: start the
    source (with the `held` tables unreadable until the kill, so that none of their chunks is read
    before it), kill it when `predicate(state document)` holds, write some changes, restart it, and
    wait until the lake equals the source; returns (state at the kill, state after the resume, the
    restarted source's log)."""

    def tables(b_keyed: bool) -> None:
        b_key = "id bigint PRIMARY KEY" if b_keyed else "id bigint"
        sql(database,
            "CREATE TABLE a_first (id bigint PRIMARY KEY, v int, s text)",
            "INSERT INTO a_first SELECT g, g % 100, md5(g::text) FROM generate_series(1, 20000) g",
            f"CREATE TABLE b_middle ({b_key}, v int, s text)",
            "INSERT INTO b_middle SELECT g, g % 100, md5(g::text) FROM generate_series(1, 150000) g",
            "CREATE TABLE c_last (id bigint PRIMARY KEY, v int, s text)",
            "INSERT INTO c_last SELECT g, g % 100, md5(g::text) FROM generate_series(1, 20000) g")

    cfg, log_cfg, mirror, changelog = mirror_and_changelog(tmp_path, write_config, dsn=database, prefix=prefix, extra_source=PG_SOURCE)

    def run(b_keyed: bool, predicate, held: tuple[str, ...] = ()) -> tuple[dict, dict, str]:
        tables(b_keyed)
        sinks = [workers(cfg, "--sink", "lake").start(), workers(log_cfg, "--sink", "log").start()]
        with started_with_reads_held(workers(cfg, "--source", "shop"), database, f"lw_{prefix}", held) as source:
            at_kill = kill_when(source, prefix, predicate)
        assert not at_kill["done"], "the kill was meant to land mid-snapshot"
        # Changes while the source is down: the restarted source streams them from the original point.
        sql(database, "INSERT INTO a_first VALUES (-1, 0, 'new')", "UPDATE a_first SET v = -v WHERE id % 1000 = 0",
            "DELETE FROM a_first WHERE id BETWEEN 100 AND 110", "INSERT INTO c_last VALUES (-1, 0, 'new')",
            "DELETE FROM c_last WHERE id % 997 = 0", "INSERT INTO b_middle VALUES (-1, 0, 'new')")
        if b_keyed:
            sql(database, "UPDATE b_middle SET v = -v WHERE id % 5000 = 0", "DELETE FROM b_middle WHERE id % 7001 = 0")
        source = workers(cfg, "--source", "shop").start()
        for table in ("a_first", "c_last", *(["b_middle"] if b_keyed else [])):
            wait_until(lambda table=table: mirror_equals(database, mirror, table, ("id",)), timeout=90, what=f"mirror {table} == source")
        if not b_keyed:
            wait_until(lambda: changelog_equals(database, changelog, "b_middle"), timeout=60, what="changelog b_middle == source")
        resumed = state_doc(prefix)
        # The slot is the one created for the snapshot: not dropped, not created again.
        assert slot_row(database, f"lw_{prefix}") == (f"lw_{prefix}", False)
        assert (resumed["slot"], resumed["consistent_lsn"]) == (at_kill["slot"], at_kill["consistent_lsn"])
        assert resumed["done"] and not resumed["progress"]
        assert "resuming the snapshot of slot" in source.output()
        for w in (source, *sinks):
            assert w.terminate() == 0, w.output()[-3000:]
        for table in PG_ROWS:
            no_repeated_positions(changelog, table)
        return at_kill, resumed, source.output()

    return run


def reread(prefix: str, database: str, at_kill: dict) -> dict[str, tuple[int, int]]:
    """Per table: (`r` events at a point after the original consistent one, rows in the source now)."""
    original = str_to_lsn(at_kill["consistent_lsn"])
    out = {}
    for table in PG_ROWS:
        records = read_events(table_records(prefix, table, min_count=PG_ROWS[table]))
        later = sum(1 for r in records if Position.postgres_parts(position(r))[0] != original)
        out[table] = (later, len(source_rows(database, table)))
    return out


def test_pg_kill_early(pg_snapshot_kill, prefix, database):
    """Killed before any chunk was acknowledged: every table is read whole at a new point."""
    at_kill, _, _ = pg_snapshot_kill(False, lambda doc: not doc["done"], held=tuple(PG_ROWS))
    assert not any(p["chunks_done"] for p in at_kill["progress"].values())
    for table, (later, rows) in reread(prefix, database, at_kill).items():
        assert later == rows, f"{table}: {later} rows read at the new point, {rows} in the table"


def test_pg_kill_between_tables(pg_snapshot_kill, prefix, database):
    """Killed once the first table was done: it is not read again; the others are read whole."""
    at_kill, _, _ = pg_snapshot_kill(False, lambda doc: table_complete(doc, "a_first"), held=("c_last",))
    assert not table_complete(at_kill, "b_middle") and not progress(at_kill, "c_last")["chunks_done"]
    counts = reread(prefix, database, at_kill)
    assert counts["a_first"][0] == 0, "a table done before the kill was read again"
    assert counts["b_middle"][0] == counts["b_middle"][1] and counts["c_last"][0] == counts["c_last"][1]


def test_pg_kill_mid_table_without_key(pg_snapshot_kill, prefix, database):
    """Killed inside a table without a key: it starts over whole (with its `t`) at a new point; the
    table done before it is not read again, fewer rows are read again than the tables hold."""
    at_kill, resumed, _ = pg_snapshot_kill(False, lambda doc: 3 <= progress(doc, "b_middle")["chunks_done"] < progress(doc, "b_middle")["chunks"])
    assert table_complete(at_kill, "a_first") and not resumed["jobs"]
    counts = reread(prefix, database, at_kill)
    assert counts["a_first"][0] == 0 and counts["b_middle"][0] == counts["b_middle"][1]
    assert sum(later for later, _ in counts.values()) < sum(rows for _, rows in counts.values())


def test_pg_kill_mid_keyed_table(pg_snapshot_kill, prefix, database):
    """Killed inside a table with a key: it continues with an incremental job after the last
    acknowledged key, so only the rows after it are read again."""
    at_kill, _, output = pg_snapshot_kill(True, lambda doc: 3 <= progress(doc, "b_middle")["chunks_done"] < progress(doc, "b_middle")["chunks"])
    after = progress(at_kill, "b_middle")["after"]
    assert after and f"continuing incrementally: public.b_middle after {after}" in output
    counts = reread(prefix, database, at_kill)
    assert counts["a_first"][0] == 0
    assert 0 < counts["b_middle"][0] < counts["b_middle"][1] - progress(at_kill, "b_middle")["rows"] // 2, counts
    assert counts["c_last"][0] == counts["c_last"][1]
