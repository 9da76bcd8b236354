"""Catalog queries: setup checks, table globs, the publication, column types and primary keys."""

from __future__ import annotations

import dataclasses
import fnmatch
import time
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from lakeward.connectors.postgres.types import SESSION_OPTIONS, Converter, PgType, map_type
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
    kwargs: dict[str, Any] = {"replication": "database"} if replication else {}
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
        raise ConnectionFailed(f"cannot reach PostgreSQL at {describe_dsn(dsn)}: {mask_text(reason)}; check the source's `dsn` "
                               "and that PostgreSQL is running there") from None


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
    via_root = (await (await conn.execute("SELECT pubviaroot FROM pg_publication WHERE pubname = %s", (publication,))).fetchone())[0]  # type: ignore[index]
    if not via_root:
        # A publication created beforehand (e.g. with its slot): changes of partitions must arrive as
        # changes of their partitioned table, the one Lakeward captures.
        await conn.execute(f"ALTER PUBLICATION {pub} SET (publish_via_partition_root = true)")
    added = [t for t in tables if t not in current]
    for s, t in added:
        await conn.execute(f"ALTER PUBLICATION {pub} ADD TABLE {_ident(s, t)}")
    return added


async def is_partition(conn: psycopg.AsyncConnection, relid: int) -> bool:
    """Whether the relation is a partition (at any level) of a partitioned table. Its rows are captured
    through the root (publish_via_partition_root), but pgoutput still sends a Relation message for it."""
    row = await (await conn.execute("SELECT relispartition FROM pg_class WHERE oid = %s", (relid,))).fetchone()
    return bool(row and row[0])


async def type_infos(conn: psycopg.AsyncConnection, oids: set[int], cache: dict[int, PgType]) -> None:
    """Fill `cache` with what the catalog says about each type oid (domains resolved, array elements)."""
    rows: dict[int, tuple[str, str, int, int, str, int]] = {}
    todo = {o for o in oids if o not in cache}
    while todo:
        fetched = await (await conn.execute(
            "SELECT oid, typname, typtype, typelem, typbasetype, typcategory, typtypmod FROM pg_type WHERE oid = ANY(%s)", (list(todo),)
        )).fetchall()
        for oid, *info in fetched:
            rows[oid] = tuple(info)
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


async def row_key(conn: psycopg.AsyncConnection, relid: int) -> tuple[str, ...]:
    """The columns that identify a row in the change stream: the primary key, unless the table's
    REPLICA IDENTITY is an index that does not hold every primary-key column.

    PostgreSQL's old tuple of an UPDATE/DELETE carries the replica identity's columns only. With
    `REPLICA IDENTITY USING INDEX` on another unique index, a delete names the row by that index's
    columns (the primary key comes as NULL) and a primary-key change sends no old tuple at all, so
    only the index can key the events and the mirror's MERGE. With DEFAULT, FULL, or an index that
    contains the primary key, the primary key does.
    """
    rows = await (await conn.execute(
        "SELECT a.attname, i.indisprimary, c.relreplident = 'i' AND i.indisreplident "
        "FROM pg_class c JOIN pg_index i ON i.indrelid = c.oid "
        "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE c.oid = %s AND (i.indisprimary OR i.indisreplident) ORDER BY k.ord",
        (relid,),
    )).fetchall()
    pk = tuple(name for name, primary, _ in rows if primary)
    identity = tuple(name for name, _, ident in rows if ident)
    if identity and not set(pk) <= set(identity):
        return identity
    return pk


async def format_types(conn: psycopg.AsyncConnection, pairs: list[tuple[int, int]], cache: dict[tuple[int, int], str]) -> None:
    missing = [p for p in pairs if p not in cache]
    if missing:
        rows = await (await conn.execute(
            "SELECT o, m, format_type(o, m) FROM unnest(%s::oid[], %s::int[]) AS x(o, m)",
            ([p[0] for p in missing], [p[1] for p in missing]),
        )).fetchall()
        for o, m, text in rows:
            cache[(o, m)] = text


_NOT_GENERATED = "AND attgenerated = ''"
"""Generated (stored) columns: pgoutput before PostgreSQL 18 leaves them out of Relation messages and
row data, so the snapshot leaves them out too (a snapshot value would never be updated by the stream)."""


