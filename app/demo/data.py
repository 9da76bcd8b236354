"""The demo databases: a shop (PostgreSQL) and an inventory (MySQL/MariaDB); their tables, seed
rows, reset, and the load generator (orders, payments and stock changes, one ALTER TABLE each)."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import psycopg
import pymysql

from lakeward.connectors.mysql import catalog as mysql_catalog
from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.connectors.postgres import catalog as pg_catalog
from lakeward.connectors.postgres.config import PostgresSourceConfig
from lakeward.core import broker as kafka
from lakeward.core.config import LakewardConfig
from lakeward.core.errors import ConfigError
from lakeward.sinks.delta import store as lakefs

log = logging.getLogger(__name__)

INVENTORY_DB = "inventory"
SHOP_TABLES = ("customers", "orders", "payments")
INVENTORY_TABLES = ("products", "warehouses", "stock")

SHOP_DDL = """
CREATE TABLE IF NOT EXISTS customers (id serial PRIMARY KEY, name text NOT NULL, email text,
                                      created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, customer_id int NOT NULL, amount numeric(12,2) NOT NULL,
                                   status text NOT NULL DEFAULT 'new', created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS payments (id bigserial PRIMARY KEY, order_id bigint NOT NULL, amount numeric(12,2) NOT NULL,
                                     method text NOT NULL, paid_at timestamptz NOT NULL DEFAULT now());
"""
SHOP_SEED = """
INSERT INTO customers (name, email) SELECT 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 1000) g;
INSERT INTO orders (customer_id, amount, status) SELECT 1 + g % 1000, (g % 500) + 0.99, 'shipped' FROM generate_series(1, 20000) g;
"""
INVENTORY_DDL = (
    """CREATE TABLE IF NOT EXISTS products (id int AUTO_INCREMENT PRIMARY KEY, sku varchar(32) NOT NULL UNIQUE,
       name varchar(200) NOT NULL, price decimal(10,2) NOT NULL, active tinyint(1) NOT NULL DEFAULT 1)""",
    "CREATE TABLE IF NOT EXISTS warehouses (id int PRIMARY KEY, city varchar(64) NOT NULL)",
    """CREATE TABLE IF NOT EXISTS stock (product_id int NOT NULL, warehouse_id int NOT NULL, quantity int unsigned NOT NULL,
       updated_at datetime(6) NOT NULL, PRIMARY KEY (product_id, warehouse_id))""",
)
CITIES = ("Lisbon", "Lyon", "Leipzig", "Leeds")
PRODUCTS = 500


@dataclass(frozen=True)
class DemoSources:
    """The demo's two sources in a config: the first `postgres` one (shop) and the first `mysql` one (inventory)."""

    shop: PostgresSourceConfig
    inventory: MySQLSourceConfig

    @property
    def tables(self) -> list[tuple[str, str, str]]:
        """(source, schema, table) of every demo table, as named in the lake."""
        return ([(self.shop.name, "public", t) for t in SHOP_TABLES]
                + [(self.inventory.name, INVENTORY_DB, t) for t in INVENTORY_TABLES])


def demo_sources(cfg: LakewardConfig, config_file: str | os.PathLike[str] | None = None) -> DemoSources:
    """The demo's sources in `cfg` (loaded from `config_file`, named in the error when one is missing)."""
    shop = next((s for s in cfg.sources if isinstance(s, PostgresSourceConfig)), None)
    inventory = next((s for s in cfg.sources if isinstance(s, MySQLSourceConfig)), None)
    if shop is None or inventory is None:
        missing = " and ".join(m for m, s in (("a `type: postgres` source (the shop)", shop),
                                                ("a `type: mysql` source (the inventory)", inventory)) if s is None)
        has = ", ".join(f"{s.name} (type: {getattr(s, 'type', '?')})" for s in cfg.sources) or "no sources"
        where = f"{config_file}: " if config_file is not None else ""
        raise ConfigError(f"{where}the demo needs a `type: postgres` source (the shop) and a `type: mysql` source (the inventory); "
                          f"this config lacks {missing} (it has {has}). Add them under `sources:` as deploy/lakeward.yaml does.")
    return DemoSources(shop, inventory)


# --- PostgreSQL: the shop ------------------------------------------------------------------------

