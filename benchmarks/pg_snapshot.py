#!/usr/bin/env python3
"""PostgreSQL initial snapshot, source only: rows/s and peak RSS of `lakeward run --source`.

    python benchmarks/pg_snapshot.py [--rows 1000000] [--parallelism 1 2] [--chunk-rows 50000] [--profile DIR]

Loads `--rows` rows of the benchmark table (benchmarks/pipeline.py: bigint pk, int, md5 text,
numeric(12,2), timestamptz, boolean) into a scratch database once, then per parallelism runs a
source worker with `snapshot: initial` (a fresh slot and topic prefix each) until the table's topic
holds every row plus its `t` (the broker acknowledged them all). Rows/s is timed from the first
record on the topic to the last, so process start-up does not count; the time from process start
is printed too, and the worker's CPU time per row (on a shared machine the steadier figure). Peak RSS is the worker's VmHWM. `--profile DIR` attaches py-spy (pip install py-spy)
to the worker and writes its folded stacks per run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from aiokafka import TopicPartition

from lakeward.connectors.postgres.catalog import drop_slot
from lakeward.core import broker as kafka
from lakeward.core.config import BrokerConfig

sys.path.insert(0, os.path.dirname(__file__))
from measure import cpu_seconds, kafka_pid, machine_cpu, proc_status_kb
from services import ADMIN_DSN, BROKER, INSERT, TABLE_DDL, dsn_for


def postgres_cpu() -> float:
    """CPU seconds of every postgres process (the snapshot's backends and walsender among them)."""
    total = 0.0
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "comm").read_text().strip() == "postgres":
                    total += cpu_seconds(int(p.name)) or 0.0
            except OSError:
                continue
    return total


def load(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(TABLE_DDL.format(name="bench"))
        for a in range(1, rows + 1, 100_000):
            c.execute(INSERT.format(name="bench"), (a, min(a + 99_999, rows)))
        c.execute("VACUUM ANALYZE bench")


async def high_watermark(consumer: Any, topic: str) -> int:
    tp = TopicPartition(topic, 0)
    if topic not in await consumer.topics():
        return 0
    return (await consumer.end_offsets([tp]))[tp]


async def run_once(dsn: str, rows: int, parallelism: int, chunk_rows: int, workdir: Path, profile: Path | None) -> dict:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    cfg = workdir / f"{prefix}.yaml"
    cfg.write_text(f"""\
broker:
  bootstrap_servers: {BROKER}
  topic_prefix: {prefix}
lake:
  uri: {workdir / 'lake'}
sources:
  - name: shop
    type: postgres
    dsn: {dsn}
    tables: [public.bench]
    slot: lw_{prefix}
    snapshot_parallelism: {parallelism}
    snapshot_chunk_rows: {chunk_rows}
sinks: []
""")
    args = [sys.executable, "-m", "lakeward.app.cli", "-c", str(cfg), "run", "--source", "shop"]
    broker = BrokerConfig(bootstrap_servers=BROKER, topic_prefix=prefix)
    consumer = kafka.consumer(broker, isolation_level="read_uncommitted")
    await kafka.start_client(consumer, broker)
    topic = f"{prefix}.shop.public.bench"
    log_path = workdir / f"{prefix}.log"
    log = await asyncio.to_thread(open, log_path, "wb")
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*args, stdout=log, stderr=subprocess.STDOUT)
    pid = proc.pid
    spy = None
    if profile is not None:  # attached to the worker: a sampling profile of the whole run, folded stacks
        await asyncio.to_thread(profile.mkdir, parents=True, exist_ok=True)
        spy = await asyncio.create_subprocess_exec(os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "-r", "100", "-f", "raw",
                                                   "--pid", str(pid), "-o", str(profile / f"p{parallelism}.txt"),
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    cpu_first = machine_first = pg_first = kafka_first = 0.0  # set with `first`
    peak = 0
    cpu = 0.0
    try:
        while True:
            n = await high_watermark(consumer, topic)
            now = time.monotonic()
            if n and first is None:
                first, cpu_first, machine_first = now, cpu_seconds(pid) or 0.0, machine_cpu()
                pg_first, kafka_first = postgres_cpu(), cpu_seconds(kafka_pid()) or 0.0
            if profile is None:
                peak = max(peak, proc_status_kb(pid, "VmHWM") or 0)
            cpu = cpu_seconds(pid) or cpu
            if n >= rows + 1:
                break
            if proc.returncode is not None:
                raise SystemExit(f"the worker exited: {(await asyncio.to_thread(log_path.read_text))[-3000:]}")
            if now - started > 600:
                raise SystemExit("timed out")
            await asyncio.sleep(0.02)
        done = time.monotonic()
        machine_busy = machine_cpu() - machine_first
        pg_busy, kafka_busy = postgres_cpu() - pg_first, (cpu_seconds(kafka_pid()) or 0.0) - kafka_first
    finally:
        await consumer.stop()
        if spy is not None:
            spy.send_signal(2)
            async with asyncio.timeout(60):
                await spy.wait()
        proc.terminate()
        async with asyncio.timeout(60):
            await proc.wait()
        with psycopg.connect(ADMIN_DSN, autocommit=True) as c:
            drop_slot(c, f"lw_{prefix}")
    assert first is not None
    return {"parallelism": parallelism, "rows_s": rows / (done - first), "rows_s_from_start": rows / (done - started),
            "seconds": done - first, "peak_rss_mb": peak / 1024, "cpu_us_per_row": cpu * 1e6 / rows,
            "snapshot_cpu_us_per_row": (cpu - cpu_first) * 1e6 / rows, "machine_cores_busy": machine_busy / (done - first),
            "postgres_cpu_us_per_row": pg_busy * 1e6 / rows, "kafka_cpu_us_per_row": kafka_busy * 1e6 / rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--parallelism", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--chunk-rows", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--profile", type=Path, default=None)
    args = ap.parse_args()
    db = f"lw_snapbench_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{db}"')
    dsn = dsn_for(db)
    try:
        load(dsn, args.rows)
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.repeat):
                for p in args.parallelism:
                    r = asyncio.run(run_once(dsn, args.rows, p, args.chunk_rows, Path(tmp), args.profile))
                    print(f"parallelism {r['parallelism']}: {r['rows_s']:,.0f} rows/s ({r['seconds']:.2f} s; "
                          f"{r['rows_s_from_start']:,.0f} rows/s from process start), worker CPU {r['snapshot_cpu_us_per_row']:.1f} us/row "
                          f"({r['cpu_us_per_row']:.1f} with start-up), PostgreSQL {r['postgres_cpu_us_per_row']:.1f} us/row, "
                          f"broker {r['kafka_cpu_us_per_row']:.1f} us/row, machine {r['machine_cores_busy']:.2f} cores busy, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    main()