async def table_columns(conn: psycopg.AsyncConnection, schema: str, table: str) -> tuple[int, list[tuple[str, int, int]]]:
    """(relid, [(name, type oid, typmod)]) as the catalog has them now (what the snapshot reads)."""
    row = await (await conn.execute("SELECT %s::regclass::oid", (_ident(schema, table),))).fetchone()
    assert row is not None
    relid = row[0]
    cols = await (await conn.execute(
        "SELECT attname, atttypid, atttypmod FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped "
        f"{_NOT_GENERATED} ORDER BY attnum",
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

    async def build(self, conn: psycopg.AsyncConnection, schema: str, table: str, columns: list[tuple[str, int, int]], pk: tuple[str, ...]) -> tuple[TableSchema, list[Converter]]:
        await type_infos(conn, {o for _, o, _ in columns}, self._types)
        await format_types(conn, [(o, m) for _, o, m in columns], self._formatted)
        cols: list[Column] = []
        converters: list[Converter] = []
        for name, oid, typmod in columns:
            lake_type, conv = map_type(self._types[oid], typmod)
            cols.append(Column(name, self._formatted[(oid, typmod)], lake_type, name not in pk))
            converters.append(conv)
        return TableSchema(self.source, schema, table, tuple(cols), pk), converters


@dataclasses.dataclass
class TableShape:
    """What a table looks like in the catalog, as far as the values of its existing rows go.

    Recorded per relid in the source's state document when the table is snapshotted (at the
    snapshot's LSN) and when a schema change needs no re-read; compared with the catalog when a
    Relation message or the periodic check says the table changed (`reread_reason`)."""

    table: str
    """`schema.table`."""
    columns: list[tuple[str, int, int]]
    """(name, type oid, typmod) in attnum order, as Relation messages describe them."""
    pk: list[str]
    storage: list[tuple[int, int]]
    """(oid, relfilenode) of the table, or of each of its partitions holding rows: a rewrite changes a
    relfilenode, an attached or detached partition the set of oids."""
    defaulted: list[str] = dataclasses.field(default_factory=list)
    """Columns whose value in existing rows comes from the catalog: a default (constant, kept in
    attmissingval, or volatile, written by a rewrite) or an identity column."""
    lsn: int = 0
    """The shape holds for transactions committed at or after this LSN."""

    def to_json(self) -> dict:
        return {"table": self.table, "columns": [list(c) for c in self.columns], "pk": self.pk,
                "storage": [list(s) for s in self.storage], "defaulted": self.defaulted, "lsn": self.lsn}

    @classmethod
    def from_json(cls, d: dict) -> TableShape:
        return cls(d["table"], [tuple(c) for c in d["columns"]], list(d["pk"]), [tuple(s) for s in d["storage"]],
                   list(d.get("defaulted", [])), int(d["lsn"]))


_SHAPES = """
SELECT c.oid, n.nspname || '.' || c.relname,
  (SELECT coalesce(json_agg(json_build_array(a.attname, a.atttypid, a.atttypmod,
                                             a.atthasdef OR a.atthasmissing OR a.attidentity <> '')
                            ORDER BY a.attnum), '[]')
   FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
  (SELECT coalesce(array_agg(a.attname::text ORDER BY k.ord), '{}')
   FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
   WHERE i.indrelid = c.oid AND i.indisprimary),
  (WITH RECURSIVE tree(oid) AS (SELECT c.oid UNION ALL SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.oid)
   SELECT coalesce(json_agg(json_build_array(p.oid, p.relfilenode) ORDER BY p.oid), '[]')
   FROM tree JOIN pg_class p ON p.oid = tree.oid WHERE p.relkind IN ('r', 'm'))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = ANY(%s)
"""


async def table_shapes(conn: psycopg.AsyncConnection, relids: list[int]) -> dict[int, TableShape]:
    """The current shape of each table (as of the connection's snapshot, inside a snapshot
    transaction); tables that no longer exist are missing from the result."""
    if not relids:
        return {}
    rows = await (await conn.execute(_SHAPES, (list(relids),))).fetchall()
    out = {}
    for oid, name, cols, pk, storage in rows:
        out[oid] = TableShape(name, [(c[0], c[1], c[2]) for c in cols], list(pk), [(s[0], s[1]) for s in storage],
                              [c[0] for c in cols if c[3]])
    return out


async def relids(conn: psycopg.AsyncConnection, tables: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The oid of each existing table."""
    if not tables:
        return {}
    rows = await (await conn.execute(
        "SELECT n.nspname, c.relname, c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN unnest(%s::text[], %s::text[]) AS x(s, t) ON x.s = n.nspname AND x.t = c.relname",
        ([s for s, _ in tables], [t for _, t in tables]),
    )).fetchall()
    return {(s, t): oid for s, t, oid in rows}


def reread_reason(old: TableShape, new: TableShape) -> str | None:
    """Why the values of the rows a table had before a schema change may have changed without
    row events (logical decoding sends none for a table rewrite, nor for a default that PostgreSQL
    11+ keeps in attmissingval), or None when the change needs no re-read of the table.

    Re-read: a column whose type (oid or typmod) changed, a column renamed (a name gone and a name
    added: old rows would have NULL under the new name), a column added with a default or as an
    identity column, a changed primary key (the mirror's rows are keyed by it), a table
    renamed under the same relid, a partition attached or detached (its rows joined or left the
    table), a rewrite together with added or dropped columns (e.g. a volatile default dropped since).
    No re-read: added nullable columns without default, dropped columns, defaults and NOT NULL set
    or dropped on existing columns, replica identity, TRUNCATE, VACUUM FULL."""
    if old.table != new.table:
        return f"renamed to {new.table}"
    before = {n: (o, m) for n, o, m in old.columns}
    after = {n: (o, m) for n, o, m in new.columns}
    for name, typ in after.items():
        if name in before and before[name] != typ:
            return f"column {name} changed type"
    gone = [n for n in before if n not in after]
    added = [n for n in after if n not in before]
    if gone and added:
        return f"column {', '.join(gone)} renamed or replaced (now {', '.join(added)})"
    for name in added:
        if name in new.defaulted:
            return f"column {name} added with a default"
    if old.pk != new.pk:
        return f"primary key changed from ({', '.join(old.pk)}) to ({', '.join(new.pk)})"
    if {o for o, _ in old.storage} != {o for o, _ in new.storage}:
        return "partitions attached or detached"
    if (gone or added) and old.storage != new.storage:
        return f"rewritten while column {', '.join(gone + added)} changed"
    return None
