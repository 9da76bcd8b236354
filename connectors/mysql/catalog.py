"""Talking SQL to the server (blocking PyMySQL, called from the reader thread or asyncio.to_thread):
connections, the startup checks, table globs, information_schema column definitions."""

from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass
from typing import Any

import pymysql
import pymysql.cursors

from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.connectors.mysql.types import (
    SNAPSHOT_CONV,
    ColumnDef,
    column_def,
    json_columns,
)
from lakeward.core.errors import ConnectionFailed, SourceSetupError

log = logging.getLogger(__name__)

SYSTEM_DATABASES = ("mysql", "information_schema", "performance_schema", "sys")

# Server error numbers we tell apart.
ER_ACCESS_DENIED = 1045
ER_DBACCESS_DENIED = 1044
ER_SPECIFIC_ACCESS_DENIED = 1227
ER_TABLEACCESS_DENIED = 1142
ER_MASTER_FATAL_READING_BINLOG = 1236


def connect(cfg: MySQLSourceConfig, *, snapshot: bool = False, **extra: Any) -> pymysql.Connection:
    """A connection with UTC session time (TIMESTAMP values come out in UTC) and utf8mb4; `snapshot`
    connections keep temporal and decimal values as the server's text (types.SNAPSHOT_CONV)."""
    kw: dict[str, Any] = {
        "host": cfg.host, "port": cfg.port, "user": cfg.user, "password": cfg.password or "", "charset": "utf8mb4",
        "connect_timeout": cfg.connect_timeout_s, "autocommit": True, "init_command": "SET time_zone = '+00:00'",
    }
    if snapshot:
        kw["conv"] = SNAPSHOT_CONV
    kw.update(extra)
    try:
        return pymysql.connect(**kw)
    except pymysql.err.OperationalError as e:
        code = e.args[0] if e.args else 0
        if code in (ER_ACCESS_DENIED, ER_DBACCESS_DENIED):
            raise SourceSetupError(f"MySQL at {cfg.where} rejected the login of user {cfg.user!r}: {e.args[1]}; "
                                   "check `user` and `password` of the source") from None
        raise ConnectionFailed(f"cannot reach MySQL at {cfg.where}: {e.args[-1]}; check `host` and `port` of the source and that "
                               "the server is running there") from None


