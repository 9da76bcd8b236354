"""`lakeward validate --connect` on the real broker, PostgreSQL and MariaDB: a good config passes, every
problem of a bad one is one line naming where and what to fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .harness import BROKER, MYSQL, msql, sql

pytestmark = pytest.mark.integration


def write(path: Path, *, broker: str, dsn: str, mysql_port: int, mysql_password: str, pg_tables: str, mysql_tables: str) -> Path:
    path.write_text(f"""\
broker:
  bootstrap_servers: {broker}
  topic_prefix: lwvalidate
lake:
  uri: {path.parent / "lake"}
sources:
  - name: shop
    type: postgres
    dsn: {dsn}
    tables: [{pg_tables}]
  - name: legacy
    type: mysql
    host: {MYSQL['host']}
    port: {mysql_port}
    user: {MYSQL['user']}
    password: {mysql_password}
    tables: [{mysql_tables}]
    connect_timeout_s: 5
sinks: []
""")
    return path


def validate(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lakeward.app.cli", "-c", str(config), "validate", "--connect"], capture_output=True,
                          text=True, timeout=120)


def test_good_config_connects_to_everything(database, mysql_db, tmp_path):
    sql(database, "CREATE TABLE items (id int PRIMARY KEY)")
    msql("CREATE TABLE stock (id int PRIMARY KEY)", db=mysql_db)
    out = validate(write(tmp_path / "good.yaml", broker=BROKER, dsn=database, mysql_port=MYSQL["port"], mysql_password=MYSQL["password"],
                         pg_tables="public.items", mysql_tables=f"{mysql_db}.stock"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["config ok: 2 source(s), 0 sink(s)", f"broker at {BROKER}: ok", "source shop: ok", "source legacy: ok"]


def test_each_problem_is_one_line_naming_where_and_the_fix(database, mysql_db, tmp_path):
    msql("CREATE TABLE stock (id int PRIMARY KEY)", db=mysql_db)
    dead = write(tmp_path / "dead.yaml", broker="127.0.0.1:1", dsn="postgresql://postgres@127.0.0.1:1/shop", mysql_port=MYSQL["port"],
                 mysql_password="wrong", pg_tables="public.items", mysql_tables=f"{mysql_db}.stock")
    out = validate(dead)
    assert out.returncode == 1 and out.stdout == "config ok: 2 source(s), 0 sink(s)\n"
    errors = out.stderr.splitlines()
    assert len(errors) == 3, out.stderr
    assert errors[0].startswith("error: broker at 127.0.0.1:1: cannot reach the broker at 127.0.0.1:1 (")
    assert errors[0].endswith("check broker.bootstrap_servers and that the broker is running")
    assert errors[1].startswith("error: source shop: cannot reach PostgreSQL at 127.0.0.1:1/shop: ")
    assert errors[1].endswith("check the source's `dsn` and that PostgreSQL is running there")
    assert errors[2].startswith(f"error: source legacy: MySQL at {MYSQL['host']}:{MYSQL['port']} rejected the login of user ")
    assert errors[2].endswith("check `user` and `password` of the source")

    # Reachable, but the captured tables are not there.
    missing = write(tmp_path / "missing.yaml", broker=BROKER, dsn=database, mysql_port=MYSQL["port"], mysql_password=MYSQL["password"],
                    pg_tables="public.nope", mysql_tables=f"{mysql_db}.nope")
    out = validate(missing)
    assert out.returncode == 1 and f"broker at {BROKER}: ok" in out.stdout
    errors = out.stderr.splitlines()
    assert len(errors) == 2, out.stderr
    assert errors[0].startswith("error: source shop: table public.nope does not exist in ") and "check `tables:`" in errors[0]
    assert errors[1].startswith("error: source legacy: ") and f"{mysql_db}.nope" in errors[1]
