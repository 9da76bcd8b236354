"""Where lake tables live and how to read them: paths, discovery, DuckDB over delta-rs.

A lake is a local directory or an object-store prefix (`s3://bucket/prefix`). Remote lakes are
listed and dropped through delta-rs' own object store, with the lake's storage options, so every
path uses the same endpoint, credentials and environment fallbacks as the Delta reads and writes.
All functions here block: async callers run them through asyncio.to_thread.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import duckdb
import pyarrow as pa
from deltalake import DeltaTable

from lakeward.core.config import LakeConfig, LakewardConfig
from lakeward.core.errors import ConfigError
from lakeward.core.s3 import is_s3
from lakeward.sinks.delta import s3
from lakeward.sinks.delta.lake import arrow_filesystem

if TYPE_CHECKING:
    import pyarrow.dataset as pds


# A Delta table has its first commit, or a checkpoint pointer once old commits were cleaned up.
# Two HEAD requests tell, where listing `_delta_log/` could page through thousands of commits.
_LOG_MARKERS = ("_delta_log/00000000000000000000.json", "_delta_log/_last_checkpoint")
_HEAD_THREADS = 16


def table_uri(lake: LakeConfig, source: str, schema: str, table: str) -> str:
    return f"{lake.uri.rstrip('/')}/{source}/{schema}/{table}"


def is_local(uri: str) -> bool:
    return uri.startswith("file://") or "://" not in uri


def storage_options(lake: LakeConfig) -> dict[str, str] | None:
    """The options delta-rs gets for this lake (None when there are none, as delta-rs wants)."""
    return dict(lake.storage_options) or None


def _local_path(uri: str) -> Path:
    return Path(uri[len("file://") :] if uri.startswith("file://") else uri)


def storage_errors(lake: LakeConfig, uri: str | None = None) -> contextlib.AbstractContextManager[None]:
    """Turns S3 errors into ones naming endpoint, bucket and fix (see core/s3.py); a no-op elsewhere."""
    return s3.storage_errors(uri or lake.uri, lake.storage_options) if is_s3(lake.uri) else contextlib.nullcontext()


def check_lake(lake: LakeConfig) -> None:
    """Fail early and clearly when an S3 lake's bucket is missing, the credentials are rejected
    (LakeStorageError) or the endpoint is unreachable (ConnectionFailed, retriable). Blocking."""
    if is_s3(lake.uri):
        s3.check(lake.uri, lake.storage_options)


def list_tables(lake: LakeConfig) -> dict[str, str]:
    """Every Delta table of the lake as {"<source>.<schema>.<table>": uri}."""
    if not is_local(lake.uri):
        return _list_remote(lake)
    root = _local_path(lake.uri)
    found = {}
    for log_dir in sorted(root.glob("*/*/*/_delta_log")):
        table_dir = log_dir.parent
        source, schema, table = table_dir.relative_to(root).parts
        found[f"{source}.{schema}.{table}"] = str(table_dir)
    return found


def _list_remote(lake: LakeConfig) -> dict[str, str]:
    """`<source>/<schema>/<table>` prefixes by three levels of delimiter listings (never a table's
    data files), kept when a HEAD request finds their Delta log."""
    from pyarrow.fs import FileSelector, FileType

    root = lake.uri.rstrip("/")
    check_lake(lake)  # a bad endpoint, bucket or key fails in seconds, not after the store's 10 retries
    with storage_errors(lake):
        fs = s3.filesystem(root, lake.storage_options)

        def subdirs(path: str) -> Iterator[str]:
            for info in fs.get_file_info(FileSelector(path, allow_not_found=True)):
                if info.type == FileType.Directory and not info.base_name.startswith("."):
                    yield info.path

        def is_table(path: str) -> bool:
            return any(fs.get_file_info(f"{path}/{marker}").type == FileType.File for marker in _LOG_MARKERS)

        candidates = sorted(t for src in subdirs("") for schema in subdirs(src) for t in subdirs(schema))
        with ThreadPoolExecutor(_HEAD_THREADS) as pool:
            found = [path for path, ok in zip(candidates, pool.map(is_table, candidates), strict=True) if ok]
    return {".".join(path.split("/")): f"{root}/{path}" for path in found}


def sink_tables(config: LakewardConfig, sink: Any, only: list[str] | None = None) -> dict[str, str]:
    """The existing lake tables a sink writes (optionally filtered by `<source>.<schema>.<table>`)."""
    out = {}
    for name, uri in list_tables(config.lake).items():
        source, rest = name.split(".", 1)
        if source not in sink.sources or not any(fnmatch.fnmatch(rest, p) for p in sink.tables):
            continue
        if only and name not in only:
            continue
        out[name] = uri
    for name in only or []:
        if name not in out:
            raise ConfigError(f"no lake table {name} written by sink {sink.name}; known: {', '.join(out) or 'none'}")
    return out


def drop_table(uri: str, lake: LakeConfig | None = None) -> None:
    """Delete a lake table and all its files. A remote table needs its lake (for the storage options)."""
    if is_local(uri):
        shutil.rmtree(_local_path(uri))
        return
    options = lake.storage_options if lake is not None else {}  # without its lake: the environment's only
    parent, name = uri.rstrip("/").rsplit("/", 1)
    with s3.storage_errors(uri, options) if is_s3(uri) else contextlib.nullcontext():
        s3.filesystem(parent, options).delete_dir(name)


@dataclass
class LakeView:
    """A DuckDB connection with the lake's readable tables as views, and the tables that could not be read."""

    con: duckdb.DuckDBPyConnection
    unreadable: dict[str, str] = field(default_factory=dict)
    """`<source>.<schema>.<table>` -> why it could not be read (left out of the connection)."""

    def close(self) -> None:
        self.con.close()


