"""The MySQL initial snapshot: chunks of every key kind read by several connections at one binlog point,
published in chunk order (the real MariaDB, Kafka and Delta tables).

Two sinks read the same topics: a mirror of the keyed tables (compared with MariaDB row by row) and a
changelog of every table, replayed here (a keyless table cannot be mirrored) and checked for events
applied twice. Every table has a unique `id` column to sort both sides the same way.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from lakeward.connectors.mysql import catalog, snapshot
from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.core import broker
from lakeward.core.config import BrokerConfig
from lakeward.core.events import Position

from .harness import (
    BROKER,
    MYSQL,
    Execute,
    MariaDB,
    WriteLoad,
    connect,
    mirror_and_changelog,
    mquery,
    msql,
    server_id,
    wait_until,
    write_mysql_config,
)
from .lakecheck import lake_equals_mysql, mysql_lake_rows, no_repeated_positions, wait_for_changelog

pytestmark = pytest.mark.integration

ROWS = 3000

TABLES = {
    # name: (DDL, the key's values for row i)
    "k_composite": ("(a int NOT NULL, b varchar(20) NOT NULL, id int NOT NULL UNIQUE, v int, PRIMARY KEY (a, b))",
                    "seq % 7, concat(char(65 + seq % 26), '-', seq)"),
    "k_text": ("(k varchar(40) PRIMARY KEY, id int NOT NULL UNIQUE, v int)", "concat(if(seq % 2, 'Key ', 'key '), md5(seq))"),
    "k_binary": ("(k binary(16) PRIMARY KEY, id int NOT NULL UNIQUE, v int)", "unhex(md5(seq))"),
    "k_uuid": ("(k char(36) PRIMARY KEY, id int NOT NULL UNIQUE, v int)", "uuid()"),
    "n_plain": ("(id int NOT NULL, v int, s varchar(40))", None),
}


def create_tables(db: str, rows: int = ROWS) -> None:
    for name, (ddl, key) in TABLES.items():
        msql(f"CREATE TABLE {name} {ddl}", db=db)
        if key is None:
            msql(f"INSERT INTO {name} SELECT seq, seq % 100, md5(seq) FROM seq_1_to_{rows}", db=db)
        elif name == "k_composite":
            msql(f"INSERT INTO {name} SELECT seq % 7, concat(char(65 + seq % 26), '-', seq), seq, seq % 100 FROM seq_1_to_{rows}", db=db)
        else:
            msql(f"INSERT INTO {name} SELECT {key}, seq, seq % 100 FROM seq_1_to_{rows}", db=db)


class Writes(WriteLoad):
    """Small transactions on every table until stopped: inserts, updates of keyed rows, deletes."""

    def __init__(self, db: str, first_id: int, seed: int = 3):
        super().__init__(MariaDB(db), seed, first_id=first_id, pause_s=0.001)

    def transaction(self, execute: Execute, rnd: random.Random) -> None:
        i = self.next_id
        self.next_id += 1
        table = rnd.choice(list(TABLES))
        if table == "n_plain":
            execute("INSERT INTO n_plain VALUES (%s, 1, 'new')", (i,))
            execute("DELETE FROM n_plain WHERE id = %s", (rnd.randint(1, i),))
        elif table == "k_composite":
            execute("INSERT INTO k_composite VALUES (%s, %s, %s, 1)", (i % 7, f"N-{i}", i))
            execute("UPDATE k_composite SET v = v + 1 WHERE id = %s", (rnd.randint(1, i),))
        else:
            key = f"new {i}" if table != "k_binary" else i.to_bytes(16, "big")
            execute(f"INSERT INTO {table} VALUES (%s, %s, 1)", (key, i))
            execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", (rnd.randint(1, i),))
            execute(f"DELETE FROM {table} WHERE id = %s", (rnd.randint(1, i),))


def configs(tmp_path: Path, db: str, prefix: str, **source_opts) -> tuple[Path, Path, Path, Path]:
    """(mirror config, changelog config, mirror lake, changelog lake); the mirror writes the keyed tables."""
    return mirror_and_changelog(tmp_path, write_mysql_config, db=db, prefix=prefix, sid=server_id(), source_settings=source_opts,
                                mirror_sink=f"    tables: ['{db}.k_*', '{db}.a_*', '{db}.c_*']\n")


def replay_changelog(lake: Path, db: str, table: str) -> list[dict] | str:
    """The table's rows by replaying its changelog in position order (a multiset: keyless tables can
    hold equal rows), sorted by id; a description when a delete finds no row."""
    events = mysql_lake_rows(lake, db, table, key="_lakeward_position", metadata=True)
    if events is None:
        return f"no changelog for {table} yet"
    rows: Counter = Counter()
    for e in events:
        op = e["_lakeward_op"]
        row = tuple(sorted((k, v) for k, v in e.items() if not k.startswith("_lakeward_")))
        if op == "t":
            rows.clear()
        elif op in ("r", "c"):
            rows[row] += 1
        elif op == "d":
            if rows[row] <= 0:
                return f"{table}: a delete without its row at {e['_lakeward_position'].hex()}"
            rows[row] -= 1
        else:
            return f"{table}: unexpected op {op!r} in the replay (tables here are not updated by key)"
    return sorted((dict(r) for r, n in rows.items() for _ in range(n)), key=lambda r: r["id"])


def changelog_equals_mysql(lake: Path, db: str, table: str) -> bool | str:
    got = replay_changelog(lake, db, table)
    if isinstance(got, str):
        return got
    want = [dict(r) for r in mquery_dicts(f"SELECT * FROM `{db}`.`{table}` ORDER BY id")]
    if len(got) != len(want):
        return f"{table}: changelog replay has {len(got)} rows, source {len(want)}"
    return got == want or f"{table}: changelog replay differs from the source"


def mquery_dicts(sql: str) -> list[dict]:
    import pymysql.cursors

    conn = connect(cursorclass=pymysql.cursors.DictCursor)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


def topic_records(prefix: str, db: str, table: str) -> list:
    return asyncio.run(broker.read_topic(BrokerConfig(bootstrap_servers=BROKER), f"{prefix}.legacy.{db}.{table}"))


def snapshot_positions(records: list) -> list[tuple[int, int, int, int, int]]:
    """The snapshot events' positions (phase 0), in topic order."""
    parts = [Position.mysql_parts(dict(r.headers)["lakeward.pos"]) for r in records]
    return [p for p in parts if p[2] == Position.SNAPSHOT]


