"""The `lakeward` command line."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import orjson
import typer
import yaml
from rich.console import Console
from rich.table import Table

from lakeward.core import lake as lakefs
from lakeward.core.config import LakewardConfig, config_as_dict, load_config
from lakeward.core.errors import LakewardError
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
) -> None:
    """Run sources and sinks until SIGTERM/SIGINT, which drains in-flight work and exits 0."""
    try:
        workers = build_workers(_config(), source, sink)
        code = asyncio.run(run_workers(workers))
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
            lakefs.drop_table(path)
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
    await worker.wait_caught_up(stop)
    stop.set()
    return await task


def main() -> None:
    try:
        app()
    except LakewardError as e:
        err.print(f"error: {e}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
