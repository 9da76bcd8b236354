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

The parts: pipeline_phases.py (the deployments and the five measurements), pipeline_report.py (the
summary and the Markdown), workers.py (the worker processes), measure.py (/proc readings, statistics),
deltalog.py (the Delta log read directly), services.py (endpoints, SQL helpers, the benchmark table).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from pipeline_phases import Bench
from pipeline_report import TARGETS, environment, markdown, print_table, summarize
from services import ROOT, log

RESULTS = ROOT / "benchmarks" / "results"


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
    ap.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs, lakes) and the topics")
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