def _admin_dsn(dsn: str) -> str:
    """The same server's `postgres` database: CREATE/DROP DATABASE can't run inside the target."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info["dbname"] = "postgres"
    return psycopg.conninfo.make_conninfo("", **info)


def setup_shop(src: PostgresSourceConfig, *, reset: bool) -> None:
    dbname = str(psycopg.conninfo.conninfo_to_dict(src.dsn).get("dbname") or "postgres")
    with psycopg.connect(_admin_dsn(src.dsn), autocommit=True) as admin:
        if reset:
            # The slot pins WAL and remembers what was already sent: a fresh demo starts without it.
            pg_catalog.drop_slot(admin, src.slot_name)
            if dbname != "postgres":
                admin.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(dbname)))
        if dbname != "postgres" and not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            admin.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(dbname)))
    with psycopg.connect(src.dsn, autocommit=True) as conn:
        if reset:
            conn.execute(f"DROP TABLE IF EXISTS {', '.join(SHOP_TABLES)}")
            conn.execute(psycopg.sql.SQL("DROP PUBLICATION IF EXISTS {}").format(psycopg.sql.Identifier(src.publication_name)))
        conn.execute(SHOP_DDL)
        if not conn.execute("SELECT 1 FROM customers LIMIT 1").fetchone():
            conn.execute(SHOP_SEED)


# --- MySQL/MariaDB: the inventory ----------------------------------------------------------------

def _mysql(src: MySQLSourceConfig, database: str | None = None) -> pymysql.Connection:
    return mysql_catalog.connect(src, database=database)


def setup_inventory(src: MySQLSourceConfig, *, reset: bool) -> None:
    conn = _mysql(src)
    try:
        with conn.cursor() as cur:
            if reset:
                cur.execute(f"DROP DATABASE IF EXISTS {INVENTORY_DB}")
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {INVENTORY_DB}")
            cur.execute(f"USE {INVENTORY_DB}")
            for ddl in INVENTORY_DDL:
                cur.execute(ddl)
            cur.execute("SELECT count(*) FROM products")
            if cur.fetchone() == (0,):
                conn.begin()
                cur.executemany("INSERT INTO warehouses (id, city) VALUES (%s, %s)", list(enumerate(CITIES, 1)))
                cur.executemany("INSERT INTO products (sku, name, price) VALUES (%s, %s, %s)",
                                [(f"SKU-{i:05d}", f"product {i}", f"{(i % 90) + 9.5:.2f}") for i in range(1, PRODUCTS + 1)])
                cur.execute("INSERT INTO stock (product_id, warehouse_id, quantity, updated_at) "
                            "SELECT p.id, w.id, 100, UTC_TIMESTAMP(6) FROM products p CROSS JOIN warehouses w")
                conn.commit()
    finally:
        conn.close()


# --- both ------------------------------------------------------------------------------------------

async def reset_captured(cfg: LakewardConfig, sources: DemoSources) -> list[str]:
    """Delete the demo sources' topics (events, schemas, state) and lake tables: a fresh demo
    must not resume from an earlier run's positions. Returns what was deleted."""
    prefixes = tuple(f"{cfg.broker.topic_prefix}.{s.name}." for s in (sources.shop, sources.inventory))
    async with kafka.Admin(cfg.broker) as admin:
        doomed = sorted(t for t in await admin.topics() if t.startswith(prefixes))
        await admin.delete_topics(doomed)
        for _ in range(100):  # deletion is asynchronous on the broker; recreating too early fails
            if not any(t.startswith(prefixes) for t in await admin.topics()):
                break
            await asyncio.sleep(0.2)
    names = {s.name for s in (sources.shop, sources.inventory)}
    tables = {n: u for n, u in (await asyncio.to_thread(lakefs.list_tables, cfg.lake)).items() if n.split(".")[0] in names}
    for uri in tables.values():
        await asyncio.to_thread(lakefs.drop_table, uri, cfg.lake)
    return doomed + sorted(tables)


def setup(cfg: LakewardConfig, *, reset: bool, config_file: str | os.PathLike[str] | None = None) -> DemoSources:
    sources = demo_sources(cfg, config_file)
    if reset:
        removed = asyncio.run(reset_captured(cfg, sources))
        log.info("demo reset: removed %d topics and lake tables", len(removed))
    setup_shop(sources.shop, reset=reset)
    setup_inventory(sources.inventory, reset=reset)
    return sources


