"""Every DDL a user may run on a captured MariaDB table while writes continue, in mirror and changelog mode.

One database holds a table per case; one `lakeward run` process (source + sink) captures them all.
After the snapshot, every case runs its writes, its DDL and more writes, while a background thread
keeps updating and inserting rows in every table. Then each case's table must either equal the source
(every row, every column; columns dropped at the source stay in the lake) or have stopped with an
error naming the table and the column. Every lake table must stay readable by delta-rs with the
protocol it declares. docs/schema-changes.md (MySQL / MariaDB) is the table these cases check.

Changelog tables are folded back into a table (events in position order: `t` empties it, `d`
removes the key, `c`/`r`/`u` set the row) before the comparison.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pymysql
import pytest

from . import lakecheck
from .harness import MariaDB, TableWrites, connect, msql, wait_until, write_mysql_config
from .lakecheck import mysql_lake_table, mysql_rows

pytestmark = pytest.mark.integration

SEED_ROWS = 30
BASE = ("CREATE TABLE {t} (id int NOT NULL, n int, s varchar(20), d decimal(8,2), v varchar(20), PRIMARY KEY (id))")
SEED = ("INSERT INTO {t} (id, n, s, d, v) SELECT seq, seq, concat('s', seq), seq / 4, IF(seq % 3 = 0, NULL, concat('v', seq)) "
        f"FROM seq_1_to_{SEED_ROWS}")
WRITES = ("UPDATE {t} SET n = n + 100 WHERE id <= 3", "DELETE FROM {t} WHERE id = 30",
          "INSERT INTO {t} (id, n) VALUES (1000 + {k}, 1)")
LENIENT = "SET SESSION sql_mode = ''"  # MariaDB then converts values an ALTER cannot keep (NULL -> '', truncation)

NTZ_ROW = ("INSERT INTO {t} (id, n, c_dt, c_ts, c_date, c_time) VALUES "
           "(2000, 1, '2024-02-29 12:34:56.123456', '2024-03-01 00:00:01.500', '2024-02-29', '-12:34:56')")
ALL_TYPES_ROW = ("INSERT INTO {t} (id, n, c_big, c_dec, c_dbl, c_flt, c_txt, c_enum, c_set, c_json, c_blob, c_bin, c_bit, c_year, c_bool) "
                 "VALUES (2001, 1, 9007199254740993, 12.345, 0.1, 1.5, 'héllo', 'b', 'x,y', '{{\"a\": 1}}', x'00ff', x'01', b'1', 2024, 1)")

FILLER = "CREATE TABLE {t}_fill (id int PRIMARY KEY, n int)"
FILL = "INSERT INTO {t}_fill SELECT seq, seq FROM seq_1_to_100000"


@dataclass(frozen=True)
class Case:
    name: str
    ddl: tuple[str, ...]
    """Statements run after the first writes; `{t}` is the case's table, `{db}` the database."""
    after: tuple[str, ...] = ()
    """Writes after the DDL (besides the generic ones), on `final`."""
    error: str | None = None
    """None: the lake equals the source afterwards; else the table stops with an error naming the
    table and this column (a regex)."""
    rebuilt: bool = False
    """A column changes its lake type: the mirror is rewritten with the new type from the re-read
    (equal to the source), the changelog stops with `error` (its rows have the old type)."""
    dropped: tuple[str, ...] = ()
    """Columns gone at the source that the lake keeps (null in new rows)."""
    create: str = BASE
    seed: tuple[str, ...] = (SEED,)
    final: str | None = None
    """The table's name after the DDL (`{t}` formatted), when the DDL renames it."""
    also: tuple[str, ...] = ()
    """Other tables (names, `{t}` formatted) that must equal the source afterwards."""
    modes: tuple[str, ...] = ("mirror", "changelog")
    emptied: bool = False
    """The lake table of `{t}` is emptied (the table was renamed away or dropped)."""
    generic_writes: bool = True


PARTITIONED = ("CREATE TABLE {t} (id int NOT NULL, n int, s varchar(20), d decimal(8,2), v varchar(20), PRIMARY KEY (id)) "
               "PARTITION BY RANGE (id) (PARTITION p0 VALUES LESS THAN (10), PARTITION p1 VALUES LESS THAN (20), "
               "PARTITION p2 VALUES LESS THAN (100000))")

