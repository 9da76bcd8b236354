"""Runs source and sink workers in one process: retries transient errors, stops on terminal ones."""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import io
import logging
import signal
import sys
import time
from typing import Any

from lakeward.core import metrics, registry
from lakeward.core.config import LakewardConfig, MetricsConfig
from lakeward.core.errors import LakewardError, TerminalError
from lakeward.core.retry import Backoff, is_retriable
from lakeward.core.sink import Sink

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
HEALTHY_RUN_S = 60.0
GC_THRESHOLD = (50_000, 20, 20)
STOP_REPORT_S = 30.0
"""A worker still stopping this long after SIGTERM/SIGINT logs where each task and thread is."""


def tune_gc() -> None:
    """Workers hold hundreds of thousands of small dicts and tuples without reference cycles; with
    CPython's default thresholds (700, 10, 10) the cyclic GC rescans them over and over and costs
    about a third of a sink's CPU (measured). Collect less often; only ever raises the thresholds."""
    t0, t1, t2 = gc.get_threshold()
    if t0 and t0 < GC_THRESHOLD[0]:
        gc.set_threshold(GC_THRESHOLD[0], max(t1, GC_THRESHOLD[1]), max(t2, GC_THRESHOLD[2]))


def build_workers(config: LakewardConfig, sources: list[str] | None, sinks: list[str] | None) -> list[Any]:
    """The workers to run: the named ones, or every source and sink when neither is named."""
    everything = not sources and not sinks
    workers: list[Any] = []
    for s in config.sources:
        if everything or s.name in (sources or []):
            workers.append(registry.source_class(s.type)(s, broker=config.broker))
    for s in config.sinks:
        if everything or s.name in (sinks or []):
            workers.append(registry.sink_class(s.type)(s, broker=config.broker, lake=config.lake))
    for name in sources or []:
        config.source(name)  # raises ConfigError naming the unknown source
    for name in sinks or []:
        config.sink(name)
    return workers


async def _supervise(worker: Any, stop: asyncio.Event) -> None:
    name = f"{type(worker).__name__}({worker.config.name})"
    kind = "sink" if isinstance(worker, Sink) else "source"
    health = metrics.HEALTH.worker(kind, worker.config.name)

    def failed(e: BaseException) -> None:
        health.stopped(f"{e.__class__.__name__}: {e}" if not isinstance(e, LakewardError) else str(e))
        metrics.record_error(kind, worker.config.name, e)

    backoff = Backoff(initial=1.0, maximum=MAX_BACKOFF_S)
    while not stop.is_set():
        started = time.monotonic()
        health.starting(getattr(worker, "health_checks", ()))
        try:
            await worker.run(stop)
            health.stopped(None)
            return
        except Exception as e:  # classified by core/retry
            failed(e)
            if time.monotonic() - started > HEALTHY_RUN_S:
                backoff.reset()  # it ran fine for a while: this is a new failure, not the same one again
            delay = backoff.next()
            if not is_retriable(e, unknown=True):  # terminal by the error tree (or a delta-rs error no retry fixes)
                if isinstance(e, TerminalError):
                    raise
                raise TerminalError(f"{name}: {e.__class__.__name__}: {e}") from e
            if is_retriable(e):
                log.warning("%s: %s; retrying in %.0fs", name, e, delay)
            else:  # a driver error we don't classify yet: retry, but say so
                log.exception("%s failed (%s); retrying in %.0fs", name, e.__class__.__name__, delay)
        await backoff.sleep(delay, stop)


async def run_workers(workers: list[Any], stop: asyncio.Event | None = None, *, metrics_config: MetricsConfig | None = None) -> int:
    """Run until SIGTERM/SIGINT (drain, exit code 0) or a terminal error (exit code 1); with
    `metrics_config`, serve /metrics, /healthz and /readyz meanwhile (`lakeward run`)."""
    stop = stop or asyncio.Event()
    tune_gc()
    loop = asyncio.get_running_loop()
    reports: list[asyncio.TimerHandle] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stopping, sig, stop, reports)
    # `kill -USR1 <pid>` prints every thread's stack to stderr, answered in C: also when the event
    # loop or a thread holding the GIL is stuck.
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    server = await metrics.serve(metrics_config) if metrics_config is not None else None
    tasks = [asyncio.create_task(_supervise(w, stop)) for w in workers]
    code = 0
    try:
        for fut in asyncio.as_completed(tasks):
            try:
                await fut
            except TerminalError as e:
                log.error("%s", e)
                code = 1
                stop.set()
    finally:
        for handle in reports:
            handle.cancel()
        faulthandler.cancel_dump_traceback_later()
        faulthandler.unregister(signal.SIGUSR1)
        if server is not None:
            await server.close()
    return code


def _stopping(sig: signal.Signals, stop: asyncio.Event, reports: list[asyncio.TimerHandle]) -> None:
    """SIGTERM/SIGINT: drain and stop. A stop that hangs says where: the tasks' stacks after
    STOP_REPORT_S (from the loop), and every thread's (faulthandler, from its own thread, so also
    when the loop itself is blocked) shortly after."""
    if stop.is_set():
        return
    log.info("%s: draining in-flight work, then stopping", sig.name)
    stop.set()
    reports.append(asyncio.get_running_loop().call_later(STOP_REPORT_S, _report_tasks))
    faulthandler.dump_traceback_later(STOP_REPORT_S + 1, file=sys.stderr)


def _report_tasks() -> None:
    out = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(limit=8, file=out)
    log.warning("still stopping %.0fs after the signal; the tasks still running:\n%s", STOP_REPORT_S, out.getvalue())
