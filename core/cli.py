"""The `lakeward` command line."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import orjson
import typer
import yaml
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress
from rich.table import Table

from lakeward.core import lake as lakefs
from lakeward.core import progress
from lakeward.core.config import LakewardConfig, config_as_dict, load_config
from lakeward.core.errors import ConfigError, LakewardError
from lakeward.core.logs import setup_logging
from lakeward.core.runner import build_workers, run_workers

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Change data capture into Delta Lake, exactly once.")
console = Console()
err = Console(stderr=True)


class LogFormat(str, Enum):
    text = "text"
    json = "json"


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


_state: dict[str, Any] = {}

ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help="Config file (default: $LAKEWARD_CONFIG or ./lakeward.yaml).")]


@app.callback()
def _main(
    config: ConfigOption = None,
    log_format: Annotated[LogFormat, typer.Option(help="Log lines as text or JSON.")] = LogFormat.text,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    _state["config_path"] = config
    _state["log_format"] = log_format.value
    setup_logging(log_level, log_format.value)


def _config() -> LakewardConfig:
    return load_config(_state.get("config_path"))


def _fail(e: LakewardError) -> None:
    err.print(f"[bold red]error:[/] {e}", markup=True, highlight=False)
    raise typer.Exit(1)


@app.command()
def validate() -> None:
    """Check the config file: syntax, keys, types, references between sources and sinks."""
    try:
        cfg = _config()
    except LakewardError as e:
        _fail(e)
    console.print(f"config ok: {len(cfg.sources)} source(s), {len(cfg.sinks)} sink(s)")


@app.command("config")
def show_config(as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False) -> None:
    """Print the resolved config (variables substituted, defaults filled in, secrets masked)."""
    try:
        data = config_as_dict(_config())
    except LakewardError as e:
        _fail(e)
    if as_json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))


@app.command()
def run(
    source: Annotated[Optional[list[str]], typer.Option("--source", help="Run only this source (repeatable).")] = None,
    sink: Annotated[Optional[list[str]], typer.Option("--sink", help="Run only this sink (repeatable).")] = None,
    metrics_port: Annotated[Optional[int], typer.Option(
        "--metrics-port", envvar="LAKEWARD_METRICS_PORT", min=0, max=65535,
        help="Serve /metrics, /healthz and /readyz on this port instead of metrics.port; 0 turns them off.")] = None,
) -> None:
    """Run sources and sinks until SIGTERM/SIGINT, which drains in-flight work and exits 0."""
    try:
        cfg = _config()
        workers = build_workers(cfg, source, sink)
        served = cfg.metrics if metrics_port is None else cfg.metrics.model_copy(update={"port": metrics_port})
        if err.is_terminal and _state.get("log_format") == "text":
            progress.install(progress.SnapshotBars(err))
        code = asyncio.run(run_workers(workers, metrics_config=served))
    except LakewardError as e:
        _fail(e)
    raise typer.Exit(code)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Slot lag of each source; consumer lag, Delta version and last commit of each lake table."""
    try:
        cfg = _config()
        report = asyncio.run(_status(cfg))
    except LakewardError as e:
        _fail(e)
    if as_json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")
        return
    src = Table("source", "slot", "active", "confirmed LSN", "lag bytes", title="Sources")
    for s in report["sources"]:
        if "error" in s:
            src.add_row(s["source"], "", "", "", f"[red]{s['error']}[/]")
        else:
            src.add_row(s["source"], s["slot"], str(s.get("active", "")), str(s.get("confirmed_flush_lsn", "missing")), str(s.get("lag_bytes", "")))
    console.print(src)
    tbl = Table("sink", "table", "version", "last commit", "offset", "lag", "state", title="Lake tables")
    for s in report["sinks"]:
        for t in s.get("tables", []):
            tbl.add_row(s["sink"], t["table"], str(t.get("version")), str(t.get("last_commit") or ""), str(t.get("committed_offset")),
                        str(t.get("lag")), f"[red]{t['error']}[/]" if t.get("error") else "ok")
        if "error" in s:
            tbl.add_row(s["sink"], "", "", "", "", "", f"[red]{s['error']}[/]")
    console.print(tbl)