CASES: list[Case] = [
    # --- add column ---------------------------------------------------------------------------------------
    Case("add_nullable", ("ALTER TABLE {t} ADD COLUMN c int",), ("UPDATE {t} SET c = 5 WHERE id = 4",)),
    Case("add_not_null_default", ("ALTER TABLE {t} ADD COLUMN c varchar(10) NOT NULL DEFAULT 'new'",),
         ("UPDATE {t} SET c = 'old' WHERE id = 4",)),
    Case("add_nullable_default", ("ALTER TABLE {t} ADD COLUMN c int DEFAULT 7",)),
    Case("add_not_null_no_default", (LENIENT, "ALTER TABLE {t} ADD COLUMN c int NOT NULL")),  # existing rows get 0
    Case("add_default_uuid", ("ALTER TABLE {t} ADD COLUMN c varchar(36) DEFAULT (uuid())",)),
    Case("add_default_current_timestamp", (("ALTER TABLE {t} ADD COLUMN c timestamp(3) NOT NULL DEFAULT current_timestamp(3), "
                                           "ADD COLUMN c2 datetime DEFAULT current_timestamp"),)),
    Case("add_generated", ("ALTER TABLE {t} ADD COLUMN c int AS (n * 2) STORED",)),
    Case("add_datetime_family", (("ALTER TABLE {t} ADD COLUMN c_dt datetime(6), ADD COLUMN c_ts timestamp(3) NULL, "
                                 "ADD COLUMN c_date date, ADD COLUMN c_time time"),), (NTZ_ROW,)),
    Case("add_datetime_family_default", (("ALTER TABLE {t} ADD COLUMN c_dt datetime(6) DEFAULT '2020-01-01 01:02:03.5', "
                                         "ADD COLUMN c_ts timestamp NULL DEFAULT '2021-06-01 00:00:00', "
                                         "ADD COLUMN c_date date DEFAULT '2022-02-02', ADD COLUMN c_time time DEFAULT '01:02:03'"),), (NTZ_ROW,)),
    Case("add_every_family", (("ALTER TABLE {t} ADD COLUMN c_big bigint, ADD COLUMN c_dec decimal(10,3), ADD COLUMN c_dbl double, "
                              "ADD COLUMN c_flt float, ADD COLUMN c_txt text, ADD COLUMN c_enum enum('a','b'), ADD COLUMN c_set set('x','y'), "
                              "ADD COLUMN c_json json, ADD COLUMN c_blob blob, ADD COLUMN c_bin binary(2), ADD COLUMN c_bit bit(1), "
                              "ADD COLUMN c_year year, ADD COLUMN c_bool boolean"),), (ALL_TYPES_ROW,)),
    Case("add_every_family_default", (("ALTER TABLE {t} ADD COLUMN c_big bigint DEFAULT 42, ADD COLUMN c_dec decimal(10,3) DEFAULT 1.250, "
                                      "ADD COLUMN c_dbl double DEFAULT 2.5, ADD COLUMN c_flt float DEFAULT 0.5, ADD COLUMN c_txt text DEFAULT 't', "
                                      "ADD COLUMN c_enum enum('a','b') NOT NULL DEFAULT 'a', ADD COLUMN c_set set('x','y') DEFAULT 'y', "
                                      "ADD COLUMN c_json json DEFAULT '[]', ADD COLUMN c_blob blob DEFAULT 'b', "
                                      "ADD COLUMN c_bin binary(2) DEFAULT 'z', ADD COLUMN c_bit bit(1) DEFAULT b'1', "
                                      "ADD COLUMN c_year year DEFAULT 1999, ADD COLUMN c_bool boolean NOT NULL DEFAULT true"),), (ALL_TYPES_ROW,)),
    # --- drop / rename column -------------------------------------------------------------------------
    Case("drop_column", ("ALTER TABLE {t} DROP COLUMN s",), dropped=("s",)),
    Case("rename_column", ("ALTER TABLE {t} RENAME COLUMN s TO s2",), ("UPDATE {t} SET s2 = 'r' WHERE id = 5",), dropped=("s",)),
    Case("change_renames", ("ALTER TABLE {t} CHANGE s s3 varchar(30)",), dropped=("s",)),
    Case("change_renames_and_converts", (LENIENT, "ALTER TABLE {t} CHANGE d d2 decimal(8,2) NOT NULL DEFAULT 0",), dropped=("d",)),
    # --- type changes -------------------------------------------------------------------------------------
    Case("widen_varchar", ("ALTER TABLE {t} MODIFY s varchar(200)",), ("UPDATE {t} SET s = repeat('w', 150) WHERE id = 6",)),
    Case("widen_int_to_bigint", ("ALTER TABLE {t} MODIFY n bigint",), error="column 'n'", rebuilt=True),
    Case("widen_decimal", ("ALTER TABLE {t} MODIFY d decimal(12,4)",), error="column 'd'", rebuilt=True),
    Case("narrow_truncates", (LENIENT, "ALTER TABLE {t} MODIFY s varchar(2)")),
    Case("narrow_decimal_rounds", ("ALTER TABLE {t} MODIFY d decimal(8,1)",), error="column 'd'", rebuilt=True),
    Case("convert_varchar_to_int", ("ALTER TABLE {t} MODIFY v int",), create=BASE,
         seed=("INSERT INTO {t} (id, n, s, v) SELECT seq, seq, 'x', IF(seq % 3 = 0, NULL, seq * 10) FROM seq_1_to_30",), error="column 'v'", rebuilt=True),
    Case("convert_same_lake_type", (LENIENT, "ALTER TABLE {t} MODIFY s char(3) CHARACTER SET latin1",)),
    Case("convert_text_to_enum", (LENIENT, "ALTER TABLE {t} MODIFY s enum('s1','s2','s3')",)),  # other values become ''
    # Two statements the source sees only after both ran (it is behind by a large transaction): the
    # table's definition it reads is the same before and after, but the first one converted values.
    Case("set_not_null_then_null", (FILL, LENIENT, "ALTER TABLE {t} MODIFY v varchar(20) NOT NULL", "ALTER TABLE {t} MODIFY v varchar(20) NULL"),
         seed=(SEED, FILLER)),
    Case("narrow_then_widen", (FILL, LENIENT, "ALTER TABLE {t} MODIFY s varchar(2)", "ALTER TABLE {t} MODIFY s varchar(20)"),
         seed=(SEED, FILLER)),
    # --- NULL / DEFAULT -----------------------------------------------------------------------------------
    Case("set_not_null", (LENIENT, "ALTER TABLE {t} MODIFY v varchar(20) NOT NULL",)),  # NULL -> ''
    Case("drop_not_null", ("ALTER TABLE {t} MODIFY n int NOT NULL", "ALTER TABLE {t} MODIFY n int NULL"),
         ("UPDATE {t} SET n = NULL WHERE id = 7",)),
    Case("set_default", ("ALTER TABLE {t} ALTER COLUMN s SET DEFAULT 'dflt'",), ("INSERT INTO {t} (id, n) VALUES (3000, 3)",)),
    Case("drop_default", ("ALTER TABLE {t} ALTER COLUMN s SET DEFAULT 'x'", "ALTER TABLE {t} ALTER COLUMN s DROP DEFAULT"),
         ("INSERT INTO {t} (id, n) VALUES (3000, 3)",)),
    # --- primary key --------------------------------------------------------------------------------------
    Case("change_primary_key", (LENIENT, "ALTER TABLE {t} DROP PRIMARY KEY, ADD PRIMARY KEY (id, s)",), ("UPDATE {t} SET s = 'k' WHERE id = 8",)),
    Case("drop_primary_key_mirror", ("ALTER TABLE {t} DROP PRIMARY KEY",), error="primary key", modes=("mirror",)),
    Case("drop_primary_key", ("ALTER TABLE {t} DROP PRIMARY KEY",), modes=("changelog",)),
    Case("add_primary_key", ("ALTER TABLE {t} ADD PRIMARY KEY (id)",),
         create="CREATE TABLE {t} (id int NOT NULL, n int, s varchar(20), d decimal(8,2), v varchar(20))", modes=("changelog",)),
    # --- tables -------------------------------------------------------------------------------------------
    Case("rename_table", ("RENAME TABLE {t} TO {t}_renamed",), final="{t}_renamed", emptied=True),
    Case("alter_rename_table", ("ALTER TABLE {t} RENAME TO {t}_moved",), final="{t}_moved", emptied=True),
    Case("drop_table", ("DROP TABLE {t}",), emptied=True, generic_writes=False),
    Case("drop_and_recreate", ("DROP TABLE {t}", BASE, "INSERT INTO {t} (id, n, s) VALUES (1, 10, 'again'), (2, 20, 'again')")),
    Case("drop_and_recreate_other_types", ("DROP TABLE {t}", "CREATE TABLE {t} (id int PRIMARY KEY, n varchar(10), e date)",
                                           "INSERT INTO {t} VALUES (1, 'x', '2024-01-01')"), generic_writes=False, error="column 'n'"),
    Case("create_matching_table", ("CREATE TABLE {t}_new (id int PRIMARY KEY, n int, s varchar(20))",
                                   "INSERT INTO {t}_new VALUES (1, 1, 'a'), (2, 2, 'b')", "UPDATE {t}_new SET n = 5 WHERE id = 2"),
         also=("{t}_new",)),
    Case("create_table_select", ("CREATE TABLE {t}_copy (PRIMARY KEY (id)) SELECT id, n, s FROM {t}",), also=("{t}_copy",)),
    Case("truncate", ("TRUNCATE TABLE {t}",)),
    # --- partitions ---------------------------------------------------------------------------------------
    Case("add_partition", ("ALTER TABLE {t} ADD PARTITION (PARTITION p3 VALUES LESS THAN (200000))",), ("INSERT INTO {t} (id, n) VALUES (150000, 4)",),
         create=PARTITIONED),
    Case("drop_partition", ("ALTER TABLE {t} DROP PARTITION p0",), create=PARTITIONED),
    Case("truncate_partition", ("ALTER TABLE {t} TRUNCATE PARTITION p1",), create=PARTITIONED),
    Case("reorganize_partition", ("ALTER TABLE {t} REORGANIZE PARTITION p0, p1 INTO (PARTITION p01 VALUES LESS THAN (20))",), create=PARTITIONED),
    Case("exchange_partition", ("ALTER TABLE {t} EXCHANGE PARTITION p1 WITH TABLE {t}_x",), create=PARTITIONED,
         seed=(SEED, BASE.replace("{t}", "{t}_x"), "INSERT INTO {t}_x (id, n, s) VALUES (11, -11, 'swapped'), (15, -15, 'swapped')"),
         also=("{t}_x",)),
    Case("remove_partitioning", ("ALTER TABLE {t} REMOVE PARTITIONING",), create=PARTITIONED),
]


