"""The two databases of benchmarks/snapshot.py: the benchmark table, its physical read limit, the source config.

Each class owns one fresh database with one table `bench` of N rows (the six column types of
benchmarks/pipeline.py), knows how fast the database's own client reads it (the limit), writes the
`sources:` entry of a run's config, and cleans up what a run or the whole benchmark created.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time

import psycopg
import pymysql
from pydantic import BaseModel
from services import ADMIN_DSN, MYSQL, dsn_for, query1, sql

from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.connectors.postgres.catalog import drop_slot
from lakeward.connectors.postgres.config import PostgresSourceConfig

SOURCE = "shop"  # benchmarks/workers.py's Worker runs `--source shop`
FILL_ROWS_PER_STATEMENT = 500_000
COLUMNS = "id, n, s, amount, created_at, flag"


def supports_parallelism(config_model: type[BaseModel]) -> bool:
    """Whether the checkout measured has `snapshot_parallelism` (a "before" checkout may predate it)."""
    return "snapshot_parallelism" in config_model.model_fields


def parallelism_line(parallelism: int | None) -> str:
    """The config line for one run; None: the source's default (the only run when the field is missing)."""
    return "" if parallelism is None else f"    snapshot_parallelism: {parallelism}\n"


def run_timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Seconds `cmd` took with its stdout going to /dev/null; raises with its stderr when it fails."""
    started = time.monotonic()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.decode(errors='replace').strip()}")
    return seconds


def fill_ranges(rows: int) -> list[tuple[int, int]]:
    """(first, last) id ranges of FILL_ROWS_PER_STATEMENT rows covering 1..rows."""
    return [(a, min(a + FILL_ROWS_PER_STATEMENT - 1, rows)) for a in range(1, rows + 1, FILL_ROWS_PER_STATEMENT)]


# --- PostgreSQL ----------------------------------------------------------------------------------


class Postgres:
    name = "postgres"
    limit_label = "COPY (SELECT ...) TO STDOUT, psql to /dev/null"
    TABLE = ("CREATE TABLE bench (id bigint PRIMARY KEY, n int NOT NULL, s text, amount numeric(12,2), "
             "created_at timestamptz NOT NULL, flag boolean)")
    FILL = ("INSERT INTO bench (id, n, s, amount, created_at, flag) "
            "SELECT g, (g %% 100000)::int, md5(g::text), (g %% 1000000) / 100.0, "
            "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', g %% 3 = 0 "
            "FROM generate_series(%s::bigint, %s::bigint) g")

    def __init__(self, bench_id: str):
        self.db = f"lw_bsnap_{bench_id}"
        self.dsn = dsn_for(self.db)
        self.parallelism_supported = supports_parallelism(PostgresSourceConfig)
        self._created = False

    def available(self) -> bool:
        return True  # required: the benchmark's main subject

    def schema(self) -> str:
        return "public"

    def setup(self, rows: int) -> float:
        """The database and its filled, vacuumed table (hint bits set, statistics fresh): seconds the fill took."""
        sql(ADMIN_DSN, f'CREATE DATABASE "{self.db}"')
        self._created = True
        sql(self.dsn, self.TABLE)
        started = time.monotonic()
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for first, last in fill_ranges(rows):
                conn.execute(self.FILL, (first, last))
            conn.execute("VACUUM (ANALYZE) bench")  # so no reader pays for setting hint bits
        return time.monotonic() - started

    def count(self) -> int:
        return query1(self.dsn, "SELECT count(*) FROM bench")

    def limit_seconds(self) -> float:
        return run_timed(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.dsn, "-c",
                          f"COPY (SELECT {COLUMNS} FROM bench) TO STDOUT"])

    def source_yaml(self, tag: str, parallelism: int | None) -> str:
        return (f"  - name: {SOURCE}\n    type: postgres\n    dsn: {self.dsn}\n    tables: [public.bench]\n"
                f"    slot: {self._slot(tag)}\n    publication: {self._slot(tag)}\n    snapshot: initial\n"
                + parallelism_line(parallelism))

    def _slot(self, tag: str) -> str:
        return f"{self.db}_{tag}"

    def cleanup_run(self, tag: str) -> None:
        """The run's slot (it pins WAL) and publication."""
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            drop_slot(conn, self._slot(tag))
        sql(self.dsn, f'DROP PUBLICATION IF EXISTS "{self._slot(tag)}"')

    def teardown(self) -> None:
        if not self._created:
            return
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s", (self.db,)).fetchall():
                drop_slot(conn, slot)
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')

    def versions(self) -> dict[str, str]:
        return {"postgres": query1(ADMIN_DSN, "SHOW server_version")}


