#!/usr/bin/env python3
"""Lakeward snapshot benchmark: an initial snapshot of one big table, against the database's own client.

    .venv/bin/python benchmarks/snapshot.py                       # 10,000,000 rows, parallelism 1,2,4, PostgreSQL (+ MariaDB if up)
    .venv/bin/python benchmarks/snapshot.py --rows 1000000 --json /tmp/snapshot.json
    .venv/bin/python benchmarks/snapshot.py --rows 200000 --parallelism 2 --no-mysql   # a quick check of the script

Needs the services of `make services` (endpoints from LAKEWARD_TEST_PG_DSN, LAKEWARD_TEST_BROKER and
LAKEWARD_TEST_MYSQL_URL, as the tests), psql, and the mariadb (or mysql) client for MySQL.

Per database, a fresh database with one table `bench` of `--rows` rows (bigint primary key, int, text md5,
numeric/decimal(12,2), timestamptz/timestamp, boolean; filled like benchmarks/pipeline.py), then:

1. limit: the database's own client reads the whole table to /dev/null (PostgreSQL: psql
   `COPY (SELECT ...) TO STDOUT`, text format; MySQL: `mariadb --quick`), timed.
2. source only, per snapshot_parallelism in `--parallelism`: a `lakeward run --source` worker with
   `snapshot: initial` and a fresh slot/state/topics, from process start until the broker holds the table
   topic's N+1 events (the `t` reset and N `r` rows; end offsets polled).
3. end to end, likewise: a sink worker (mirror, fresh lake) waits on the topic, then the source starts;
   timed from the source's process start until the Delta table holds N rows (the log's numRecords of its
   add actions, polled), then counted once more.

Seconds and rows/s count from the source worker's process start (imports, connecting, creating the slot and
planning the snapshot included); "1st event s" is when the table's `t` reached the broker.

Each worker runs as `python -m lakeward.app.cli -c CFG run --source shop | --sink lake` with the product's
defaults but for the snapshot settings. Reported: seconds, rows/s, rows/s as a fraction of the limit, and the
peak RSS (VmHWM of /proc/<pid>/status, polled) of the source and of the sink process. If this checkout's
source config has no `snapshot_parallelism`, only the default is run (said in the output). Everything the
benchmark creates (databases, slots, publications, topics, lakes, configs) is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from services import BROKER, ROOT, log
from snapshot_databases import SOURCE, MySQL, Postgres
from workers import Worker

from lakeward.core import broker as kafka
from lakeward.core.config import BrokerConfig
from lakeward.core.events import table_topic

MODES = ("source", "e2e")
MODE_LABELS = {"source": "source only (→ broker acked)", "e2e": "end to end (→ Delta mirror)"}


# --- one run -------------------------------------------------------------------------------------


class Run:
    """One snapshot measured: its own topic prefix, slot, state, lake and config."""

    def __init__(self, bench: Bench, db: Postgres | MySQL, mode: str, parallelism: int | None):
        self.bench, self.db, self.mode, self.parallelism = bench, db, mode, parallelism
        self.tag = f"{db.name[:2]}_{mode}_{parallelism or 'default'}"
        self.prefix = f"bsnap{bench.id}{self.tag.replace('_', '')}"
        self.lake = bench.work / f"lake_{self.tag}"
        self.config = bench.work / f"lakeward_{self.tag}.yaml"
        self.topic = table_topic(self.prefix, SOURCE, db.schema(), "bench")
        self.lake_table = self.lake / SOURCE / db.schema() / "bench"
        self.workers: list[Worker] = []

    def write_config(self) -> None:
        self.config.write_text(
            f"broker:\n  bootstrap_servers: {BROKER}\n  topic_prefix: {self.prefix}\nlake:\n  uri: {self.lake}\n"
            f"sources:\n{self.db.source_yaml(self.tag, self.parallelism)}"
            f"sinks:\n  - name: lake\n    type: delta\n    sources: [{SOURCE}]\n    mode: mirror\n"
            f"    group_id: lakeward.bsnap.{self.bench.id}.{self.tag}\n")

    def start(self, role: str) -> Worker:
        w = Worker(self.config, role, self.bench.work / f"{self.tag}_{role}.log")
        self.workers.append(w)
        return w.start()

    def failed_worker(self) -> Worker | None:
        return next((w for w in self.workers if w.proc is not None and w.proc.poll() is not None), None)


class PeakRss:
    """The highest VmHWM seen of each worker (MB); read on every poll so a worker's exit loses nothing."""

    def __init__(self, **workers: Worker | None):
        self.workers = {k: w for k, w in workers.items() if w is not None}
        self.peak_mb: dict[str, float | None] = dict.fromkeys(workers)

    def sample(self) -> None:
        for k, w in self.workers.items():
            mb = w.hwm_mb()
            if mb is not None:
                self.peak_mb[k] = max(mb, self.peak_mb[k] or 0.0)