def query(conn: pymysql.Connection, sql: str, args: Any = None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def query_dicts(conn: pymysql.Connection, sql: str, args: Any = None) -> list[dict[str, Any]]:
    with conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def variables(conn: pymysql.Connection, *names: str) -> dict[str, str]:
    rows = query(conn, "SHOW GLOBAL VARIABLES WHERE Variable_name IN (" + ", ".join(["%s"] * len(names)) + ")", names)
    return {k.lower(): v for k, v in rows}


@dataclass(frozen=True)
class Server:
    """What the source needs to know about the server, read once per connection."""

    flavor: str
    """`mariadb` or `mysql`."""
    version: str
    server_id: int
    uuid: str | None
    """@@server_uuid (MySQL); None on MariaDB."""
    gtid_mode: bool
    """MySQL: gtid_mode=ON. MariaDB: always True (every MariaDB 10+ binlog has GTIDs)."""

    @property
    def is_mariadb(self) -> bool:
        return self.flavor == "mariadb"

    @property
    def identity(self) -> str:
        """Names the binlog the positions come from: a failover to another server changes it."""
        return f"mysql:{self.uuid}" if self.uuid else f"mariadb:{self.server_id}"


def server_info(conn: pymysql.Connection) -> Server:
    version = query(conn, "SELECT VERSION()")[0][0]
    mariadb = "mariadb" in version.lower()
    server_id = int(query(conn, "SELECT @@server_id")[0][0])
    if mariadb:
        return Server("mariadb", version, server_id, None, True)
    uuid, gtid_mode = query(conn, "SELECT @@server_uuid, @@gtid_mode")[0]
    return Server("mysql", version, server_id, uuid, str(gtid_mode).upper() == "ON")


def version_tuple(version: str) -> tuple[int, ...]:
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    return tuple(int(x) for x in m.groups()) if m else (0, 0, 0)


def binary_logs(conn: pymysql.Connection) -> list[str]:
    return [r[0] for r in query(conn, "SHOW BINARY LOGS")]


def binlog_end(conn: pymysql.Connection) -> tuple[str, int]:
    """(file, position) of the binlog's end now, without the GTID lookup of master_status."""
    row = _binlog_status(conn)
    return row["File"], int(row["Position"])


def _binlog_status(conn: pymysql.Connection) -> dict:
    """The row of SHOW BINARY LOG STATUS (MySQL 8.2+), or of SHOW MASTER STATUS (older, MariaDB)."""
    try:
        rows = query_dicts(conn, "SHOW BINARY LOG STATUS")
    except pymysql.err.ProgrammingError:
        rows = query_dicts(conn, "SHOW MASTER STATUS")
    if not rows:
        raise SourceSetupError("the binary log is off (SHOW MASTER STATUS is empty)")
    return rows[0]


def master_status(conn: pymysql.Connection, server: Server) -> tuple[str, int, str]:
    """(file, position, gtid) of the binlog's end now. GTID: MariaDB's gtid_binlog_pos, MySQL's
    gtid_executed (empty without GTIDs)."""
    row = _binlog_status(conn)
    if server.is_mariadb:
        gtid = query(conn, "SELECT BINLOG_GTID_POS(%s, %s)", (row["File"], row["Position"]))[0][0] or ""
    else:
        gtid = (row.get("Executed_Gtid_Set") or "").replace("\n", "") if server.gtid_mode else ""
    return row["File"], int(row["Position"]), gtid


def _grants(conn: pymysql.Connection) -> set[str]:
    """Global privileges of the current user, upper case (`ALL PRIVILEGES` included as such)."""
    privs: set[str] = set()
    for (line,) in query(conn, "SHOW GRANTS"):
        m = re.match(r"GRANT (.+?) ON \*\.\* TO", line, re.I)
        if m:
            privs |= {p.strip().upper() for p in m.group(1).split(",")}
    return privs


SETUP_VARIABLES = ("log_bin", "binlog_format", "binlog_row_image", "binlog_row_metadata", "log_bin_compress",
                   "binlog_transaction_compression", "binlog_row_value_options")


def setup_problem(where: str, flavor: str, version: str, var: dict[str, str], privs: set[str], user: str) -> str | None:
    """What keeps the server from feeding a row-based CDC, with the fix; None when all is well.

    `where` names the server (`MariaDB at host:port`), `var` holds SETUP_VARIABLES (lower-case
    names), `privs` the user's global privileges (SHOW GRANTS ... ON *.*, upper case)."""
    mariadb = flavor == "mariadb"
    v = version_tuple(version)
    if mariadb and v < (10, 5, 0) or not mariadb and v < (8, 0, 14):
        return (f"{where} is version {version}; Lakeward needs MariaDB 10.5+ or MySQL 8.0.14+ "
                "(binlog_row_metadata=FULL: column names in the binlog)")
    if var.get("log_bin", "OFF").upper() not in ("ON", "1"):
        return (f"{where} has the binary log off (log_bin=OFF); add `log_bin` (with binlog_format=ROW, "
                "binlog_row_image=FULL, binlog_row_metadata=FULL) to the server's config file and restart it")
    for name, want in (("binlog_format", "ROW"), ("binlog_row_image", "FULL"), ("binlog_row_metadata", "FULL")):
        have = var.get(name, "(missing)").upper()
        if have != want:
            return (f"{where} has {name}={have}; Lakeward needs {name}={want}: run `SET GLOBAL {name} = '{want}'` "
                    f"and put `{name} = {want}` in the server's config file (sessions already connected keep the old "
                    "value until they reconnect)")
    if var.get("log_bin_compress", "OFF").upper() in ("ON", "1"):
        return (f"{where} has log_bin_compress=ON: compressed binlog events cannot be decoded (python-mysql-replication "
                "would skip them, losing changes); run `SET GLOBAL log_bin_compress = OFF` and remove it from the "
                "server's config file")
    if var.get("binlog_transaction_compression", "OFF").upper() in ("ON", "1"):
        return (f"{where} has binlog_transaction_compression=ON: compressed transaction payloads cannot be decoded "
                "(python-mysql-replication would skip them, losing changes); run "
                "`SET GLOBAL binlog_transaction_compression = OFF` and remove it from the server's config file")
    if "PARTIAL_JSON" in var.get("binlog_row_value_options", "").upper():
        return (f"{where} has binlog_row_value_options=PARTIAL_JSON: JSON updates would arrive as diffs; run "
                "`SET GLOBAL binlog_row_value_options = ''`")
    if "ALL PRIVILEGES" not in privs:
        need = ["REPLICATION SLAVE", "BINLOG MONITOR" if mariadb else "REPLICATION CLIENT"]
        if not mariadb:
            need.append("RELOAD")
        aliases = {"REPLICATION SLAVE": {"REPLICATION REPLICA"}, "BINLOG MONITOR": {"REPLICATION CLIENT", "SUPER"},
                   "REPLICATION CLIENT": {"BINLOG MONITOR", "SUPER"}}
        missing = [p for p in need if p not in privs and not (aliases.get(p, set()) & privs)]
        if missing:
            return (f"user {user!r} on {where} lacks {', '.join(missing)}: run `GRANT {', '.join(missing)} ON *.* TO "
                    f"'{user}'@'<host>'` (plus SELECT on the captured tables)")
    return None


def check_setup(conn: pymysql.Connection, cfg: MySQLSourceConfig, server: Server) -> None:
    """Refuse to start, naming host:port and the fix, when the server can't feed a row-based CDC."""
    where = f"{'MariaDB' if server.is_mariadb else 'MySQL'} at {cfg.where}"
    problem = setup_problem(where, server.flavor, server.version, variables(conn, *SETUP_VARIABLES), _grants(conn), cfg.user)
    if problem:
        raise SourceSetupError(problem)


def check_select(conn: pymysql.Connection, cfg: MySQLSourceConfig, tables: list[tuple[str, str]]) -> None:
    for db, table in tables:
        try:
            query(conn, f"SELECT 1 FROM {quote(db)}.{quote(table)} LIMIT 0")
        except pymysql.err.OperationalError as e:
            if e.args and e.args[0] in (ER_TABLEACCESS_DENIED, ER_DBACCESS_DENIED):
                raise SourceSetupError(f"user {cfg.user!r} on MySQL at {cfg.where} cannot read {db}.{table}: run "
                                       f"`GRANT SELECT ON {db}.* TO '{cfg.user}'@'<host>'`") from None
            raise


def check_position_available(conn: pymysql.Connection, cfg: MySQLSourceConfig, file: str, pos: int, state_topic: str) -> None:
    """The resume position's binlog file must still exist on the server."""
    logs = binary_logs(conn)
    if file not in logs:
        oldest = logs[0] if logs else "none"
        raise SourceSetupError(
            f"MySQL at {cfg.where} no longer has binlog {file} (the source's resume position {file}:{pos}); the oldest "
            f"is {oldest}: the changes in between were purged (binlog_expire_logs_seconds / PURGE BINARY LOGS) and "
            f"cannot be captured. To take a new snapshot, stop the source, delete its state topic {state_topic} "
            f"(e.g. `kafka-topics.sh --bootstrap-server <broker> --delete --topic {state_topic}`, or "
            f"`rpk topic delete {state_topic}`) and start it again: every table is snapshotted again and each "
            "snapshot starts by clearing the table in the lake"
        )


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def split_glob(pattern: str) -> tuple[str, str]:
    if "." not in pattern:
        raise SourceSetupError(f"tables: {pattern!r} must be `database.table` (globs allowed, e.g. inventory.*)")
    db, table = pattern.split(".", 1)
    return db, table


def matches(patterns: list[str], db: str, table: str) -> bool:
    name = f"{db}.{table}"
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def schema_filter(patterns: list[str]) -> list[str] | None:
    """Databases to read table maps of, when every glob names its database literally."""
    dbs = []
    for p in patterns:
        db, _ = split_glob(p)
        if any(ch in db for ch in "*?["):
            return None
        dbs.append(db)
    return sorted(set(dbs))


def resolve_tables(conn: pymysql.Connection, cfg: MySQLSourceConfig) -> list[tuple[str, str]]:
    """(database, table) of every base table matching the `database.table` globs."""
    rows = query(
        conn,
        "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE' "
        "AND TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') ORDER BY 1, 2",
    )
    out: list[tuple[str, str]] = []
    for pattern in cfg.tables:
        db, table = split_glob(pattern)
        hits = [(d, t) for d, t in rows if fnmatch.fnmatchcase(f"{d}.{t}", pattern)]
        if not hits and not any(ch in pattern for ch in "*?["):
            raise SourceSetupError(f"table {pattern} does not exist on MySQL at {cfg.where}; check `tables:` of the source")
        for pair in hits:
            if pair not in out:
                out.append(pair)
    return out


def table_defs(conn: pymysql.Connection, db: str, table: str) -> tuple[list[ColumnDef], list[str]] | None:
    """The table's columns and primary key as information_schema has them now; None if it doesn't exist."""
    rows = query_dicts(
        conn,
        "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, CHARACTER_SET_NAME, NUMERIC_PRECISION, NUMERIC_SCALE, "
        "DATETIME_PRECISION, CHARACTER_MAXIMUM_LENGTH, COLUMN_DEFAULT, EXTRA FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
        (db, table),
    )
    if not rows:
        return None
    json_names: set[str] = set()
    if any(str(r["DATA_TYPE"]).lower() == "longtext" for r in rows):
        try:
            checks = query(conn, "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
                                 "WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s", (db, table))
            json_names = json_columns([c[0] for c in checks])
        except pymysql.err.MySQLError:  # MySQL has a real JSON type; CHECK_CONSTRAINTS lacks TABLE_NAME there
            json_names = set()
    pk = [r[0] for r in query(
        conn,
        "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
        "AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX",
        (db, table),
    )]
    return [column_def(r, json_names) for r in rows], pk


def table_engines(conn: pymysql.Connection, tables: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    if not tables:
        return {}
    rows = query(conn, "SELECT TABLE_SCHEMA, TABLE_NAME, ENGINE FROM information_schema.TABLES WHERE "
                       + " OR ".join(["(TABLE_SCHEMA = %s AND TABLE_NAME = %s)"] * len(tables)),
                 [x for t in tables for x in t])
    return {(d, t): (e or "") for d, t, e in rows}


def row_estimate(conn: pymysql.Connection, db: str, table: str) -> int | None:
    """InnoDB's row estimate of a table (information_schema.tables.table_rows); None when unknown."""
    rows = query(conn, "SELECT table_rows FROM information_schema.tables WHERE table_schema = %s AND table_name = %s", (db, table))
    return int(rows[0][0]) if rows and rows[0][0] is not None else None
