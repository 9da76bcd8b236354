"""The report of benchmarks/pipeline.py: the machine and versions it ran on, the summary table
against the targets, and the Markdown written next to the JSON results."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

import psycopg
from measure import stats
from pipeline_phases import PG_RECVLOGICAL
from services import ADMIN_DSN, ROOT, query1

TARGETS = {
    "source_ratio": 0.7,          # source rows/s >= 0.7 x pg_recvlogical
    "e2e_rows_s": 50_000,         # end to end rows/s
    "latency_p99_s": 2.0,         # commit-to-lake p99
    "rss_mb": 400,                # peak RSS per worker
}


def environment() -> dict[str, Any]:
    import aiokafka
    import deltalake
    import orjson
    import pyarrow

    meminfo = {line.split(":")[0]: line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()}
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
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
        (f"{env['cpus']} CPUs ({env['cpu_model']}), {env['mem_total_gb']} GB RAM, Linux {env['kernel']}; PostgreSQL {env['postgres']}, "
        f"{env['kafka']}, Python {env['python']}, psycopg {env['psycopg']} (libpq {env['libpq']}), aiokafka {env['aiokafka']}, "
        f"deltalake {env['deltalake']}, pyarrow {env['pyarrow']}; git {env['git_commit']}{' (modified)' if env['git_dirty'] else ''}. "
        f"Load average at start {', '.join(f'{x:.2f}' for x in env['loadavg_start'])}, at end {', '.join(f'{x:.2f}' for x in res['loadavg_end'])}."),
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
                  ("| round | load s | WAL MiB | recvlogical s | its walsender CPU | others CPU | source s | source CPU (µs/row) "
                  "| its walsender CPU | broker CPU | others CPU | e2e s | source CPU | sink CPU | others CPU |"),
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