# --- MySQL / MariaDB -----------------------------------------------------------------------------


class MySQL:
    name = "mysql"
    limit_label = "mariadb --quick SELECT to /dev/null"
    TABLE = ("CREATE TABLE bench (id bigint PRIMARY KEY, n int NOT NULL, s text, amount decimal(12,2), "
             "created_at timestamp NOT NULL, flag boolean)")
    FILL_SELECT = ("SELECT seq, seq % 100000, md5(seq), (seq % 1000000) / 100.0, "
                   "TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq SECOND, seq % 3 = 0")

    def __init__(self, bench_id: str):
        self.db = f"lw_bsnap_{bench_id}"
        self.conn_settings = dict(MYSQL)
        self.parallelism_supported = supports_parallelism(MySQLSourceConfig)
        self._created = False

    def _connect(self, db: str | None = None) -> pymysql.Connection:
        return pymysql.connect(**self.conn_settings, database=db, autocommit=True, charset="utf8mb4",
                               init_command="SET time_zone = '+00:00'", connect_timeout=5)

    def _execute(self, *statements: str, db: str | None = None) -> list[tuple]:
        conn = self._connect(db)
        try:
            with conn.cursor() as cur:
                for s in statements:
                    cur.execute(s)
                return list(cur.fetchall())
        finally:
            conn.close()

    def available(self) -> bool:
        try:
            self._execute("SELECT 1")
            return True
        except pymysql.Error:
            return False

    def schema(self) -> str:
        return self.db

    def _is_mariadb(self) -> bool:
        return "mariadb" in self._execute("SELECT VERSION()")[0][0].lower()

    def _fill_statement(self, first: int, last: int) -> str:
        if self._mariadb:  # the sequence engine
            return f"INSERT INTO bench ({COLUMNS}) {self.FILL_SELECT} FROM seq_{first}_to_{last}"
        return (f"INSERT INTO bench ({COLUMNS}) WITH RECURSIVE s(seq) AS (SELECT {first} UNION ALL "
                f"SELECT seq + 1 FROM s WHERE seq < {last}) {self.FILL_SELECT} FROM s")

    def setup(self, rows: int) -> float:
        self._mariadb = self._is_mariadb()
        self._execute(f"CREATE DATABASE `{self.db}`")
        self._created = True
        self._execute(self.TABLE, db=self.db)
        started = time.monotonic()
        conn = self._connect(self.db)
        try:
            with conn.cursor() as cur:
                self._skip_binlog(cur)
                if not self._mariadb:
                    cur.execute(f"SET SESSION cte_max_recursion_depth = {FILL_ROWS_PER_STATEMENT + 1}")
                for first, last in fill_ranges(rows):
                    cur.execute(self._fill_statement(first, last))
                cur.execute("ANALYZE TABLE bench")
        finally:
            conn.close()
        return time.monotonic() - started

    @staticmethod
    def _skip_binlog(cur: pymysql.cursors.Cursor) -> None:
        """The fill need not reach the binlog (the snapshot reads the table); needs a privilege we may lack."""
        try:
            cur.execute("SET SESSION sql_log_bin = 0")
        except pymysql.Error:
            pass

    def count(self) -> int:
        return self._execute("SELECT count(*) FROM bench", db=self.db)[0][0]

    def limit_seconds(self) -> float:
        s = self.conn_settings
        client = shutil.which("mariadb") or shutil.which("mysql") or "mariadb"
        return run_timed([client, "--quick", "--batch", "-h", s["host"], "-P", str(s["port"]), "-u", s["user"], "-D", self.db,
                          "-e", f"SELECT {COLUMNS} FROM bench"], env={**os.environ, "MYSQL_PWD": s["password"]})

    def source_yaml(self, tag: str, parallelism: int | None) -> str:
        s = self.conn_settings
        return (f"  - name: {SOURCE}\n    type: mysql\n    host: {s['host']}\n    port: {s['port']}\n"
                f"    user: {s['user']}\n    password: {s['password']}\n    tables: [{self.db}.bench]\n"
                f"    server_id: {random.randint(3_000_000, 4_000_000)}\n    snapshot: initial\n"
                + parallelism_line(parallelism))

    def cleanup_run(self, tag: str) -> None:
        pass  # a run's binlog reader leaves nothing on the server; its state lived in its topics

    def teardown(self) -> None:
        if self._created:
            self._execute(f"DROP DATABASE IF EXISTS `{self.db}`")

    def versions(self) -> dict[str, str]:
        return {"mysql": self._execute("SELECT VERSION()")[0][0]}