# --- comparing ------------------------------------------------------------------------------------------


def _norm(v):
    if isinstance(v, datetime) and v.tzinfo is not None:
        return v.astimezone(UTC).replace(tzinfo=None)
    return v


def _norm_source(v, lake_value):
    """A PyMySQL value as the lake stores it (lake types: docs/type-mapping.md)."""
    if isinstance(v, timedelta):  # TIME -> string as MySQL prints it
        sign, s = ("-", -v) if v < timedelta(0) else ("", v)
        secs = int(s.total_seconds())
        return f"{sign}{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}" + (f".{s.microseconds:06d}" if s.microseconds else "")
    if isinstance(lake_value, bool) and isinstance(v, (int, bytes)):
        return bool(int.from_bytes(v, "big") if isinstance(v, bytes) else v)
    if isinstance(v, set):
        return ",".join(sorted(v))
    if isinstance(v, float) and isinstance(lake_value, float):
        return lake_value if abs(v - lake_value) <= 1e-6 * max(1.0, abs(v)) else v  # FLOAT through the text protocol
    return v


def source_rows(db: str, table: str) -> list[dict]:
    return mysql_rows(db, table)


def lake_state(lake: Path, db: str, table: str, mode: str) -> list[dict] | None:
    dt = mysql_lake_table(lake, db, table)
    if dt is None:
        return None
    rows = dt.to_pyarrow_table().to_pylist()
    if mode == "changelog":
        rows.sort(key=lambda r: r["_lakeward_position"])
        state: dict = {}
        for r in rows:
            op = r["_lakeward_op"]
            if op == "t":
                state.clear()
            elif op == "d":
                state.pop(r["id"], None)
            else:
                state[r["id"]] = r
        rows = list(state.values())
    rows = [{k: _norm(v) for k, v in r.items() if not k.startswith("_lakeward_")} for r in rows]
    return sorted(rows, key=lambda r: r["id"])


