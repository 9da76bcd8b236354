"""How the reader thread's failures reach the runner: library and driver errors as Lakeward's
(terminal: a person must act; transient: retried), and the binlog contents it refuses, with the fix."""

from __future__ import annotations

import pymysql

from lakeward.connectors.mysql import catalog
from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.core.errors import ConnectionFailed, SourceSetupError, TerminalError, TransientError

COMPRESSED_EVENTS = {
    0x28: "MySQL TRANSACTION_PAYLOAD_EVENT (binlog_transaction_compression=ON)",
    0xA5: "MariaDB QUERY_COMPRESSED_EVENT (log_bin_compress=ON)",
    0xA6: "MariaDB WRITE_ROWS_COMPRESSED_EVENT_V1 (log_bin_compress=ON)",
    0xA7: "MariaDB UPDATE_ROWS_COMPRESSED_EVENT_V1 (log_bin_compress=ON)",
    0xA8: "MariaDB DELETE_ROWS_COMPRESSED_EVENT_V1 (log_bin_compress=ON)",
    0xA9: "MariaDB WRITE_ROWS_COMPRESSED_EVENT (log_bin_compress=ON)",
    0xAA: "MariaDB UPDATE_ROWS_COMPRESSED_EVENT (log_bin_compress=ON)",
    0xAB: "MariaDB DELETE_ROWS_COMPRESSED_EVENT (log_bin_compress=ON)",
}
"""Event types python-mysql-replication cannot decode and would skip: refused, never skipped."""


def compressed_event(cfg: MySQLSourceConfig, event_type: int, where: str) -> TerminalError:
    return TerminalError(
        f"MySQL at {cfg.where}: the binlog holds a compressed event ({COMPRESSED_EVENTS[event_type]}) at {where}, which cannot "
        "be decoded; refusing to skip it. Turn compression off on the server, then take a new snapshot (docs/mysql.md: delete the "
        f"state topic <prefix>.{cfg.name}.__state and restart the source)")


def xa_transaction(cfg: MySQLSourceConfig, where: str) -> TerminalError:
    return TerminalError(f"MySQL at {cfg.where}: an XA transaction changed captured tables ({where}); XA transactions are not "
                         "supported (their rows are logged at XA PREPARE, before the outcome)")


def partial_json_update(cfg: MySQLSourceConfig) -> TerminalError:
    return TerminalError(f"MySQL at {cfg.where}: partial JSON updates (binlog_row_value_options=PARTIAL_JSON) cannot be applied; "
                         "set binlog_row_value_options=''")


def statement_based(cfg: MySQLSourceConfig, table: str, sql: str) -> TerminalError:
    return TerminalError(f"MySQL at {cfg.where}: a statement-based change to {table} is in the binlog ({sql[:120]!r}); rows can only "
                         "be captured from row-based events. Make sure every session uses binlog_format=ROW, then re-snapshot")


def stream_ended(cfg: MySQLSourceConfig, file: str) -> ConnectionFailed:
    return ConnectionFailed(f"MySQL at {cfg.where} ended the binlog stream (server shutting down?) at {file}")


def classify(e: BaseException, cfg: MySQLSourceConfig) -> BaseException:
    """Library and driver errors -> Lakeward's (terminal: a person must act; transient: retried)."""
    if isinstance(e, (TerminalError, TransientError)):
        return e
    if isinstance(e, pymysql.err.OperationalError) and e.args:
        code, msg = e.args[0], str(e.args[-1])
        if code == catalog.ER_MASTER_FATAL_READING_BINLOG:
            return SourceSetupError(
                f"MySQL at {cfg.where} cannot send the binlog from the source's resume position: {msg}. If the binlog "
                f"was purged, the changes in between are lost to Lakeward: stop the source, delete its state topic "
                f"(<prefix>.{cfg.name}.__state) and start it again to take a new snapshot (docs/mysql.md)")
        if code == 1412:  # ER_TABLE_DEF_CHANGED
            return TransientError(f"MySQL at {cfg.where}: a table changed while it was being snapshotted ({msg}); retrying the snapshot")
        return ConnectionFailed(f"MySQL at {cfg.where}: {msg} (error {code})")
    if isinstance(e, (pymysql.err.InterfaceError, ConnectionError, OSError)):
        return ConnectionFailed(f"MySQL at {cfg.where}: connection lost ({e.__class__.__name__}: {e})")
    return e
