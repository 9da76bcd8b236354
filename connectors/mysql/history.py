"""The schema history: each captured table's columns by binlog position, and the DDL that changes them.

Binlog row events carry their table's layout (the table map, with binlog_row_metadata=FULL: names,
type codes, signedness, charsets, enum/set members, primary key), so rows are always decoded with the
layout they were written with. What a table map lacks — display widths (TINYINT(1) as boolean),
MariaDB's JSON alias, UUID/INET6/INET4, exact spellings — comes from this history: information_schema
read at the snapshot and at every DDL statement, stored as an entry keyed by the DDL's position in
the compacted topic `<prefix>.<source>.__schema_history`. A row at position P uses the latest entry
at or before P (the nearest later one if none), column by column and only where the entry's column
has the same name and binlog shape as the table map's (see types.matches_binlog): a restart that
re-reads binlog from before an ALTER decodes those rows as they were written.

Entries belong to an epoch (one per initial snapshot, kept in the state topic): entries of an older
epoch are ignored after the state is deleted and the source snapshots again.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from lakeward.connectors.mysql.types import ColumnDef, enum_members, lake_type


@dataclass(frozen=True)
class HistoryEntry:
    db: str
    table: str
    pos: bytes
    """Position (core.events.Position.mysql) of the DDL or the snapshot the entry was read at."""
    epoch: str
    columns: tuple[ColumnDef, ...] = ()
    pk: tuple[str, ...] = ()
    dropped: bool = False
    ddl: str = ""
    """The statement that led to this entry ("" for a snapshot)."""
    exact: bool = True
    """No later DDL of the table was in the binlog when information_schema was read, so the entry is
    the table right after this DDL. False: the entry may describe a later state (see rewrites_rows)."""

    @property
    def key(self) -> bytes:
        return f"{self.epoch}:{self.db}.{self.table}:{self.pos.hex()}".encode()

    def to_json(self) -> bytes:
        return orjson.dumps({
            "db": self.db, "table": self.table, "pos": self.pos.hex(), "epoch": self.epoch,
            "columns": [c.to_list() for c in self.columns], "pk": list(self.pk), "dropped": self.dropped, "ddl": self.ddl,
            "exact": self.exact,
        })

    @classmethod
    def from_json(cls, data: bytes) -> HistoryEntry:
        d = orjson.loads(data)
        return cls(d["db"], d["table"], bytes.fromhex(d["pos"]), d["epoch"], tuple(ColumnDef.from_list(c) for c in d["columns"]),
                   tuple(d["pk"]), d["dropped"], d.get("ddl", ""), bool(d.get("exact", True)))


@dataclass
class SchemaHistory:
    """In memory: per table, entries sorted by position (one epoch)."""

    epoch: str
    _by_table: dict[tuple[str, str], list[HistoryEntry]] = field(default_factory=dict)

    def add(self, e: HistoryEntry) -> bool:
        """Add an entry; False if one for the same table and position exists (a re-read DDL keeps
        the entry written the first time, when information_schema was closest to it)."""
        if e.epoch != self.epoch:
            return False
        entries = self._by_table.setdefault((e.db, e.table), [])
        positions = [x.pos for x in entries]
        i = bisect.bisect_left(positions, e.pos)
        if i < len(entries) and entries[i].pos == e.pos:
            return False
        entries.insert(i, e)
        return True

    def has(self, db: str, table: str, pos: bytes) -> bool:
        return any(e.pos == pos for e in self._by_table.get((db, table), ()))

    def at(self, db: str, table: str, pos: bytes) -> HistoryEntry | None:
        """The entry in force at `pos`: the latest at or before it, else the nearest after it."""
        entries = self._by_table.get((db, table))
        if not entries:
            return None
        i = bisect.bisect_right([x.pos for x in entries], pos)
        return entries[i - 1] if i else entries[0]

    def before(self, db: str, table: str, pos: bytes) -> HistoryEntry | None:
        """The latest entry strictly before `pos`."""
        entries = self._by_table.get((db, table)) or []
        i = bisect.bisect_left([x.pos for x in entries], pos)
        return entries[i - 1] if i else None

    def latest(self, db: str, table: str) -> HistoryEntry | None:
        entries = self._by_table.get((db, table))
        return entries[-1] if entries else None

    def load(self, records: list[Any]) -> None:
        for r in records:
            if r.value:
                self.add(HistoryEntry.from_json(r.value))


# --- DDL -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ddl:
    """What a statement does to tables, as far as the source cares."""

    kind: str
    """alter, create, drop, rename, truncate, drop_database, other"""
    tables: tuple[tuple[str, str], ...] = ()
    """alter/create/drop/truncate: the tables; rename: (old, new) pairs flattened: old0, new0, old1, ..."""
    database: str = ""


_COMMENT = re.compile(r"/\*(?![!M]!?)(?:.|\n)*?\*/|--[ \t][^\n]*|#[^\n]*")
_VERSIONED = re.compile(r"/\*M?!\d*|\*/")
_IDENT = r"(?:`(?:[^`]|``)+`|[A-Za-z0-9_$\u0080-\uffff]+)"
_NAME = rf"({_IDENT}(?:\s*\.\s*{_IDENT})?)"
_CREATE = re.compile(rf"^CREATE\s+(?:OR\s+REPLACE\s+)?(TEMPORARY\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{_NAME}", re.I)
_ALTER = re.compile(rf"^ALTER\s+(?:ONLINE\s+)?(?:IGNORE\s+)?TABLE\s+(?:IF\s+EXISTS\s+)?{_NAME}", re.I)
_ALTER_RENAME = re.compile(rf"\bRENAME\s+(?:TO\s+|AS\s+)?(?!COLUMN\b|INDEX\b|KEY\b){_NAME}", re.I)
_DROP = re.compile(r"^DROP\s+(TEMPORARY\s+)?TABLES?\s+(?:IF\s+EXISTS\s+)?(.+)$", re.I | re.S)
_RENAME = re.compile(r"^RENAME\s+TABLES?\s+(.+)$", re.I | re.S)
_TRUNCATE = re.compile(rf"^TRUNCATE\s+(?:TABLE\s+)?{_NAME}", re.I)
_INDEX = re.compile(rf"^(?:CREATE|DROP)\s+(?:ONLINE\s+|OFFLINE\s+)?(?:UNIQUE\s+|FULLTEXT\s+|SPATIAL\s+)?INDEX\s+.+?\bON\s+{_NAME}", re.I | re.S)
_DROP_DB = re.compile(rf"^DROP\s+(?:DATABASE|SCHEMA)\s+(?:IF\s+EXISTS\s+)?({_IDENT})", re.I)
_EXCHANGE = re.compile(rf"\bEXCHANGE\s+PARTITION\s+{_IDENT}\s+WITH\s+TABLE\s+{_NAME}", re.I)
_DML = re.compile(r"^(INSERT|UPDATE|DELETE|REPLACE|LOAD)\b", re.I)


def _unquote(ident: str) -> str:
    ident = ident.strip()
    if ident.startswith("`"):
        return ident[1:-1].replace("``", "`")
    return ident


def _name(text: str, default_db: str) -> tuple[str, str]:
    parts = re.findall(_IDENT, text)
    if len(parts) >= 2:
        return _unquote(parts[0]), _unquote(parts[1])
    return default_db, _unquote(parts[0])


def _names(text: str, default_db: str) -> list[tuple[str, str]]:
    text = re.split(r"\b(?:RESTRICT|CASCADE|WAIT|NOWAIT)\b", text, flags=re.I)[0]
    return [_name(m.group(1), default_db) for m in re.finditer(_NAME, text)]


def clean(sql: str) -> str:
    """The statement without comments (MySQL's executable /*! ... */ comments are kept as SQL)."""
    sql = _COMMENT.sub(" ", sql)
    return _VERSIONED.sub(" ", sql).strip().rstrip(";").strip()


def parse_ddl(sql: str, default_db: str) -> Ddl | None:
    """What a Query event's statement does to tables; None for BEGIN/COMMIT/... that do nothing."""
    s = clean(sql)
    word = s.split(None, 1)[0].upper() if s else ""
    if word in ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "XA", ""):
        return None
    if _DML.match(s):
        m = re.match(rf"^(?:INSERT|REPLACE)\s+(?:LOW_PRIORITY\s+|DELAYED\s+|HIGH_PRIORITY\s+|IGNORE\s+)*(?:INTO\s+)?{_NAME}|"
                     rf"^UPDATE\s+(?:LOW_PRIORITY\s+|IGNORE\s+)*{_NAME}|^DELETE\s+(?:LOW_PRIORITY\s+|QUICK\s+|IGNORE\s+)*FROM\s+{_NAME}", s, re.I)
        names = [_name(g, default_db) for g in (m.groups() if m else ()) if g]
        return Ddl("dml", tuple(names))
    if m := _CREATE.match(s):
        if m.group(1):
            return Ddl("other")  # temporary tables never reach a row-based binlog
        return Ddl("create", (_name(m.group(2), default_db),))
    if m := _ALTER.match(s):
        table = _name(m.group(1), default_db)
        rest = s[m.end():]
        r = _ALTER_RENAME.search(rest)
        if r and not re.match(r"\s*(COLUMN|INDEX|KEY)\b", rest[r.start() + 6 :], re.I):
            return Ddl("rename", (table, _name(r.group(1), table[0])))
        if x := _EXCHANGE.search(rest):
            # The other table's rows change too (they swap with the partition's), without row events.
            return Ddl("alter", (table, _name(x.group(1), table[0])))
        return Ddl("alter", (table,))
    if m := _DROP.match(s):
        if m.group(1):
            return Ddl("other")
        return Ddl("drop", tuple(_names(m.group(2), default_db)))
    if m := _RENAME.match(s):
        pairs = []
        for part in re.split(r",(?=(?:[^`]*`[^`]*`)*[^`]*$)", m.group(1)):
            sides = re.split(r"\s+TO\s+", part.strip(), flags=re.I)
            if len(sides) == 2:
                old = _name(re.split(r"\s+(?:WAIT|NOWAIT)\b", sides[0], flags=re.I)[0], default_db)
                pairs += [old, _name(sides[1], default_db)]
        return Ddl("rename", tuple(pairs))
    if m := _TRUNCATE.match(s):
        return Ddl("truncate", (_name(m.group(1), default_db),))
    if m := _INDEX.match(s):
        return Ddl("alter", (_name(m.group(1), default_db),))
    if m := _DROP_DB.match(s):
        return Ddl("drop_database", (), _unquote(m.group(1)))
    return Ddl("other")


