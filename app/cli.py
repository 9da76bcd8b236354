"""The `lakeward` command line."""

from __future__ import annotations

import os

# Arrow's allocator for the process, which Arrow picks when pyarrow is first imported (hence before
# the imports below): jemalloc peaked 30-35 MB lower than pyarrow's default, mimalloc, in a sink's
# 1M-event replay at the same CPU (docs/performance.md). A value the user set wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")

import asyncio
import base64
import contextlib
import inspect
import logging
import math
import signal
import struct
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import orjson
import pyarrow as pa
import typer
import yaml
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.markup import escape
from rich.progress import MofNCompleteColumn, Progress
from rich.table import Column, Table

from lakeward.app.runner import build_workers, run_workers
from lakeward.core import broker as kafka
from lakeward.core import progress, registry
from lakeward.core import snapshot as snapshots
from lakeward.core.config import (
    LakewardConfig,
    config_as_dict,
    config_path,
    load_config,
)
from lakeward.core.errors import ConfigError, LakewardError
from lakeward.core.logs import setup_logging
from lakeward.core.sink import SinkStatus
from lakeward.core.source import Source, SourceStatus
from lakeward.sinks.delta import store as lakefs

if TYPE_CHECKING:
    import duckdb

    from lakeward.sinks.delta.maintenance import Operation

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Change data capture into Delta Lake, exactly once.")
console = Console()
err = Console(stderr=True)


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


_state: dict[str, Any] = {"log_format": LogFormat.text.value, "log_level": LogLevel.INFO.value}

_CONFIG_HELP = "Config file (default: $LAKEWARD_CONFIG or ./lakeward.yaml)."
_LOG_FORMAT_HELP = "Log lines as text or JSON."
_LOG_LEVEL_HELP = "DEBUG, INFO, WARNING or ERROR."
_GLOBAL_PANEL = "Global options (before or after the command)"
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help=_CONFIG_HELP, rich_help_panel=_GLOBAL_PANEL)]
LogFormatOption = Annotated[LogFormat | None, typer.Option("--log-format", help=_LOG_FORMAT_HELP, rich_help_panel=_GLOBAL_PANEL)]
LogLevelOption = Annotated[LogLevel | None, typer.Option("--log-level", case_sensitive=False, help=_LOG_LEVEL_HELP,
                                                            rich_help_panel=_GLOBAL_PANEL)]


def _set_globals(config: Path | None, log_format: LogFormat | None, log_level: LogLevel | None) -> None:
    """Record the global options given at this level (a later one wins) and set up logging."""
    if config is not None:
        _state["config_path"] = config
    if log_format is not None:
        _state["log_format"] = log_format.value
    if log_level is not None:
        _state["log_level"] = log_level.value
    setup_logging(_state["log_level"], _state["log_format"])


@app.callback()
def _main(config: ConfigOption = None, log_format: LogFormatOption = None, log_level: LogLevelOption = None) -> None:
    _state.update(config_path=None, log_format=LogFormat.text.value, log_level=LogLevel.INFO.value)
    _set_globals(config, log_format, log_level)


