"""The phases of benchmarks/pipeline.py: one Lakeward deployment per measurement (`Pipeline`), and
the benchmark run (`Bench`) with its throughput rounds (1-3), the steady-rate latency (4) and the
memory through one big transaction (5). The module docstring of pipeline.py says what each measures."""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import tempfile
import time
import uuid
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from aiokafka import TopicPartition
from deltalog import delta_commits, delta_count, delta_last_offset
from measure import cpu_seconds, kafka_pid, machine_cpu, pct
from services import ADMIN_DSN, BROKER, INSERT, TABLE_DDL, dsn_for, log, query1, sql
from workers import Worker

from lakeward.connectors.postgres.catalog import drop_slot
from lakeward.core import broker as kafka
from lakeward.core.config import BrokerConfig

PG_RECVLOGICAL = os.environ.get("PG_RECVLOGICAL") or shutil.which("pg_recvlogical") or "/usr/lib/postgresql/15/bin/pg_recvlogical"
PUBLICATION = "bench_pub"


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
        if self.args.keep:  # e.g. to replay a round's topics into another lake under a profiler
            log(f"kept the topics of {', '.join(p.prefix for p in self.pipelines)} and the work dir {self.work}")
        else:
            await self.delete_topics()
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s", (self.db,)).fetchall():
                drop_slot(conn, slot)
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    async def delete_topics(self) -> None:
        try:
            async with kafka.Admin(self.broker) as admin:
                prefixes = tuple(p.prefix + "." for p in self.pipelines)
                mine = [t for t in await admin.topics() if t.startswith(prefixes)] if prefixes else []
                await admin.delete_topics(mine)
        except Exception as e:  # noqa: BLE001 - cleanup only
            log(f"could not delete the benchmark topics: {e}")

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
        cmd = [PG_RECVLOGICAL, "-d", psycopg.conninfo.make_conninfo("", **info), "--slot", slot, "--start", "--no-loop",
               "-o", "proto_version=1", "-o", f"publication_names={PUBLICATION}", "--endpos", end_lsn, "-f", "/dev/null"]
        t0, m0, r0 = time.monotonic(), machine_cpu(), resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = await asyncio.create_subprocess_exec(*cmd, stderr=asyncio.subprocess.PIPE)
        ws_pid: int | None = None
        ws_cpu: float | None = None  # the walsender is a new backend: its CPU time starts at ~0
        while proc.returncode is None:
            ws_pid = ws_pid or self.walsender_pid(slot)
            ws_cpu = cpu_seconds(ws_pid) or ws_cpu
            try:
                async with asyncio.timeout(0.05):
                    await proc.wait()
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
        done_at = 0.0  # set when the last event is acknowledged
        while True:
            hw = await self.high_watermark(topic)
            if hw - base >= n:
                done_at = time.time()
                break
            if time.monotonic() > deadline or w.exited():
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
        done_at = 0.0  # set when the last event is in the lake
        while True:
            last = delta_last_offset(table)
            if last is not None and last >= n - 1:
                done_at = time.time()
                break
            if time.monotonic() > deadline or src.exited() or sink.exited():
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
            if time.monotonic() > deadline or any(w.exited() for w in workers):
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

