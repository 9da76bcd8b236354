#!/usr/bin/env python3
"""Lakeward pipeline benchmark: throughput, latency and memory on this machine, in one run.

    python benchmarks/pipeline.py                  # the full run (`make bench`), about 6 minutes here
    python benchmarks/pipeline.py --quick          # a short variant, under 2 minutes
    python benchmarks/pipeline.py --rows 2000000 --repeat 5

Needs the local PostgreSQL and Kafka of `make services` (endpoints from LAKEWARD_TEST_PG_DSN and
LAKEWARD_TEST_BROKER, as the tests) and pg_recvlogical. Every worker runs as its own
`python -m lakeward.app.cli -c CFG run --source shop | --sink lake` subprocess, with the
product's default settings (only `snapshot: never`, and names/paths that keep runs apart).

What is measured (a fresh database; table `bench`: bigint pk, int, text md5, numeric(12,2),
timestamptz, boolean; the load is `--rows` inserts in transactions of `--txn-rows`):

1. physical limit: pg_recvlogical (pgoutput proto_version 1, a publication) drains the load's WAL
   to /dev/null, from a slot created before the load, until the end LSN.
2. source alone: the Lakeward source drains the same WAL from its own slot (created, with the
   worker, before the load) until the broker acknowledged every event (the topic's high watermark
   reaches N). Timed from the worker's "streaming from" log line; also reported with process start.
3. end to end: source + mirror sink drain the same WAL from a third slot until the Delta table's
   app transaction covers offset N-1 (the lake holds all N rows; counted afterwards).
   1-3 are repeated `--repeat` times (fresh slots, an identical load with the next ids each round):
   median and spread.
4. latency at a steady rate (default 50 rows per transaction every 10 ms = 5,000 rows/s) with a
   running pipeline: per row, the mtime of the Delta log file of the first version that holds it
   (the moment readers can see it) minus the row's PostgreSQL commit time (`_lakeward_committed_at`).
5. peak RSS (VmHWM from /proc/<pid>/status, reset through /proc/<pid>/clear_refs before) of the
   source and the sink worker through ONE transaction of `--big-rows` inserts.

Results: printed, and written to benchmarks/results/<UTC time>.{json,md} (+ latest.{json,md}).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from aiokafka import TopicPartition

from lakeward.connectors.postgres.catalog import drop_slot
from lakeward.core import broker as kafka
from lakeward.core.config import BrokerConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ADMIN_DSN = os.environ.get("LAKEWARD_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
BROKER = os.environ.get("LAKEWARD_TEST_BROKER", "127.0.0.1:9092")
PG_RECVLOGICAL = os.environ.get("PG_RECVLOGICAL") or shutil.which("pg_recvlogical") or "/usr/lib/postgresql/15/bin/pg_recvlogical"
PUBLICATION = "bench_pub"
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGETS = {
    "source_ratio": 0.7,          # source rows/s >= 0.7 x pg_recvlogical
    "e2e_rows_s": 50_000,         # end to end rows/s
    "latency_p99_s": 2.0,         # commit-to-lake p99
    "rss_mb": 400,                # peak RSS per worker
}

TABLE_DDL = (
    "CREATE TABLE {name} (id bigint PRIMARY KEY, n int NOT NULL, s text, amount numeric(12,2), "
    "created_at timestamptz NOT NULL DEFAULT now(), flag boolean)"
)
INSERT = (
    "INSERT INTO {name} (id, n, s, amount, created_at, flag) "
    "SELECT g, (g %% 100000)::int, md5(g::text), (g %% 1000000) / 100.0, "
    "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', g %% 3 = 0 FROM generate_series(%s::bigint, %s::bigint) g"
)


# --- small helpers -------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def dsn_for(dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)


def sql(dsn: str, *statements: str, params: Any = None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in statements:
            conn.execute(s, params)


def query1(dsn: str, statement: str, params: Any = None) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(statement, params).fetchone()
        return row[0] if row else None


def proc_status_kb(pid: int, field_name: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_cpu() -> float:
    """CPU seconds all processes of the machine spent (user+nice+system+irq+softirq+steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of a process (its threads included)."""
    if not pid:
        return None
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def kafka_pid() -> int | None:
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes()
            except OSError:
                continue
            if b"kafka.Kafka" in cmd:
                return int(p.name)
    return None


def stats(values: list[float]) -> dict[str, float]:
    values = [v for v in values if v is not None]
    if not values:
        return {}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# --- workers -------------------------------------------------------------------------------------


class Worker:
    """A `lakeward run` subprocess with JSON logs (so log lines carry millisecond timestamps)."""

    def __init__(self, config: Path, role: str, logfile: Path, profile: Path | None = None):
        self.config, self.role, self.logfile = config, role, logfile
        which = ["--source", "shop"] if role == "source" else ["--sink", "lake"]
        python = [sys.executable]
        if profile is not None:  # a sampling profile of the worker (pyinstrument must be installed)
            python += ["-m", "pyinstrument", "-r", "session", "-o", str(profile)]
        self.args = [*python, "-m", "lakeward.app.cli", "--log-format", "json", "-c", str(config), "run", *which]
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self) -> Worker:
        self._out = open(self.logfile, "ab")
        self.started_at = time.time()
        self.proc = subprocess.Popen(self.args, stdout=self._out, stderr=subprocess.STDOUT, cwd=ROOT)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def lines(self) -> list[dict]:
        out = []
        for line in self.logfile.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    async def wait_log(self, needle: str, timeout: float) -> float:
        """Epoch time of the first log line containing `needle` (waits for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for d in self.lines():
                if needle in d.get("msg", ""):
                    ts = datetime.strptime(d["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
                    return ts.timestamp()
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.role} worker exited ({self.proc.returncode}) before logging {needle!r}:\n{self.tail()}")
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.role} worker did not log {needle!r} within {timeout}s:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])

    def errors(self) -> list[str]:
        return [d["msg"] for d in self.lines() if d.get("level") in ("error", "critical")]

    def hwm_mb(self) -> float | None:
        kb = proc_status_kb(self.pid, "VmHWM")
        return kb / 1024 if kb is not None else None

    def rss_mb(self) -> float | None:
        kb = proc_status_kb(self.pid, "VmRSS")
        return kb / 1024 if kb is not None else None

    def reset_hwm(self) -> bool:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def cpu(self) -> float | None:
        return cpu_seconds(self.pid)

    async def stop(self, timeout: float = 120) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Pipeline:
    """One Lakeward deployment: its own slot, topic prefix, consumer group and lake."""

    tag: str
    run: Bench
    prefix: str = ""
    slot: str = ""
    lake: Path = Path()
    config: Path = Path()
    workers: list[Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prefix = f"bench{self.run.id}{self.tag}"
        self.slot = f"lw_bench_{self.run.id}_{self.tag}"
        self.lake = self.run.work / f"lake_{self.tag}"
        self.config = self.run.work / f"lakeward_{self.tag}.yaml"
        self.config.write_text(f"""\
broker:
  bootstrap_servers: {BROKER}
  topic_prefix: {self.prefix}
lake:
  uri: {self.lake}
sources:
  - name: shop
    type: postgres
    dsn: {self.run.dsn}
    tables: [public.*]
    slot: {self.slot}
    publication: {PUBLICATION}
    snapshot: never
{self.run.extra("source")}sinks:
  - name: lake
    type: delta
    sources: [shop]
    mode: mirror
    group_id: lakeward.bench.{self.run.id}.{self.tag}
{self.run.extra("sink")}""")

    def topic(self, table: str) -> str:
        return f"{self.prefix}.shop.public.{table}"

    def table_path(self, table: str) -> Path:
        return self.lake / "shop" / "public" / table

    def worker(self, role: str, profile: Path | None = None) -> Worker:
        w = Worker(self.config, role, self.run.work / f"{self.tag}_{role}_{len(self.workers)}.log", profile)
        self.workers.append(w)
        self.run.all_workers.append(w)
        return w.start()


# --- the Delta log, read directly (cheap to poll; file mtimes say when a version became visible) --


def delta_commits(table: Path) -> list[dict]:
    """[{version, mtime, position, last_offset}] of every commit file of a Delta table."""
    log_dir = table / "_delta_log"
    out = []
    try:
        names = sorted(n for n in os.listdir(log_dir) if n.endswith(".json") and n[:20].isdigit())
    except FileNotFoundError:
        return out
    for name in names:
        p = log_dir / name
        st = p.stat()
        info: dict = {}
        for line in p.read_text().splitlines():
            if line.startswith('{"commitInfo"'):
                info = json.loads(line)["commitInfo"]
                break
        offsets = info.get("lakeward.offsets")
        out.append({
            "version": int(name[:20]),
            "mtime": st.st_mtime_ns / 1e9,
            "position": info.get("lakeward.position"),
            "last_offset": int(offsets.split("-")[1]) if offsets else None,
        })
    return out


def delta_last_offset(table: Path) -> int | None:
    """The last Kafka offset the newest commit covers (our app transaction), from the newest log file."""
    log_dir = table / "_delta_log"
    try:
        names = [n for n in os.listdir(log_dir) if n.endswith(".json") and n[:20].isdigit()]
    except FileNotFoundError:
        return None
    for name in sorted(names, reverse=True):
        for line in (log_dir / name).read_text().splitlines():
            if line.startswith('{"commitInfo"'):
                offsets = json.loads(line)["commitInfo"].get("lakeward.offsets")
                if offsets:
                    return int(offsets.split("-")[1])
                break
    return None


def delta_count(table: Path) -> int:
    from deltalake import DeltaTable

    return DeltaTable(str(table)).to_pyarrow_dataset().count_rows()


# --- the benchmark -------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.id = uuid.uuid4().hex[:6]
        self.db = f"lw_bench_{self.id}"
        self.dsn = dsn_for(self.db)
        self.work = Path(tempfile.mkdtemp(prefix=f"lakeward-bench-{self.id}-"))
        self.broker = BrokerConfig(bootstrap_servers=BROKER)
        self.all_workers: list[Worker] = []
        self.pipelines: list[Pipeline] = []
        self.next_id = 1
        self.result: dict[str, Any] = {"rounds": []}
        self.consumer: Any = None
        self.kafka_pid = kafka_pid()

    # --- setup / teardown

    async def setup(self) -> None:
        sql(ADMIN_DSN, f'CREATE DATABASE "{self.db}"')
        sql(self.dsn, *(TABLE_DDL.format(name=t) for t in ("bench", "lat", "big")),
            f"CREATE PUBLICATION {PUBLICATION} FOR TABLE bench, lat, big WITH (publish_via_partition_root = true)")
        self.consumer = kafka.consumer(self.broker, isolation_level="read_uncommitted")
        await kafka.start_client(self.consumer, self.broker)

    async def teardown(self) -> None:
        for w in self.all_workers:
            w.kill()
        if self.consumer is not None:
            await self.consumer.stop()
        try:
            async with kafka.Admin(self.broker) as admin:
                prefixes = tuple(p.prefix + "." for p in self.pipelines)
                mine = [t for t in await admin.topics() if t.startswith(prefixes)] if prefixes else []
                await admin.delete_topics(mine)
        except Exception as e:  # noqa: BLE001 - cleanup only
            log(f"could not delete the benchmark topics: {e}")
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s", (self.db,)).fetchall():
                drop_slot(conn, slot)
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    def extra(self, role: str) -> str:
        """YAML lines for `--source-option` / `--sink-option KEY=VALUE` (experiments; default: none)."""
        return "".join(f"    {kv.split('=', 1)[0]}: {kv.split('=', 1)[1]}\n" for kv in getattr(self.args, f"{role}_option"))

    def pipeline(self, tag: str) -> Pipeline:
        p = Pipeline(tag, self)
        self.pipelines.append(p)
        return p

    def drop_slot(self, slot: str) -> None:
        try:
            sql(self.dsn, "SELECT pg_drop_replication_slot(%s)", params=(slot,))
        except psycopg.Error:
            pass

    async def ensure_topics(self, p: Pipeline, *tables: str) -> None:
        """Create a pipeline's table topics up front, with the source's own settings (Admin.ensure_topic),
        so consumers and the sink can watch them before the first event."""
        async with kafka.Admin(BrokerConfig(bootstrap_servers=BROKER, topic_prefix=p.prefix)) as admin:
            for t in tables:
                await admin.ensure_topic(p.topic(t))

    async def high_watermark(self, topic: str) -> int:
        tp = TopicPartition(topic, 0)
        for _ in range(100):
            try:
                return (await self.consumer.end_offsets([tp]))[tp]
            except Exception:  # noqa: BLE001 - metadata of a fresh topic not there yet
                await self.consumer._client.force_metadata_update()
                await asyncio.sleep(0.1)
        raise RuntimeError(f"cannot read the end offset of {topic}")

    async def create_source_slot(self, p: Pipeline) -> None:
        """Start the pipeline's source once (it creates its slot, snapshot: never), then stop it."""
        w = p.worker("source")
        await w.wait_log("streaming from", timeout=120)
        code = await w.stop()
        if code != 0:
            raise RuntimeError(f"source {p.tag} exited {code}:\n{w.tail()}")

    def load(self, table: str, first: int, rows: int, txn_rows: int) -> float:
        """Insert ids first..first+rows-1 in transactions of txn_rows; returns the seconds it took."""
        started = time.monotonic()
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            a = first
            while a < first + rows:
                b = min(a + txn_rows, first + rows) - 1
                conn.execute(INSERT.format(name=table), (a, b))
                a = b + 1
        return time.monotonic() - started

    def current_lsn(self) -> str:
        return query1(self.dsn, "SELECT pg_current_wal_lsn()::text")

    def walsender_pid(self, slot: str) -> int | None:
        return query1(self.dsn, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,))

    # --- 1-3: throughput rounds

    async def throughput_round(self, r: int) -> dict[str, Any]:
        n, args = self.args.rows, self.args
        first = 1 + r * n
        log(f"round {r + 1}/{args.repeat}: slots for pg_recvlogical, the source and the end-to-end pipeline")
        recv_slot = f"lw_bench_{self.id}_recv{r}"
        src, e2e = self.pipeline(f"s{r}"), self.pipeline(f"e{r}")
        sql(self.dsn, "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", params=(recv_slot,))
        await self.ensure_topics(src, "bench")
        await self.ensure_topics(e2e, "bench")
        await asyncio.gather(self.create_source_slot(src), self.create_source_slot(e2e))

        log(f"round {r + 1}: loading {n:,} rows in transactions of {args.txn_rows:,}")
        load_s = await asyncio.to_thread(self.load, "bench", first, n, args.txn_rows)
        end_lsn = self.current_lsn()
        wal_bytes = query1(self.dsn, "SELECT pg_wal_lsn_diff(%s::pg_lsn, confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = %s",
                           (end_lsn, recv_slot))
        out: dict[str, Any] = {"round": r + 1, "rows": n, "load_s": load_s, "wal_bytes": wal_bytes}
        log(f"round {r + 1}: loaded in {load_s:.1f}s ({n / load_s:,.0f} rows/s), {wal_bytes / 2**20:,.0f} MiB of WAL")

        # 1. pg_recvlogical
        out["recvlogical"] = await self.drain_recvlogical(recv_slot, end_lsn, n)
        self.drop_slot(recv_slot)
        log(f"round {r + 1}: pg_recvlogical {out['recvlogical']['rows_s']:,.0f} rows/s ({out['recvlogical']['seconds']:.2f}s)")

        # 2. the source alone
        out["source"] = await self.drain_source(src, n)
        self.drop_slot(src.slot)
        out["source"]["ratio"] = out["source"]["rows_s"] / out["recvlogical"]["rows_s"]
        log(f"round {r + 1}: source {out['source']['rows_s']:,.0f} rows/s ({out['source']['seconds']:.2f}s, "
            f"{out['source']['ratio']:.2f}x pg_recvlogical; with process start {out['source']['rows_s_with_start']:,.0f} rows/s)")

        # 3. end to end
        out["e2e"] = await self.drain_e2e(e2e, n)
        self.drop_slot(e2e.slot)
        log(f"round {r + 1}: end to end {out['e2e']['rows_s']:,.0f} rows/s ({out['e2e']['seconds']:.2f}s)")
        if not args.keep:
            shutil.rmtree(e2e.lake, ignore_errors=True)
        return out

    async def drain_recvlogical(self, slot: str, end_lsn: str, n: int) -> dict[str, Any]:
        info = psycopg.conninfo.conninfo_to_dict(self.dsn)
        cmd = [PG_RECVLOGICAL, "-d", psycopg.conninfo.make_conninfo(**info), "--slot", slot, "--start", "--no-loop",
               "-o", "proto_version=1", "-o", f"publication_names={PUBLICATION}", "--endpos", end_lsn, "-f", "/dev/null"]
        t0, m0, r0 = time.monotonic(), machine_cpu(), resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = await asyncio.create_subprocess_exec(*cmd, stderr=asyncio.subprocess.PIPE)
        ws_pid: int | None = None
        ws_cpu: float | None = None  # the walsender is a new backend: its CPU time starts at ~0
        while proc.returncode is None:
            ws_pid = ws_pid or self.walsender_pid(slot)
            ws_cpu = cpu_seconds(ws_pid) or ws_cpu
            try:
                await asyncio.wait_for(proc.wait(), 0.05)
            except TimeoutError:
                pass
        seconds, machine, r1 = time.monotonic() - t0, machine_cpu() - m0, resource.getrusage(resource.RUSAGE_CHILDREN)
        recv_cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        err = (await proc.stderr.read()).decode(errors="replace")  # type: ignore[union-attr]
        if proc.returncode != 0:
            raise RuntimeError(f"pg_recvlogical failed ({proc.returncode}): {err}")
        confirmed = query1(self.dsn, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        return {"seconds": seconds, "rows_s": n / seconds, "confirmed_lsn": confirmed, "end_lsn": end_lsn,
                "walsender_cpu_s": ws_cpu, "pg_recvlogical_cpu_s": recv_cpu, "machine_cpu_s": machine,
                "others_cpu_s": machine - (ws_cpu or 0) - recv_cpu}

    async def drain_source(self, p: Pipeline, n: int) -> dict[str, Any]:
        topic = p.topic("bench")
        base = await self.high_watermark(topic)
        kcpu0 = cpu_seconds(self.kafka_pid)
        profile = (self.work / f"{p.tag}_source.pyisession") if self.args.profile else None
        w = p.worker("source", profile=profile)
        streaming_at = await w.wait_log("streaming from", timeout=120)
        ws_pid = self.walsender_pid(p.slot)
        ws_cpu0 = cpu_seconds(ws_pid) or 0.0
        src_cpu0 = src_cpu = w.cpu() or 0.0  # imports and connecting: not part of the drain
        m0 = machine_cpu()
        deadline = time.monotonic() + self.args.timeout
        while True:
            hw = await self.high_watermark(topic)
            if hw - base >= n:
                done_at = time.time()
                break
            if time.monotonic() > deadline or w.proc.poll() is not None:
                raise RuntimeError(f"source {p.tag}: {hw - base:,} of {n:,} events acknowledged after {self.args.timeout}s:\n{w.tail()}")
            src_cpu = w.cpu() or src_cpu
            ws_cpu = cpu_seconds(ws_pid)
            await asyncio.sleep(0.02)
        src_cpu = (w.cpu() or src_cpu) - src_cpu0
        ws_cpu = cpu_seconds(ws_pid)
        kcpu1 = cpu_seconds(self.kafka_pid)
        machine = machine_cpu() - m0
        rss = w.hwm_mb()
        code = await w.stop()
        if code != 0:
            raise RuntimeError(f"source {p.tag} exited {code}:\n{w.tail()}")
        if profile is not None:
            self.result.setdefault("profiles", []).append(str(profile))
        seconds = done_at - streaming_at
        kafka_cpu = (kcpu1 - kcpu0) if kcpu0 is not None and kcpu1 is not None else None
        walsender_cpu = (ws_cpu - ws_cpu0) if ws_cpu is not None else None
        # Others' CPU while draining: everything but the source, its walsender and the broker.
        others = machine - (src_cpu or 0) - (walsender_cpu or 0) - (kafka_cpu or 0)
        return {"seconds": seconds, "rows_s": n / seconds, "seconds_with_start": done_at - w.started_at, "machine_cpu_s": machine,
                "others_cpu_s": others, "source_us_per_row": (src_cpu or 0) / n * 1e6,
                "rows_s_with_start": n / (done_at - w.started_at), "events": hw - base, "source_cpu_s": src_cpu,
                "walsender_cpu_s": walsender_cpu, "kafka_cpu_s": kafka_cpu, "source_hwm_mb": rss}

    async def drain_e2e(self, p: Pipeline, n: int) -> dict[str, Any]:
        sink = p.worker("sink")
        await sink.wait_log("assigned 1 table partition", timeout=120)
        src = p.worker("source")
        streaming_at = await src.wait_log("streaming from", timeout=120)
        m0, src_cpu0, sink_cpu0, kcpu0 = machine_cpu(), src.cpu(), sink.cpu(), cpu_seconds(self.kafka_pid)
        ws_pid = self.walsender_pid(p.slot)
        table = p.table_path("bench")
        deadline = time.monotonic() + self.args.timeout
        while True:
            last = delta_last_offset(table)
            if last is not None and last >= n - 1:
                done_at = time.time()
                break
            if time.monotonic() > deadline or src.proc.poll() is not None or sink.proc.poll() is not None:
                raise RuntimeError(f"end to end {p.tag}: lake at offset {last} of {n - 1} after {self.args.timeout}s:\n"
                                   f"{src.tail(10)}\n{sink.tail(10)}")
            await asyncio.sleep(0.02)
        machine = machine_cpu() - m0
        kcpu1 = cpu_seconds(self.kafka_pid)
        cpu = {"source_cpu_s": (src.cpu() or 0) - (src_cpu0 or 0), "sink_cpu_s": (sink.cpu() or 0) - (sink_cpu0 or 0), "walsender_cpu_s": cpu_seconds(ws_pid),
               "kafka_cpu_s": (kcpu1 - kcpu0) if kcpu0 is not None and kcpu1 is not None else None, "machine_cpu_s": machine}
        cpu["others_cpu_s"] = machine - sum(v or 0 for k, v in cpu.items() if k != "machine_cpu_s")
        count = await asyncio.to_thread(delta_count, table)
        commits = len(delta_commits(table))
        codes = await asyncio.gather(src.stop(), sink.stop())
        if count != n or any(codes):
            raise RuntimeError(f"end to end {p.tag}: {count:,} rows in the lake (want {n:,}), exit codes {codes}")
        seconds = done_at - streaming_at
        return {"seconds": seconds, "rows_s": n / seconds, "lake_rows": count, "delta_commits": commits,
                "seconds_with_start": done_at - src.started_at, **cpu}

    # --- 4: latency

    async def latency(self) -> dict[str, Any]:
        a = self.args
        p = self.pipeline("live")
        await self.ensure_topics(p, "lat", "big")
        sink = p.worker("sink")
        src = p.worker("source")
        await sink.wait_log("assigned 2 table partition", timeout=120)
        await src.wait_log("streaming from", timeout=120)
        self.live = (p, src, sink)
        # Warm up: the table's first events (schema, lake table creation) are not steady state.
        warm = 200
        await asyncio.to_thread(self.load, "lat", 1, warm, 50)
        table = p.table_path("lat")
        await self.wait_offset(table, warm - 1, 60, src, sink)
        await asyncio.sleep(1.0)

        per_txn = a.latency_txn_rows
        interval = per_txn / a.latency_rate
        total_txns = int(a.latency_seconds / interval)
        log(f"latency: {per_txn} rows per transaction every {interval * 1000:.0f} ms for {a.latency_seconds:.0f}s "
            f"({a.latency_rate:,} rows/s), pipeline running")

        def generate() -> tuple[float, int, float]:
            behind = 0
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                stmt = INSERT.format(name="lat")
                t0 = time.monotonic()
                nid = warm + 1
                for i in range(total_txns):
                    due = t0 + i * interval
                    now = time.monotonic()
                    if due > now:
                        time.sleep(due - now)
                    elif now - due > interval:
                        behind += 1
                    conn.execute(stmt, (nid, nid + per_txn - 1))
                    nid += per_txn
                return time.monotonic() - t0, nid - warm - 1, behind

        gen_s, rows, behind = await asyncio.to_thread(generate)
        await self.wait_offset(table, warm + rows - 1, 120, src, sink)
        # Which Delta version first held each row: the first commit whose applied position >= the row's.
        from deltalake import DeltaTable

        commits = [c for c in delta_commits(table) if c["position"]]
        positions = [c["position"] for c in commits]
        data = DeltaTable(str(table)).to_pyarrow_table(columns=["id", "_lakeward_position", "_lakeward_committed_at"]).to_pylist()
        lat = []
        for row in data:
            if row["id"] <= warm:
                continue
            i = bisect_left(positions, row["_lakeward_position"])
            lat.append(commits[i]["mtime"] - row["_lakeward_committed_at"].timestamp())
        out = {
            "rows": rows, "target_rate": a.latency_rate, "achieved_rate": rows / gen_s, "seconds": gen_s,
            "late_transactions": behind, "rows_measured": len(lat),
            "p50_s": pct(lat, 0.5), "p90_s": pct(lat, 0.9), "p99_s": pct(lat, 0.99), "max_s": max(lat), "min_s": min(lat),
            "delta_versions": len(commits),
        }
        log(f"latency: p50 {out['p50_s']:.3f}s p99 {out['p99_s']:.3f}s max {out['max_s']:.3f}s over {len(lat):,} rows "
            f"({out['achieved_rate']:,.0f} rows/s achieved)")
        return out

    async def wait_offset(self, table: Path, offset: int, timeout: float, *workers: Worker) -> float:
        deadline = time.monotonic() + timeout
        while True:
            last = delta_last_offset(table)
            if last is not None and last >= offset:
                return time.time()
            if time.monotonic() > deadline or any(w.proc.poll() is not None for w in workers):
                raise RuntimeError(f"lake table {table} at offset {last}, waiting for {offset}:\n" + "\n".join(w.tail(10) for w in workers))
            await asyncio.sleep(0.02)

    # --- 5: memory through one big transaction

    async def big_transaction(self) -> dict[str, Any]:
        a = self.args
        p, src, sink = self.live
        n = a.big_rows
        baseline = {"source_rss_mb": src.rss_mb(), "sink_rss_mb": sink.rss_mb(),
                    "source_hwm_before_reset_mb": src.hwm_mb(), "sink_hwm_before_reset_mb": sink.hwm_mb()}
        reset = src.reset_hwm() and sink.reset_hwm()
        log(f"memory: one transaction of {n:,} rows (VmHWM {'reset' if reset else 'NOT reset: includes earlier phases'})")
        samples: list[tuple[float, float | None, float | None]] = []
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                samples.append((time.time(), src.rss_mb(), sink.rss_mb()))
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        t0 = time.time()
        await asyncio.to_thread(self.load, "big", 1, n, n)
        committed_at = time.time()
        log(f"memory: committed after {committed_at - t0:.1f}s; waiting for the lake")
        done_at = await self.wait_offset(p.table_path("big"), n - 1, a.timeout, src, sink)
        stop.set()
        await sampler
        out = {
            "rows": n, "hwm_reset": reset, "insert_s": committed_at - t0,
            "source_peak_rss_mb": src.hwm_mb(), "sink_peak_rss_mb": sink.hwm_mb(),
            "commit_to_lake_s": done_at - committed_at, "commit_to_lake_rows_s": n / (done_at - committed_at),
            **baseline,
            "rss_samples": [{"t": round(t - t0, 1), "source_mb": s, "sink_mb": k} for t, s, k in samples],
        }
        count = await asyncio.to_thread(delta_count, p.table_path("big"))
        out["lake_rows"] = count
        if count != n:
            raise RuntimeError(f"big transaction: {count:,} rows in the lake, want {n:,}")
        log(f"memory: source peak {out['source_peak_rss_mb']:.0f} MB, sink peak {out['sink_peak_rss_mb']:.0f} MB; "
            f"lake complete {out['commit_to_lake_s']:.1f}s after the commit")
        return out


# --- report --------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    import aiokafka
    import deltalake
    import orjson
    import pyarrow

    meminfo = {l.split(":")[0]: l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines()}
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), platform.processor())
    kafka_jar = next((p.name for p in Path("/var/lib/lakeward-services/kafka/libs").glob("kafka_2.13-*.jar")), None) \
        if Path("/var/lib/lakeward-services/kafka/libs").exists() else None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "connectors", "core", "sinks"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = None, None
    recv_version = subprocess.run([PG_RECVLOGICAL, "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cpus": os.cpu_count(), "cpu_model": cpu, "mem_total_gb": round(int(meminfo["MemTotal"]) / 2**20, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "postgres": query1(ADMIN_DSN, "SHOW server_version"), "pg_recvlogical": recv_version,
        "kafka": kafka_jar, "psycopg": psycopg.__version__, "libpq": psycopg.pq.version(),
        "aiokafka": aiokafka.__version__, "deltalake": deltalake.__version__, "pyarrow": pyarrow.__version__,
        "orjson": orjson.__version__, "git_commit": commit, "git_dirty": dirty,
        "loadavg_start": os.getloadavg(),
    }


def summarize(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    rounds = res["rounds"]

    def spread(values: list[float], fmt: str) -> str:
        s = stats(values)
        if not s:
            return "n/a"
        if s["n"] == 1:
            return fmt.format(s["median"])
        return f"{fmt.format(s['median'])} ({fmt.format(s['min'])} – {fmt.format(s['max'])}, n={s['n']})"

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("pass" if ok else "MISS")

    if rounds:
        recv = [r["recvlogical"]["rows_s"] for r in rounds]
        src = [r["source"]["rows_s"] for r in rounds]
        ratio = [r["source"]["ratio"] for r in rounds]
        e2e = [r["e2e"]["rows_s"] for r in rounds]
        rows.append(("1. pg_recvlogical drain (physical limit), rows/s", spread(recv, "{:,.0f}"), "—", "—"))
        rows.append(("2. source alone (WAL → broker acked), rows/s", spread(src, "{:,.0f}"), "—", "—"))
        rows.append(("   source / pg_recvlogical", spread(ratio, "{:.2f}×"), f"≥ {TARGETS['source_ratio']}×",
                     verdict(statistics.median(ratio) >= TARGETS["source_ratio"])))
        rows.append(("   source incl. process start, rows/s", spread([r["source"]["rows_s_with_start"] for r in rounds], "{:,.0f}"), "—", "—"))
        rows.append(("   source CPU per row, µs", spread([r["source"].get("source_us_per_row") for r in rounds], "{:.1f}"), "—", "—"))
        rows.append(("3. end to end (WAL → Delta mirror), rows/s", spread(e2e, "{:,.0f}"), f"≥ {TARGETS['e2e_rows_s']:,}",
                     verdict(statistics.median(e2e) >= TARGETS["e2e_rows_s"])))
    lat = res.get("latency")
    if lat:
        rows.append((f"4. commit→lake latency p50 @ {lat['achieved_rate']:,.0f} rows/s", f"{lat['p50_s']:.2f} s", "—", "—"))
        rows.append(("   commit→lake latency p99", f"{lat['p99_s']:.2f} s (max {lat['max_s']:.2f})", f"≤ {TARGETS['latency_p99_s']} s",
                     verdict(lat["p99_s"] <= TARGETS["latency_p99_s"])))
    big = res.get("memory")
    if big:
        rows.append((f"5. peak RSS, source, one {big['rows']:,}-row txn", f"{big['source_peak_rss_mb']:.0f} MB", f"≤ {TARGETS['rss_mb']} MB",
                     verdict(big["source_peak_rss_mb"] <= TARGETS["rss_mb"])))
        rows.append((f"   peak RSS, sink, one {big['rows']:,}-row txn", f"{big['sink_peak_rss_mb']:.0f} MB", f"≤ {TARGETS['rss_mb']} MB",
                     verdict(big["sink_peak_rss_mb"] <= TARGETS["rss_mb"])))
        rows.append(("   that txn, commit → all rows in the lake", f"{big['commit_to_lake_s']:.1f} s ({big['commit_to_lake_rows_s']:,.0f} rows/s)", "—", "—"))
    return rows


def markdown(res: dict[str, Any], table: list[tuple[str, str, str, str]]) -> str:
    env, a = res["environment"], res["args"]
    lines = [
        f"# Lakeward benchmark {res['started']}",
        "",
        f"`{res['command']}`",
        "",
        f"{env['cpus']} CPUs ({env['cpu_model']}), {env['mem_total_gb']} GB RAM, Linux {env['kernel']}; PostgreSQL {env['postgres']}, "
        f"{env['kafka']}, Python {env['python']}, psycopg {env['psycopg']} (libpq {env['libpq']}), aiokafka {env['aiokafka']}, "
        f"deltalake {env['deltalake']}, pyarrow {env['pyarrow']}; git {env['git_commit']}{' (modified)' if env['git_dirty'] else ''}. "
        f"Load average at start {', '.join(f'{x:.2f}' for x in env['loadavg_start'])}, at end {', '.join(f'{x:.2f}' for x in res['loadavg_end'])}.",
        "",
        f"Load: {a['rows']:,} inserts in transactions of {a['txn_rows']:,} rows; {a['repeat']} round(s): median (min – max).",
        "",
        "| measure | result | target | |",
        "| --- | --- | --- | --- |",
        *(f"| {m} | {v} | {t} | {ok} |" for m, v, t, ok in table),
        "",
    ]
    if res["rounds"]:
        lines += ["Per round: seconds, and CPU seconds of each process during the drain; *others* is the CPU every other",
                  "process of the machine used meanwhile (other people's work on a shared machine slows the figures).",
                  "",
                  "| round | load s | WAL MiB | recvlogical s | its walsender CPU | others CPU | source s | source CPU (µs/row) "
                  "| its walsender CPU | broker CPU | others CPU | e2e s | source CPU | sink CPU | others CPU |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

        def f(x: float | None) -> str:
            return "?" if x is None else f"{x:.1f}"

        for r in res["rounds"]:
            rl, so, e2 = r["recvlogical"], r["source"], r["e2e"]
            lines.append(f"| {r['round']} | {r['load_s']:.1f} | {r['wal_bytes'] / 2**20:,.0f} | {rl['seconds']:.2f} | {f(rl.get('walsender_cpu_s'))} | "
                         f"{f(rl.get('others_cpu_s'))} | {so['seconds']:.2f} | {f(so['source_cpu_s'])} ({so.get('source_us_per_row', 0):.1f}) | "
                         f"{f(so['walsender_cpu_s'])} | {f(so['kafka_cpu_s'])} | {f(so.get('others_cpu_s'))} | {e2['seconds']:.2f} | "
                         f"{f(e2['source_cpu_s'])} | {f(e2['sink_cpu_s'])} | {f(e2.get('others_cpu_s'))} |")
        lines.append("")
    return "\n".join(lines)


def print_table(table: list[tuple[str, str, str, str]]) -> None:
    w = [max(len(r[i]) for r in table + [("measure", "result", "target", "")]) for i in range(4)]
    head = ("measure", "result", "target", "")
    print()
    for r in [head, tuple("-" * x for x in w), *table]:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
    print()


async def main(args: argparse.Namespace) -> int:
    bench = Bench(args)
    started = datetime.now(UTC)
    res: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python benchmarks/pipeline.py " + " ".join(sys.argv[1:]),
        "args": vars(args),
        "targets": TARGETS,
        "environment": environment(),
        "rounds": [],
    }
    bench.result = res
    log(f"database {bench.db}, work dir {bench.work}")
    ok = True
    try:
        await bench.setup()
        if "throughput" in args.phases:
            for r in range(args.repeat):
                res["rounds"].append(await bench.throughput_round(r))
        if "latency" in args.phases or "memory" in args.phases:
            res["latency"] = await bench.latency()
            if "memory" in args.phases:
                res["memory"] = await bench.big_transaction()
            p, src, sink = bench.live
            res["live_worker_errors"] = src.errors() + sink.errors()
            await asyncio.gather(src.stop(), sink.stop())
    except BaseException as e:
        ok = False
        res["error"] = f"{e.__class__.__name__}: {e}"
        log(f"FAILED: {res['error']}")
        if not isinstance(e, Exception):
            raise
    finally:
        res["loadavg_end"] = os.getloadavg()
        res["finished"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            await bench.teardown()
        except Exception as e:  # noqa: BLE001
            log(f"teardown: {e}")
        table = summarize(res)
        if table:
            print_table(table)
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = started.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "")
        md = markdown(res, table)
        for name in (stamp, "latest"):
            (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=2, default=str))
            (RESULTS / f"{name}.md").write_text(md)
        log(f"results: {RESULTS / stamp}.json and .md")
    return 0 if ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=None, help="row changes per throughput round (default 1,000,000; --quick 100,000)")
    ap.add_argument("--txn-rows", type=int, default=10_000, help="rows per transaction of the throughput load (default 10,000)")
    ap.add_argument("--repeat", type=int, default=None, help="throughput rounds, each with fresh slots (default 3; --quick 1)")
    ap.add_argument("--latency-seconds", type=float, default=None, help="length of the steady-rate phase (default 40; --quick 10)")
    ap.add_argument("--latency-rate", type=int, default=5_000, help="rows/s of the steady-rate phase (default 5,000)")
    ap.add_argument("--latency-txn-rows", type=int, default=50, help="rows per transaction of the steady-rate phase (default 50)")
    ap.add_argument("--big-rows", type=int, default=None, help="rows of the one big transaction (default 5,000,000; --quick 300,000)")
    ap.add_argument("--phases", default="throughput,latency,memory", help="comma-separated subset of throughput,latency,memory")
    ap.add_argument("--quick", action="store_true", help="a short variant (< 2 minutes): smaller load, one round")
    ap.add_argument("--timeout", type=float, default=900, help="give up on a drain after this many seconds")
    ap.add_argument("--profile", action="store_true", help="run the source-alone drains under pyinstrument (slower; sessions kept in the work dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs, lakes)")
    ap.add_argument("--source-option", action="append", default=[], metavar="KEY=VALUE",
                    help="extra source setting, e.g. status_interval_s=0.5 (repeatable; default: the product's defaults)")
    ap.add_argument("--sink-option", action="append", default=[], metavar="KEY=VALUE",
                    help="extra sink setting, e.g. batch_rows=50000 (repeatable; default: the product's defaults)")
    a = ap.parse_args(argv)
    a.rows = a.rows or (100_000 if a.quick else 1_000_000)
    a.repeat = a.repeat or (1 if a.quick else 3)
    a.latency_seconds = a.latency_seconds or (10.0 if a.quick else 40.0)
    a.big_rows = a.big_rows or (300_000 if a.quick else 5_000_000)
    a.phases = [p.strip() for p in a.phases.split(",") if p.strip()]
    if a.profile:
        a.keep = True
    return a


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
