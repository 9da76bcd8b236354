"""Prometheus metrics and the `/healthz` and `/readyz` probes of a worker process.

One registry per process: prometheus_client's default one, which also carries its `process_*` and
`python_*` metrics. The metric objects live here; workers keep the labelled children they need
(`labels()` validates and locks on every call) and count per batch, not per event, on hot paths.
docs/operations.md ("Metrics and health") lists every metric; tests/unit/test_metrics.py keeps the
names conventional and the list complete.

The HTTP server is the standard library's WSGI server in a daemon thread, serving
prometheus_client's own WSGI app at `/metrics` and two small handlers for the probes: no asyncio
code runs on a scrape, so a busy or stuck event loop can't hide `/healthz`'s answer. (prometheus_client's
`start_wsgi_server` serves only `/metrics`, hence the few lines of our own.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    make_wsgi_app,
)

from lakeward.core.config import MetricsConfig, mask_text

log = logging.getLogger(__name__)

# The `*_created` series would double the series of every counter and histogram; nobody graphs them.
disable_created_metrics()

HEARTBEAT_S = 1.0
"""How often the event loop proves it runs (for /healthz)."""
LOOP_STALL_S = 10.0
"""/healthz fails once the event loop has not run for this long: no legitimate step blocks it that long."""
PROBE_INTERVAL_S = 10.0
"""How often a running worker checks its broker (and lag) connections in the background."""
PROBE_TIMEOUT_S = 10.0
LAG_POLL_S = 5.0
"""How often sources ask their database for the lag in bytes."""

_FLUSH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_BATCH_BUCKETS = (1, 10, 100, 1_000, 10_000, 50_000, 100_000, 200_000, 500_000, 1_000_000)

# --- sources ------------------------------------------------------------------------------------

SOURCE_EVENTS_READ = Counter(
    "lakeward_source_events_read_total",
    "Change events a source read from its database, by table and op (c create, u update, d delete, r snapshot read, t truncate).",
    ["source", "table", "op"])
SOURCE_EVENTS_PUBLISHED = Counter(
    "lakeward_source_events_published_total", "Change events the broker acknowledged (acks=all), by table.", ["source", "table"])
SOURCE_SNAPSHOT_ROWS = Counter("lakeward_source_snapshot_rows_total", "Rows read by snapshots, by table.", ["source", "table"])
SOURCE_SNAPSHOT_ESTIMATE = Gauge(
    "lakeward_source_snapshot_rows_estimate",
    "The database's row estimate of a table when its snapshot started (PostgreSQL pg_class.reltuples, MySQL "
    "information_schema.tables.table_rows).", ["source", "table"])
SOURCE_SNAPSHOT_RUNNING = Gauge(
    "lakeward_source_snapshot_running", "1 while a table's snapshot (initial or incremental) runs in this process, else 0.",
    ["source", "table"])
SOURCE_SCHEMA_CHANGES = Counter(
    "lakeward_source_schema_changes_total",
    "A table's schema (columns, types, key) differed from the one this process published before for it.", ["source", "table"])
SOURCE_LAG_BYTES = Gauge(
    "lakeward_source_lag_bytes",
    "Bytes of the database's log not yet confirmed by the source: PostgreSQL pg_current_wal_lsn() - the slot's "
    "confirmed_flush_lsn; MySQL/MariaDB binlog bytes after the stored resume position.", ["source"])
SOURCE_LAG_SECONDS = Gauge(
    "lakeward_source_lag_seconds",
    "Now minus the commit time of the last change read; 0 while the source has read everything the database sent.", ["source"])
SOURCE_LAST_COMMIT = Gauge(
    "lakeward_source_last_commit_timestamp_seconds", "Commit time (Unix seconds) of the last change the source read.", ["source"])

# --- sinks --------------------------------------------------------------------------------------

SINK_CONSUMER_LAG = Gauge(
    "lakeward_sink_consumer_lag_messages",
    "Messages of a table partition not consumed yet: the broker's high watermark - the writer's next offset.",
    ["sink", "table", "partition"])
SINK_EVENTS_CONSUMED = Counter(
    "lakeward_sink_events_consumed_total", "Change events taken from the broker into a flush, by table and op.", ["sink", "table", "op"])
SINK_ROWS_APPLIED = Counter(
    "lakeward_sink_rows_applied_total", "Change events written to the lake by successful Delta commits, by table and op.",
    ["sink", "table", "op"])
SINK_DUPLICATES = Counter(
    "lakeward_sink_duplicates_dropped_total", "Events dropped because their position was already applied (re-published).",
    ["sink", "table"])
SINK_DEAD_LETTERS = Counter("lakeward_sink_dead_letters_total", "Poison events sent to the dead-letter topic.", ["sink", "table"])
SINK_SCHEMA_CHANGES = Counter(
    "lakeward_sink_schema_changes_total", "Schema versions that added columns to a lake table (Delta schema merge).", ["sink", "table"])
SINK_TABLE_ERRORS = Counter("lakeward_sink_table_errors_total", "Tables stopped by an error, by error type.", ["sink", "table", "type"])
SINK_STOPPED_TABLES = Gauge("lakeward_sink_stopped_tables", "Assigned tables that stopped on an error.", ["sink"])
SINK_ASSIGNED_TABLES = Gauge("lakeward_sink_assigned_tables", "Table partitions assigned to this worker.", ["sink"])
SINK_BATCH_EVENTS = Histogram("lakeward_sink_batch_events", "Events per flush (one flush is one Delta commit).", ["sink"],
                              buckets=_BATCH_BUCKETS)
SINK_FLUSH_SECONDS = Histogram("lakeward_sink_flush_duration_seconds", "Time of a whole flush: building the batch and committing it.",
                               ["sink"], buckets=_FLUSH_BUCKETS)
DELTA_COMMIT_SECONDS = Histogram("lakeward_delta_commit_duration_seconds", "Time of a Delta commit, retries included.", ["sink"],
                                 buckets=_FLUSH_BUCKETS)
DELTA_COMMITS = Counter("lakeward_delta_commits_total", "Delta commits written.", ["sink", "table"])
DELTA_CONFLICTS = Counter("lakeward_delta_commit_conflicts_total", "Delta commits that collided with another writer's commit.",
                          ["sink", "table"])
DELTA_RETRIES = Counter("lakeward_delta_commit_retries_total", "Delta commits retried after a retriable error (storage, conflicts).",
                        ["sink", "table"])

# --- every worker -------------------------------------------------------------------------------

WORKER_ERRORS = Counter("lakeward_errors_total", "Errors that ended a worker's run (it retries unless terminal), by type.",
                        ["kind", "worker", "type"])
WORKER_READY = Gauge("lakeward_worker_ready", "1 when the worker is ready (what /readyz says), else 0.", ["kind", "worker"])


class Children:
    """Labelled children of one metric, cached by their remaining label values."""

    __slots__ = ("_metric", "_fixed", "_cache")

    def __init__(self, metric: Any, *fixed: str):
        self._metric = metric
        self._fixed = fixed
        self._cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self._cache.get(labels)
        if child is None:
            child = self._cache[labels] = self._metric.labels(*self._fixed, *labels)
        return child


class SourceMetrics:
    """A source's children. Table labels are `<schema>.<table>` (PostgreSQL) or `<db>.<table>` (MySQL)."""

    def __init__(self, source: str, topic_prefix: str):
        self.read = Children(SOURCE_EVENTS_READ, source)
        """read(table, op).inc(n)"""
        self.snapshot_rows = Children(SOURCE_SNAPSHOT_ROWS, source)
        self.lag_bytes = SOURCE_LAG_BYTES.labels(source)
        self.lag_seconds = SOURCE_LAG_SECONDS.labels(source)
        self.last_commit = SOURCE_LAST_COMMIT.labels(source)
        self._published = Children(SOURCE_EVENTS_PUBLISHED, source)
        self._schema_changes = Children(SOURCE_SCHEMA_CHANGES, source)
        self._topic_head = f"{topic_prefix}.{source}."
        self._schemas: dict[str, str] = {}

    def published(self, topic: str, n: int) -> None:
        """BatchPublisher's `on_acked`: the broker acknowledged `n` events of a table topic."""
        head = self._topic_head
        self._published(topic[len(head):] if topic.startswith(head) else topic).inc(n)

    def schema(self, table: str, schema_id: str) -> None:
        """A table's schema as the source publishes it; counts a change when it differs from the last one."""
        last = self._schemas.get(table)
        self._schemas[table] = schema_id
        if last is not None and last != schema_id:
            self._schema_changes(table).inc()

    def committed_at(self, commit_s: float) -> None:
        """The source read a change committed at `commit_s` (Unix seconds)."""
        self.lag_seconds.set(max(0.0, time.time() - commit_s))
        self.last_commit.set(commit_s)

    def caught_up(self) -> None:
        self.lag_seconds.set(0.0)


