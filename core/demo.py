"""`make demo`: a small shop in PostgreSQL, captured into ./demo/lake while it changes, then proved equal.

Runs against the local services `make services` starts (or $DEMO_PG_DSN / $LAKEWARD_BROKER).
Exits non-zero if any lake table differs from its source table.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sys
import time
from pathlib import Path

import psycopg
from rich.console import Console
from rich.table import Table

from lakeward.core import lake as lakefs
from lakeward.core.config import parse_config
from lakeward.core.logs import setup_logging
from lakeward.core.runner import build_workers, run_workers

console = Console()

ADMIN_DSN = os.environ.get("DEMO_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
BROKER = os.environ.get("LAKEWARD_BROKER", "127.0.0.1:9092")
WORKDIR = Path(os.environ.get("DEMO_DIR", "demo"))
TABLES = ("customers", "orders", "payments")


def dsn(dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)


def create_shop() -> str:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'lakeward_demo_shop' AND NOT active")
        conn.execute("DROP DATABASE IF EXISTS demo_shop WITH (FORCE)")
        conn.execute("CREATE DATABASE demo_shop")
    shop = dsn("demo_shop")
    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute("""
            CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text, created_at timestamptz DEFAULT now());
            CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int REFERENCES customers, amount numeric(12,2),
                                 status text DEFAULT 'new', created_at timestamptz DEFAULT now());
            CREATE TABLE payments (id bigserial PRIMARY KEY, order_id bigint, amount numeric(12,2), method text,
                                   paid_at timestamptz DEFAULT now());
            INSERT INTO customers (name, email) SELECT 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 1000) g;
            INSERT INTO orders (customer_id, amount) SELECT 1 + g % 1000, (g % 500) + 0.99 FROM generate_series(1, 20000) g;
        """)
    return shop


def write_config(shop: str) -> Path:
    WORKDIR.mkdir(exist_ok=True)
    path = WORKDIR / "lakeward.yaml"
    path.write_text(f"""\
broker:
  bootstrap_servers: ${{LAKEWARD_BROKER:{BROKER}}}
  topic_prefix: demo{int(time.time())}
lake:
  uri: {WORKDIR.resolve() / 'lake'}
sources:
  - name: shop
    type: postgres
    dsn: {shop}
    tables: [public.*]
    slot: lakeward_demo_shop
sinks:
  - name: lake
    type: delta
    sources: [shop]
    mode: mirror
""")
    return path


def load(shop: str, seconds: float) -> int:
    """Orders, payments, status changes, cancellations; one ALTER TABLE half way."""
    rnd = random.Random(1)
    changes = 0
    altered = False
    deadline = time.monotonic() + seconds
    with psycopg.connect(shop, autocommit=True) as conn:
        while time.monotonic() < deadline:
            with conn.transaction():
                oid = conn.execute("INSERT INTO orders (customer_id, amount) VALUES (%s, %s) RETURNING id",
                                   (rnd.randint(1, 1000), round(rnd.uniform(1, 300), 2))).fetchone()[0]
                conn.execute("INSERT INTO payments (order_id, amount, method) SELECT id, amount, %s FROM orders WHERE id = %s",
                             (rnd.choice(["card", "cash", "transfer"]), oid))
                conn.execute("UPDATE orders SET status = 'paid' WHERE id = %s", (oid,))
                conn.execute("DELETE FROM orders WHERE id = %s AND status = 'new'", (rnd.randint(1, oid),))
                changes += 4
            if not altered and time.monotonic() > deadline - seconds / 2:
                conn.execute("ALTER TABLE customers ADD COLUMN loyalty_tier text")
                conn.execute("UPDATE customers SET loyalty_tier = 'gold' WHERE id % 10 = 0")
                changes += 100
                altered = True
            time.sleep(0.01)
    return changes


def compare(shop: str, config_path: Path) -> bool:
    cfg = parse_config(config_path.read_text(), str(config_path))
    con = lakefs.duckdb_connection(cfg)
    table = Table("table", "source rows", "lake rows", "source checksum", "lake checksum", "equal", title="lake == source?")
    ok = True
    with psycopg.connect(shop) as pg:
        for name in TABLES:
            cols = [r[0] for r in pg.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position", (name,)).fetchall()]
            expr = " || '|' || ".join(f"coalesce({c}::text, '')" for c in cols if "_at" not in c)
            src_n, src_sum = pg.execute(f"SELECT count(*), coalesce(sum(hashtext({expr})::bigint), 0) FROM {name}").fetchone()
            lake_rows = con.execute(f"SELECT * FROM shop.public.{name} ORDER BY id").fetchall()
            lake_cols = [d[0] for d in con.description]
            with pg.cursor() as cur:
                # Checksum the lake's rows with PostgreSQL's own text form, so both sides hash alike.
                cur.execute(f"CREATE TEMP TABLE lake_{name} (LIKE {name})")
                with cur.copy(f"COPY lake_{name} ({', '.join(cols)}) FROM STDIN") as copy:
                    for row in lake_rows:
                        rec = dict(zip(lake_cols, row))
                        copy.write_row([rec.get(c) for c in cols])
                lake_n, lake_sum = cur.execute(f"SELECT count(*), coalesce(sum(hashtext({expr})::bigint), 0) FROM lake_{name}").fetchone()
            equal = (src_n, src_sum) == (lake_n, lake_sum)
            ok &= equal
            table.add_row(f"shop.public.{name}", str(src_n), str(lake_n), str(src_sum), str(lake_sum), "[green]yes[/]" if equal else "[red]NO[/]")
    console.print(table)
    return ok


async def run_demo(seconds: float) -> int:
    setup_logging("WARNING")
    console.rule("[bold]Lakeward demo")
    shop = create_shop()
    config_path = write_config(shop)
    shutil.rmtree(WORKDIR / "lake", ignore_errors=True)
    console.print(f"shop database created; config at {config_path}")
    cfg = parse_config(config_path.read_text(), str(config_path))
    workers = build_workers(cfg, None, None)
    stop = asyncio.Event()
    runner = asyncio.create_task(run_workers(workers, stop))
    started = time.monotonic()
    load_task = asyncio.create_task(asyncio.to_thread(load, shop, seconds))
    while not load_task.done():
        await asyncio.sleep(2)
        source = workers[0]
        versions = {n: lakefs.DeltaTable(u).version() for n, u in lakefs.list_tables(cfg.lake).items()}
        console.print(f"[{time.monotonic() - started:5.1f}s] events published: {source.events_published:>7}  "
                      f"delta versions: {versions}")
    changes = await load_task
    console.print(f"load generator done: {changes} changes; waiting for the lake to catch up")
    ok = False
    for _ in range(60):
        await asyncio.sleep(1)
        if runner.done():
            break
        try:
            ok = await asyncio.to_thread(compare_quiet, shop, config_path)
        except Exception:  # noqa: BLE001 - tables may not exist yet
            ok = False
        if ok:
            break
    stop.set()
    code = await runner
    ok = compare(shop, config_path) and code == 0
    cli = Path(sys.executable).parent / "lakeward"
    console.print(f"\nquery the lake:  {cli} -c {config_path} query \"SELECT status, count(*) FROM shop.public.orders GROUP BY 1\"")
    console.print("[bold green]lake == source[/]" if ok else "[bold red]lake != source[/]")
    return 0 if ok else 1


def compare_quiet(shop: str, config_path: Path) -> bool:
    with console.capture():
        return compare(shop, config_path)


def main() -> None:
    seconds = float(os.environ.get("DEMO_SECONDS", "60"))
    sys.exit(asyncio.run(run_demo(seconds)))


if __name__ == "__main__":
    main()