async def topic_events(consumer: Any, topic: str) -> int:
    """Events in a topic (the sum of its partitions' end offsets)."""
    for _ in range(100):
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            tps = [TopicPartition(topic, p) for p in partitions]
            return sum((await consumer.end_offsets(tps)).values())
        await consumer._client.force_metadata_update()  # a fresh topic: metadata not there yet
        await asyncio.sleep(0.1)
    raise RuntimeError(f"cannot read the end offsets of {topic}")


def newest_log_version(table: Path) -> int | None:
    """The newest commit of a Delta table from a listing of its log (cheap: polled often)."""
    try:
        names = os.listdir(table / "_delta_log")
    except FileNotFoundError:
        return None
    versions = [int(n[:20]) for n in names if n.endswith(".json") and n[:20].isdigit()]
    return max(versions, default=None)


def lake_rows_from_log(table: Path) -> int | None:
    """Rows of a Delta table from its log (numRecords of the add actions), without reading data files."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        actions = DeltaTable(str(table)).get_add_actions(flatten=True)
    except TableNotFoundError:
        return None
    counts = actions.column("num_records")
    return sum(v for v in _to_pylist(counts) if v is not None)


def _to_pylist(column: Any) -> list:
    """A column of deltalake's add actions (pyarrow or arro3, by version) as a Python list."""
    if hasattr(column, "to_pylist"):
        return column.to_pylist()
    import pyarrow

    return pyarrow.chunked_array(column).to_pylist()


def lake_rows_counted(table: Path) -> int:
    from deltalake import DeltaTable

    return DeltaTable(str(table)).to_pyarrow_dataset().count_rows()


@dataclass
class Progress:
    """What the poll loop saw: when the first event arrived, when the topic and the lake were complete."""

    started_at: float
    first_event_at: float | None = None
    published_at: float | None = None
    lake_done_at: float | None = None
    events: int = 0
    lake_rows: int | None = None
    lake_version: int | None = None


async def poll_until(run: Run, progress: Progress, peaks: PeakRss, done: Callable[[], bool], poll_s: float,
                     watch_lake: bool = False) -> None:
    """Poll the topic (and with `watch_lake` the lake) until `done()`; fail on a worker's exit or the timeout."""
    bench, n = run.bench, run.bench.args.rows
    deadline = time.monotonic() + bench.args.timeout
    while not done():
        peaks.sample()
        now = time.time()
        progress.events = await topic_events(bench.consumer, run.topic)
        if progress.events and progress.first_event_at is None:
            progress.first_event_at = now
        if progress.events >= n + 1 and progress.published_at is None:
            progress.published_at = now
        if watch_lake and (version := newest_log_version(run.lake_table)) != progress.lake_version:
            # Load the table only when a commit appeared: a big table's log costs CPU the workers need.
            progress.lake_version = version
            progress.lake_rows = await asyncio.to_thread(lake_rows_from_log, run.lake_table)
            if progress.lake_rows is not None and progress.lake_rows >= n:
                progress.lake_done_at = time.time()
        if done():
            break
        failed = run.failed_worker()
        if failed is not None or time.monotonic() > deadline:
            why = f"the {failed.role} worker exited ({failed.proc and failed.proc.returncode})" if failed else f"not done after {bench.args.timeout:g}s"
            raise RuntimeError(f"{run.tag}: {why}; {progress.events:,} events in the topic, lake rows {progress.lake_rows}:\n"
                               + "\n".join(w.tail(15) for w in run.workers))
        await asyncio.sleep(poll_s)
    peaks.sample()