_BACKTRACE_FRAME = re.compile(r"^\s*(\d+: |at \S+:\d+)")


def _one_line(e: BaseException) -> str:
    """The error on one line, without the Rust backtrace delta-rs may append (RUST_BACKTRACE)."""
    lines = [line for line in str(e).splitlines() if not _BACKTRACE_FRAME.match(line)]
    text = " ".join(" ".join(lines).split()) or e.__class__.__name__
    return f"{e.__class__.__name__}: {text}" if e.__class__.__name__ not in text else text


def referenced_tables(sql: str) -> set[str] | None:
    """The `<source>.<schema>.<table>` names a statement reads, or None when it names a table in a
    way that is not fully qualified, or cannot tell (then every table may be meant)."""
    names: set[str] = set()
    try:
        found = duckdb.connect().get_table_names(sql, qualified=True)
    except duckdb.Error:  # a syntax error (reported when the query runs) or a clause it binds, such as USING
        return None
    for qualified in found:
        parts = _split_identifier(qualified)
        if len(parts) != 3:
            return None
        names.add(".".join(parts))
    return names


def _split_identifier(text: str) -> list[str]:
    """`a.b."c d"` -> ["a", "b", "c d"] (DuckDB quotes a part with `"`, doubling an inner `"`)."""
    parts: list[str] = []
    cur, quoted, i = "", False, 0
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == '"' and text[i + 1 : i + 2] == '"':
                cur += '"'
                i += 1
            elif ch == '"':
                quoted = False
            else:
                cur += ch
        elif ch == '"':
            quoted = True
        elif ch == ".":
            parts.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    parts.append(cur)
    return parts


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _with_file_types(delta: pa.Schema, physical: pa.Schema) -> pa.Schema:
    """The table's schema with the Arrow types one group of files stores (string_view where a MERGE
    wrote it, large_string where a plain write did); columns the files lack keep the table's type."""
    return pa.schema([physical.field(f.name).with_nullable(f.nullable) if f.name in physical.names else f for f in delta])