class SnapshotGauges:
    """The snapshot gauges, fed by the progress calls every source makes (`lakeward.core.progress`),
    so no source needs code of its own for them. Thread-safe (prometheus_client locks)."""

    def start(self, source: str, table: str, estimate: int | None) -> None:
        if estimate is not None and estimate >= 0:  # reltuples is -1 for a table never analyzed: no estimate
            SOURCE_SNAPSHOT_ESTIMATE.labels(source, table).set(estimate)
        SOURCE_SNAPSHOT_RUNNING.labels(source, table).set(1)

    def advance(self, source: str, table: str, rows: int) -> None:
        pass  # rows are counted by the sources in lakeward_source_snapshot_rows_total, per batch

    def finish(self, source: str, table: str) -> None:
        SOURCE_SNAPSHOT_RUNNING.labels(source, table).set(0)


class TableMetrics:
    """A sink table's children (one TableWriter's)."""

    def __init__(self, sink: str, table: str):
        self.consumed = Children(SINK_EVENTS_CONSUMED, sink, table)
        self.applied = Children(SINK_ROWS_APPLIED, sink, table)
        self.duplicates = SINK_DUPLICATES.labels(sink, table)
        self.dead_letters = SINK_DEAD_LETTERS.labels(sink, table)
        self.schema_changes = SINK_SCHEMA_CHANGES.labels(sink, table)
        self.commits = DELTA_COMMITS.labels(sink, table)
        self.conflicts = DELTA_CONFLICTS.labels(sink, table)
        self.retries = DELTA_RETRIES.labels(sink, table)
        self.batch_events = SINK_BATCH_EVENTS.labels(sink)
        self.flush_seconds = SINK_FLUSH_SECONDS.labels(sink)
        self.commit_seconds = DELTA_COMMIT_SECONDS.labels(sink)


