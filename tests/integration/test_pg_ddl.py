"""Every DDL a user may run on a captured PostgreSQL table while writes continue, in mirror and
changelog mode: afterwards the lake equals the source (every row, every column), or the table stops
with an error naming table and column. One database with a table per case, one source + mirror
`lakeward run` and one changelog sink; DDL and writes on all tables, then each table is compared.

The changelog is checked by replaying it in position order (`t` empties the table, `d` deletes the
key, `c`/`u`/`r` upsert it), which is what a reader of the changelog does.
"""

from __future__ import annotations

import datetime
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest

from .harness import Postgres, TableWrites, sql, wait_until, write_config
from .lakecheck import compare, lake_rows, lake_table, source_rows

pytestmark = pytest.mark.integration

SEED = 40


@dataclass
class Case:
    name: str
    ddl: list[str]
    x: str = "int"
    """Type of the case's column x (every table: id int primary key, v int, x)."""
    x_value: str = "g * 10"
    after: list[str] | None = None
    """Writes after the DDL (default: an insert of (id, v) and an update of v)."""
    create: str | None = None
    """The whole CREATE TABLE ... (instead of the default one), `{t}` for the table."""
    table: str | None = None
    """The source table at the end (rename), default the case's table."""
    dropped: tuple[str, ...] = ()
    """Columns gone at the source that the lake keeps."""
    error: dict[str, str] | None = None
    """Per mode, the table stops: the sink's error names the table and contains this text (the column)."""
    seed: bool = True
    not_in_lake: tuple[str, ...] = ()
    """Source columns the lake does not have (generated columns: pgoutput does not send them)."""

    @property
    def t(self) -> str:
        return f"t_{self.name}"

    @property
    def final(self) -> str:
        return self.table or self.t


def _after(*statements: str) -> list[str]:
    return list(statements)


