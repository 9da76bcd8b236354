"""Fixtures of the tests against the real PostgreSQL, MariaDB, Kafka and MinIO that `make services`
starts; the machinery they use is in harness.py.

Every test gets names of its own (databases, topic prefixes, consumer groups, lake directories under
tmp_path), so the tests run in parallel (`make test`: pytest-xdist, `--dist loadgroup`). Except:
- a test that changes MariaDB's global settings or state (marked `mariadb_globals`) runs while no other
  MariaDB test does (those with the `mysql_db` fixture or marked `mariadb`), and a demo run (fixed
  database names, slot and ports; marked `demo`) while no other does: machine-wide file locks;
- the SIGKILL tests (`crash`), whose kills aim at moments a busy machine moves, run one at a time on
  one xdist worker.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from . import harness
from .harness import Worker, create_database, drop_database, dsn_for, msql, server_lock, topic_prefix, unique_name


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "mysql_db" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.mariadb)
        if item.get_closest_marker("crash"):
            item.add_marker(pytest.mark.xdist_group("crash"))


@pytest.fixture(autouse=True)
def server_locks(request: pytest.FixtureRequest):
    """The machine-wide locks (harness.server_lock) a test's marks ask for, for its whole run."""
    with contextlib.ExitStack() as held:
        if request.node.get_closest_marker("demo"):
            held.enter_context(server_lock("demo", exclusive=True))
        globals_ = request.node.get_closest_marker("mariadb_globals") is not None
        if globals_ or request.node.get_closest_marker("mariadb"):
            held.enter_context(server_lock("mariadb", exclusive=globals_))
        yield


@pytest.fixture
def database():
    """A fresh PostgreSQL database for one test; yields its DSN, drops it (and its slots) afterwards."""
    name = create_database()
    yield dsn_for(name)
    drop_database(name)


@pytest.fixture(scope="session", autouse=True)
def topics_deleted_at_the_end():
    """The topics of this session's tests go when it ends. The broker's data outlives test runs, and
    every sink refreshes the metadata of all its topics every few seconds (a pattern subscription):
    thousands of old test topics made that a noticeable part of each sink's CPU."""
    yield
    if harness.TOPIC_PREFIXES:
        harness.delete_topics(harness.TOPIC_PREFIXES)


@pytest.fixture
def prefix() -> str:
    """A topic prefix no other test uses."""
    return topic_prefix()


@pytest.fixture
def mysql_db():
    """A fresh MariaDB database for one test; yields its name, drops it afterwards."""
    name = unique_name("lw_")
    msql(f"CREATE DATABASE `{name}`")
    yield name
    msql(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def workers(tmp_path):
    """Makes `lakeward run` workers (logs under tmp_path); kills the ones still running afterwards."""
    started: list[Worker] = []

    def make(config: Path, *args: str) -> Worker:
        w = Worker(config, *args, log=tmp_path / f"worker{len(started)}.log")
        started.append(w)
        return w

    yield make
    for w in started:
        if w.alive():
            w.kill()
