"""Fixtures for tests against the real PostgreSQL and Kafka that `make services` starts."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from lakeward.connectors.postgres.catalog import drop_slot
from lakeward.core import broker
from lakeward.core.config import BrokerConfig

ADMIN_DSN = os.environ.get("LAKEWARD_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
BROKER = os.environ.get("LAKEWARD_TEST_BROKER", "127.0.0.1:9092")

pytestmark = pytest.mark.integration


def dsn_for(dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)


def _drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)).fetchall():
            drop_slot(conn, slot)
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database():
    """A fresh database for one test; yields its DSN, drops it (and its slots) afterwards."""
    name = f"lw_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield dsn_for(name)
    _drop_database(name)


@pytest.fixture
def prefix() -> str:
    """A topic prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:10]}"


def sql(dsn: str, *statements: str, params=None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in statements:
            conn.execute(s, params)


def write_config(path: Path, *, dsn: str, prefix: str, lake: Path | str, mode: str = "mirror", tables: str = "public.*", extra_source: str = "",
                 extra_sink: str = "", sink_name: str = "lake", lake_options: dict[str, str] | None = None) -> Path:
    """`lake_options` become `lake.storage_options` (values written verbatim: `${VAR}` works)."""
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
  - name: shop
    type: postgres
    dsn: {dsn}
    tables: [{tables}]
    slot: lw_{prefix}
    status_interval_s: 0.2
    table_refresh_interval_s: 1
{extra_source}sinks:
  - name: {sink_name}
    type: delta
    sources: [shop]
    mode: {mode}
    group_id: lakeward.{prefix}.{sink_name}
    batch_interval_s: 0.2
{extra_sink}"""
    )
    return path


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

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def workers(tmp_path):
    started: list[Worker] = []

    def make(config: Path, *args: str) -> Worker:
        w = Worker(config, *args, log=tmp_path / f"worker{len(started)}.log")
        started.append(w)
        return w

    yield make
    for w in started:
        if w.alive():
            w.kill()


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


def wait_until(predicate, *, timeout: float, what: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last is True or (last and not isinstance(last, str)):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last}")


class WriteLoad(threading.Thread):
    """Small transactions on a PostgreSQL database until stopped; `transaction` says what each one
    writes (it runs inside the transaction)."""

    def __init__(self, dsn: str, seed: int, *, pause_s: float = 0.002):
        super().__init__(daemon=True)
        self.dsn, self.pause_s = dsn, pause_s
        self.rnd = random.Random(seed)
        self.halt = threading.Event()
        self.transactions = 0

    def transaction(self, conn: psycopg.Connection, rnd: random.Random) -> None:
        raise NotImplementedError

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.halt.is_set():
                with conn.transaction():
                    self.transaction(conn, self.rnd)
                self.transactions += 1
                time.sleep(self.pause_s)

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