CASES = [
    Case("add_nullable", ["ALTER TABLE {t} ADD COLUMN c text"], after=_after("INSERT INTO {t} (id, v, c) VALUES (1001, 1, 'new')",
                                                                            "UPDATE {t} SET c = 'upd' WHERE id = 3")),
    # The defect: PostgreSQL 11+ keeps a constant default in attmissingval and writes no WAL for old rows.
    Case("add_default_const", ["ALTER TABLE {t} ADD COLUMN c int NOT NULL DEFAULT 7"]),
    Case("add_default_then_drop_default", ["ALTER TABLE {t} ADD COLUMN c text DEFAULT 'dflt'", "ALTER TABLE {t} ALTER COLUMN c DROP DEFAULT"]),
    Case("add_default_volatile_ts", ["ALTER TABLE {t} ADD COLUMN c timestamptz DEFAULT clock_timestamp()"]),
    Case("add_default_volatile_uuid", ["ALTER TABLE {t} ADD COLUMN c uuid NOT NULL DEFAULT gen_random_uuid()"]),
    Case("add_identity", ["ALTER TABLE {t} ADD COLUMN n bigint GENERATED ALWAYS AS IDENTITY"]),
    Case("add_families_default", [
        ("ALTER TABLE {t} ADD COLUMN c_bool boolean DEFAULT true, ADD COLUMN c_small smallint DEFAULT 3, ADD COLUMN c_big bigint DEFAULT 9000000000, "
        "ADD COLUMN c_num numeric(10,2) DEFAULT 1.50, ADD COLUMN c_float float8 DEFAULT 1.25, ADD COLUMN c_text text DEFAULT 'x', "
        "ADD COLUMN c_varchar varchar(5) DEFAULT 'ab', ADD COLUMN c_date date DEFAULT '2020-02-29', "
        "ADD COLUMN c_ts timestamp DEFAULT '2020-01-01 10:00:00.123456', ADD COLUMN c_tstz timestamptz DEFAULT '2020-01-01 10:00:00+02', "
        "ADD COLUMN c_time time DEFAULT '12:34:56', ADD COLUMN c_json jsonb DEFAULT '{\"a\": 1}', ADD COLUMN c_bytes bytea DEFAULT '\\x0102', "
        "ADD COLUMN c_arr int[] DEFAULT '{1,2}', ADD COLUMN c_uuid uuid DEFAULT '6f1c0f5e-0b5f-4f6e-9e1a-1b2c3d4e5f60'")]),
    Case("add_families_nullable", [
        ("ALTER TABLE {t} ADD COLUMN c_bool boolean, ADD COLUMN c_num numeric(10,2), ADD COLUMN c_date date, ADD COLUMN c_ts timestamp, "
        "ADD COLUMN c_tstz timestamptz, ADD COLUMN c_json jsonb, ADD COLUMN c_bytes bytea, ADD COLUMN c_arr text[]")],
        after=_after("INSERT INTO {t} (id, v, c_bool, c_num, c_date, c_ts, c_tstz, c_json, c_bytes, c_arr) VALUES "
                     "(1001, 1, false, 2.25, '2021-03-04', '2021-03-04 05:06:07', '2021-03-04 05:06:07+00', '[1]', '\\xff', '{a,b}')",
                     "UPDATE {t} SET c_ts = '1999-12-31 23:59:59', c_num = 3 WHERE id = 5")),
    Case("add_generated", ["ALTER TABLE {t} ADD COLUMN g int GENERATED ALWAYS AS (v * 2) STORED"], not_in_lake=("g",)),
    Case("generated_before_snapshot", [], create="CREATE TABLE {t} (id int PRIMARY KEY, v int, x int, g int GENERATED ALWAYS AS (v * 2) STORED)",
         not_in_lake=("g",)),
    Case("drop_column", ["ALTER TABLE {t} DROP COLUMN x"], dropped=("x",)),
    Case("rename_column", ["ALTER TABLE {t} RENAME COLUMN x TO y"], dropped=("x",)),
    # The re-read starts with a truncate: the mirror is rewritten with the new type; a changelog cannot change its rows.
    Case("widen_int", ["ALTER TABLE {t} ALTER COLUMN x TYPE bigint"], error={"changelog": "column 'x' changed type"}),
    Case("narrow_bigint", ["ALTER TABLE {t} ALTER COLUMN x TYPE int"], x="bigint", error={"changelog": "column 'x' changed type"}),
    Case("widen_varchar", ["ALTER TABLE {t} ALTER COLUMN x TYPE varchar(20)"], x="varchar(10)", x_value="'s' || g"),
    Case("type_using", ["ALTER TABLE {t} ALTER COLUMN x TYPE text USING (x * 2)::text || '!'"], error={"changelog": "column 'x' changed type"}),
    Case("numeric_scale", ["ALTER TABLE {t} ALTER COLUMN x TYPE numeric(12,4)"], x="numeric(10,2)", x_value="g / 4.0", error={"changelog": "column 'x' changed type"}),
    Case("set_not_null", ["ALTER TABLE {t} ALTER COLUMN x SET NOT NULL"],
         after=_after("INSERT INTO {t} (id, v, x) VALUES (1001, 1, 5)", "UPDATE {t} SET v = -1 WHERE id = 3")),
    Case("drop_not_null", ["ALTER TABLE {t} ALTER COLUMN x DROP NOT NULL"], x="int NOT NULL"),
    Case("set_default", ["ALTER TABLE {t} ALTER COLUMN x SET DEFAULT 99"]),
    Case("drop_default", ["ALTER TABLE {t} ALTER COLUMN x DROP DEFAULT"], x="int DEFAULT 5"),
    Case("add_pk", ["ALTER TABLE {t} ADD PRIMARY KEY (id)", "ALTER TABLE {t} REPLICA IDENTITY DEFAULT"],
         create="CREATE TABLE {t} (id int NOT NULL, v int, x int); ALTER TABLE {t} REPLICA IDENTITY FULL",
         error={"mirror": "has no primary key; mirror mode needs one"}),
    Case("drop_pk", ["ALTER TABLE {t} REPLICA IDENTITY FULL", "ALTER TABLE {t} DROP CONSTRAINT {t}_pkey"],
         error={"mirror": "has no primary key; mirror mode needs one"}),
    Case("replica_identity_full", ["ALTER TABLE {t} REPLICA IDENTITY FULL"]),
    Case("rename_table", ["ALTER TABLE {t} RENAME TO {t}_renamed"], table="t_rename_table_renamed"),
    Case("drop_recreate", ["DROP TABLE {t}", "CREATE TABLE {t} (id int PRIMARY KEY, v int, z text)",
                           "INSERT INTO {t} SELECT g, g, 'z' || g FROM generate_series(1, 5) g"], dropped=("x",)),
    Case("create_new", ["CREATE TABLE {t} (id int PRIMARY KEY, v int, x int)", "INSERT INTO {t} SELECT g, g, g FROM generate_series(1, 7) g"],
         seed=False, create=""),
    Case("attach_partition", [
        "CREATE TABLE staging.{t}_p2 (id int NOT NULL, v int, x int)",
        "INSERT INTO staging.{t}_p2 SELECT g, g, g FROM generate_series(1100, 1120) g",
        "ALTER TABLE {t} ATTACH PARTITION staging.{t}_p2 FOR VALUES FROM (1000) TO (2000)"],
        create="CREATE TABLE {t} (id int NOT NULL, v int, x int, PRIMARY KEY (id)) PARTITION BY RANGE (id); "
               "CREATE TABLE staging.{t}_p1 PARTITION OF {t} FOR VALUES FROM (0) TO (1000)"),
    Case("detach_partition", ["ALTER TABLE {t} DETACH PARTITION staging.{t}_p2"],
         after=_after("INSERT INTO {t} (id, v) VALUES (501, 1)", "UPDATE {t} SET v = -1 WHERE id = 3"),
         create="CREATE TABLE {t} (id int NOT NULL, v int, x int, PRIMARY KEY (id)) PARTITION BY RANGE (id); "
                "CREATE TABLE staging.{t}_p1 PARTITION OF {t} FOR VALUES FROM (0) TO (1000); "
                "CREATE TABLE staging.{t}_p2 PARTITION OF {t} FOR VALUES FROM (1000) TO (2000); "
                "INSERT INTO {t} SELECT g, g, g FROM generate_series(1100, 1110) g"),
    Case("truncate", ["TRUNCATE {t}", "INSERT INTO {t} SELECT g, g, g FROM generate_series(500, 505) g"]),
]