def _dataset(dt: DeltaTable) -> pds.FileSystemDataset:
    """delta-rs' pyarrow dataset of the table, without the per-file guarantees it derives from the
    file statistics. For a file written before a column was added, delta-rs states `x >= null AND
    x <= null` as a guarantee, and pyarrow then simplifies `x IS NOT NULL` to true for that file (its
    rows come back) and `x IS NULL` to false (they are lost). Row-group statistics in the Parquet
    footers still prune; only the file-level shortcut goes."""
    import pyarrow.dataset as pds

    ds = cast("pds.FileSystemDataset", dt.to_pyarrow_dataset(filesystem=arrow_filesystem(dt)))  # typed as its base class
    fragments = [ds.format.make_fragment(fr.path, filesystem=ds.filesystem) for fr in ds.get_fragments()]
    return pds.FileSystemDataset(fragments, ds.schema, ds.format, ds.filesystem)


def _table_datasets(dt: DeltaTable, threads: int = _HEAD_THREADS) -> list[pds.FileSystemDataset]:
    """The table as pyarrow datasets, one per physical schema of its files.

    delta-rs writes text and binary columns as `large_string`/`large_binary` in plain writes and as
    `string_view`/`binary_view` in MERGE commits. One dataset with the table's schema reads both,
    but pyarrow evaluates a pushed-down filter against each file's own types, and has no kernel for
    comparing `string` with `string_view`: a WHERE on such a column fails. So the files are grouped
    by their physical schema (read from each file's footer), each group becomes a dataset with those
    types, and the view is their UNION ALL (DuckDB reads every variant as VARCHAR / BLOB)."""
    import pyarrow.dataset as pds

    base = _dataset(dt)
    fragments = list(base.get_fragments())
    if not fragments:
        return [base]
    with ThreadPoolExecutor(min(threads, len(fragments))) as pool:
        physical = list(pool.map(lambda fr: fr.physical_schema, fragments))
    groups: dict[pa.Schema, set[str]] = {}
    for fr, ps in zip(fragments, physical, strict=True):
        groups.setdefault(_with_file_types(base.schema, ps), set()).add(fr.path)
    if len(groups) == 1:
        (schema,) = groups
        if schema == base.schema:
            return [base]
    return [pds.FileSystemDataset([fr for fr in fragments if fr.path in paths], schema, base.format, base.filesystem)
            for schema, paths in groups.items()]


def open_lake(config: LakewardConfig, *, as_of: int | None = None, prepare: set[str] | None = None) -> LakeView:
    """DuckDB with every readable lake table as a view `<source>.<schema>.<table>`, read through
    delta-rs (so no DuckDB extension is downloaded at run time).

    A table that cannot be read (a damaged or unsupported Delta log, missing files, no such
    version for `as_of`) is left out and named with the reason in `unreadable`; the others are
    there. The tables in `prepare` (default: all) have their files' footers read here, so a filter
    works on files of mixed physical types and a missing file is found before the query runs; the
    others are views over delta-rs' dataset as is."""
    lake = LakeView(duckdb.connect())
    databases: set[str] = set()
    for i, (name, uri) in enumerate(list_tables(config.lake).items()):
        source, schema, table = name.split(".")
        try:
            with storage_errors(config.lake, uri):
                dt = DeltaTable(uri, storage_options=storage_options(config.lake))
                if as_of is not None:
                    dt.load_as_version(as_of)
                # delta-rs' own filesystem reads the Parquet files, also on S3: DuckDB needs no httpfs
                datasets = _table_datasets(dt) if prepare is None or name in prepare else [_dataset(dt)]
        except Exception as e:  # noqa: BLE001 - one unreadable table must not hide the others
            at = f" at version {as_of}" if as_of is not None else ""
            lake.unreadable[name] = f"{_one_line(e)} (table {uri}{at})"
            continue
        for j, ds in enumerate(datasets):
            lake.con.register(f"__lakeward_{i}_{j}", ds)
        if source not in databases:
            lake.con.execute(f"ATTACH ':memory:' AS {_quote(source)}")
            databases.add(source)
        lake.con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(source)}.{_quote(schema)}")
        union = " UNION ALL ".join(f"SELECT * FROM __lakeward_{i}_{j}" for j in range(len(datasets)))
        lake.con.execute(f"CREATE VIEW {_quote(source)}.{_quote(schema)}.{_quote(table)} AS {union}")
    return lake