async def _status(cfg: LakewardConfig) -> dict[str, Any]:
    workers = build_workers(cfg, None, None)
    out: dict[str, Any] = {"sources": [], "sinks": []}
    for w in workers:
        kind = "sources" if w in workers[: len(cfg.sources)] else "sinks"
        try:
            out[kind].append(await w.status())
        except LakewardError as e:
            out[kind].append({kind[:-1]: w.config.name, "error": str(e)})
    return out


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help='SQL over the lake tables, named "<source>.<schema>.<table>".')],
    fmt: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = OutputFormat.table,
    as_of: Annotated[Optional[int], typer.Option("--as-of", help="Read every table as of this Delta version.")] = None,
) -> None:
    """Query the lake with DuckDB (no extension download: tables are read through delta-rs)."""
    try:
        cfg = _config()
        con = lakefs.duckdb_connection(cfg, as_of=as_of)
        relation = con.sql(sql)
        if relation is None:  # a statement without a result
            return
        arrow = relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()
    except LakewardError as e:
        _fail(e)
    except Exception as e:  # duckdb errors: syntax, unknown table ...
        err.print(f"[bold red]query failed:[/] {e}", highlight=False)
        raise typer.Exit(1) from None
    if fmt == OutputFormat.json:
        for row in arrow.to_pylist():
            sys.stdout.write(orjson.dumps(row, default=str).decode() + "\n")
    elif fmt == OutputFormat.csv:
        import pyarrow.csv as pacsv

        pacsv.write_csv(arrow, sys.stdout.buffer)
    else:
        t = Table(*arrow.column_names)
        for row in arrow.to_pylist():
            t.add_row(*("NULL" if v is None else str(v) for v in row.values()))
        console.print(t)


@app.command()
def replay(
    sink: Annotated[str, typer.Option("--sink", help="The sink whose tables to rebuild.")],
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Required: rebuild from the start of the topics.")] = False,
    table: Annotated[Optional[list[str]], typer.Option("--table", help="Only this table, as <source>.<schema>.<table> (repeatable).")] = None,
) -> None:
    """Rebuild lake tables from the topics' retained history, then exit."""
    if not from_beginning:
        err.print("replay needs --from-beginning (the only starting point supported)")
        raise typer.Exit(2)
    try:
        cfg = _config()
        sink_cfg = cfg.sink(sink)
        paths = lakefs.sink_tables(cfg, sink_cfg, only=table)
        for name, path in paths.items():
            lakefs.drop_table(path, cfg.lake)
            logging.getLogger("lakeward.replay").info("dropped lake table %s (%s); rebuilding from the topic", name, path)
        workers = build_workers(cfg, None, [sink])
        code = asyncio.run(_replay(workers[0]))
    except LakewardError as e:
        _fail(e)
    raise typer.Exit(code)