class LoadGenerator:
    """Orders, payments, cancellations and new customers in the shop; stock moves, new and
    discontinued products in the inventory. Half way (or after `alter_after_s` when running
    forever) each database gets one ALTER TABLE ... ADD COLUMN, and later rows fill it."""

    def __init__(self, sources: DemoSources, *, seed: int = 1):
        self.sources = sources
        self.rnd = random.Random(seed)
        self.changes = {"shop": 0, "inventory": 0}
        self.altered = False

    def run(self, seconds: float, *, rate: float = 50.0, alter_after_s: float = 30.0) -> dict[str, int]:
        """`rate` transactions per second in each database; `seconds` <= 0 runs until interrupted."""
        forever = seconds <= 0
        start = time.monotonic()
        alter_at = start + (alter_after_s if forever else seconds / 2)
        with psycopg.connect(self.sources.shop.dsn, autocommit=True) as pg:
            my = _mysql(self.sources.inventory, INVENTORY_DB)
            try:
                my.autocommit(False)
                tick = 0
                while forever or time.monotonic() - start < seconds:
                    if not self.altered and time.monotonic() >= alter_at:
                        self._alter(pg, my)
                    self._shop_tx(pg)
                    self._inventory_tx(my)
                    tick += 1
                    # pace to `rate` per second without drifting
                    delay = start + tick / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
            finally:
                my.close()
        return dict(self.changes)

    def _shop_tx(self, pg: psycopg.Connection) -> None:
        rnd = self.rnd
        with pg.transaction():
            if rnd.random() < 0.05:
                pg.execute("INSERT INTO customers (name, email) VALUES (%s, %s)", (f"new customer {rnd.randint(1, 10**6)}", None))
                self.changes["shop"] += 1
            oid = pg.execute("INSERT INTO orders (customer_id, amount) VALUES (%s, %s) RETURNING id",
                             (rnd.randint(1, 1000), round(rnd.uniform(1, 300), 2))).fetchone()[0]  # type: ignore[index]
            pg.execute("INSERT INTO payments (order_id, amount, method) SELECT id, amount, %s FROM orders WHERE id = %s",
                       (rnd.choice(["card", "cash", "transfer"]), oid))
            pg.execute("UPDATE orders SET status = 'paid' WHERE id = %s", (oid,))
            self.changes["shop"] += 3
            if rnd.random() < 0.3:  # a cancelled order disappears with its payment
                victim = rnd.randint(1, oid)
                n = pg.execute("DELETE FROM orders WHERE id = %s", (victim,)).rowcount
                n += pg.execute("DELETE FROM payments WHERE order_id = %s", (victim,)).rowcount
                self.changes["shop"] += n
            if self.altered and rnd.random() < 0.5:
                n = pg.execute("UPDATE customers SET loyalty_tier = %s WHERE id = %s",
                               (rnd.choice(["silver", "gold"]), rnd.randint(1, 1000))).rowcount
                self.changes["shop"] += n

    def _inventory_tx(self, my: pymysql.Connection) -> None:
        rnd = self.rnd
        with my.cursor() as cur:
            for _ in range(3):  # stock moves: sales and restocks
                n = cur.execute("UPDATE stock SET quantity = GREATEST(0, CAST(quantity AS SIGNED) + %s), updated_at = UTC_TIMESTAMP(6) "
                                "WHERE product_id = %s AND warehouse_id = %s",
                                (rnd.choice([-3, -2, -1, 5, 20]), rnd.randint(1, PRODUCTS), rnd.randint(1, len(CITIES))))
                self.changes["inventory"] += n
            if rnd.random() < 0.1:  # a new product, stocked in one warehouse
                cur.execute("INSERT INTO products (sku, name, price) VALUES (%s, %s, %s)",
                            (f"NEW-{rnd.randint(0, 10**9):09d}", "new product", f"{rnd.uniform(5, 50):.2f}"))
                cur.execute("INSERT INTO stock (product_id, warehouse_id, quantity, updated_at) VALUES (%s, %s, %s, UTC_TIMESTAMP(6))",
                            (cur.lastrowid, rnd.randint(1, len(CITIES)), 10))
                self.changes["inventory"] += 2
            if rnd.random() < 0.05:  # a product is discontinued: its stock rows go, the product is kept inactive
                pid = rnd.randint(1, PRODUCTS)
                n = cur.execute("DELETE FROM stock WHERE product_id = %s", (pid,))
                n += cur.execute("UPDATE products SET active = 0 WHERE id = %s AND active = 1", (pid,))
                self.changes["inventory"] += n
            if self.altered and rnd.random() < 0.3:
                n = cur.execute("UPDATE products SET weight_grams = %s WHERE id = %s", (rnd.randint(50, 5000), rnd.randint(1, PRODUCTS)))
                self.changes["inventory"] += n
        my.commit()

    def _alter(self, pg: psycopg.Connection, my: pymysql.Connection) -> None:
        """One ALTER TABLE in each database, mid-run (MySQL 8 has no ADD COLUMN IF NOT EXISTS)."""
        pg.execute("ALTER TABLE customers ADD COLUMN IF NOT EXISTS loyalty_tier text")
        with my.cursor() as cur:
            cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = 'products' "
                        "AND column_name = 'weight_grams'", (INVENTORY_DB,))
            if not cur.fetchone():
                cur.execute("ALTER TABLE products ADD COLUMN weight_grams int NULL")
        my.commit()
        self.altered = True
        log.info("load: ALTER TABLE customers ADD COLUMN loyalty_tier; ALTER TABLE products ADD COLUMN weight_grams")


def source_rows(sources: DemoSources, source: str, table: str) -> tuple[str, list[str], list[tuple[Any, ...]]]:
    """(the query, column names, rows) of a demo table as the source database has it now."""
    if source == sources.shop.name:
        sql = f"SELECT * FROM {table}"
        with psycopg.connect(sources.shop.dsn) as pg:
            result = pg.execute(sql)
            return sql, [d.name for d in result.description or []], result.fetchall()
    sql = f"SELECT * FROM {INVENTORY_DB}.{table}"
    conn = _mysql(sources.inventory)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return sql, [d[0] for d in cur.description or ()], list(cur.fetchall())
    finally:
        conn.close()
