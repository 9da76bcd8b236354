"""A lake on S3 (the MinIO `make services` starts) end to end: PostgreSQL -> Kafka -> Delta on S3
through `lakeward run`, then `lakeward query`, `status`, `replay` and `config` on that lake, and the
errors for a missing bucket, rejected credentials and an unreachable endpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lakeward.sinks.delta import s3

from .harness import many_files, sql, wait_until, write_config
from .lakecheck import lake_equals_source, lake_rows, lake_table

pytestmark = pytest.mark.integration

ENDPOINT = os.environ.get("LAKEWARD_TEST_S3_ENDPOINT", "http://127.0.0.1:9000")
BUCKET = os.environ.get("LAKEWARD_TEST_S3_BUCKET", "lakeward-test")
KEY = os.environ.get("LAKEWARD_TEST_S3_KEY", "lakeward")
SECRET = os.environ.get("LAKEWARD_TEST_S3_SECRET", "lakeward-secret")

OPTIONS = {"AWS_ENDPOINT_URL": ENDPOINT, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": KEY,
           "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ALLOW_HTTP": "true"}
UNUSED_DSN = "postgresql://postgres@127.0.0.1:1/none"  # for configs whose source never runs


def cli(config, *args: str, ok: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "1000"}  # rich would wrap error messages at 80 columns
    out = subprocess.run([sys.executable, "-m", "lakeward.app.cli", "-c", str(config), *args], capture_output=True, text=True,
                         timeout=timeout, env=env)
    if ok:
        assert out.returncode == 0, out.stderr
    return out


@pytest.fixture
def s3_lake(prefix):
    """`s3://<bucket>/<prefix>/lake`: a key prefix no other test uses; deleted afterwards."""
    yield f"s3://{BUCKET}/{prefix}/lake"
    s3.filesystem(f"s3://{BUCKET}", OPTIONS).delete_dir(prefix)


@pytest.fixture
def s3_config(database, prefix, tmp_path, s3_lake):
    """A config writing `s3_lake`; the secret key comes from a file, as in production."""
    secret_file = tmp_path / "s3-secret"
    secret_file.write_text(SECRET + "\n")
    options = {k: f"'{v}'" for k, v in OPTIONS.items() if k != "AWS_SECRET_ACCESS_KEY"}
    options["AWS_SECRET_ACCESS_KEY"] = f"${{file:{secret_file}}}"
    return write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=s3_lake, lake_options=options)


def test_mirror_on_s3_with_query_status_and_masked_config(database, s3_lake, s3_config, workers):
    sql(database,
        "CREATE TABLE orders (id int PRIMARY KEY, customer text, amount numeric(12,2), paid boolean)",
        "INSERT INTO orders SELECT g, 'c' || g, g * 1.25, g % 2 = 0 FROM generate_series(1, 200) g")
    worker = workers(s3_config).start()
    equal = lambda: lake_equals_source(database, s3_lake, "orders", storage_options=OPTIONS)  # noqa: E731
    wait_until(equal, timeout=60, what="the snapshot on S3")

    sql(database,
        "INSERT INTO orders SELECT g, 'new', 1, false FROM generate_series(201, 250) g",
        "UPDATE orders SET amount = amount + 1, paid = true WHERE id <= 40",
        "UPDATE orders SET id = 5000 WHERE id = 7",
        "DELETE FROM orders WHERE id BETWEEN 100 AND 149")
    wait_until(equal, timeout=60, what="inserts, updates, deletes on S3")

    rows = [json.loads(line) for line in cli(s3_config, "query", "--format", "json",
                                             "SELECT count(*) AS n, sum(amount) AS total FROM shop.public.orders").stdout.splitlines()]
    lake = lake_rows(s3_lake, "orders", storage_options=OPTIONS)
    assert rows[0]["n"] == len(lake) == 200
    first = cli(s3_config, "query", "--format", "json", "--as-of", "0", "SELECT count(*) AS n FROM shop.public.orders").stdout
    assert json.loads(first) == {"n": 200}, "version 0 is the snapshot"

    report = json.loads(cli(s3_config, "status", "--json").stdout)
    table = report["sinks"][0]["tables"][0]
    assert table["table"] == "shop.public.orders" and table["uri"] == f"{s3_lake}/shop/public/orders"
    assert table["version"] >= 1 and table["lag"] == 0 and not table["error"], table
    assert table["version"] == lake_table(s3_lake, "orders", storage_options=OPTIONS).version()

    shown = cli(s3_config, "config").stdout
    assert SECRET not in shown and "AWS_SECRET_ACCESS_KEY: '***'" in shown and f"AWS_ACCESS_KEY_ID: {KEY}" in shown
    assert "aws_conditional_put: etag" in shown, "the S3 commit protocol is on by default"
    assert worker.terminate() == 0, worker.output()
    assert SECRET not in worker.output()


def test_replay_from_beginning_on_s3(database, s3_lake, s3_config, workers):
    sql(database, "CREATE TABLE t (id int PRIMARY KEY, v text)", "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 300) g")
    worker = workers(s3_config).start()
    wait_until(lambda: lake_equals_source(database, s3_lake, "t", storage_options=OPTIONS), timeout=60, what="snapshot")
    sql(database, "UPDATE t SET v = 'changed' WHERE id % 3 = 0", "DELETE FROM t WHERE id % 5 = 0")
    wait_until(lambda: lake_equals_source(database, s3_lake, "t", storage_options=OPTIONS), timeout=60, what="changes")
    assert worker.terminate() == 0
    before = lake_rows(s3_lake, "t", storage_options=OPTIONS)
    version_before = lake_table(s3_lake, "t", storage_options=OPTIONS).version()

    out = cli(s3_config, "replay", "--sink", "lake", "--from-beginning")
    assert f"dropped lake table shop.public.t ({s3_lake}/shop/public/t)" in out.stderr
    assert lake_rows(s3_lake, "t", storage_options=OPTIONS) == before
    assert lake_equals_source(database, s3_lake, "t", storage_options=OPTIONS) is True
    assert lake_table(s3_lake, "t", storage_options=OPTIONS).version() < version_before, "replay must write a fresh table"


def test_stale_writer_is_fenced_on_s3(s3_lake):
    """Two writers commit the same Delta version with the options Lakeward uses for S3: exactly one
    wins, the other gets CommitFailedError (what the sink's txn fencing builds on)."""
    import pyarrow as pa
    from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
    from deltalake.exceptions import CommitFailedError

    from lakeward.core.config import LakeConfig

    options = LakeConfig(uri=s3_lake, storage_options=OPTIONS).storage_options
    uri = f"{s3_lake}/shop/public/fenced"
    write_deltalake(uri, pa.table({"id": [1]}), storage_options=options)
    first, second = DeltaTable(uri, storage_options=options), DeltaTable(uri, storage_options=options)
    txn = CommitProperties(app_transactions=[Transaction("lakeward:t:0", 5)])
    write_deltalake(first, pa.table({"id": [2]}), mode="append", commit_properties=txn)
    with pytest.raises(CommitFailedError):
        write_deltalake(second, pa.table({"id": [3]}), mode="append", commit_properties=txn)
    table = DeltaTable(uri, storage_options=options)
    assert table.version() == 1 and sorted(table.to_pyarrow_table().column("id").to_pylist()) == [1, 2]


def test_a_query_that_stops_reading_early_exits_cleanly_on_s3(prefix, tmp_path, s3_lake):
    """A LIMIT ends the scan while Arrow still reads ahead through delta-rs' Python filesystem; the
    process must still print the row and exit 0 (it died by SIGSEGV/SIGABRT or hung at exit in
    about 2 of 3 runs)."""
    many_files(f"{s3_lake}/shop/public/big", files=12, storage_options={**OPTIONS, "aws_conditional_put": "etag"})
    config = write_config(tmp_path / "lakeward.yaml", dsn=UNUSED_DSN, prefix=prefix, lake=s3_lake,
                          lake_options={k: f"'{v}'" for k, v in OPTIONS.items()})
    for run in range(6):
        out = cli(config, "query", "--format", "csv", "SELECT count(*) AS n FROM (SELECT id FROM shop.public.big LIMIT 3)", ok=False, timeout=60)
        assert (out.returncode, out.stdout.splitlines()) == (0, ["n", "3"]), f"run {run}: {out.stderr}"


def test_storage_errors_name_endpoint_bucket_and_fix(prefix, tmp_path, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP"):
        monkeypatch.delenv(var, raising=False)
    quoted = {k: f"'{v}'" for k, v in OPTIONS.items()}

    missing = write_config(tmp_path / "missing.yaml", dsn=UNUSED_DSN, prefix=prefix, lake=f"s3://{prefix}-absent/lake", lake_options=quoted)
    run = subprocess.run([sys.executable, "-m", "lakeward.app.cli", "-c", str(missing), "run", "--sink", "lake"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, "a missing bucket is terminal: the sink stops instead of retrying"
    assert f"bucket '{prefix}-absent' does not exist on {ENDPOINT}; create it" in run.stderr
    assert f"bucket '{prefix}-absent' does not exist" in cli(missing, "query", "SELECT 1", ok=False).stderr

    wrong = write_config(tmp_path / "wrong.yaml", dsn=UNUSED_DSN, prefix=prefix, lake=f"s3://{BUCKET}/{prefix}/lake",
                         lake_options={**quoted, "AWS_SECRET_ACCESS_KEY": "'not-the-secret'"})
    out = cli(wrong, "query", "SELECT 1", ok=False)
    assert out.returncode == 1
    assert f"{ENDPOINT} rejected the credentials for bucket '{BUCKET}' (SignatureDoesNotMatch); set AWS_ACCESS_KEY_ID" in out.stderr
    assert "not-the-secret" not in out.stderr

    closed = write_config(tmp_path / "closed.yaml", dsn=UNUSED_DSN, prefix=prefix, lake=f"s3://{BUCKET}/{prefix}/lake",
                          lake_options={**quoted, "AWS_ENDPOINT_URL": "'http://127.0.0.1:1'"})
    out = cli(closed, "query", "SELECT 1", ok=False, timeout=60)
    assert "cannot reach the S3 endpoint http://127.0.0.1:1 (Connection refused" in out.stderr

    # No credentials in the config: delta-rs (and so Lakeward) takes them from the environment.
    env_only = write_config(tmp_path / "env.yaml", dsn=UNUSED_DSN, prefix=prefix, lake=f"s3://{BUCKET}/{prefix}/lake")
    monkeypatch.setenv("AWS_ENDPOINT_URL", ENDPOINT)
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    assert cli(env_only, "query", "--format", "json", "SELECT 42 AS n").stdout.strip() == '{"n":42}'