# Types whose values carry over unchanged to any later type of the same list.
_WIDENING = (
    ("tinyint", "smallint", "mediumint", "int", "integer", "bigint"),
    ("char", "varchar", "tinytext", "text", "mediumtext", "longtext", "json"),
    ("binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"),
    ("float", "double"),
)


def _widens(old: str, new: str) -> bool:
    if {old, new} == {"longtext", "json"}:
        return True  # MariaDB's JSON is LONGTEXT with a CHECK
    return any(old in chain and new in chain and chain.index(new) > chain.index(old) for chain in _WIDENING)


_PARTITION_DATA = re.compile(r"\b(?:TRUNCATE|DROP|EXCHANGE)\s+PARTITION\b", re.I)
# Clauses that may fill in or convert stored values: MODIFY/CHANGE (type, NOT NULL, rename),
# RENAME COLUMN, CONVERT TO CHARACTER SET, and an added column with a default, NOT NULL or an expression.
_MAY_REWRITE = re.compile(r"\b(?:MODIFY|CHANGE|CONVERT\s+TO)\b|\bRENAME\s+COLUMN\b|"
                          r"\bADD\b[^,]*?\b(?:DEFAULT|NOT\s+NULL|AS|GENERATED)\b", re.I)


def rewrites_rows(old: HistoryEntry | None, new: HistoryEntry | None, sql: str) -> str | None:
    """Why an ALTER changed existing rows without writing row events (so the table must be read
    again), or None. The binlog has no row events for values an ALTER fills in or converts: a column
    added with a default, NOT NULL or as a generated column; a renamed column (RENAME COLUMN, CHANGE:
    a column appears while another disappears); a narrowed or re-typed column; a primary key change;
    TRUNCATE/DROP/EXCHANGE PARTITION (both tables of an exchange). When either definition is not
    exact (read after later statements), a statement with a clause that may convert values counts."""
    sql = clean(sql)
    if _PARTITION_DATA.search(sql):
        return "a partition's rows were removed or exchanged"
    if old is None or new is None or old.dropped or new.dropped or not old.columns:
        return None
    before = {c.name: c for c in old.columns}
    if set(old.pk) != set(new.pk) and old.pk and new.pk:
        return "the primary key changed"
    gone = sorted(set(before) - {c.name for c in new.columns})
    for c in new.columns:
        o = before.get(c.name)
        if o is None:
            if c.generated or not c.nullable or c.default is not None:
                return f"column {c.name!r} was added with values for the existing rows"
            if gone:
                # RENAME COLUMN / CHANGE old new: the existing rows carry the old column's values under the new name.
                return f"column {c.name!r} replaced {', '.join(map(repr, gone))} (a rename) with the old values in the existing rows"
            continue
        if o.data_type != c.data_type and not _widens(o.data_type, c.data_type):
            return f"column {c.name!r} changed type"
        if lake_type(o) != lake_type(c):
            # A widening keeps the values, but the lake stores them differently (INT -> BIGINT): the
            # re-read lets a mirror rebuild the table with the new type.
            return f"column {c.name!r} changed its lake type from {lake_type(o)} to {lake_type(c)}"
        if o.nullable and not c.nullable:
            return f"column {c.name!r} became NOT NULL"
        for attr in ("length", "fsp", "scale", "precision"):
            a, b = getattr(o, attr), getattr(c, attr)
            if a is not None and b is not None and b < a:
                return f"column {c.name!r} was narrowed"
        if c.data_type in ("enum", "set") and o.column_type != c.column_type:
            was, now = enum_members(o.column_type), enum_members(c.column_type)
            if now[: len(was)] != was:
                return f"column {c.name!r} changed its members"
        if c.generated and o.generated and o.column_type != c.column_type:
            return f"column {c.name!r} changed"
    if not (old.exact and new.exact) and _MAY_REWRITE.search(sql):
        # The definitions were read after later DDL of the table, which may have undone what this
        # statement did (MODIFY v NOT NULL, then MODIFY v NULL): judge by the statement.
        return "the statement may have converted values (the table changed again before its definition was read)"
    return None
