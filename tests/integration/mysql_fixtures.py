"""Fixtures and helpers for tests against the real MariaDB that `make services` starts.

LAKEWARD_TEST_MYSQL_URL (default mysql://lakeward:lakeward@127.0.0.1:3306) names the server; the
user needs replication privileges and may create databases. Each test gets its own database and a
random replica server_id (two sources with one server_id would disconnect each other).
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pymysql
import pymysql.cursors
import pytest
from deltalake import DeltaTable

from . import lakecheck
from .conftest import BROKER

MYSQL_URL = os.environ.get("LAKEWARD_TEST_MYSQL_URL", "mysql://lakeward:lakeward@127.0.0.1:3306")
_u = urlparse(MYSQL_URL)
MYSQL = dict(host=_u.hostname or "127.0.0.1", port=_u.port or 3306, user=unquote(_u.username or "lakeward"),
             password=unquote(_u.password or ""))


def connect(**kw: Any) -> pymysql.Connection:
    return pymysql.connect(**MYSQL, autocommit=True, charset="utf8mb4", init_command="SET time_zone = '+00:00'", **kw)


def msql(*statements: str, args: Any = None, db: str | None = None) -> None:
    conn = connect(database=db) if db else connect()
    try:
        with conn.cursor() as cur:
            for s in statements:
                cur.execute(s, args)
    finally:
        conn.close()


def mquery(statement: str, args: Any = None, db: str | None = None) -> list[tuple]:
    conn = connect(database=db) if db else connect()
    try:
        with conn.cursor() as cur:
            cur.execute(statement, args)
            return list(cur.fetchall())
    finally:
        conn.close()


@pytest.fixture
def mysql_db():
    """A fresh database for one test; dropped afterwards."""
    name = f"lw_{uuid.uuid4().hex[:10]}"
    msql(f"CREATE DATABASE `{name}`")
    yield name
    msql(f"DROP DATABASE IF EXISTS `{name}`")


def server_id() -> int:
    return random.randint(2_000_000, 3_000_000)


def write_mysql_config(path: Path, *, db: str, prefix: str, lake: Path, mode: str = "mirror", tables: str | None = None,
                       extra_source: str = "", extra_sink: str = "", sink_name: str = "lake", sid: int | None = None) -> Path:
    path.write_text(
        f"""\
broker:
  bootstrap_servers: {BROKER}
  topic_prefix: {prefix}
lake:
  uri: {lake}
sources:
  - name: legacy
    type: mysql
    host: {MYSQL['host']}
    port: {MYSQL['port']}
    user: {MYSQL['user']}
    password: {MYSQL['password']}
    tables: [{tables or db + '.*'}]
    server_id: {sid or server_id()}
    status_interval_s: 0.2
    heartbeat_interval_s: 0.5
{extra_source}sinks:
  - name: {sink_name}
    type: delta
    sources: [legacy]
    mode: {mode}
    group_id: lakeward.{prefix}.{sink_name}
    batch_interval_s: 0.2
{extra_sink}"""
    )
    return path


# --- comparing the lake with the source -----------------------------------------------------------


def mysql_rows(db: str, table: str, key: str = "id", booleans: tuple[str, ...] = ()) -> list[dict]:
    conn = connect(cursorclass=pymysql.cursors.DictCursor)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT * FROM `{db}`.`{table}` ORDER BY `{key}`")
            rows = list(cur.fetchall())
    finally:
        conn.close()
    for r in rows:
        for b in booleans:
            if r.get(b) is not None:
                r[b] = bool(r[b])
    return rows


def lake_table(lake: Path, db: str, table: str, source: str = "legacy") -> DeltaTable | None:
    return lakecheck.lake_table(lake, f"{db}.{table}", source)


def lake_rows(lake: Path, db: str, table: str, key: str = "id", *, metadata: bool = False) -> list[dict] | None:
    return lakecheck.lake_rows(lake, f"{db}.{table}", key, source="legacy", metadata=metadata)


def lake_equals_mysql(db: str, lake: Path, table: str, key: str = "id", *, dropped: tuple[str, ...] = (),
                      booleans: tuple[str, ...] = ()) -> bool | str:
    """True when equal; else a short description of the first difference (for wait_until messages)."""
    return lakecheck.compare(f"{db}.{table}", lake_rows(lake, db, table, key), mysql_rows(db, table, key, booleans), dropped=dropped)


class WriteLoad(threading.Thread):
    """Small transactions on one database until stopped (`transaction` says what each one writes); a
    deadlock or lock wait with the test's own statements is rolled back, as a client would."""

    def __init__(self, db: str, first_id: int, seed: int, *, pause_s: float = 0.002):
        super().__init__(daemon=True)
        self.db, self.next_id, self.seed, self.pause_s = db, first_id, seed, pause_s
        self.rnd = random.Random(seed)
        self.halt = threading.Event()
        self.transactions = 0

    def transaction(self, cur: Any, rnd: random.Random) -> None:
        raise NotImplementedError

    def run(self) -> None:
        conn = connect(database=self.db)
        conn.autocommit(False)
        try:
            with conn.cursor() as cur:
                while not self.halt.is_set():
                    try:
                        self.transaction(cur, self.rnd)
                        conn.commit()
                        self.transactions += 1
                    except pymysql.err.OperationalError as e:
                        if e.args[0] not in (1213, 1205):
                            raise
                        conn.rollback()
                    time.sleep(self.pause_s)
        finally:
            conn.close()

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