async def measure(run: Run) -> dict[str, Any]:
    """One snapshot, source only or end to end; returns its figures."""
    n = run.bench.args.rows
    run.write_config()
    await run.bench.ensure_topic(run.prefix, run.topic)
    sink = None
    if run.mode == "e2e":
        sink = run.start("sink")
        await sink.wait_log("assigned 1 table partition", timeout=120)
    source = run.start("source")
    peaks = PeakRss(source=source, sink=sink)
    progress = Progress(started_at=source.started_at)
    if run.mode == "source":
        await poll_until(run, progress, peaks, lambda: progress.published_at is not None, poll_s=0.05)
        done_at = progress.published_at
    else:
        await poll_until(run, progress, peaks, lambda: progress.lake_done_at is not None, poll_s=0.1, watch_lake=True)
        done_at = progress.lake_done_at
    assert done_at is not None
    out = figures(run, progress, peaks, done_at)
    if run.mode == "e2e":
        out["lake_rows_counted"] = await asyncio.to_thread(lake_rows_counted, run.lake_table)
    codes = await asyncio.gather(*(w.stop() for w in run.workers))
    out["exit_codes"] = list(codes)
    out["worker_errors"] = [msg for w in run.workers for msg in w.errors()]
    check(run, out, n)
    return out


def figures(run: Run, progress: Progress, peaks: PeakRss, done_at: float) -> dict[str, Any]:
    n = run.bench.args.rows
    seconds = done_at - progress.started_at
    out: dict[str, Any] = {
        "database": run.db.name, "mode": run.mode, "parallelism": run.parallelism, "rows": n,
        "seconds": seconds, "rows_s": n / seconds,
        "first_event_s": (progress.first_event_at or done_at) - progress.started_at,
        "events": progress.events, "source_peak_rss_mb": peaks.peak_mb.get("source"),
        "sink_peak_rss_mb": peaks.peak_mb.get("sink"),
    }
    if run.mode == "e2e":
        out["published_s"] = (progress.published_at - progress.started_at) if progress.published_at else None
        out["lake_rows"] = progress.lake_rows
    return out


def check(run: Run, out: dict[str, Any], n: int) -> None:
    """A run that did not deliver exactly the table is no measurement: say what is wrong."""
    problems = []
    if any(out["exit_codes"]):
        problems.append(f"exit codes {out['exit_codes']}")
    if run.mode == "source" and out["events"] != n + 1:
        problems.append(f"{out['events']:,} events in the topic, want {n + 1:,} (t + {n:,} r)")
    if run.mode == "e2e" and out["lake_rows_counted"] != n:
        problems.append(f"{out['lake_rows_counted']:,} rows in the lake, want {n:,}")
    if problems:
        raise RuntimeError(f"{run.tag}: " + "; ".join(problems))


