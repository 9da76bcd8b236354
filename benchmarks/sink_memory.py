#!/usr/bin/env python3
"""Peak memory of a Delta sink replaying one table topic, by consumer fetch size (not part of `make test`).

    .venv/bin/python benchmarks/sink_memory.py                      # 1,000,000 events; 8M,2M,1M,512K,256K
    .venv/bin/python benchmarks/sink_memory.py --rows 200000 --fetch 8M,256K --noop-commit

Needs the local PostgreSQL and Kafka of `make services` (LAKEWARD_TEST_PG_DSN, LAKEWARD_TEST_BROKER).
A table like benchmarks/pipeline.py's (bigint pk, int, md5 text, numeric(12,2), timestamptz,
boolean) with `--rows` rows is published once by the PostgreSQL source (its initial snapshot);
then, per setting, a fresh `lakeward replay --sink lake --from-beginning` process rebuilds the mirror
table from that topic and reports its peak RSS (VmHWM), wall time and CPU time per event (start-up
included). Each replay runs in a child process whose consumer gets `max_partition_fetch_bytes` = the
setting and `fetch_max_bytes` = 16 MiB (the product's default is the last of the list). `--noop-commit` adds, per setting, a run whose Delta
commits are skipped: what consuming, decoding and planning cost without delta-rs' writes.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

ADMIN_DSN = os.environ.get("LAKEWARD_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
BROKER = os.environ.get("LAKEWARD_TEST_BROKER", "127.0.0.1:9092")
UNITS = {"K": 1 << 10, "M": 1 << 20}


def size(text: str) -> int:
    return int(text[:-1]) * UNITS[text[-1]] if text[-1] in UNITS else int(text)


def child(config: str, fetch: int, noop_commit: bool) -> None:
    """One replay with the consumer's fetch size patched; prints `peak_mb seconds cpu_seconds` at the end."""
    from lakeward.app.cli import main  # first, as in `lakeward`: it picks Arrow's allocator before pyarrow is imported
    from lakeward.core import broker
    from lakeward.sinks.delta import lake, sink

    original = broker.consumer

    def consumer(cfg, **kw):
        return original(cfg, **{"max_partition_fetch_bytes": fetch, "fetch_max_bytes": 16 << 20, **kw})

    broker.consumer = sink.consumer = consumer
    if noop_commit:
        # the measurement without delta-rs' writes: every commit "succeeds" at once
        lake.LakeTable.commit = lambda self, plan, **kw: lake.Committed(  # type: ignore[method-assign]
            ok=True, version=1, committed_at=time.time())

    started = time.monotonic()
    sys.argv = ["lakeward", "--log-level", "WARNING", "-c", config, "replay", "--sink", "lake", "--from-beginning"]
    try:
        main()
    except SystemExit as e:
        if e.code:
            raise
    usage = resource.getrusage(resource.RUSAGE_SELF)  # start-up (imports, ~1 s) included
    print(f"{usage.ru_maxrss / 1024:.0f} {time.monotonic() - started:.1f} {usage.ru_utime + usage.ru_stime:.1f}")


def topic_end(topic: str) -> int:
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def end() -> int:
        c = AIOKafkaConsumer(bootstrap_servers=BROKER)
        await c.start()
        try:
            tp = TopicPartition(topic, 0)
            return (await c.end_offsets([tp]))[tp] if topic in await c.topics() else 0
        finally:
            await c.stop()

    return asyncio.run(end())


def delete_topics(prefix: str) -> None:
    import asyncio

    from lakeward.core.broker import Admin
    from lakeward.core.config import BrokerConfig

    async def delete() -> None:
        async with Admin(BrokerConfig(bootstrap_servers=BROKER)) as admin:
            await admin.delete_topics([t for t in await admin.topics() if t.startswith(prefix + ".")])

    asyncio.run(delete())


def main(args: argparse.Namespace) -> int:
    from lakeward.connectors.postgres.catalog import drop_slot

    run = uuid.uuid4().hex[:8]
    db, prefix = f"lw_sinkmem_{run}", f"sinkmem{run}"
    work = Path(tempfile.mkdtemp(prefix="lakeward-sinkmem-"))
    dsn = psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=db)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    config = work / "lakeward.yaml"
    config.write_text(f"""\
broker:
  bootstrap_servers: {BROKER}
  topic_prefix: {prefix}
lake:
  uri: {work / 'lake'}
sources:
  - name: shop
    type: postgres
    dsn: {dsn}
    tables: [public.big]
    slot: lw_{prefix}
sinks:
  - name: lake
    type: delta
    sources: [shop]
    mode: mirror
""")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE big (id bigint PRIMARY KEY, v int, s text, amount numeric(12,2), at timestamptz, flag boolean)")
            conn.execute("INSERT INTO big SELECT g, g %% 1000, md5(g::text), g * 1.25, now(), g %% 2 = 0 FROM generate_series(1, %s) g",
                         (args.rows,))
        print(f"publishing {args.rows:,} rows through the PostgreSQL source ...", flush=True)
        source = subprocess.Popen([sys.executable, "-m", "lakeward.app.cli", "--log-level", "WARNING", "-c", str(config), "run",
                                   "--source", "shop", "--metrics-port", "0"])
        topic = f"{prefix}.shop.public.big"
        deadline = time.monotonic() + 600
        while topic_end(topic) < args.rows + 1:  # the snapshot's truncate marker, then every row
            if source.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the source stopped or took too long")
            time.sleep(1)
        source.send_signal(signal.SIGTERM)
        source.wait(60)
        print(f"{'max_partition_fetch_bytes':>26} {'Delta commits':>14} {'peak RSS MB':>12} {'seconds':>8} {'CPU µs/event':>13}")
        for fetch in args.fetch.split(","):
            for noop in ([False, True] if args.noop_commit else [False]):
                for _ in range(args.repeat):
                    shutil.rmtree(work / "lake", ignore_errors=True)
                    out = subprocess.run([sys.executable, __file__, "--child", str(config), str(size(fetch)), "1" if noop else ""],
                                         capture_output=True, text=True, check=True)
                    peak, seconds, cpu = out.stdout.split()[-3:]
                    per_event = float(cpu) / (args.rows + 1) * 1e6
                    print(f"{fetch:>26} {'skipped' if noop else 'written':>14} {peak:>12} {seconds:>8} {per_event:>13.1f}", flush=True)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            drop_slot(conn, f"lw_{prefix}")
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        delete_topics(prefix)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), bool(sys.argv[4]) if len(sys.argv) > 4 else False)
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the table (events of the topic)")
    ap.add_argument("--fetch", default="8M,2M,1M,512K,256K", help="comma-separated max_partition_fetch_bytes settings")
    ap.add_argument("--noop-commit", action="store_true", help="also run each setting with the Delta commits skipped")
    ap.add_argument("--repeat", type=int, default=1, help="replays per setting")
    sys.exit(main(ap.parse_args()))