def equal(lake: Path, db: str, table: str, mode: str, dropped: tuple[str, ...] = ()) -> bool | str:
    got = lake_state(lake, db, table, mode)
    try:
        want = source_rows(db, table)
    except pymysql.err.ProgrammingError:
        want = []  # the table is gone at the source
    if got is not None and len(got) == len(want):
        want = [{k: _norm_source(v, g.get(k)) for k, v in w.items()} for w, g in zip(want, got, strict=True)]
    return lakecheck.compare(f"{db}.{table}", got, want, dropped=dropped)


def readable(lake: Path, db: str, table: str) -> None:
    """delta-rs reads the whole table, and the protocol declares what its columns need."""
    dt = mysql_lake_table(lake, db, table)
    assert dt is not None, f"{db}.{table}: no lake table"
    t = dt.to_pyarrow_table()
    p = dt.protocol()
    ntz = [f.name for f in t.schema if str(f.type).startswith("timestamp[us]") and f.type.tz is None]
    if ntz:
        assert p.min_reader_version >= 3 and "timestampNtz" in (p.reader_features or []), (
            f"{db}.{table}: timestamp_ntz columns {ntz} but reader features {p.reader_features}")
        assert p.min_writer_version >= 7 and "timestampNtz" in (p.writer_features or []), (
            f"{db}.{table}: timestamp_ntz columns {ntz} but writer features {p.writer_features}")