# --- the benchmark -------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.id = os.urandom(3).hex()
        self.work = Path(tempfile.mkdtemp(prefix=f"lakeward-bsnap-{self.id}-"))
        self.broker = BrokerConfig(bootstrap_servers=BROKER)
        self.consumer: Any = None

    async def start(self) -> None:
        self.consumer = kafka.consumer(self.broker, isolation_level="read_uncommitted")
        await kafka.start_client(self.consumer, self.broker)

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    async def ensure_topic(self, prefix: str, topic: str) -> None:
        """The table topic up front, with the source's own settings, so the sink is assigned it before the first event."""
        async with kafka.Admin(BrokerConfig(bootstrap_servers=BROKER, topic_prefix=prefix)) as admin:
            await admin.ensure_topic(topic)

    async def delete_topics(self, prefix: str) -> None:
        async with kafka.Admin(self.broker) as admin:
            await admin.delete_topics([t for t in await admin.topics() if t.startswith(prefix + ".")])

    async def clean_up(self, run: Run) -> None:
        """Whatever one run left: workers, topics, lake, slot; a failure here is reported, not raised."""
        for w in run.workers:
            w.kill()
        steps = [("topics", self.delete_topics(run.prefix)), ("slot", asyncio.to_thread(run.db.cleanup_run, run.tag))]
        for what, step in steps:
            try:
                await step
            except Exception as e:  # noqa: BLE001 - clean-up only
                log(f"{run.tag}: could not remove its {what}: {e}")
        if not self.args.keep:
            shutil.rmtree(run.lake, ignore_errors=True)

    def parallelisms(self, db: Postgres | MySQL) -> list[int | None]:
        return list(self.args.parallelism) if db.parallelism_supported else [None]

    async def database(self, db: Postgres | MySQL) -> dict[str, Any]:
        """Fill, measure the limit, then every (parallelism, mode) run of one database."""
        n = self.args.rows
        log(f"{db.name}: filling {db.db}.bench with {n:,} rows")
        fill_s = await asyncio.to_thread(db.setup, n)
        if (count := await asyncio.to_thread(db.count)) != n:
            raise RuntimeError(f"{db.name}: the table holds {count:,} rows, want {n:,}")
        limit_s = await asyncio.to_thread(db.limit_seconds)
        out: dict[str, Any] = {"database": db.name, **db.versions(), "fill_s": fill_s, "limit": db.limit_label,
                               "limit_s": limit_s, "limit_rows_s": n / limit_s,
                               "parallelism_supported": db.parallelism_supported, "runs": []}
        log(f"{db.name}: filled in {fill_s:.1f}s; limit ({db.limit_label}) {n / limit_s:,.0f} rows/s ({limit_s:.2f}s)")
        if not db.parallelism_supported:
            log(f"{db.name}: this checkout's source config has no snapshot_parallelism: running the default only")
        for parallelism in self.parallelisms(db):
            for mode in self.args.modes:
                out["runs"].append(await self.one_run(db, mode, parallelism, out["limit_rows_s"]))
        return out

    async def one_run(self, db: Postgres | MySQL, mode: str, parallelism: int | None, limit_rows_s: float) -> dict[str, Any]:
        run = Run(self, db, mode, parallelism)
        log(f"{run.tag}: starting")
        try:
            result = await measure(run)
            result["ratio_to_limit"] = result["rows_s"] / limit_rows_s
            log(f"{run.tag}: {result['rows_s']:,.0f} rows/s ({result['seconds']:.1f}s, {result['ratio_to_limit']:.2f}x the limit), "
                f"peak RSS source {fmt_mb(result['source_peak_rss_mb'])}, sink {fmt_mb(result['sink_peak_rss_mb'])}")
            return result
        except Exception as e:  # noqa: BLE001 - one failed run must not lose the others' figures
            log(f"{run.tag}: FAILED: {e}")
            return {"database": db.name, "mode": mode, "parallelism": parallelism, "error": str(e)}
        finally:
            await self.clean_up(run)


# --- report --------------------------------------------------------------------------------------


def fmt_mb(mb: float | None) -> str:
    return "—" if mb is None else f"{mb:,.0f} MB"