# --- health -------------------------------------------------------------------------------------


class WorkerHealth:
    """Whether one worker (a source or a sink) is ready: named checks, each ok or a reason why not.

    The runner calls `starting` before every run of the worker (with the worker's `health_checks`)
    and `stopped` after it; the worker reports `ok` / `problem` for its checks as it connects. The
    HTTP thread reads it, hence the lock.
    """

    def __init__(self, kind: str, name: str):
        self.kind, self.name = kind, name
        self._lock = threading.Lock()
        self._running = False
        self._checks: dict[str, str | None] = {}
        self._error: str | None = None
        WORKER_READY.labels(kind, name).set_function(lambda: 0.0 if self.problems() else 1.0)

    def starting(self, checks: Iterable[str]) -> None:
        with self._lock:
            self._running = True
            self._checks = dict.fromkeys(checks, "starting")

    def ok(self, check: str) -> None:
        with self._lock:
            self._checks[check] = None
            if not any(self._checks.values()):
                self._error = None  # fully connected again: the last failure is history

    def problem(self, check: str, why: str) -> None:
        with self._lock:
            self._checks[check] = mask_text(why)

    def stopped(self, error: str | None) -> None:
        with self._lock:
            self._running = False
            self._error = mask_text(error) if error else None

    def problems(self) -> list[str]:
        with self._lock:
            if not self._running:
                return ["not running" + (f"; last error: {self._error}" if self._error else "")]
            out = [f"{check}: {why}" for check, why in self._checks.items() if why is not None]
            if out and self._error:
                out.append(f"last error: {self._error}")
            return out


