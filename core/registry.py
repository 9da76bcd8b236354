"""Maps the YAML `type:` of a source or sink to the plugin that implements it.

Each plugin is a package with the same shape: `config.py` (its config class) and `source.py` or
`sink.py` (the class implementing lakeward.core.source.Source / lakeward.core.sink.Sink).
Implementations are imported only when a worker is built, so `lakeward validate` and `lakeward
config` load no database driver.
"""

from __future__ import annotations

import importlib
from typing import Any

# type -> (config class, implementation class), as "module:attribute".
SOURCE_TYPES: dict[str, tuple[str, str]] = {
    "postgres": ("lakeward.connectors.postgres.config:PostgresSourceConfig", "lakeward.connectors.postgres.source:PostgresSource"),
    "mysql": ("lakeward.connectors.mysql.config:MySQLSourceConfig", "lakeward.connectors.mysql.source:MySQLSource"),
}
SINK_TYPES: dict[str, tuple[str, str]] = {
    "delta": ("lakeward.sinks.delta.config:DeltaSinkConfig", "lakeward.sinks.delta.sink:DeltaSink"),
}


def _load(ref: str) -> Any:
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def config_class(section: str, kind: str) -> Any:
    table = SOURCE_TYPES if section == "sources" else SINK_TYPES
    return _load(table[kind][0])


def source_class(kind: str) -> Any:
    return _load(SOURCE_TYPES[kind][1])


def sink_class(kind: str) -> Any:
    return _load(SINK_TYPES[kind][1])