async def _replay(worker: Any) -> int:
    """Run the sink until it has caught up with every topic's end as of now, then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_workers([worker], stop))
    with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=err, transient=True) as bar:
        job = bar.add_task(f"replay {worker.config.name}", total=None)
        await worker.wait_caught_up(stop, progress=lambda done, total: bar.update(job, completed=done, total=total))
    stop.set()
    return await task


lake_app = typer.Typer(no_args_is_help=True, help="Maintenance of the lake's Delta tables; safe while sinks write them.")
app.add_typer(lake_app, name="lake")
TableOption = Annotated[Optional[list[str]], typer.Option("--table", help="Only this table, as <source>.<schema>.<table> (repeatable).")]
SinkOption = Annotated[Optional[str], typer.Option("--sink", help="Only the tables this sink writes.")]


def _maintain(operation: str, tables: list[str] | None, sink: str | None, **options: Any) -> None:
    from lakeward.sinks.delta import maintenance

    try:
        cfg = _config()
        found = lakefs.sink_tables(cfg, cfg.sink(sink), only=tables) if sink else lakefs.list_tables(cfg.lake)
        if tables and not sink:
            unknown = [t for t in tables if t not in found]
            if unknown:
                raise ConfigError(f"no lake table {', '.join(unknown)} under {cfg.lake.uri}; known: {', '.join(found) or 'none'}")
            found = {t: found[t] for t in tables}
        out = Table("table", "version", "result", "conflicts", "seconds", title=f"lake {operation}")
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task(operation, total=len(found))
            for name, uri in found.items():
                progress.update(task, description=f"{operation} {name}")
                r = maintenance.run(name, uri, operation, storage_options=cfg.lake.storage_options, **options)  # type: ignore[arg-type]
                out.add_row(name, f"{r.version_before} → {r.version_after}", " ".join(f"{k}={v}" for k, v in r.details.items()),
                            str(r.conflicts), str(r.seconds))
                progress.advance(task)
    except LakewardError as e:
        _fail(e)
    console.print(out)


@lake_app.command("optimize")
def lake_optimize(table: TableOption = None, sink: SinkOption = None,
                  target_size: Annotated[Optional[int], typer.Option(help="Target file size in bytes (delta-rs default: 100 MiB).")] = None) -> None:
    """Compact small files (one Delta OPTIMIZE commit per table)."""
    _maintain("optimize", table, sink, target_size=target_size)


@lake_app.command("vacuum")
def lake_vacuum(table: TableOption = None, sink: SinkOption = None,
                retention_hours: Annotated[float, typer.Option(help="Keep removed files younger than this (at least 1).")] = 168.0,
                dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count the files that would be deleted.")] = False) -> None:
    """Delete data files no table version within the retention still references."""
    from lakeward.sinks.delta.maintenance import check_retention

    try:
        check_retention(retention_hours)
    except LakewardError as e:
        _fail(e)
    _maintain("vacuum", table, sink, retention_hours=retention_hours, dry_run=dry_run)


@lake_app.command("checkpoint")
def lake_checkpoint(table: TableOption = None, sink: SinkOption = None) -> None:
    """Write a checkpoint of the current version (readers skip replaying the log); expired logs are cleaned up."""
    _maintain("checkpoint", table, sink)


demo_app = typer.Typer(no_args_is_help=True, help="The demo shop (PostgreSQL) and inventory (MySQL/MariaDB): setup, load, check.")
app.add_typer(demo_app, name="demo")


@demo_app.command("setup")
def demo_setup(
    reset: Annotated[bool, typer.Option("--reset", help="Drop the demo tables, slot, topics and lake tables first.")] = False,
) -> None:
    """Create the demo tables and seed rows in the config's postgres and mysql sources (idempotent)."""
    from lakeward.core.demo import data

    try:
        data.setup(_config(), reset=reset)
    except LakewardError as e:
        _fail(e)
    console.print("demo databases ready" + (" (reset)" if reset else ""))


@demo_app.command("load")
def demo_load(
    seconds: Annotated[float, typer.Option(help="How long to run; 0 runs until stopped.")] = 60.0,
    rate: Annotated[float, typer.Option(help="Transactions per second in each database.")] = 50.0,
) -> None:
    """Change the demo databases: orders, payments and stock moves; one ALTER TABLE in each, mid-run."""
    from lakeward.core.demo import data

    try:
        gen = data.LoadGenerator(data.demo_sources(_config()))
    except LakewardError as e:
        _fail(e)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # `docker stop` / the demo end the load like Ctrl-C
    try:
        gen.run(seconds, rate=rate)
    except KeyboardInterrupt:
        pass
    console.print(f"load done: {gen.changes['shop']} shop changes, {gen.changes['inventory']} inventory changes")


def _raise_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


@demo_app.command("check")
def demo_check() -> None:
    """Compare every demo table in the lake with its source: row counts and checksums; exit 1 if any differs."""
    from lakeward.core.demo import check, data

    try:
        cfg = _config()
        wide = console if console.is_terminal else Console(width=max(console.width, 140))  # CI logs: no wrapped rows
        ok = check.report(check.check_all(cfg, data.demo_sources(cfg)), wide)
    except LakewardError as e:
        _fail(e)
    raise typer.Exit(0 if ok else 1)


def main() -> None:
    try:
        app()
    except LakewardError as e:
        err.print(f"error: {e}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