def _fmt(statement: str, case: Case) -> str:
    return statement.replace("{t}", case.t)


def setup_tables(dsn: str) -> None:
    sql(dsn, "CREATE SCHEMA staging")
    for case in CASES:
        if case.create == "":
            continue
        create = case.create or f"CREATE TABLE {{t}} (id int PRIMARY KEY, v int, x {case.x})"
        for s in create.split("; "):
            sql(dsn, _fmt(s, case))
        if case.seed:
            sql(dsn, _fmt(f"INSERT INTO {{t}} (id, v, x) SELECT g, g, {case.x_value} FROM generate_series(1, {SEED}) g", case))


def replay_changelog(lake: Path, table: str) -> list[dict] | None:
    """The table a changelog reader reconstructs: events in position order, `t` empties it."""
    rows = lake_rows(lake, table, key="_lakeward_position", metadata=True)
    if rows is None:
        return None
    state: dict = {}
    for r in rows:
        op = r["_lakeward_op"]
        data = {k: v for k, v in r.items() if not k.startswith("_lakeward_")}
        if op == "t":
            state.clear()
        elif op == "d":
            state.pop(data["id"], None)
        else:
            unchanged = r.get("_lakeward_unchanged") or []
            prev = state.get(data["id"], {})
            state[data["id"]] = {k: (prev.get(k) if k in unchanged else v) for k, v in data.items()}
    return sorted(state.values(), key=lambda r: r["id"])


JSON_OIDS = (114, 3802)


def source_table(dsn: str, table: str, drop: tuple[str, ...] = ()) -> list[dict]:
    """Source rows by id, with values as the lake stores them (uuid, time and json as text)."""
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(f"SELECT * FROM {table} ORDER BY id")
        desc = [(d.name, d.type_code in JSON_OIDS) for d in cur.description]
        rows = cur.fetchall()

    def value(v, is_json):
        if v is not None and is_json:
            return json.dumps(v)
        return str(v) if isinstance(v, uuid.UUID | datetime.time) else v
    return [{n: value(v, j) for (n, j), v in zip(desc, row, strict=True) if n not in drop} for row in rows]


def table_errors(log: str, table: str) -> list[str]:
    """The sink's ERROR lines about `shop.public.<table>`."""
    return [line for line in log.splitlines() if " ERROR " in line and f"shop.public.{table}" in line]


def readable(lake: Path, table: str) -> str | None:
    """None when delta-rs reads the table with its protocol (timestampNtz declared where a column needs it), else why not."""
    dt = lake_table(lake, table)
    if dt is None:
        return f"no lake table {table}"
    try:
        data = dt.to_pyarrow_table()
    except Exception as e:  # noqa: BLE001 - the message is the finding
        return f"{table}: delta-rs cannot read it: {e}"
    proto = dt.protocol()
    ntz = any(str(f.type) == "timestamp[us]" for f in data.schema)
    if ntz and not ("timestampNtz" in (proto.reader_features or []) and "timestampNtz" in (proto.writer_features or [])):
        return f"{table}: timestamp_ntz column but protocol {proto}"
    return None


