"""Catalog queries: setup checks, table globs, the publication, column types and primary keys."""

from __future__ import annotations

import dataclasses
import fnmatch
import time

import psycopg
from psycopg.conninfo import conninfo_to_dict

from lakeward.connectors.postgres.types import SESSION_OPTIONS, PgType, map_type
from lakeward.core.config import mask_text
from lakeward.core.errors import ConnectionFailed, SourceSetupError
from lakeward.core.events import Column, TableSchema


def describe_dsn(dsn: str) -> str:
    """`host:port/dbname` of a DSN, for messages (never the password)."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return mask_text(dsn)
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', info.get('user', ''))}"


def drop_slot(conn: psycopg.Connection, slot: str, *, wait_s: float = 5.0) -> None:
    """Drop a replication slot, if it exists, ending the walsender that holds it first. Blocking (an
    autocommit connection to any database of the cluster): for the tools around the pipeline — the
    demo's reset, the tests' and benchmarks' clean-up."""
    conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s AND active", (slot,))
    deadline = time.monotonic() + wait_s
    while conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND active", (slot,)).fetchone():
        if time.monotonic() > deadline:
            break  # the drop below then fails, saying which process still holds it
        time.sleep(0.1)
    conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (slot,))


async def connect(dsn: str, *, replication: bool = False) -> psycopg.AsyncConnection:
    kwargs = {"replication": "database"} if replication else {}
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True, options=SESSION_OPTIONS, application_name="lakeward", **kwargs)
    except psycopg.OperationalError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else e.__class__.__name__
        if "replication" in str(e) and "pg_hba.conf" in str(e):
            raise SourceSetupError(
                f"PostgreSQL at {describe_dsn(dsn)} refused a replication connection: {mask_text(reason)}; "
                "add a `host replication <user> <address> <method>` line to pg_hba.conf"
            ) from None
        if "password authentication failed" in str(e) or "role" in str(e) and "does not exist" in str(e):
            raise SourceSetupError(f"PostgreSQL at {describe_dsn(dsn)} rejected the login: {mask_text(reason)}") from None
        if "database" in str(e) and "does not exist" in str(e):
            raise SourceSetupError(f"PostgreSQL at {describe_dsn(dsn)}: {mask_text(reason)}; check the dbname in the source dsn") from None
        raise ConnectionFailed(f"cannot reach PostgreSQL at {describe_dsn(dsn)}: {mask_text(reason)}") from None


async def check_setup(conn: psycopg.AsyncConnection, dsn: str) -> None:
    """Fail early, naming the fix, when the server can't do logical replication for this user."""
    where = describe_dsn(dsn)
    row = await (await conn.execute(
        "SELECT current_setting('wal_level'), current_setting('server_version_num')::int, r.rolreplication, r.rolsuper, current_user "
        "FROM pg_roles r WHERE r.rolname = current_user"
    )).fetchone()
    assert row is not None
    wal_level, version, can_replicate, is_super, user = row
    if version < 100000:
        raise SourceSetupError(f"PostgreSQL at {where} is version {version}; Lakeward needs PostgreSQL 10 or newer (pgoutput)")
    if wal_level != "logical":
        raise SourceSetupError(
            f"PostgreSQL at {where} has wal_level={wal_level}; logical replication needs wal_level=logical: "
            "run `ALTER SYSTEM SET wal_level = logical` and restart PostgreSQL"
        )
    if not (can_replicate or is_super):
        raise SourceSetupError(f"user {user} on {where} lacks the REPLICATION attribute: run `ALTER ROLE {user} REPLICATION`")


async def resolve_tables(conn: psycopg.AsyncConnection, patterns: list[str], dsn: str) -> list[tuple[str, str]]:
    """(schema, table) of every ordinary or partitioned table matching the `schema.table` globs."""
    rows = await (await conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' "
        "ORDER BY 1, 2"
    )).fetchall()
    names = [f"{s}.{t}" for s, t in rows]
    out: list[tuple[str, str]] = []
    for pattern in patterns:
        if "." not in pattern:
            raise SourceSetupError(f"tables: {pattern!r} must be `schema.table` (globs allowed, e.g. public.*)")
        hits = fnmatch.filter(names, pattern)
        if not hits and not any(ch in pattern for ch in "*?["):
            raise SourceSetupError(f"table {pattern} does not exist in {describe_dsn(dsn)}; check `tables:` of the source")
        for name in hits:
            pair = tuple(name.split(".", 1))
            if pair not in out:
                out.append(pair)  # type: ignore[arg-type]
    return out


def _ident(schema: str, table: str) -> str:
    return f"{psycopg.sql.Identifier(schema).as_string(None)}.{psycopg.sql.Identifier(table).as_string(None)}"