class Health:
    """The process's liveness (its event loop runs) and readiness (every worker is ready)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._workers: dict[tuple[str, str], WorkerHealth] = {}
        self.loop_tick: float | None = None
        """time.monotonic() of the event loop's last heartbeat; None before the first one."""

    def worker(self, kind: str, name: str) -> WorkerHealth:
        with self._lock:
            w = self._workers.get((kind, name))
            if w is None:
                w = self._workers[(kind, name)] = WorkerHealth(kind, name)
            return w

    def liveness(self) -> tuple[bool, str]:
        tick = self.loop_tick
        if tick is None:
            return True, "ok (starting)"
        age = time.monotonic() - tick
        if age > LOOP_STALL_S:
            return False, f"the event loop has not run for {age:.1f}s"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        live, why = self.liveness()
        lines = [] if live else [why]
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            lines += [f"{w.kind} {w.name}: {p}" for p in w.problems()]
        return not lines, "\n".join(lines) or "ready"


HEALTH = Health()


async def watch(health: WorkerHealth, check: str, probe: Callable[[], Awaitable[Any]], *, what: str,
                interval_s: float = PROBE_INTERVAL_S, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Run `probe` now and every `interval_s` until cancelled; its outcome is the state of `check`.

    Only readiness (and what the probe records) depends on it: a failed probe never stops the
    worker, whose own loop decides about errors and retries as before."""
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                await probe()
        except TimeoutError:
            health.problem(check, f"{what}: no answer within {timeout_s:.0f}s")
        except Exception as e:  # noqa: BLE001 - whatever failed, the check is not ok; say what
            health.problem(check, f"{what}: {e.__class__.__name__}: {e}")
        else:
            health.ok(check)
        await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def background(*coros: Coroutine[Any, Any, Any]) -> AsyncIterator[None]:
    """Run `coros` as tasks while the block runs; cancel them when it ends."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --- the HTTP endpoint --------------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # `format`: the base class's name
        pass  # a line per scrape (every few seconds, forever) is noise in the worker's log


def _server_class(host: str, port: int) -> type[WSGIServer]:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

    class Server(ThreadingMixIn, WSGIServer):
        address_family = family  # WSGIServer is IPv4-only otherwise
        daemon_threads = True  # a slow scraper never holds up the process's exit

    return Server


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    path = environ.get("PATH_INFO") or "/"
    if path == "/metrics":
        return _metrics_app(environ, start_response)
    if path in ("/healthz", "/readyz"):
        ok, text = HEALTH.liveness() if path == "/healthz" else HEALTH.readiness()
        status = "200 OK" if ok else "503 Service Unavailable"
    else:
        status, text = "404 Not Found", "not found; try /metrics, /healthz or /readyz"
    body = (text + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


_metrics_app = make_wsgi_app()


class MetricsServer:
    def __init__(self, httpd: WSGIServer, heartbeat: asyncio.Task):
        self._httpd = httpd
        self._heartbeat = heartbeat
        self.port: int = httpd.server_address[1]

    async def close(self) -> None:
        self._heartbeat.cancel()
        await asyncio.to_thread(self._httpd.shutdown)  # waits for serve_forever's next poll (<= 0.5 s)
        self._httpd.server_close()


async def _heartbeat() -> None:
    while True:
        HEALTH.loop_tick = time.monotonic()
        await asyncio.sleep(HEARTBEAT_S)


async def serve(cfg: MetricsConfig) -> MetricsServer | None:
    """Serve /metrics, /healthz and /readyz in a thread; None when off, or (after a warning) when the
    port can't be bound: the metrics are not worth stopping the pipeline for."""
    if not cfg.enabled or not cfg.port:
        return None

    def bind() -> WSGIServer:  # name resolution and bind: blocking calls, off the event loop
        return make_server(cfg.host, cfg.port, _app, server_class=_server_class(cfg.host, cfg.port), handler_class=_QuietHandler)

    try:
        httpd = await asyncio.to_thread(bind)
    except OSError as e:
        log.warning("metrics: cannot listen on %s:%d (%s); this process serves no /metrics, /healthz or /readyz. "
                    "Give each worker process on a host its own port: lakeward run --metrics-port N", cfg.host, cfg.port, e)
        return None
    threading.Thread(target=httpd.serve_forever, name="lakeward-metrics", daemon=True).start()
    log.info("metrics: serving http://%s:%d/metrics, /healthz and /readyz", cfg.host, cfg.port)
    return MetricsServer(httpd, asyncio.create_task(_heartbeat()))


def record_error(kind: str, worker: str, error: BaseException) -> None:
    WORKER_ERRORS.labels(kind, worker, type(error).__name__).inc()
