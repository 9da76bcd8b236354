"""What the PostgreSQL and MariaDB tests share: the services' endpoints and SQL helpers, the config
of a `lakeward run`, its worker processes, broker reads, waits, and write loads.

The endpoints come from LAKEWARD_TEST_PG_DSN, LAKEWARD_TEST_BROKER and LAKEWARD_TEST_MYSQL_URL (the
Makefile exports them; the defaults are those of `make services`). The MariaDB user needs
replication privileges and may create databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import psycopg
import pymysql
from aiokafka import AIOKafkaConsumer, TopicPartition

from lakeward.connectors.postgres.catalog import drop_slot
from lakeward.core import broker
from lakeward.core.config import BrokerConfig

ADMIN_DSN = os.environ.get("LAKEWARD_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
BROKER = os.environ.get("LAKEWARD_TEST_BROKER", "127.0.0.1:9092")
MYSQL_URL = os.environ.get("LAKEWARD_TEST_MYSQL_URL", "mysql://lakeward:lakeward@127.0.0.1:3306")
_mysql_url = urlparse(MYSQL_URL)
MYSQL: dict[str, Any] = {"host": _mysql_url.hostname or "127.0.0.1", "port": _mysql_url.port or 3306,
                         "user": unquote(_mysql_url.username or "lakeward"), "password": unquote(_mysql_url.password or "")}


def unique_name(prefix: str) -> str:
    """A database, topic prefix or key prefix no other test (nor a parallel run) uses."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


TOPIC_PREFIXES: list[str] = []
"""The topic prefixes this process's tests used: conftest deletes their topics when the session ends."""


def topic_prefix() -> str:
    """A topic prefix no other test uses; its topics are deleted at the end of the session."""
    name = unique_name("t")
    TOPIC_PREFIXES.append(name)
    return name


# --- PostgreSQL ------------------------------------------------------------------------------------


