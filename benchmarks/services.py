"""The local services the benchmarks run against, and the benchmark table.

Endpoints come from the same variables as the tests' (LAKEWARD_TEST_PG_DSN, LAKEWARD_TEST_BROKER,
LAKEWARD_TEST_MYSQL_URL), with the defaults of `make services`.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import psycopg
import pymysql

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("LAKEWARD_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
BROKER = os.environ.get("LAKEWARD_TEST_BROKER", "127.0.0.1:9092")
MYSQL_URL = os.environ.get("LAKEWARD_TEST_MYSQL_URL", "mysql://lakeward:lakeward@127.0.0.1:3306")
_mysql_url = urlparse(MYSQL_URL)
MYSQL: dict[str, Any] = {"host": _mysql_url.hostname or "127.0.0.1", "port": _mysql_url.port or 3306,
                         "user": unquote(_mysql_url.username or "lakeward"), "password": unquote(_mysql_url.password or "")}

# The benchmark table: six column types a CDC pipeline commonly carries, and its load.
TABLE_DDL = (
    "CREATE TABLE {name} (id bigint PRIMARY KEY, n int NOT NULL, s text, amount numeric(12,2), "
    "created_at timestamptz NOT NULL DEFAULT now(), flag boolean)"
)
INSERT = (
    "INSERT INTO {name} (id, n, s, amount, created_at, flag) "
    "SELECT g, (g %% 100000)::int, md5(g::text), (g %% 1000000) / 100.0, "
    "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', g %% 3 = 0 FROM generate_series(%s::bigint, %s::bigint) g"
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- PostgreSQL ------------------------------------------------------------------------------------


def dsn_for(dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo("", **info)


def sql(dsn: str, *statements: str, params: Any = None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in statements:
            conn.execute(s, params)


def query1(dsn: str, statement: str, params: Any = None) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(statement, params).fetchone()
        return row[0] if row else None


# --- MariaDB ---------------------------------------------------------------------------------------


def mysql_connect(db: str | None = None) -> pymysql.Connection:
    return pymysql.connect(**MYSQL, database=db, autocommit=True, charset="utf8mb4", init_command="SET time_zone = '+00:00'")


def msql(*statements: str, db: str | None = None) -> None:
    conn = mysql_connect(db)
    try:
        with conn.cursor() as cur:
            for s in statements:
                cur.execute(s)
    finally:
        conn.close()


def mquery(statement: str, db: str | None = None) -> list[tuple]:
    conn = mysql_connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return list(cur.fetchall())
    finally:
        conn.close()


def server_id() -> int:
    """A replica server_id for one reader of the binlog (two readers with one id disconnect each other)."""
    return random.randint(2_000_000, 3_000_000)