def _global_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command (or command group) `-c/--config`, `--log-format` and `--log-level` of its own,
    so `lakeward run -c f.yaml` works like `lakeward -c f.yaml run`."""
    signature = inspect.signature(func, eval_str=True)
    extra = {"lw_config": ConfigOption, "lw_log_format": LogFormatOption, "lw_log_level": LogLevelOption}

    def wrapper(*args: Any, lw_config: Path | None = None, lw_log_format: LogFormat | None = None,
                lw_log_level: LogLevel | None = None, **kwargs: Any) -> Any:
        if lw_config is not None or lw_log_format is not None or lw_log_level is not None:
            _set_globals(lw_config, lw_log_format, lw_log_level)
        return func(*args, **kwargs)

    params = list(signature.parameters.values()) + [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation) for name, annotation in extra.items()
    ]
    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params if p.annotation is not inspect.Parameter.empty}
    wrapper.__name__, wrapper.__qualname__, wrapper.__doc__ = func.__name__, func.__qualname__, func.__doc__
    wrapper.__module__ = func.__module__
    return wrapper


def _config() -> LakewardConfig:
    return load_config(_state.get("config_path"))


def _config_file() -> Path:
    """The config file `_config` reads (-c, else $LAKEWARD_CONFIG, else ./lakeward.yaml)."""
    return config_path(_state.get("config_path"))


def _print_error(e: LakewardError) -> None:
    err.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)


def _fail(e: LakewardError) -> NoReturn:
    _print_error(e)
    raise typer.Exit(1)


@app.command()
@_global_options
def validate(
    connect: Annotated[bool, typer.Option("--connect", help="Also connect to the broker and to every source's database, "
                                                            "and check each database is set up for change data capture.")] = False,
) -> None:
    """Check the config file: syntax, keys, types, references between sources and sinks."""
    try:
        cfg = _config()
    except LakewardError as e:
        _fail(e)
    console.print(f"config ok: {len(cfg.sources)} source(s), {len(cfg.sinks)} sink(s)")
    if not connect:
        return
    problems = 0
    for what, problem in asyncio.run(_connect(cfg)):
        if problem is None:
            console.print(f"{what}: ok", markup=False, highlight=False, soft_wrap=True)
        else:
            problems += 1
            err.print(f"[bold red]error:[/] {escape(what)}: {escape(problem)}", highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(1)


async def _connect(cfg: LakewardConfig) -> list[tuple[str, str | None]]:
    """(what, problem or None) for the broker and each source (Source.check): one line each, saying what to fix."""
    out: list[tuple[str, str | None]] = []
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its connection errors are in the lines below, once
    try:
        async with kafka.Admin(cfg.broker) as admin:
            await admin.topics()
        out.append((f"broker at {cfg.broker.bootstrap_servers}", None))
    except (LakewardError, KafkaError, OSError) as e:
        out.append((f"broker at {cfg.broker.bootstrap_servers}", _one_line(e)))
    for source_cfg in cfg.sources:
        source = registry.source_class(source_cfg.type)(source_cfg, broker=cfg.broker)
        try:
            await source.check()
            out.append((f"source {source_cfg.name}", None))
        except (LakewardError, KafkaError, OSError) as e:
            out.append((f"source {source_cfg.name}", _one_line(e)))
    return out


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if isinstance(e, LakewardError) else f"{e.__class__.__name__}: {text}"


@app.command("config")
@_global_options
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
@_global_options
def run(
    source: Annotated[list[str] | None, typer.Option("--source", help="Run only this source (repeatable).")] = None,
    sink: Annotated[list[str] | None, typer.Option("--sink", help="Run only this sink (repeatable).")] = None,
    metrics_port: Annotated[int | None, typer.Option(
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
@_global_options
def snapshot(
    source: Annotated[str | None, typer.Option("--source", help="The source whose tables to read again.")] = None,
    table: Annotated[list[str] | None, typer.Option(
        "--table", help="A table as the source names it: schema.table (PostgreSQL) or database.table (MySQL); repeatable.")] = None,
    where: Annotated[str | None, typer.Option(
        "--where", help="Only rows matching this SQL condition on the table's columns (e.g. \"id > 1000\").")] = None,
) -> None:
    """Ask a running source to read tables again while it keeps streaming (an incremental snapshot).

    The request goes to the signal topic <prefix>.<source>.__signals; the source picks it up within seconds (or when it next starts).

    Nothing is reset: rows deleted in the source before the request stay in a mirror."""
    try:
        cfg = _config()
        if not source:
            raise ConfigError(f"name the source with --source; the config has: {', '.join(s.name for s in cfg.sources) or 'none'}")
        source_cfg = cfg.source(source)
        tables = snapshots.request_tables(source_cfg, table or [])
        request = snapshots.new_request(tables, where.strip() if where else None)
        asyncio.run(snapshots.send_request(cfg.broker, source_cfg.name, request))
    except LakewardError as e:
        _fail(e)
    console.print(f"snapshot request {request.id} sent to source {source_cfg.name}: {', '.join(request.tables)}"
                  + (f" where {request.where}" if request.where else ""), markup=False, highlight=False, soft_wrap=True)
    console.print("follow it with `lakeward status` (and the source's log)", markup=False, highlight=False, soft_wrap=True)


@app.command()
@_global_options
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Slot lag and snapshot progress of each source; consumer lag, Delta version and last commit of each lake table."""
    try:
        cfg = _config()
        report = asyncio.run(_status(cfg))
    except LakewardError as e:
        _fail(e)
    if as_json:
        shown = {**report, "sources": [s.to_dict() for s in report["sources"]],
                 "sinks": [s.to_dict() if isinstance(s, SinkStatus) else s for s in report["sinks"]]}
        sys.stdout.write(orjson.dumps(shown, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")
        return
    print_status(report, console)


def print_status(report: dict[str, Any], out: Console) -> None:
    """`report`: `_status`'s, sources as SourceStatus."""
    src = Table("source", "type", "capture", "active", "confirmed", "lag bytes", title="Sources")
    sources: list[SourceStatus] = report["sources"]
    for s in sources:
        if s.error is not None:
            src.add_row(s.source, s.type, "", "", "", f"[red]{escape(s.error)}[/]")
        else:
            src.add_row(s.source, s.type, s.capture, _text(s.active), (s.confirmed or "") if s.exists else "missing", _text(s.lag_bytes))
    out.print(src)
    for s in sources:
        if s.snapshot:
            out.print(snapshot_table(s.source, [t.to_dict() for t in s.snapshot]))
    tbl = Table("sink", "table", "version", "last commit", "offset", "lag", "state", title="Lake tables")
    for s in report["sinks"]:
        if not isinstance(s, SinkStatus):  # the sink's status could not be read
            tbl.add_row(s["sink"], "", "", "", "", "", f"[red]{s['error']}[/]")
            continue
        for t in s.tables:
            tbl.add_row(s.sink, t.table, str(t.version), t.last_commit or "", str(t.committed_offset), str(t.lag),
                        f"[red]{t.error}[/]" if t.error else "ok")
    out.print(tbl)


def snapshot_table(source: str, tables: list[dict[str, Any]]) -> Table:
    """A source's snapshot progress (core.snapshot.TableProgress.to_dict() per table) as `lakeward status` shows it."""
    out = Table("table", "kind", "rows", "estimate", "chunks", "state", title=f"Snapshot of {source}")
    for t in tables:
        rows, estimate = int(t.get("rows") or 0), t.get("estimate")
        if estimate is not None and estimate < 0:  # reltuples of a table never analyzed
            estimate = None
        if estimate and not t.get("done"):
            rows_text = f"{rows:,} ({min(100, rows * 100 // estimate)}%)"
        else:
            rows_text = f"{rows:,}"
        chunks = f"{t.get('chunks_done', 0)}/{t['chunks']}" if t.get("chunks") is not None else str(t.get("chunks_done", 0))
        out.add_row(str(t.get("table", "")), str(t.get("kind", "")), rows_text, "" if estimate is None else f"{estimate:,}", chunks,
                    "done" if t.get("done") else "in progress")
    return out


def _text(value: Any) -> str:
    return "" if value is None else str(value)


async def _status(cfg: LakewardConfig) -> dict[str, Any]:
    """Every source's SourceStatus and every sink's status, each with the error that kept it from being read."""
    workers = build_workers(cfg, None, None)
    out: dict[str, Any] = {"sources": [], "sinks": []}
    for w in workers:
        is_source = isinstance(w, Source)
        try:
            out["sources" if is_source else "sinks"].append(await w.status())
        except LakewardError as e:
            if is_source:
                out["sources"].append(SourceStatus(w.config.name, w.config.type, error=str(e)))
            else:
                out["sinks"].append({"sink": w.config.name, "error": str(e)})
    return out


@app.command()
@_global_options
def query(
    sql: Annotated[str, typer.Argument(help='SQL over the lake tables, named "<source>.<schema>.<table>".')],
    fmt: Annotated[OutputFormat, typer.Option("--format", help="Output format (see docs/querying.md for how each type prints).")] = OutputFormat.table,
    as_of: Annotated[int | None, typer.Option("--as-of", help="Read every table as of this Delta version.")] = None,
) -> None:
    """Query the lake with DuckDB (no extension download: tables are read through delta-rs).

    A table that cannot be read is left out with a warning on stderr; a query that reads it fails."""
    code = 0
    try:
        arrow = _run_query(_config(), sql, as_of)
        if arrow is not None:
            write_result(arrow, fmt)
    except LakewardError as e:
        _print_error(e)
        code = 1
    except _QueryFailed as e:
        err.print(f"[bold red]query failed:[/] {e}", highlight=False, soft_wrap=True)
        code = 1
    except BrokenPipeError:  # the reader left (`| head`): exit 1, as click does
        code = 1
    _exit_without_finalizing(code)


def _exit_without_finalizing(code: int) -> NoReturn:
    """End a command that scanned the lake once its output is flushed, skipping the interpreter's
    finalization.

    A scan DuckDB ends early (a LIMIT, a failed file) leaves Arrow's readahead running on Arrow's
    I/O threads. On a remote lake each of those reads calls delta-rs' Python filesystem; one that
    wants the GIL while the interpreter finalizes exits its thread under C++ frames that cannot
    unwind, and the process died by SIGSEGV or SIGABRT, or hung in Arrow's pool shutdown, after
    printing the right result (a local lake is read by Arrow's own filesystem, see
    sinks/delta/lake.arrow_filesystem). Nothing is left to finalize: the connection is closed, the
    result written, and the reads in flight only read."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BrokenPipeError):  # a reader that left (`| head`) wants no more
            stream.flush()
    os._exit(code)


def _run_query(cfg: LakewardConfig, sql: str, as_of: int | None) -> pa.Table | None:
    """The query's result, or None for a statement without one. The DuckDB connection is closed here,
    on every path, so that its threads are gone before the process ends (_exit_without_finalizing)."""
    named = lakefs.referenced_tables(sql)
    lake = lakefs.open_lake(cfg, as_of=as_of, prepare=named)
    try:
        for name, why in lake.unreadable.items():
            err.print(f"[yellow]warning:[/] lake table {name} cannot be read, left out: {why}", highlight=False, soft_wrap=True)
        broken = sorted((named or set()) & set(lake.unreadable))
        if broken:
            raise _QueryFailed("; ".join(f"lake table {n} cannot be read: {lake.unreadable[n]}" for n in broken))
        try:
            lake.con.execute("SET TimeZone = 'UTC'")  # timestamps with time zone come back in UTC
            # duckdb's stubs say a relation; a statement without a result (SET, CREATE ...) gives None
            relation: duckdb.DuckDBPyRelation | None = lake.con.sql(sql)
            if relation is None:
                return None
            arrow = relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()
            del relation  # a relation must not outlive its connection (duckdb crashes closing one that is alive)
            return arrow
        except Exception as e:  # noqa: BLE001 - duckdb errors: syntax, unknown table, a file that went missing ...
            raise _QueryFailed(_explain(str(e), lake.unreadable, cfg)) from None
    finally:
        lake.close()


class _QueryFailed(Exception):
    pass


def _explain(message: str, unreadable: dict[str, str], cfg: LakewardConfig) -> str:
    """A DuckDB error, with the lake table a failing file belongs to and the tables left out."""
    message = " ".join(message.split())
    for name, uri in lakefs.list_tables(cfg.lake).items():
        if uri.rstrip("/") + "/" in message or uri.rstrip("/").split("://")[-1] + "/" in message:
            message = f"lake table {name} cannot be read: {message}"
            break
    if unreadable:
        message += f" (left out as unreadable: {', '.join(sorted(unreadable))})"
    return message


# --- result formats --------------------------------------------------------------------------------
# One text form per value in csv and table, one JSON form in json; both documented in docs/querying.md.

def _float(v: float, single: bool) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    if single:  # the shortest text that reads back as the same float32
        for digits in range(1, 10):
            text = f"{v:.{digits}g}"
            if struct.unpack("f", struct.pack("f", float(text)))[0] == v:
                return repr(float(text))
    return repr(v)


def _timestamp(v: datetime) -> str:
    if v.tzinfo is not None:
        v = v.astimezone(UTC)
    return v.isoformat(sep=" ")


def _json_value(v: Any, t: pa.DataType) -> Any:
    """A value as JSON: numbers, strings, booleans, null; decimals as exact strings, binary as base64,
    NaN and infinities as "NaN"/"Infinity"/"-Infinity", arrays and structs as JSON arrays and objects."""
    if v is None:
        return None
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_list_view(t) \
            or pa.types.is_large_list_view(t):
        return [_json_value(x, t.value_type) for x in v]
    if pa.types.is_struct(t):
        return {f.name: _json_value(v.get(f.name), f.type) for f in t}
    if pa.types.is_map(t):
        return [[_json_value(k, t.key_type), _json_value(x, t.item_type)] for k, x in v]
    if isinstance(v, bool) or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        text = _float(v, pa.types.is_float32(t) or pa.types.is_float16(t))
        return text if text in ("NaN", "Infinity", "-Infinity") else float(text)
    if isinstance(v, Decimal):
        return format(v, "f")
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode()
    if isinstance(v, datetime):
        return _timestamp(v)
    if isinstance(v, (date, time)):
        return v.isoformat()
    return str(v)


def _text_value(v: Any, t: pa.DataType) -> str | None:
    """A value as text (csv, table): None for null; arrays and structs as their JSON; binary as \\x + hex."""
    if v is None:
        return None
    if isinstance(v, (list, dict, tuple)):
        return orjson.dumps(_json_value(v, t)).decode()
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(v).hex()
    if isinstance(v, float):
        return _float(v, pa.types.is_float32(t) or pa.types.is_float16(t))
    if isinstance(v, Decimal):
        return format(v, "f")
    if isinstance(v, datetime):
        return _timestamp(v)
    if isinstance(v, (date, time)):
        return v.isoformat()
    return str(v)


def _csv_field(text: str | None) -> str:
    """RFC 4180 field: NULL is an empty field, an empty string is `""`."""
    if text is None:
        return ""
    if text == "" or any(c in text for c in ',"\r\n') or text != text.strip():
        return '"' + text.replace('"', '""') + '"'
    return text


_CONTROL = {i: f"\\x{i:02x}" for i in range(32)} | {9: "\\t", 10: "\\n", 13: "\\r", 127: "\\x7f"}


def write_result(arrow: pa.Table, fmt: OutputFormat, out: Any = None) -> None:
    types = [f.type for f in arrow.schema]
    names = arrow.column_names
    rows = [[row[i] for i in range(len(names))] for row in (tuple(r.values()) for r in arrow.to_pylist())] if names else []
    stream = out or sys.stdout
    if fmt == OutputFormat.json:
        for row in rows:
            doc = {n: _json_value(v, t) for n, v, t in zip(names, row, types, strict=True)}
            stream.write(orjson.dumps(doc).decode() + "\n")
    elif fmt == OutputFormat.csv:
        stream.write(",".join(_csv_field(n) for n in names) + "\n")
        for row in rows:
            stream.write(",".join(_csv_field(_text_value(v, t)) for v, t in zip(row, types, strict=True)) + "\n")
    else:
        from rich.text import Text

        t = Table(*[Column(n, overflow="fold") for n in names]) if names else Table()
        for row in rows:  # control characters escaped, so each row stays one line
            cells = [_text_value(v, ty) for v, ty in zip(row, types, strict=True)]
            t.add_row(*(Text("NULL", style="dim") if c is None else Text(c.translate(_CONTROL)) for c in cells))
        target = console if console.is_terminal else Console(width=max(80, Console(width=10**6).measure(t).maximum), highlight=False)
        target.print(t)
    stream.flush()


@app.command()
@_global_options
def replay(
    sink: Annotated[str, typer.Option("--sink", help="The sink whose tables to rebuild.")],
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Required: rebuild from the start of the topics.")] = False,
    table: Annotated[list[str] | None, typer.Option("--table", help="Only this table, as <source>.<schema>.<table> (repeatable).")] = None,
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
lake_app.callback()(_global_options(lambda: None))
TableOption = Annotated[list[str] | None, typer.Option("--table", help="Only this table, as <source>.<schema>.<table> (repeatable).")]
SinkOption = Annotated[str | None, typer.Option("--sink", help="Only the tables this sink writes.")]


def _maintain(operation: Operation, tables: list[str] | None, sink: str | None, **options: Any) -> None:
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
                r = maintenance.run(name, uri, operation, storage_options=cfg.lake.storage_options, **options)
                out.add_row(name, f"{r.version_before} → {r.version_after}", " ".join(f"{k}={v}" for k, v in r.details.items()),
                            str(r.conflicts), str(r.seconds))
                progress.advance(task)
    except LakewardError as e:
        _fail(e)
    console.print(out)


@lake_app.command("optimize")
@_global_options
def lake_optimize(table: TableOption = None, sink: SinkOption = None,
                  target_size: Annotated[int | None, typer.Option(help="Target file size in bytes (delta-rs default: 100 MiB).")] = None) -> None:
    """Compact small files (one Delta OPTIMIZE commit per table)."""
    _maintain("optimize", table, sink, target_size=target_size)


@lake_app.command("vacuum")
@_global_options
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
@_global_options
def lake_checkpoint(table: TableOption = None, sink: SinkOption = None) -> None:
    """Write a checkpoint of the current version (readers skip replaying the log); expired logs are cleaned up."""
    _maintain("checkpoint", table, sink)


demo_app = typer.Typer(no_args_is_help=True, help="The demo shop (PostgreSQL) and inventory (MySQL/MariaDB): setup, load, check.")
app.add_typer(demo_app, name="demo")
demo_app.callback()(_global_options(lambda: None))


@demo_app.command("setup")
@_global_options
def demo_setup(
    reset: Annotated[bool, typer.Option("--reset", help="Drop the demo tables, slot, topics and lake tables first.")] = False,
) -> None:
    """Create the demo tables and seed rows in the config's postgres and mysql sources (idempotent)."""
    from lakeward.app.demo import data

    try:
        data.setup(_config(), reset=reset, config_file=_config_file())
    except LakewardError as e:
        _fail(e)
    console.print("demo databases ready" + (" (reset)" if reset else ""))


@demo_app.command("load")
@_global_options
def demo_load(
    seconds: Annotated[float, typer.Option(help="How long to run; 0 runs until stopped.")] = 60.0,
    rate: Annotated[float, typer.Option(help="Transactions per second in each database.")] = 50.0,
) -> None:
    """Change the demo databases: orders, payments and stock moves; one ALTER TABLE in each, mid-run."""
    from lakeward.app.demo import data

    try:
        gen = data.LoadGenerator(data.demo_sources(_config(), _config_file()))
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
@_global_options
def demo_check() -> None:
    """Compare every demo table in the lake with its source: row counts and checksums; exit 1 if any differs."""
    from lakeward.app.demo import check, data

    code = 1
    try:
        cfg = _config()
        wide = console if console.is_terminal else Console(width=max(console.width, 140))  # CI logs: no wrapped rows
        if check.report(check.check_all(cfg, data.demo_sources(cfg, _config_file())), wide):
            code = 0
    except LakewardError as e:
        _print_error(e)
    _exit_without_finalizing(code)  # it scans the lake as `query` does


def main() -> None:
    try:
        app()
    except LakewardError as e:
        err.print(f"error: {e}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
