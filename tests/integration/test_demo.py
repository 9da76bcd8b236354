"""`make demo`, short: the demo's own commands and config, its lake == source proof, and that the
proof fails when the lake differs."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from deltalake import DeltaTable

from .harness import ADMIN_DSN, BROKER, dsn_for

pytestmark = [pytest.mark.integration, pytest.mark.mariadb, pytest.mark.demo]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "lakeward.yaml"
MYSQL = urlsplit(os.environ.get("LAKEWARD_TEST_MYSQL_URL", "mysql://lakeward:lakeward@127.0.0.1:3306"))
LAKEWARD = [str(Path(sys.executable).parent / "lakeward"), "-c", str(CONFIG)]


@pytest.fixture
def demo_env(tmp_path: Path):
    env = dict(os.environ, DEMO_DIR=str(tmp_path), LAKEWARD_LAKE=str(tmp_path / "lake"), LAKEWARD_BROKER=BROKER,
               SHOP_DSN=dsn_for("shop"), INVENTORY_HOST=MYSQL.hostname or "127.0.0.1", INVENTORY_PORT=str(MYSQL.port or 3306),
               INVENTORY_USER=MYSQL.username or "lakeward", INVENTORY_PASSWORD=MYSQL.password or "", DEMO_SECONDS="8")
    yield env
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:  # an inactive slot would pin WAL
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'lakeward_shop' AND NOT active")


def test_demo_proves_lake_equals_source_and_check_catches_a_difference(demo_env, tmp_path: Path):
    run = subprocess.run([sys.executable, "-m", "lakeward.app.demo", str(CONFIG)], env=demo_env, cwd=ROOT,
                         capture_output=True, text=True, timeout=400)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "lake == source" in out and "lake != source" not in out
    tables = ["shop.public.customers", "shop.public.orders", "shop.public.payments",
              "inventory.inventory.products", "inventory.inventory.warehouses", "inventory.inventory.stock"]
    proof = out[out.rindex("lake == source?"):]  # the check's table, after the progress tables
    for t in tables:
        line = next(line for line in proof.splitlines() if f" {t} " in line and "│" in line)
        assert line.rstrip(" │").endswith("yes"), line
    assert "demo load --seconds 8" in out and "run --sink lake" in out  # the same commands as docker-compose

    # The load ran its ALTER TABLEs, and the lake has the new columns, filled.
    lake = tmp_path / "lake"
    customers = DeltaTable(str(lake / "shop" / "public" / "customers")).to_pyarrow_table()
    products = DeltaTable(str(lake / "inventory" / "inventory" / "products")).to_pyarrow_table()
    assert "loyalty_tier" in customers.column_names and "weight_grams" in products.column_names
    assert customers.num_rows >= 1000 and products.num_rows >= 500

    # The check is a real comparison: change one lake row behind the sink's back, it must fail.
    check = subprocess.run([*LAKEWARD, "demo", "check"], env=demo_env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    DeltaTable(str(lake / "inventory" / "inventory" / "stock")).update({"quantity": "quantity + 1"}, predicate="warehouse_id = 2")
    check = subprocess.run([*LAKEWARD, "demo", "check"], env=demo_env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 1
    assert "inventory.inventory.stock: " in check.stdout and "only in the source" in check.stdout


def test_demo_with_the_lake_on_s3_as_in_docker_compose(demo_env):
    """The compose deployment's lake: s3:// on MinIO, storage options from AWS_* variables only."""
    env = dict(demo_env, DEMO_SECONDS="5", LAKEWARD_LAKE=f"s3://{os.environ.get('LAKEWARD_TEST_S3_BUCKET', 'lakeward-test')}/demo-{uuid.uuid4().hex[:8]}",
               AWS_ENDPOINT_URL=os.environ.get("LAKEWARD_TEST_S3_ENDPOINT", "http://127.0.0.1:9000"),
               AWS_ACCESS_KEY_ID=os.environ.get("LAKEWARD_TEST_S3_KEY", "lakeward"),
               AWS_SECRET_ACCESS_KEY=os.environ.get("LAKEWARD_TEST_S3_SECRET", "lakeward-secret"),
               AWS_REGION="us-east-1", AWS_ALLOW_HTTP="true")
    run = subprocess.run([sys.executable, "-m", "lakeward.app.demo", str(CONFIG)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=400)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    proof = out[out.rindex("lake == source?"):]
    assert proof.count("│ yes") == 6 and "NO" not in proof, proof
    query = subprocess.run([*LAKEWARD, "query", "--format", "csv", "SELECT count(*) AS n FROM inventory.inventory.warehouses"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert query.returncode == 0 and list(csv.reader(io.StringIO(query.stdout))) == [["n"], ["4"]], query.stdout + query.stderr