def test_parallel_snapshot_of_every_key_kind_under_writes(mysql_db, prefix, tmp_path, workers):
    db = mysql_db
    create_tables(db)
    mirror_cfg, log_cfg, mirror_lake, changelog_lake = configs(tmp_path, db, prefix, snapshot_parallelism=3, snapshot_chunk_rows=97)
    writes = Writes(db, first_id=ROWS + 1)
    writes.start()
    mirror = workers(mirror_cfg, "--sink", "lake").start()
    changelog = workers(log_cfg, "--sink", "log").start()
    source = workers(mirror_cfg, "--source", "legacy").start()
    wait_until(lambda: "streaming from" in source.output(), timeout=40, what="the snapshot to finish", interval=0.2)
    time.sleep(0.5)
    writes.stop()
    assert writes.transactions > 50
    assert "with 3 connection(s)" in source.output()

    for table in TABLES:
        if table.startswith("k_"):
            wait_until(lambda table=table: lake_equals_mysql(db, mirror_lake, table), timeout=30, what=f"mirror {table} == source", interval=0.5)
        else:
            wait_until(lambda table=table: changelog_equals_mysql(changelog_lake, db, table), timeout=30, what=f"changelog {table} == source",
                       interval=0.5)
        wait_for_changelog(changelog_lake, f"{db}.{table}", f"{prefix}.legacy.{db}.{table}", source="legacy", timeout=30)
        no_repeated_positions(changelog_lake, f"{db}.{table}", "legacy")
        # Published in chunk order: snapshot positions strictly increase along the topic.
        snap = snapshot_positions(topic_records(prefix, db, table))
        assert all(a < b for a, b in zip(snap, snap[1:], strict=False)), f"{table}: snapshot events out of order"
        chunks = {seq >> 32 for _f, _p, _ph, seq, _r in snap[1:]}
        if table.startswith("k_"):
            assert len(chunks) >= ROWS // 97 - 3, f"{table}: read in {len(chunks)} chunk(s)"
        else:
            assert chunks == {0}, f"{table}: a keyless table is one chunk"
        assert len(snap) >= ROWS + 1 - writes.transactions  # the t event and the rows at the snapshot's point
    for w in (source, mirror, changelog):
        assert w.terminate() == 0, w.output()[-3000:]


def source_config(db: str) -> MySQLSourceConfig:
    return MySQLSourceConfig(name="legacy", host=MYSQL["host"], port=MYSQL["port"], user=MYSQL["user"], password=MYSQL["password"],
                             tables=[f"{db}.*"])


@pytest.mark.parametrize("lock_free_attempts", [snapshot.SAME_POINT_ATTEMPTS, 0], ids=["lock-free", "read-lock"])
def test_snapshot_connections_share_one_point_under_commits(mysql_db, monkeypatch, lock_free_attempts):
    """Every connection of a parallel snapshot sees the same committed rows, while commits keep coming."""
    db = mysql_db
    msql("CREATE TABLE ticks (id int AUTO_INCREMENT PRIMARY KEY)", db=db)
    monkeypatch.setattr(snapshot, "SAME_POINT_ATTEMPTS", lock_free_attempts)
    halt = threading.Event()

    def tick() -> None:
        conn = connect(database=db)
        try:
            with conn.cursor() as cur:
                while not halt.is_set():
                    cur.execute("INSERT INTO ticks VALUES ()")
        finally:
            conn.close()

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    cfg = source_config(db)
    meta = catalog.connect(cfg)
    server = catalog.server_info(meta)
    meta.close()
    try:
        for _ in range(5):
            conns, point = snapshot.open_snapshots(cfg, server, 3)
            try:
                assert len(conns) == 3
                counts = {catalog.query(c, f"SELECT COUNT(*) FROM `{db}`.ticks")[0][0] for c in conns}
                assert len(counts) == 1, f"the snapshot's connections see different rows: {counts}"
                time.sleep(0.05)
                assert counts == {catalog.query(conns[0], f"SELECT COUNT(*) FROM `{db}`.ticks")[0][0]}, "not a consistent read"
            finally:
                for c in conns:
                    c.close()
    finally:
        halt.set()
        ticker.join(10)
    assert mquery(f"SELECT COUNT(*) FROM `{db}`.ticks")[0][0] > 20