def report_rows(results: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for d in results:
        rows.append((d["database"], f"limit: {d['limit']}", "—", f"{d['limit_s']:.1f}", "—", f"{d['limit_rows_s']:,.0f}", "1.00×", "—", "—"))
        for r in d["runs"]:
            p = str(r["parallelism"]) if r["parallelism"] is not None else "default"
            if "error" in r:
                rows.append((d["database"], MODE_LABELS[r["mode"]], p, "FAILED", "", "", "", "", ""))
                continue
            rows.append((d["database"], MODE_LABELS[r["mode"]], p, f"{r['seconds']:.1f}", f"{r['first_event_s']:.1f}", f"{r['rows_s']:,.0f}",
                         f"{r['ratio_to_limit']:.2f}×", fmt_mb(r["source_peak_rss_mb"]), fmt_mb(r["sink_peak_rss_mb"])))
    return rows


HEADER = ("database", "measure", "parallelism", "seconds", "1st event s", "rows/s", "× limit", "source peak RSS", "sink peak RSS")


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    print()
    for r in [HEADER, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    print()


def notes(results: list[dict[str, Any]]) -> list[str]:
    out = []
    for d in results:
        if not d["parallelism_supported"]:
            out.append(f"{d['database']}: this checkout's source config has no snapshot_parallelism; only the default ran.")
        for r in d["runs"]:
            if "error" in r:
                out.append(f"{d['database']} {r['mode']} parallelism {r['parallelism'] or 'default'}: {r['error'].splitlines()[0]}")
    return out


def environment() -> dict[str, Any]:
    import aiokafka
    import deltalake
    import psycopg

    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "psycopg": psycopg.__version__, "aiokafka": aiokafka.__version__, "deltalake": deltalake.__version__,
            "git_commit": git, "loadavg_start": os.getloadavg()}


def databases(args: argparse.Namespace, bench_id: str) -> list[Postgres | MySQL]:
    dbs: list[Postgres | MySQL] = [Postgres(bench_id)]
    mysql = MySQL(bench_id)
    if args.mysql is True and not mysql.available():
        raise SystemExit(f"--mysql: cannot connect to {mysql.conn_settings['host']}:{mysql.conn_settings['port']} "
                         "(LAKEWARD_TEST_MYSQL_URL); start it with `make services`")
    if args.mysql is True or (args.mysql is None and mysql.available()):
        dbs.append(mysql)
    elif args.mysql is None:
        log("MySQL/MariaDB is not reachable: PostgreSQL only (--mysql to require it)")
    return dbs


async def main(args: argparse.Namespace) -> int:
    bench = Bench(args)
    res: dict[str, Any] = {"started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                           "command": "python benchmarks/snapshot.py " + " ".join(sys.argv[1:]),
                           "args": vars(args), "environment": environment(), "results": []}
    dbs = databases(args, bench.id)
    log(f"work dir {bench.work}; databases {', '.join(d.db for d in dbs)}")
    failed = False
    try:
        await bench.start()
        for db in dbs:
            try:
                res["results"].append(await bench.database(db))
            except Exception as e:  # noqa: BLE001 - report what was measured, go on with the next database
                failed = True
                res.setdefault("errors", []).append(f"{db.name}: {e.__class__.__name__}: {e}")
                log(f"{db.name}: FAILED: {e.__class__.__name__}: {e}")
            finally:
                await asyncio.to_thread(db.teardown)
    finally:
        await bench.stop()
    res["loadavg_end"] = os.getloadavg()
    res["notes"] = notes(res["results"])
    print_table(report_rows(res["results"]))
    for note in res["notes"] + res.get("errors", []):
        print(f"note: {note}")
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(res, indent=2, default=str))
        log(f"results: {args.json}")
    return 1 if failed or any("error" in r for d in res["results"] for r in d["runs"]) else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows of the table (default 10,000,000)")
    ap.add_argument("--parallelism", default="1,2,4", help="comma-separated snapshot_parallelism values (default 1,2,4)")
    ap.add_argument("--modes", default="source,e2e", help="comma-separated subset of source,e2e (default both)")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--mysql", action="store_true", default=None, help="require MySQL/MariaDB (default: run it if it is up)")
    group.add_argument("--no-mysql", dest="mysql", action="store_false", help="PostgreSQL only")
    ap.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    ap.add_argument("--timeout", type=float, default=3600, help="give up on one run after this many seconds (default 3600)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (configs, worker logs, lakes)")
    a = ap.parse_args(argv)
    a.parallelism = [int(p) for p in a.parallelism.split(",") if p.strip()]
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if not a.parallelism or any(p < 1 for p in a.parallelism):
        ap.error("--parallelism: positive integers, e.g. 1,2,4")
    if not a.modes or any(m not in MODES for m in a.modes):
        ap.error(f"--modes: a subset of {','.join(MODES)}")
    return a


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
