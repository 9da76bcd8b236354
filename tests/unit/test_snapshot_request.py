"""What `lakeward snapshot` checks before it writes a request, and the request, job and progress
documents the sources keep (their JSON must read back as written, across versions)."""

from __future__ import annotations

import pytest

from lakeward.core import snapshot
from lakeward.core.config import parse_config
from lakeward.core.errors import ConfigError

CONFIG = """\
sources:
  - name: shop
    type: postgres
    dsn: postgresql://u@h/db
    tables: [public.orders, public.item*, sales.*]
  - name: legacy
    type: mysql
    user: lakeward
    tables: [inventory.*]
"""


@pytest.fixture(scope="module")
def cfg():
    return parse_config(CONFIG)


def test_tables_matching_the_globs_are_accepted_in_order_without_repeats(cfg):
    shop = cfg.source("shop")
    assert snapshot.request_tables(shop, ["public.orders", "public.items", "sales.q1", "public.orders"]) == \
        ["public.orders", "public.items", "sales.q1"]
    assert snapshot.request_tables(cfg.source("legacy"), ["inventory.stock"]) == ["inventory.stock"]


@pytest.mark.parametrize("source, tables, message", [
    ("shop", [], "name the tables to snapshot with --table schema.table (repeatable); source shop captures public.orders, public.item*, sales.*"),
    ("legacy", [], "with --table database.table (repeatable)"),
    ("shop", ["public.customers"],
     "table public.customers is not captured by source shop: it matches none of its tables: public.orders, public.item*, sales.*"),
    ("shop", ["Public.orders"], "table Public.orders is not captured"),  # names are case-sensitive, as the sources match them
    ("shop", ["public.orders", "inventory.stock"], "table inventory.stock is not captured by source shop"),
    ("shop", ["orders"], "--table orders: name the table as schema.table"),
    ("shop", ["public."], "--table public.: name the table as schema.table"),
    ("legacy", ["stock"], "--table stock: name the table as database.table"),
    ("shop", ["public.*"], "--table public.*: name one table as schema.table, not a pattern"),
    ("legacy", ["inventory.st?ck"], "not a pattern"),
])
def test_bad_tables_are_refused_with_what_is_wrong(cfg, source, tables, message):
    with pytest.raises(ConfigError) as e:
        snapshot.request_tables(cfg.source(source), tables)
    assert message in str(e.value)


def test_unknown_source_lists_the_configured_ones(cfg):
    with pytest.raises(ConfigError, match="no source named 'shopp'; the config has: shop, legacy"):
        cfg.source("shopp")


def test_request_reads_back_as_written():
    req = snapshot.new_request(["public.orders", "public.items"], "id > 10")
    assert len(req.id) == 12 and req.requested_at.endswith("Z")
    assert snapshot.SnapshotRequest.from_json(req.to_json()) == req
    assert snapshot.new_request(["public.orders"], "").where is None, "an empty --where re-reads the whole table"
    with pytest.raises(KeyError):
        snapshot.SnapshotRequest.from_json(b'{"tables": ["public.orders"]}')


def test_job_and_progress_documents():
    job = snapshot.IncrementalJob("abc", "public.orders", "resume", None, [17, "x"], rows=100, chunks=2, until=[900, "z"])
    assert snapshot.IncrementalJob.from_dict(job.to_dict()) == job
    assert snapshot.IncrementalJob.from_dict({**job.to_dict(), "until": None}).until is None  # a job stored before `until` existed
    assert snapshot.IncrementalJob.from_dict({"id": "abc", "table": "public.orders"}) == snapshot.IncrementalJob("abc", "public.orders")
    progress = snapshot.TableProgress("public.orders", "incremental", rows=5, chunks_done=1, extra={"reason": "request"})
    assert progress.to_dict() == {"table": "public.orders", "kind": "incremental", "rows": 5, "estimate": None, "chunks_done": 1,
                                  "chunks": None, "done": False, "reason": "request"}
    assert snapshot.signal_topic("lw", "shop") == "lw.shop.__signals"
    assert 1 <= snapshot.default_parallelism() <= snapshot.MAX_DEFAULT_PARALLELISM
