"""Where lake tables live and how to read them: paths, discovery, DuckDB over delta-rs.

A lake is a local directory or an object-store prefix (`s3://bucket/prefix`). Remote lakes are
listed and dropped through delta-rs' own object store, with the lake's storage options, so every
path uses the same endpoint, credentials and environment fallbacks as the Delta reads and writes.
All functions here block: async callers run them through asyncio.to_thread.
"""

from __future__ import annotations

import contextlib
import fnmatch
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
from deltalake import DeltaTable

from lakeward.core import s3
from lakeward.core.config import LakeConfig, LakewardConfig
from lakeward.core.errors import ConfigError

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
    return s3.storage_errors(uri or lake.uri, lake.storage_options) if s3.is_s3(lake.uri) else contextlib.nullcontext()


def check_lake(lake: LakeConfig) -> None:
    """Fail early and clearly when an S3 lake's bucket is missing, the credentials are rejected
    (LakeStorageError) or the endpoint is unreachable (ConnectionFailed, retriable). Blocking."""
    if s3.is_s3(lake.uri):
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
            found = [path for path, ok in zip(candidates, pool.map(is_table, candidates)) if ok]
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
    with s3.storage_errors(uri, options) if s3.is_s3(uri) else contextlib.nullcontext():
        s3.filesystem(parent, options).delete_dir(name)


def duckdb_connection(config: LakewardConfig, *, as_of: int | None = None) -> duckdb.DuckDBPyConnection:
    """DuckDB with every lake table as a view `<source>.<schema>.<table>`, read through delta-rs
    (so no DuckDB extension is downloaded at run time)."""
    con = duckdb.connect()
    databases: set[str] = set()
    for i, (name, uri) in enumerate(list_tables(config.lake).items()):
        source, schema, table = name.split(".")
        with storage_errors(config.lake, uri):
            dt = DeltaTable(uri, storage_options=storage_options(config.lake))
            if as_of is not None:
                dt.load_as_version(as_of)
            # delta-rs' own filesystem reads the Parquet files, also on S3: DuckDB needs no httpfs
            con.register(f"__lakeward_{i}", dt.to_pyarrow_dataset())
        if source not in databases:
            con.execute(f"ATTACH ':memory:' AS \"{source}\"")
            databases.add(source)
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{source}"."{schema}"')
        con.execute(f'CREATE VIEW "{source}"."{schema}"."{table}" AS SELECT * FROM __lakeward_{i}')
    return con
