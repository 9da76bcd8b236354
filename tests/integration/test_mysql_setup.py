"""Startup checks and refusals against the real MariaDB: each error names host:port and the fix.

Some cases flip a global server variable for a moment (binlog_format, binlog_row_image,
binlog_row_metadata, log_bin_compress) and restore it at once. The binary log itself cannot be
switched off without a restart: tests/unit/test_mysql_setup.py covers that message.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import orjson
import pytest

from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.connectors.mysql.source import MySQLSource, SourceState
from lakeward.core import broker as kafka
from lakeward.core.config import BrokerConfig
from lakeward.core.errors import ConnectionFailed, SourceSetupError, TerminalError

from .harness import BROKER, MYSQL, mquery, msql, read_topic, server_id

pytestmark = pytest.mark.integration

WHERE = f"{MYSQL['host']}:{MYSQL['port']}"


def make_source(db: str, prefix: str, **kw) -> MySQLSource:
    opts = {"name": "legacy", **MYSQL, "tables": [f"{db}.*"], "server_id": server_id(), "status_interval_s": 0.2,
            "heartbeat_interval_s": 0.5, **kw}
    return MySQLSource(MySQLSourceConfig(**opts), broker=BrokerConfig(bootstrap_servers=BROKER, topic_prefix=prefix))


@contextlib.contextmanager
def global_variable(name: str, value: str):
    """The server-wide `name` set to `value` for the block (a test using it is marked mariadb_globals)."""
    old = mquery(f"SELECT @@GLOBAL.{name}")[0][0]
    msql(f"SET GLOBAL {name} = '{value}'")
    try:
        yield
    finally:
        msql(f"SET GLOBAL {name} = '{old}'" if not isinstance(old, int) else f"SET GLOBAL {name} = {old}")


@contextlib.asynccontextmanager
async def running(source: MySQLSource):
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    try:
        yield task
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(30):
                await task


@pytest.mark.mariadb_globals
@pytest.mark.parametrize("name, bad, want", [
    ("binlog_format", "MIXED", "ROW"),
    ("binlog_row_image", "MINIMAL", "FULL"),
    ("binlog_row_metadata", "MINIMAL", "FULL"),
])
async def test_wrong_binlog_settings_are_refused_with_the_fix(mysql_db, prefix, name, bad, want):
    source = make_source(mysql_db, prefix)
    with global_variable(name, bad):
        with pytest.raises(SourceSetupError) as e:
            await source.check()
    msg = str(e.value)
    assert f"MariaDB at {WHERE} has {name}={bad}" in msg
    assert f"SET GLOBAL {name} = '{want}'" in msg and "config file" in msg


@pytest.mark.mariadb_globals
async def test_compressed_binlog_is_refused_at_startup(mysql_db, prefix):
    source = make_source(mysql_db, prefix)
    with global_variable("log_bin_compress", "ON"):
        with pytest.raises(SourceSetupError, match=rf"MariaDB at {WHERE} has log_bin_compress=ON: compressed binlog events cannot be decoded"):
            await source.check()


@pytest.mark.mariadb_globals
async def test_compressed_event_at_runtime_stops_the_source(mysql_db, prefix):
    """Turned on while the source runs: the first compressed event stops it; nothing is skipped."""
    msql("CREATE TABLE t (id int PRIMARY KEY, s text)", "INSERT INTO t VALUES (1, 'a')", db=mysql_db)
    source = make_source(mysql_db, prefix)
    async with running(source) as task:
        await read_topic(f"{prefix}.legacy.{mysql_db}.t", min_count=2)
        with global_variable("log_bin_compress", "ON"):
            msql("INSERT INTO t VALUES (2, repeat('x', 5000))", db=mysql_db)  # longer than log_bin_compress_min_len
            with pytest.raises(TerminalError) as e:
                async with asyncio.timeout(30):
                    await task
    assert "compressed event" in str(e.value) and "refusing to skip it" in str(e.value)
    assert f"MySQL at {WHERE}" in str(e.value)


async def test_missing_privileges_are_named(mysql_db, prefix):
    user = f"lw_{uuid.uuid4().hex[:8]}"
    msql(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'", f"CREATE USER '{user}'@'localhost' IDENTIFIED BY 'pw'",
         f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 'pw'")
    try:
        source = make_source(mysql_db, prefix, user=user, password="pw")
        with pytest.raises(SourceSetupError) as e:
            await source.check()
        assert f"user '{user}' on MariaDB at {WHERE} lacks REPLICATION SLAVE, BINLOG MONITOR" in str(e.value)
        assert "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.*" in str(e.value)
    finally:
        for host in ("%", "localhost", "127.0.0.1"):
            msql(f"DROP USER IF EXISTS '{user}'@'{host}'")


async def test_wrong_password_and_unreachable_server(mysql_db, prefix):
    with pytest.raises(SourceSetupError, match=rf"MySQL at {WHERE} rejected the login of user"):
        await make_source(mysql_db, prefix, password="wrong").check()
    with pytest.raises(ConnectionFailed, match=r"cannot reach MySQL at 127.0.0.1:1"):
        await make_source(mysql_db, prefix, port=1, connect_timeout_s=2).check()


async def test_missing_table_is_named(mysql_db, prefix):
    with pytest.raises(SourceSetupError, match=rf"table {mysql_db}.nope does not exist on MySQL at {WHERE}"):
        await make_source(mysql_db, prefix, tables=[f"{mysql_db}.nope"]).check()


async def _rewrite_state(prefix: str, **changes) -> None:
    cfg = BrokerConfig(bootstrap_servers=BROKER, topic_prefix=prefix)
    topic = f"{prefix}.legacy.__state"
    records = await kafka.read_topic(cfg, topic)
    state = SourceState.from_json(records[-1].value)
    d = orjson.loads(state.to_json())
    for k, v in changes.items():
        if k == "file":
            d["resume"]["file"] = v
        else:
            d[k] = v
    producer = kafka.producer(cfg)
    await producer.start()
    try:
        await (await producer.send(topic, key=b"state", value=orjson.dumps(d)))
    finally:
        await producer.stop()


async def test_purged_binlog_at_the_resume_position_says_how_to_resnapshot(mysql_db, prefix):
    msql("CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t VALUES (1)", db=mysql_db)
    source = make_source(mysql_db, prefix)
    async with running(source):
        await read_topic(f"{prefix}.legacy.{mysql_db}.t", min_count=2)
    # As if the server had purged the binlog file the stored position is in.
    await _rewrite_state(prefix, file="mariadb-bin.000000")
    source = make_source(mysql_db, prefix)
    for attempt in (source.check(), source.run(asyncio.Event())):
        with pytest.raises(SourceSetupError) as e:
            await attempt
        msg = str(e.value)
        assert f"MySQL at {WHERE} no longer has binlog mariadb-bin.000000" in msg
        assert f"delete its state topic {prefix}.legacy.__state" in msg and "snapshotted again" in msg


async def test_another_server_behind_the_address_is_refused(mysql_db, prefix):
    msql("CREATE TABLE t (id int PRIMARY KEY)", db=mysql_db)
    source = make_source(mysql_db, prefix)
    async with running(source):
        await read_topic(f"{prefix}.legacy.{mysql_db}.t", min_count=1)
    await _rewrite_state(prefix, server="mariadb:424242")
    with pytest.raises(SourceSetupError, match=r"is not the server this source's positions come from .* after a failover"):
        await make_source(mysql_db, prefix).check()