def dsn_for(dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo("", **info)


def sql(dsn: str, *statements: str, params=None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in statements:
            conn.execute(s, params)


def create_database() -> str:
    """A fresh PostgreSQL database; returns its name."""
    name = unique_name("lw_")
    sql(ADMIN_DSN, f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    """Drops the database and its replication slots (an inactive slot would pin WAL)."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)).fetchall():
            drop_slot(conn, slot)
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- MariaDB ---------------------------------------------------------------------------------------


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


LOCK_DIR = Path(tempfile.gettempdir())
"""Where the server locks live: one place on the machine, so parallel test sessions (xdist workers,
other checkouts) take turns too."""


@contextlib.contextmanager
def server_lock(name: str, *, exclusive: bool) -> Iterator[None]:
    """Holds the machine-wide test lock `name`: shared by tests that may run side by side, exclusive
    for one that must run alone among them (MariaDB: a test that changes the server's global
    settings, which would break a source streaming next to it). A turnstile keeps a waiting exclusive
    holder from being starved: shared holders that come after it wait behind it."""
    with open(LOCK_DIR / f"lakeward-tests-{name}.turnstile", "a") as turnstile, open(LOCK_DIR / f"lakeward-tests-{name}.lock", "a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def server_id() -> int:
    """A replica server_id for one source (two sources with one server_id disconnect each other)."""
    return random.randint(2_000_000, 3_000_000)


# --- the config of a `lakeward run` ----------------------------------------------------------------


def _settings(defaults: dict[str, Any], settings: dict[str, Any]) -> str:
    return "".join(f"    {k}: {v}\n" for k, v in {**defaults, **settings}.items())


def postgres_source(dsn: str, prefix: str, tables: str = "public.*", **settings: Any) -> str:
    """The `sources:` entry of a PostgreSQL source `shop`, its slot named after the topic prefix;
    `settings` add to (or override) the quick status and table refresh intervals of the tests."""
    return f"""\
  - name: shop
    type: postgres
    dsn: {dsn}
    tables: [{tables}]
    slot: lw_{prefix}
{_settings({"status_interval_s": 0.2, "table_refresh_interval_s": 1}, settings)}"""


def mysql_source(db: str, tables: str | None = None, sid: int | None = None, **settings: Any) -> str:
    """The `sources:` entry of a MariaDB source `legacy` (a random server_id unless `sid`); `settings`
    add to (or override) the quick status and heartbeat intervals of the tests."""
    return f"""\
  - name: legacy
    type: mysql
    host: {MYSQL['host']}
    port: {MYSQL['port']}
    user: {MYSQL['user']}
    password: {MYSQL['password']}
    tables: [{tables or db + '.*'}]
    server_id: {sid or server_id()}
{_settings({"status_interval_s": 0.2, "heartbeat_interval_s": 0.5}, settings)}"""


def write_pipeline_config(path: Path, *, source: str, source_name: str, prefix: str, lake: Path | str, mode: str = "mirror",
                          extra_source: str = "", extra_sink: str = "", sink_name: str = "lake",
                          lake_options: dict[str, str] | None = None) -> Path:
    """A config of one source (its `sources:` entry, then the lines `extra_source`) and one Delta sink
    that commits every 0.2 s. `lake_options` become `lake.storage_options` (values written verbatim:
    `${VAR}` works)."""
    options = "".join(f"\n    {k}: {v}" for k, v in (lake_options or {}).items())
    if options:
        options = "\n  storage_options:" + options
    path.write_text(
        f"""\
broker:
  bootstrap_servers: {BROKER}
  topic_prefix: {prefix}
lake:
  uri: {lake}{options}
sources:
{source}{extra_source}sinks:
  - name: {sink_name}
    type: delta
    sources: [{source_name}]
    mode: {mode}
    group_id: lakeward.{prefix}.{sink_name}
    batch_interval_s: 0.2
{extra_sink}"""
    )
    return path


def write_config(path: Path, *, dsn: str, prefix: str, lake: Path | str, tables: str = "public.*",
                 source_settings: dict[str, Any] | None = None, **kw: Any) -> Path:
    """A config with the PostgreSQL source `shop` (postgres_source; write_pipeline_config for the rest)."""
    return write_pipeline_config(path, source=postgres_source(dsn, prefix, tables, **(source_settings or {})), source_name="shop",
                                 prefix=prefix, lake=lake, **kw)


def write_mysql_config(path: Path, *, db: str, prefix: str, lake: Path | str, tables: str | None = None, sid: int | None = None,
                       source_settings: dict[str, Any] | None = None, **kw: Any) -> Path:
    """A config with the MariaDB source `legacy` (mysql_source; write_pipeline_config for the rest)."""
    return write_pipeline_config(path, source=mysql_source(db, tables, sid, **(source_settings or {})), source_name="legacy",
                                 prefix=prefix, lake=lake, **kw)


def mirror_and_changelog(tmp_path: Path, write: Callable[..., Path], *, mirror_sink: str = "", **kw: Any) -> tuple[Path, Path, Path, Path]:
    """Two configs of one source (`write` is write_config or write_mysql_config, with `kw`): a mirror
    sink `lake` (with the lines `mirror_sink`) and a changelog sink `log`, each with a lake of its
    own under tmp_path. Returns (mirror config, changelog config, mirror lake, changelog lake)."""
    mirror_lake, changelog_lake = tmp_path / "mirror", tmp_path / "changelog"
    mirror = write(tmp_path / "mirror.yaml", lake=mirror_lake, extra_sink=mirror_sink, **kw)
    changelog = write(tmp_path / "changelog.yaml", lake=changelog_lake, mode="changelog", sink_name="log", **kw)
    return mirror, changelog, mirror_lake, changelog_lake


def many_files(uri: str, files: int = 24, rows: int = 50_000, storage_options: dict[str, str] | None = None) -> None:
    """A Delta table at `uri` of `files` files (id, s), enough that a scan DuckDB stops early leaves
    Arrow reading ahead on its I/O threads."""
    import pyarrow as pa
    from deltalake import write_deltalake

    for i in range(files):
        write_deltalake(uri, pa.table({"id": pa.array(range(i * rows, (i + 1) * rows), pa.int64()),
                                       "s": pa.array([f"row {j:08d} of file {i}" for j in range(rows)], pa.large_string())}),
                        mode="append", storage_options=storage_options)


# --- worker processes ------------------------------------------------------------------------------


class Worker:
    """A `lakeward run` subprocess: the product as users run it (and as the crash tests kill it)."""

    def __init__(self, config: Path, *args: str, log: Path):
        self.args = [sys.executable, "-m", "lakeward.app.cli", "-c", str(config), "run", *args]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        self._out = open(self.log, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self._out, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the worker writes nothing more until it is killed (or continued)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT, after pause()."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM; the exit code. A worker still running after `timeout` is asked for its threads'
        stacks (SIGUSR1, which it answers even with its event loop blocked), then killed; the failure
        shows the end of its log (where it hung) and the stacks."""
        assert self.proc is not None
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            self.kill()
            raise AssertionError(f"the worker did not exit within {timeout}s of SIGTERM; its log ends:\n{self.output()[-12000:]}") from None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    """A port nothing listens on right now (each parallel test gets its own)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of a GET on 127.0.0.1:`port` (a worker's metrics server); OSError when nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


# --- the broker ------------------------------------------------------------------------------------


async def read_topic(topic: str, *, min_count: int = 1, timeout: float = 30.0) -> list:
    """Every record of `topic`, once at least `min_count` are there (or the timeout passed)."""
    cfg = BrokerConfig(bootstrap_servers=BROKER)
    deadline = time.monotonic() + timeout
    while True:
        records = await broker.read_topic(cfg, topic)
        if len(records) >= min_count:
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"topic {topic} has {len(records)} records, expected at least {min_count} within {timeout}s")
        await asyncio.sleep(0.2)


def delete_topics(prefixes: list[str]) -> None:
    """Delete every topic under the given prefixes."""

    async def delete() -> None:
        async with broker.Admin(BrokerConfig(bootstrap_servers=BROKER)) as admin:
            starts = tuple(p + "." for p in prefixes)
            await admin.delete_topics(sorted(t for t in await admin.topics() if t.startswith(starts)))

    asyncio.run(delete())


def topic_end(topic: str) -> int:
    """The end offset of partition 0 of `topic` (0 while the topic does not exist)."""

    async def end() -> int:
        c = AIOKafkaConsumer(bootstrap_servers=BROKER)
        await c.start()
        try:
            if topic not in await c.topics():
                return 0
            tp = TopicPartition(topic, 0)
            return (await c.end_offsets([tp]))[tp]
        finally:
            await c.stop()

    return asyncio.run(end())


# --- waiting ---------------------------------------------------------------------------------------


def job_until(state: Any) -> Any:
    """The `until` of a source state's running incremental job once its first chunk found it (or a
    string saying why not yet): for wait_until, with either source's state document."""
    return (state is not None and state.jobs and state.jobs[0].until) or f"jobs {state and [j.to_dict() for j in state.jobs]}"


def wait_until(predicate, *, timeout: float, what: str, interval: float = 0.3):
    """Polls `predicate` until it returns True (or a truthy non-string); a string it returns says what
    is missing, and ends up in the timeout's message."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last is True or (last and not isinstance(last, str)):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last}")


# --- write loads -----------------------------------------------------------------------------------

Execute = Callable[..., Any]
"""`execute(statement, params)` of a write load's connection."""


class Postgres:
    """A PostgreSQL database as the target of a write load."""

    random_text = "md5(random()::text)"

    def __init__(self, dsn: str):
        self.dsn = dsn

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            yield conn

    def transaction(self, conn: psycopg.Connection, body: Callable[[Execute], None], *, skip_failures: bool) -> bool:
        try:
            with conn.transaction():
                body(conn.execute)
        except psycopg.Error:
            if not skip_failures:
                raise
            return False
        return True


class MariaDB:
    """A MariaDB database as the target of a write load. A deadlock or lock wait with the test's own
    statements is rolled back, as a client would."""

    random_text = "md5(rand())"
    _RETRIED = (1213, 1205)

    def __init__(self, db: str):
        self.db = db

    @contextlib.contextmanager
    def connection(self) -> Iterator[pymysql.Connection]:
        conn = connect(database=self.db)
        conn.autocommit(False)
        try:
            yield conn
        finally:
            conn.close()

    def transaction(self, conn: pymysql.Connection, body: Callable[[Execute], None], *, skip_failures: bool) -> bool:
        try:
            with conn.cursor() as cur:
                body(cur.execute)
            conn.commit()
        except pymysql.err.MySQLError as e:
            if not (skip_failures or (isinstance(e, pymysql.err.OperationalError) and e.args[0] in self._RETRIED)):
                raise
            conn.rollback()
            return False
        return True


class WriteLoad(threading.Thread):
    """Small transactions on one database until stopped: `transaction(execute, rnd)` says what each
    one writes. With `skip_failures` a transaction that fails (a table gone or locked by the test's
    DDL) is rolled back and the load goes on; `transactions` counts the committed ones."""

    skip_failures = False

    def __init__(self, target: Postgres | MariaDB, seed: int, *, first_id: int = 1, pause_s: float = 0.002):
        super().__init__(daemon=True)
        self.target, self.next_id, self.pause_s = target, first_id, pause_s
        self.rnd = random.Random(seed)
        self.halt = threading.Event()
        self.transactions = 0

    def transaction(self, execute: Execute, rnd: random.Random) -> None:
        raise NotImplementedError

    def run(self) -> None:
        with self.target.connection() as conn:
            while not self.halt.is_set():
                if self.target.transaction(conn, lambda execute: self.transaction(execute, self.rnd), skip_failures=self.skip_failures):
                    self.transactions += 1
                time.sleep(self.pause_s)

    def stop(self) -> None:
        self.halt.set()
        self.join(30)


class AppendRows(WriteLoad):
    """Blocks of `block` new rows at the end of a table's key range, one block per transaction and
    `pause_s` between them (~10,000 rows/s): faster than an incremental snapshot of small chunks
    reads, slower than the source streams. `insert_range` is an INSERT ... SELECT of the ids from
    %s to %s."""

    def __init__(self, target: Postgres | MariaDB, insert_range: str, first_id: int, *, block: int = 1000, pause_s: float = 0.1):
        super().__init__(target, 0, first_id=first_id, pause_s=pause_s)
        self.insert_range, self.block = insert_range, block

    def transaction(self, execute: Execute, rnd: random.Random) -> None:
        execute(self.insert_range, (self.next_id, self.next_id + self.block - 1))
        self.next_id += self.block


class RandomChanges(WriteLoad):
    """The crash tests' load on `table (id, v, s)`: random inserts (new ids from `first_id`), updates
    and deletes, 1 to 20 a transaction; with `key_updates` some updates change the key."""

    def __init__(self, target: Postgres | MariaDB, table: str, first_id: int, *, seed: int = 7, key_updates: bool = False):
        super().__init__(target, seed, first_id=first_id)
        self.table, self.key_updates = table, key_updates

    def transaction(self, execute: Execute, rnd: random.Random) -> None:
        t, text = self.table, self.target.random_text
        for _ in range(rnd.randint(1, 20)):
            action = rnd.random()
            if action < 0.5:
                execute(f"INSERT INTO {t} (id, v, s) VALUES (%s, %s, {text})", (self.next_id, rnd.randint(0, 99)))
                self.next_id += 1
            elif action < 0.8 or (action < 0.85 and not self.key_updates):
                execute(f"UPDATE {t} SET v = v + 1, s = {text} WHERE id = %s", (rnd.randint(1, self.next_id),))
            elif action < 0.85:
                execute(f"UPDATE IGNORE {t} SET id = %s WHERE id = %s", (self.next_id, rnd.randint(1, self.next_id)))
                self.next_id += 1
            else:
                execute(f"DELETE FROM {t} WHERE id = %s", (rnd.randint(1, self.next_id),))


class TableWrites(WriteLoad):
    """The writes that go on while a test's DDL runs: one statement a transaction on a random table of
    `tables` (`{t}` in the statements), an `update` of an existing row (a share `update_share` of them,
    ids 1 to `max_id`) or an `insert` of a new id after `first_id`. A statement the table rejects (gone,
    locked, changed by the DDL) is skipped."""

    skip_failures = True

    def __init__(self, target: Postgres | MariaDB, tables: list[str], *, update: str, insert: str, update_share: float, max_id: int,
                 seed: int, first_id: int):
        super().__init__(target, seed, first_id=first_id, pause_s=0.005)
        self.tables, self.update, self.insert, self.update_share, self.max_id = tables, update, insert, update_share, max_id

    def transaction(self, execute: Execute, rnd: random.Random) -> None:
        t = rnd.choice(self.tables)
        if rnd.random() < self.update_share:
            execute(self.update.format(t=t), (rnd.randint(1, self.max_id),))
        else:
            self.next_id += 1
            execute(self.insert.format(t=t), (self.next_id,))