# --- the run ----------------------------------------------------------------------------------------------


def _names(c: Case) -> tuple[str, str, list[str]]:
    t = c.name
    final = c.final.format(t=t) if c.final else t
    return t, final, [a.format(t=t) for a in c.also]


def _run_matrix(mode: str, db: str, prefix: str, tmp_path: Path, workers, cases: list[Case]) -> None:
    for c in cases:
        t = c.name
        msql(c.create.format(t=t), *(s.format(t=t) for s in c.seed), db=db)
    lake = tmp_path / "lake"
    cfg = write_mysql_config(tmp_path / "lakeward.yaml", db=db, prefix=prefix, lake=lake, mode=mode)
    worker = workers(cfg).start()
    for c in cases:
        wait_until(lambda c=c: equal(lake, db, c.name, mode), timeout=120, what=f"the snapshot of {c.name}")

    # Not the table swapped into a partition: its rows must fit the partition.
    names = sorted({n for c in cases for n in (_names(c)[0], _names(c)[1], *_names(c)[2])} - {"exchange_partition_x"})
    load = TableWrites(MariaDB(db), names, update="UPDATE `{t}` SET n = n + 1 WHERE id = %s", insert="INSERT INTO `{t}` (id, n) VALUES (%s, 0)",
                       update_share=0.7, max_id=SEED_ROWS, seed=11, first_id=5000)
    load.start()
    try:
        for k, c in enumerate(cases):
            t, final, _ = _names(c)
            gen = WRITES if c.generic_writes else ()
            conn = connect(database=db)  # one session per case: LENIENT stays in it
            try:
                with conn.cursor() as cur:
                    for s in gen[:2]:
                        cur.execute(s.format(t=t, k=k))
                    for s in c.ddl:
                        cur.execute(s.format(t=t, db=db))
                    for s in (*gen[2:], *c.after):
                        cur.execute(s.format(t=final, k=k))
            finally:
                conn.close()
        time.sleep(1)
    finally:
        load.stop()
    assert load.transactions > 50, "the background writes did not run"
    # A last change in every table, so each has seen the stream after its DDL.
    for c in cases:
        t, final, also = _names(c)
        if c.generic_writes:
            msql(f"UPDATE `{final}` SET n = n + 1000 WHERE id = 2", db=db)

    failures = []
    deadline = time.monotonic() + 150
    def error(c: Case) -> str | None:
        return None if c.rebuilt and mode == "mirror" else c.error

    for c in cases:
        t, final, also = _names(c)
        try:
            if error(c):
                readable(lake, db, final)
                pattern = rf"table legacy\.{db}\.{re.escape(final)}\b.*{error(c)}"
                wait_until(lambda pattern=pattern: bool(re.search(pattern, worker.output())) or f"no error matching {pattern!r}",
                           timeout=max(5, deadline - time.monotonic()), what=f"{c.name}: the table to stop")
                continue
            for name in (final, *also):
                wait_until(lambda name=name, c=c: equal(lake, db, name, mode, c.dropped), timeout=max(5, deadline - time.monotonic()),
                           what=f"{c.name}: {name} equal to the source")
                readable(lake, db, name)
            if c.emptied:
                wait_until(lambda t=t: lake_state(lake, db, t, mode) == [] or f"{t} not emptied: {lake_state(lake, db, t, mode)}",
                           timeout=max(5, deadline - time.monotonic()), what=f"{c.name}: the old table emptied")
                readable(lake, db, t)
        except AssertionError as e:
            failures.append(f"[{mode}] {c.name}: {e}")
    out = worker.output()
    assert worker.alive(), out[-3000:]
    assert worker.terminate() == 0, out[-3000:]
    # Tables expected to go on must not have stopped.
    for c in cases:
        t, final, also = _names(c)
        if not error(c):
            for name in (final, *also):
                if re.search(rf"table legacy\.{db}\.{re.escape(name)}\b[^\n]*stopped this table", out):
                    failures.append(f"[{mode}] {c.name}: {name} stopped: "
                                    + re.search(rf"table legacy\.{db}\.{re.escape(name)}\b[^\n]*", out).group(0))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("mode", ["mirror", "changelog"])
