"""Where lake tables live and how to read them: paths, discovery, DuckDB over delta-rs."""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path
from typing import Any

import duckdb
from deltalake import DeltaTable

from lakeward.core.config import LakeConfig, LakewardConfig
from lakeward.core.errors import ConfigError


def table_uri(lake: LakeConfig, source: str, schema: str, table: str) -> str:
    return f"{lake.uri.rstrip('/')}/{source}/{schema}/{table}"


def _local_root(lake: LakeConfig) -> Path:
    uri = lake.uri
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        raise ConfigError(f"lake.uri {lake.uri}: only local lakes can be listed in this version")
    return Path(uri)


def list_tables(lake: LakeConfig) -> dict[str, str]:
    """Every Delta table of the lake as {"<source>.<schema>.<table>": uri}."""
    root = _local_root(lake)
    found = {}
    for log_dir in sorted(root.glob("*/*/*/_delta_log")):
        table_dir = log_dir.parent
        source, schema, table = table_dir.relative_to(root).parts
        found[f"{source}.{schema}.{table}"] = str(table_dir)
    return found


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


def drop_table(uri: str) -> None:
    shutil.rmtree(uri)


def duckdb_connection(config: LakewardConfig, *, as_of: int | None = None) -> duckdb.DuckDBPyConnection:
    """DuckDB with every lake table as a view `<source>.<schema>.<table>`, read through delta-rs
    (so no DuckDB extension is downloaded at run time)."""
    con = duckdb.connect()
    databases: set[str] = set()
    for i, (name, uri) in enumerate(list_tables(config.lake).items()):
        source, schema, table = name.split(".")
        dt = DeltaTable(uri, storage_options=config.lake.storage_options or None)
        if as_of is not None:
            dt.load_as_version(as_of)
        con.register(f"__lakeward_{i}", dt.to_pyarrow_dataset())
        if source not in databases:
            con.execute(f"ATTACH ':memory:' AS \"{source}\"")
            databases.add(source)
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{source}"."{schema}"')
        con.execute(f'CREATE VIEW "{source}"."{schema}"."{table}" AS SELECT * FROM __lakeward_{i}')
    return con
