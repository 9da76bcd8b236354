"""Lakeward's exception tree.

Every error says whether retrying can help (``retriable``), like aiokafka's errors: workers retry
transient errors with backoff and stop on terminal ones. Messages name the thing at fault (file and
line, host and port, table or column) and what to do about it.
"""

from __future__ import annotations


class LakewardError(Exception):
    """Base of every error Lakeward raises on purpose."""

    retriable: bool = False


class TerminalError(LakewardError):
    """Retrying cannot help: a person has to change the config, the database or the data."""

    retriable = False


class TransientError(LakewardError):
    """Retrying with backoff may help: a connection dropped, a broker was briefly unavailable."""

    retriable = True


class ConfigError(TerminalError):
    """The YAML config is invalid; the message names file, line and key path."""


class SourceSetupError(TerminalError):
    """The source database is not set up for CDC (wal_level, privileges, missing tables ...)."""


class ConnectionFailed(TransientError):
    """A host could not be reached; names host and port."""


class LakeStorageError(TerminalError):
    """The lake's object storage refuses the config (missing bucket, rejected credentials ...); names endpoint and bucket."""


class SchemaChangeError(TerminalError):
    """A source schema change the lake table cannot represent; names the table and the column."""


class PoisonEventError(TerminalError):
    """An event could not be decoded or applied; names topic, partition and offset."""


class CommitConflict(TransientError):
    """Another writer committed to the Delta table first: reload the table and recompute."""