@pytest.fixture
def matrix(database, prefix, tmp_path, workers):
    setup_tables(database)
    mirror_lake, changelog_lake = tmp_path / "mirror", tmp_path / "changelog"
    mirror_cfg = write_config(tmp_path / "mirror.yaml", dsn=database, prefix=prefix, lake=mirror_lake)
    log_cfg = write_config(tmp_path / "changelog.yaml", dsn=database, prefix=prefix, lake=changelog_lake, mode="changelog", sink_name="log")
    return database, prefix, mirror_lake, changelog_lake, mirror_cfg, log_cfg, workers


def test_pg_ddl_matrix(matrix):
    database, prefix, mirror_lake, changelog_lake, mirror_cfg, log_cfg, workers = matrix
    source_and_mirror = workers(mirror_cfg).start()
    changelog = workers(log_cfg, "--sink", "log").start()
    initial = [c for c in CASES if c.create != ""]
    for case in initial:
        if case.name == "add_pk":
            continue  # no primary key yet: the mirror stops the table until it has one
        wait_until(lambda case=case: compare(case.t, lake_rows(mirror_lake, case.t), source_table(database, case.t, case.not_in_lake)),
                   timeout=120, what=f"snapshot of {case.t}")

    load = TableWrites(Postgres(database), [c.t for c in initial if c.name not in ("drop_recreate", "rename_table")],
                       update="UPDATE {t} SET v = v + 1 WHERE id = %s", insert="INSERT INTO {t} (id, v, x) VALUES (%s, 0, '0')",
                       update_share=0.8, max_id=SEED, seed=3, first_id=2000)
    load.start()
    time.sleep(1)
    for case in CASES:
        for s in case.ddl:
            sql(database, _fmt(s, case))
        after = case.after or ["INSERT INTO {t} (id, v) VALUES (1001, 1)", "UPDATE {t} SET v = -1 WHERE id = 3"]
        for s in after:
            sql(database, _fmt(s, case).replace("t_rename_table", case.final) if case.table else _fmt(s, case))
    time.sleep(2)
    load.stop()
    assert load.transactions > 100

    failures: dict[str, str] = {}
    deadline = time.monotonic() + 120
    pending = {(mode, c.name): c for mode in ("mirror", "changelog") for c in CASES}
    while pending and time.monotonic() < deadline:
        logs = {"mirror": source_and_mirror.output(), "changelog": changelog.output()}
        for (mode, name), case in list(pending.items()):
            lake = mirror_lake if mode == "mirror" else changelog_lake
            got = lake_rows(lake, case.final) if mode == "mirror" else replay_changelog(lake, case.final)
            want = source_table(database, case.final, case.not_in_lake)
            if case.error and mode in case.error:
                expected = case.error[mode]
                errs = table_errors(logs[mode], case.final)
                result = True if any(expected in e for e in errs) else f"{case.final}: no error {expected!r} yet ({errs[-1:]})"
            else:
                result = compare(case.final, got, want, dropped=case.dropped)
            if result is True and case.table and mode == "changelog":
                old = replay_changelog(lake, case.t)
                result = True if old == [] else f"{case.t} (renamed): its changelog replays to {len(old or [])} rows"
            if result is True and case.table and mode == "mirror":
                old = lake_rows(lake, case.t)  # renamed: the lake table under the old name is emptied
                result = True if old == [] else f"{case.t} (renamed) still has {len(old or [])} rows"
            if result is True and (not (case.error and mode in case.error) or lake_table(lake, case.final) is not None):
                why = readable(lake, case.final)  # a stopped table stays readable at its last commit
            else:
                why = None if result is True else result
            if result is True:
                if why is None:
                    del pending[(mode, name)]
                    failures.pop(f"{mode}:{name}", None)
                    continue
                result = why
            failures[f"{mode}:{name}"] = str(result)[:600]
        if pending:
            time.sleep(1)
    assert not failures, "\n".join(f"{k}: {v}" for k, v in sorted(failures.items())) + "\n\n" + source_and_mirror.output()[-3000:]
    # The mirror took the new column types with the re-read (the values alone would compare equal either way).
    retyped = {"widen_int": "int64", "narrow_bigint": "int32", "type_using": "string", "numeric_scale": "decimal128(12, 4)"}
    for case in CASES:
        if case.name in retyped:
            got = str(pa.schema(lake_table(mirror_lake, case.final).schema().to_arrow()).field("x").type)
            assert got == retyped[case.name], f"{case.name}: the mirror's column x is {got}"
    for w in (source_and_mirror, changelog):
        assert w.terminate() == 0, w.output()[-3000:]