async def published_tables(conn: psycopg.AsyncConnection, publication: str) -> set[tuple[str, str]] | None:
    """Tables in the publication, or None when it doesn't exist."""
    exists = await (await conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,))).fetchone()
    if not exists:
        return None
    rows = await (await conn.execute(
        "SELECT n.nspname, c.relname FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid "
        "JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.pubname = %s",
        (publication,),
    )).fetchall()
    return {(s, t) for s, t in rows}


async def sync_publication(conn: psycopg.AsyncConnection, publication: str, tables: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Create the publication or add the missing tables to it; returns the tables added."""
    current = await published_tables(conn, publication)
    pub = psycopg.sql.Identifier(publication).as_string(None)
    if current is None:
        listed = ", ".join(_ident(s, t) for s, t in tables)
        target = f"FOR TABLE {listed}" if tables else ""
        await conn.execute(f"CREATE PUBLICATION {pub} {target} WITH (publish_via_partition_root = true)")
        return list(tables)
    added = [t for t in tables if t not in current]
    for s, t in added:
        await conn.execute(f"ALTER PUBLICATION {pub} ADD TABLE {_ident(s, t)}")
    return added


async def type_infos(conn: psycopg.AsyncConnection, oids: set[int], cache: dict[int, PgType]) -> None:
    """Fill `cache` with what the catalog says about each type oid (domains resolved, array elements)."""
    rows: dict[int, tuple[str, str, int, int, str, int]] = {}
    todo = {o for o in oids if o not in cache}
    while todo:
        fetched = await (await conn.execute(
            "SELECT oid, typname, typtype, typelem, typbasetype, typcategory, typtypmod FROM pg_type WHERE oid = ANY(%s)", (list(todo),)
        )).fetchall()
        for oid, *info in fetched:
            rows[oid] = tuple(info)  # type: ignore[assignment]
        deps = {base if kind == "d" else elem for (_, kind, elem, base, cat, _) in (rows[o] for o in todo if o in rows)
                if kind == "d" or (cat == "A" and elem)}
        todo = {d for d in deps if d not in cache and d not in rows}

    def resolve(oid: int) -> PgType:
        if oid not in cache:
            name, kind, elem, base, category, typmod = rows[oid]
            if kind == "d":
                # A column of a domain type has atttypmod -1: the typmod (numeric(8,3) ...) is the domain's.
                cache[oid] = dataclasses.replace(resolve(base), typmod=typmod) if typmod >= 0 else resolve(base)
            elif category == "A" and elem:
                cache[oid] = PgType(name, kind, resolve(elem))
            else:
                cache[oid] = PgType(name, kind)
        return cache[oid]

    for oid in rows:
        resolve(oid)


async def primary_key(conn: psycopg.AsyncConnection, relid: int) -> tuple[str, ...]:
    rows = await (await conn.execute(
        "SELECT a.attname FROM pg_index i JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord",
        (relid,),
    )).fetchall()
    return tuple(r[0] for r in rows)


async def format_types(conn: psycopg.AsyncConnection, pairs: list[tuple[int, int]], cache: dict[tuple[int, int], str]) -> None:
    missing = [p for p in pairs if p not in cache]
    if missing:
        rows = await (await conn.execute(
            "SELECT o, m, format_type(o, m) FROM unnest(%s::oid[], %s::int[]) AS x(o, m)",
            ([p[0] for p in missing], [p[1] for p in missing]),
        )).fetchall()
        for o, m, text in rows:
            cache[(o, m)] = text


async def table_columns(conn: psycopg.AsyncConnection, schema: str, table: str) -> tuple[int, list[tuple[str, int, int]]]:
    """(relid, [(name, type oid, typmod)]) as the catalog has them now (what the snapshot reads)."""
    row = await (await conn.execute("SELECT %s::regclass::oid", (_ident(schema, table),))).fetchone()
    assert row is not None
    relid = row[0]
    cols = await (await conn.execute(
        "SELECT attname, atttypid, atttypmod FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (relid,),
    )).fetchall()
    return relid, [(n, o, m) for n, o, m in cols]


class SchemaBuilder:
    """Builds TableSchemas and value converters from (name, type oid, typmod) column lists.

    The stream (Relation messages) and the snapshot (pg_attribute) describe columns the same way,
    so a table gets the same schema id from both.
    """

    def __init__(self, source: str):
        self.source = source
        self._types: dict[int, PgType] = {}
        self._formatted: dict[tuple[int, int], str] = {}

    async def build(self, conn: psycopg.AsyncConnection, schema: str, table: str, columns: list[tuple[str, int, int]], pk: tuple[str, ...]):
        await type_infos(conn, {o for _, o, _ in columns}, self._types)
        await format_types(conn, [(o, m) for _, o, m in columns], self._formatted)
        cols, converters = [], []
        for name, oid, typmod in columns:
            lake_type, conv = map_type(self._types[oid], typmod)
            cols.append(Column(name, self._formatted[(oid, typmod)], lake_type, name not in pk))
            converters.append(conv)
        return TableSchema(self.source, schema, table, tuple(cols), pk), converters