def test_ddl_matrix(mode, mysql_db, prefix, tmp_path, workers):
    _run_matrix(mode, mysql_db, prefix, tmp_path, workers, [c for c in CASES if mode in c.modes])


@pytest.mark.crash
def test_reread_after_ddl_survives_sigkill(mysql_db, prefix, tmp_path, workers):
    """SIGKILL while the source re-reads a table after `ADD COLUMN ... NOT NULL DEFAULT`: the restarted
    worker still knows the re-read is pending (its resume position has not passed the DDL) and reads
    the table again; every existing row gets the default in the lake."""
    db = mysql_db
    rows = 200_000
    msql("CREATE TABLE big (id int PRIMARY KEY, v int)", f"INSERT INTO big SELECT seq, seq FROM seq_1_to_{rows}", db=db)
    lake = tmp_path / "lake"
    cfg = write_mysql_config(tmp_path / "lakeward.yaml", db=db, prefix=prefix, lake=lake, extra_source="    snapshot_chunk_rows: 2000\n")
    first = workers(cfg).start()

    def count() -> bool | str:
        dt = mysql_lake_table(lake, db, "big")
        n = dt.to_pyarrow_dataset().count_rows() if dt else 0
        return n == rows or f"{n} rows"

    wait_until(count, timeout=120, what="the initial snapshot")
    msql("ALTER TABLE big ADD COLUMN c varchar(10) NOT NULL DEFAULT 'filled'", "UPDATE big SET v = -1 WHERE id = 5", db=db)
    wait_until(lambda: "reading the table again" in first.output(), timeout=60, what="the re-read to start")
    time.sleep(0.5)
    first.kill()
    out = first.output()
    assert out.count(f"snapshot of {db}.big: ") == 1, "the re-read finished before the kill; the test proves nothing:\n" + out[-2000:]
    msql("UPDATE big SET v = -2 WHERE id = 6", "INSERT INTO big (id, v) VALUES (0, 0)", db=db)

    second = workers(cfg).start()
    wait_until(lambda: "reading the table again" in second.output(), timeout=60, what="the restarted worker to re-read the table")
    wait_until(lambda: equal(lake, db, "big", "mirror"), timeout=180, what="lake == source after the restart", interval=2)
    lake_c = mysql_lake_table(lake, db, "big").to_pyarrow_table().column("c").to_pylist()
    assert lake_c.count("filled") == rows + 1
    assert second.terminate() == 0, second.output()[-3000:]