def test_reread_survives_sigkill_mid_reread(database, prefix, tmp_path, workers):
    """The worker dies after it decided to re-read a table for an ADD COLUMN ... DEFAULT, before the
    re-read finished. Whether the slot had confirmed past the DDL by then depends on when the
    walsender's keepalive came (PostgreSQL will then not send that change again, and the restarted
    worker must know the re-read from the state topic) or not (the change comes again): the
    restarted worker re-reads either way and the lake equals the source."""
    sql(database, "CREATE TABLE big (id int PRIMARY KEY, v int, s text)",
        "INSERT INTO big SELECT g, g, md5(g::text) FROM generate_series(1, 300000) g")
    mirror_lake = tmp_path / "mirror"
    cfg = write_config(tmp_path / "mirror.yaml", dsn=database, prefix=prefix, lake=mirror_lake, tables="public.big")
    w = workers(cfg).start()
    wait_until(lambda: compare("big", lake_rows(mirror_lake, "big"), source_rows(database, "big")), timeout=180, what="snapshot")
    sql(database, "ALTER TABLE big ADD COLUMN c int NOT NULL DEFAULT 7", "UPDATE big SET v = -1 WHERE id = 5")
    wait_until(lambda: "reading the table again" in w.output(), timeout=30, what="the re-read to be decided", interval=0.02)
    w.kill()
    log = w.output()
    assert log.count("snapshot of public.big:") == 1, "the kill was meant to land before the re-read finished"

    w = workers(cfg).start()
    wait_until(lambda: compare("big", lake_rows(mirror_lake, "big"), source_rows(database, "big")), timeout=180, what="mirror == source after restart")

    assert w.terminate() == 0, w.output()[-3000:]

    # A worker that resumed its slot and records a schema change keeps the state document whole: the
    # next worker resumes the slot too (no new initial snapshot) and re-reads only what a DDL requires.
    w = workers(cfg).start()
    sql(database, "ALTER TABLE big ADD COLUMN e int", "UPDATE big SET v = -2, e = 1 WHERE id = 6")  # recorded, no re-read
    wait_until(lambda: compare("big", lake_rows(mirror_lake, "big"), source_rows(database, "big")), timeout=60, what="nullable column")
    time.sleep(1)
    assert w.terminate() == 0, w.output()[-3000:]
    assert "resuming slot" in w.output() and "snapshot of public.big" not in w.output(), w.output()[-3000:]
    w = workers(cfg).start()
    sql(database, "ALTER TABLE big ADD COLUMN d text DEFAULT 'd'", "UPDATE big SET v = -3 WHERE id = 7")
    wait_until(lambda: compare("big", lake_rows(mirror_lake, "big"), source_rows(database, "big")), timeout=180, what="re-read after resume")
    assert w.terminate() == 0, w.output()[-3000:]
    assert "resuming slot" in w.output() and w.output().count("snapshot of public.big") == 1, w.output()[-3000:]


def test_table_renamed_out_of_tables_stops_the_source_naming_both_names(database, prefix, tmp_path, workers):
    sql(database, "CREATE TABLE keep_a (id int PRIMARY KEY, v int)", "INSERT INTO keep_a SELECT g, g FROM generate_series(1, 10) g")
    lake = tmp_path / "mirror"
    cfg = write_config(tmp_path / "mirror.yaml", dsn=database, prefix=prefix, lake=lake, tables="public.keep_*")
    w = workers(cfg).start()
    wait_until(lambda: compare("keep_a", lake_rows(lake, "keep_a"), source_rows(database, "keep_a")), timeout=120, what="snapshot")
    sql(database, "ALTER TABLE keep_a RENAME TO other_a", "UPDATE other_a SET v = -1 WHERE id = 1")
    wait_until(lambda: not w.alive(), timeout=60, what="the worker to stop")
    assert w.proc.returncode == 1
    out = w.output()
    assert "table public.keep_a was renamed to public.other_a, which does not match `tables:`" in out, out[-3000:]
    assert "ALTER PUBLICATION" in out and "DROP TABLE public.other_a" in out
    assert lake_table(lake, "other_a") is None, "nothing of the renamed table reaches the lake"
    assert [r["v"] for r in lake_rows(lake, "keep_a")] == list(range(1, 11))
